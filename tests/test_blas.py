"""The BLAS selection logic (apeagent.blas.plan) and that the suite itself runs on it."""

import os
import platform
import subprocess
import sys

import pytest

from apeagent.blas import find_openblas, plan

LIB = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"


def test_macos_uses_accelerate():
    assert plan({}, "Darwin", "arm64", None) == ("skip", "Accelerate (macOS)")


def test_linux_preloads_openblas_when_found():
    assert plan({}, "Linux", "x86_64", LIB) == ("preload", LIB)


def test_linux_already_preloaded_is_active():
    assert plan({"LD_PRELOAD": f"/x.so:{LIB}"}, "Linux", "x86_64", LIB) == ("active", LIB)


def test_linux_without_openblas_says_reference_and_how_to_fix():
    action, text = plan({}, "Linux", "x86_64", None)
    assert action == "skip" and "reference" in text and "libopenblas0-pthread" in text


def test_opt_out_with_env():
    action, text = plan({"APE_BLAS": "reference"}, "Linux", "x86_64", LIB)
    assert action == "skip" and "APE_BLAS=reference" in text


def test_explicit_library_path(tmp_path):
    lib = tmp_path / "libmyblas.so"
    lib.write_bytes(b"")
    assert plan({"APE_BLAS": str(lib)}, "Linux", "x86_64", None) == ("preload", str(lib))
    action, text = plan({"APE_BLAS": str(tmp_path / "missing.so")}, "Linux", "x86_64", LIB)
    assert action == "skip" and "does not exist" in text


def test_no_reexec_loop_when_preload_did_not_take():
    action, text = plan({"_APE_BLAS_REEXEC": "1"}, "Linux", "x86_64", LIB)
    assert action == "skip" and "failed" in text


def test_find_openblas_in_a_fake_root(tmp_path):
    d = tmp_path / "x86_64-linux-gnu" / "openblas-pthread"
    d.mkdir(parents=True)
    (d / "libopenblas.so.0").write_bytes(b"")
    assert find_openblas("x86_64", roots=(str(tmp_path),)) == str(d / "libopenblas.so.0")
    assert find_openblas("x86_64", roots=(str(tmp_path / "none"),)) is None


@pytest.mark.skipif(platform.system() != "Linux" or find_openblas() is None, reason="needs Linux + OpenBLAS")
def test_suite_and_commands_run_with_openblas_mapped():
    # conftest re-executed pytest with the preload: OpenBLAS is mapped into this very process.
    assert find_openblas() in os.environ.get("LD_PRELOAD", "")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_APE_BLAS_REEXEC")}
    code = (
        "from apeagent.blas import ensure_fast_blas, describe_loaded;"
        "ensure_fast_blas(); import mlx.core as mx; mx.eval(mx.ones((4,4)) @ mx.ones((4,4)));"
        "print(describe_loaded())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "openblas" in out.stdout.lower()
    assert "[apeagent] BLAS: OpenBLAS" in out.stderr
