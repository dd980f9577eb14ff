"""Bad input, as a new user types it, to every command line (issue 15).

Each case runs the real CLI (``python -m <package> ...`` or ``scripts/pipeline.py``) in a
subprocess, in its own copy of a small workspace, and must give: exit code 2, one line on
stderr that names the problem, no traceback, no secret, and not one byte changed in the
workspace (the output path included: nothing half-written). The cases run a few at a time
(each fails before the heavy imports, so the whole table stays cheap).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUGE = "9" * 100_000  # a 100,000-digit integer
KEY = "FAKEKEY0123456789abcdefSECRET"
PASSWORD = "hunter2pass"
SECRET_URL = f"https://alice:{PASSWORD}@rpc.example.com/v2/{KEY}?apikey=QSECRET987"
SECRETS = (KEY, PASSWORD, "QSECRET987")

# (case id, command: chain | gan_torch | distill | finetune_mlx | agent | pipeline, argv, the
# words the error line must contain). Workspace files: see `workspace` below.
CASES = [
    # --- ape-chain: damaged stores, outputs that are folders or under files, bad CSVs, numbers
    ("process-truncated-db", "chain", ["process", "--db", "trunc.db", "--out-dir", "o"], "trunc.db"),
    ("process-junk-db", "chain", ["process", "--db", "junk.db", "--out-dir", "o"], "junk.db"),
    ("process-empty-db", "chain", ["process", "--db", "empty.db", "--out-dir", "o"], "empty.db"),
    ("process-missing-db", "chain", ["process", "--db", "nope.db", "--out-dir", "o"], "nope.db"),
    ("process-out-is-file", "chain", ["process", "--db", "good.db", "--out-dir", "afile"], "afile"),
    ("process-out-under-file", "chain", ["process", "--db", "good.db", "--out-dir", "afile/sub"], "afile"),
    ("process-binary-csv", "chain", ["process", "--csv", "bin.csv", "--out-dir", "o"], "bin.csv"),
    ("process-bar-seconds-negative", "chain", ["process", "--db", "good.db", "--bar-seconds", "-60"], "bar_seconds"),
    ("export-truncated-db", "chain", ["export", "--db", "trunc.db", "--csv", "out.csv"], "trunc.db"),
    ("export-csv-is-dir", "chain", ["export", "--db", "good.db", "--csv", "adir"], "adir"),
    ("export-csv-under-file", "chain", ["export", "--db", "good.db", "--csv", "afile/x.csv"], "afile"),
    ("import-truncated-db", "chain", ["import-csv", "sim.csv", "--db", "trunc.db"], "trunc.db"),
    ("import-junk-db", "chain", ["import-csv", "sim.csv", "--db", "junk.db"], "junk.db"),
    ("import-db-is-dir", "chain", ["import-csv", "sim.csv", "--db", "adir"], "adir"),
    ("import-db-under-file", "chain", ["import-csv", "sim.csv", "--db", "afile/x.db"], "afile"),
    ("import-binary-csv", "chain", ["import-csv", "bin.csv", "--db", "new.db"], "bin.csv"),
    ("import-half-binary-csv", "chain", ["import-csv", "bin2.csv", "--db", "new.db"], "bin2.csv"),
    ("import-missing-csv", "chain", ["import-csv", "nope.csv", "--db", "new.db"], "nope.csv"),
    ("import-csv-is-dir", "chain", ["import-csv", "adir", "--db", "new.db"], "adir"),
    ("import-header-only", "chain", ["import-csv", "header.csv", "--db", "new.db"], "no rows"),
    ("import-huge-pool-id", "chain", ["import-csv", "sim.csv", "--db", "new.db", "--pool-id", HUGE], "hex"),
    ("simulate-out-is-dir", "chain", ["simulate", "--n-swaps", "5", "--out", "adir"], "adir"),
    ("simulate-out-under-file", "chain", ["simulate", "--n-swaps", "5", "--out", "afile/x.csv"], "afile"),
    ("simulate-negative", "chain", ["simulate", "--n-swaps", "-5"], "sim_swaps"),
    ("simulate-zero", "chain", ["simulate", "--n-swaps", "0"], "sim_swaps"),
    ("simulate-100000-digits", "chain", ["simulate", "--n-swaps", HUGE], "--n-swaps"),
    ("simulate-too-large", "chain", ["simulate", "--n-swaps", "9" * 30], "too large"),
    ("simulate-not-a-number", "chain", ["simulate", "--n-swaps", "abc"], "--n-swaps"),
    ("simulate-unknown-flag", "chain", ["simulate", "--nope"], "--nope"),
    ("chain-unknown-command", "chain", ["nope"], "nope"),
    ("simulate-run-dir-is-file", "chain", ["simulate", "--n-swaps", "5", "--run-dir", "afile"], "afile"),
    ("collect-concurrency-zero", "chain", ["collect", "--rpc-url", SECRET_URL, "--concurrency", "0"], "concurrency"),
    ("collect-bad-to-block", "chain", ["collect", "--rpc-url", SECRET_URL, "--to-block", "soon"], "--to-block"),
    ("collect-timeout-negative", "chain", ["collect", "--rpc-url", SECRET_URL, "--timeout", "-1"], "timeout_s"),
    # --- config files: cycles, keys, binary, folders (read by every command the same way)
    ("config-extends-itself", "chain", ["simulate", "-c", "self.yaml"], "extends itself"),
    ("config-extends-cycle", "chain", ["simulate", "-c", "cycle_a.yaml"], "extends itself"),
    ("config-bad-key-in-parent", "chain", ["simulate", "-c", "sub/child.yaml"], "badparent.yaml"),
    ("config-binary", "chain", ["simulate", "-c", "binary.yaml"], "UTF-8"),
    ("config-is-dir", "chain", ["simulate", "-c", "adir"], "adir"),
    ("config-missing", "gan_torch", ["windows", "-c", "nope.yaml"], "nope.yaml"),
    ("config-wrong-type", "gan_torch", ["windows", "-c", "types.yaml"], "types.yaml"),
    ("config-negative-in-file", "distill", ["teach", "-c", "negative.yaml"], "negative.yaml"),
    ("config-huge-int", "agent", ["backtest", "-c", "hugeint.yaml"], "hugeint.yaml"),
    # --- ape-gan
    ("windows-out-is-dir", "gan_torch", ["windows", "--bars", "bars.parquet", "--out", "adir"], "adir"),
    ("windows-out-under-file", "gan_torch", ["windows", "--bars", "bars.parquet", "--out", "afile/w.parquet"], "afile"),
    ("windows-bars-junk", "gan_torch", ["windows", "--bars", "junk.parquet", "--out", "w.parquet"], "junk.parquet"),
    ("windows-bars-missing", "gan_torch", ["windows", "--bars", "nope.parquet", "--out", "w.parquet"], "nope.parquet"),
    ("windows-negative-stride", "gan_torch", ["windows", "--bars", "bars.parquet", "--stride", "-1"], "stride"),
    ("windows-holdout-above-one", "gan_torch", ["windows", "--bars", "bars.parquet", "--holdout-frac", "2"], "holdout"),
    ("train-negative-steps", "gan_torch", ["train", "--bars", "bars.parquet", "--steps", "-5"], "steps"),
    ("generate-junk-checkpoint", "gan_torch", ["generate", "--checkpoint", "junk.pt", "--out", "s.parquet"], "junk.pt"),
    # --- ape-distill
    ("teach-out-is-file", "distill", ["teach", "--windows", "windows.parquet", "--out-dir", "afile"], "afile"),
    ("teach-out-under-file", "distill", ["teach", "--windows", "windows.parquet", "--out-dir", "afile/t"], "afile"),
    ("teach-windows-junk", "distill", ["teach", "--windows", "junk.parquet", "--out-dir", "t"], "junk.parquet"),
    ("teach-unknown-teacher", "distill", ["teach", "--windows", "windows.parquet", "--teacher", "oracle"], "oracle"),
    ("teach-openai-key-over-http", "distill",
     ["teach", "--windows", "windows.parquet", "--out-dir", "t", "--teacher", "openai",
      "--base-url", "http://teacher.example.com:8080/v1"], "http"),
    ("dataset-out-is-file", "distill", ["dataset", "--answers", "answers.jsonl", "--out-dir", "afile"], "afile"),
    ("dataset-out-under-file", "distill", ["dataset", "--answers", "answers.jsonl", "--out-dir", "afile/d"], "afile"),
    ("dataset-wrong-types", "distill", ["dataset", "--answers", "badtypes.jsonl", "--out-dir", "d"], "badtypes.jsonl"),
    ("dataset-binary", "distill", ["dataset", "--answers", "bin.jsonl", "--out-dir", "d"], "bin.jsonl"),
    ("dataset-fractions", "distill", ["dataset", "--answers", "answers.jsonl", "--valid-fraction", "1.5"], "valid_fraction"),
    # --- ape-finetune
    ("lora-missing-model", "finetune_mlx", ["lora", "--model", "nope_model", "--data", "ds"], "nope_model"),
    ("lora-negative-iters", "finetune_mlx", ["lora", "--data", "ds", "--iters", "-5"], "iters"),
    ("build-tiny-out-is-file", "finetune_mlx", ["build-tiny", "--data", "ds", "--out", "afile"], "afile"),
    ("build-tiny-data-missing", "finetune_mlx", ["build-tiny", "--data", "nope_ds", "--out", "m"], "nope_ds"),
    # --- ape-agent
    ("backtest-negative-value", "agent", ["backtest", "--swaps", "good.db", "--initial-value", "-5"], "initial_value"),
    ("backtest-truncated-db", "agent", ["backtest", "--swaps", "trunc.db", "--policies", "hold"], "trunc.db"),
    ("backtest-empty-db", "agent", ["backtest", "--swaps", "empty.db", "--policies", "hold"], "empty.db"),
    ("backtest-binary-csv", "agent", ["backtest", "--swaps", "bin.csv", "--policies", "hold"], "bin.csv"),
    ("backtest-out-is-file", "agent", ["backtest", "--swaps", "good.db", "--policies", "hold", "--out", "afile"], "afile"),
    ("backtest-out-under-file", "agent",
     ["backtest", "--swaps", "good.db", "--policies", "hold", "--out", "afile/bt"], "afile"),
    ("backtest-holdout-zero", "agent", ["backtest", "--swaps", "good.db", "--holdout-frac", "-0.5"], "holdout"),
    ("trade-journal-is-dir", "agent", ["trade", "--rpc-url", SECRET_URL, "--journal", "adir"], "adir"),
    ("trade-journal-under-file", "agent", ["trade", "--rpc-url", SECRET_URL, "--journal", "afile/j.jsonl"], "afile"),
    # --- scripts/pipeline.py: every check before the first stage runs and before anything is written
    ("pipeline-unknown-gan-key", "pipeline", ["--set", "gan.stepz=5"], "gan.stepz"),
    ("pipeline-negative-chain-key", "pipeline", ["--set", "chain.sim_swaps=-5"], "chain.sim_swaps"),
    ("pipeline-bad-distill-key-blames-set", "pipeline", ["-p", "tiny", "--set", "distill.foo=1"], "--set distill.foo"),
    ("pipeline-100000-digit-set", "pipeline", ["--set", f"gan.steps={HUGE}"], "gan.steps"),
    ("pipeline-bad-set-syntax", "pipeline", ["--set", "steps"], "section.key=value"),
    ("pipeline-extends-itself", "pipeline", ["-p", "self.yaml"], "extends itself"),
    ("pipeline-bad-key-in-parent", "pipeline", ["-p", "sub/child.yaml"], "badparent.yaml"),
    ("pipeline-swaps-is-dir", "pipeline", ["--swaps", "adir"], "adir"),
    ("pipeline-swaps-missing", "pipeline", ["--swaps", "nope.csv"], "nope.csv"),
    ("pipeline-store-junk", "pipeline", ["--store", "junk.db"], "junk.db"),
    ("pipeline-store-empty", "pipeline", ["--store", "empty.db"], "empty.db"),
    ("pipeline-store-truncated", "pipeline", ["--store", "trunc.db"], "trunc.db"),
    ("pipeline-run-dir-is-file", "pipeline", ["--run-dir", "afile"], "afile"),
    ("pipeline-run-dir-under-file", "pipeline", ["--run-dir", "afile/run"], "afile"),
    ("pipeline-two-sources", "pipeline", ["--swaps", "sim.csv", "--rpc-url", SECRET_URL], "one data source"),
    ("pipeline-unknown-until", "pipeline", ["--until", "nope"], "--until"),
    ("pipeline-unknown-force", "pipeline", ["--force", "nope"], "--force"),
    ("pipeline-holdout-above-one", "pipeline", ["--set", "market.holdout_frac=2"], "holdout_frac"),
    ("pipeline-bad-type", "pipeline", ["--set", "gan.steps=many"], "gan.steps"),
    ("pipeline-rpc-without-url", "pipeline", ["--set", "run.source=rpc"], "rpc"),
]


def _noise(n: int) -> bytes:
    """Binary junk, the same every run."""
    return random.Random(n).randbytes(n)


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its bytes (folders: '<dir>')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Small real inputs (simulated swaps, a store, bars, windows, answers, a dataset) and bad ones."""
    from chain.csvio import write_swaps_csv
    from chain.features import process
    from chain.simulate import simulate
    from chain.store import Store

    ws = tmp_path_factory.mktemp("ws")
    rows = simulate(400, seed=0)
    write_swaps_csv(ws / "sim.csv", rows)
    with Store(ws / "good.db") as store:
        store.commit_chunk(rows[0]["block_number"], rows[-1]["block_number"], rows, mark_done=False)
    data = (ws / "good.db").read_bytes()
    (ws / "trunc.db").write_bytes(data[: len(data) // 3])
    (ws / "junk.db").write_bytes(_noise(4096))
    (ws / "empty.db").write_bytes(b"")
    (ws / "junk.parquet").write_bytes(_noise(2048))
    (ws / "junk.pt").write_bytes(_noise(2048))
    (ws / "bin.csv").write_bytes(_noise(4096))
    header = (ws / "sim.csv").read_text().splitlines()[0]
    (ws / "header.csv").write_text(header + "\n")
    (ws / "bin2.csv").write_bytes(header.encode() + b"\n" + _noise(512))
    (ws / "bin.jsonl").write_bytes(_noise(1024))
    (ws / "adir").mkdir()
    (ws / "adir" / "keep.txt").write_text("keep\n")
    (ws / "afile").write_text("a file, not a folder\n")
    (ws / "self.yaml").write_text("extends: self.yaml\n")
    (ws / "cycle_a.yaml").write_text("extends: cycle_b.yaml\n")
    (ws / "cycle_b.yaml").write_text("extends: cycle_a.yaml\n")
    (ws / "badparent.yaml").write_text("extends: tiny\nchain:\n  sim_swapz: 5\n")
    (ws / "sub").mkdir()
    (ws / "sub" / "child.yaml").write_text("extends: ../badparent.yaml\ngan:\n  steps: 5\n")
    (ws / "binary.yaml").write_bytes(b"\xff\xfe\x00" + _noise(64))
    (ws / "types.yaml").write_text("gan:\n  stride: [1, 2]\n")
    (ws / "negative.yaml").write_text("distill:\n  portfolios_per_window: -3\n")
    (ws / "hugeint.yaml").write_text(f"agent:\n  max_steps: {'9' * 5000}\n")
    process(rows, ws / "feat", 300)
    shutil.move(ws / "feat" / "bars.parquet", ws / "bars.parquet")
    shutil.rmtree(ws / "feat")
    env = _env()
    for cmd in (["gan_torch", "windows", "--bars", "bars.parquet", "--out", "windows.parquet"],
                ["distill", "teach", "--windows", "windows.parquet", "--out-dir", "teach"],
                ["distill", "dataset", "--answers", "teach/answers.jsonl", "--out-dir", "ds"]):
        subprocess.run([sys.executable, "-m", *cmd], cwd=ws, env=env, check=True, capture_output=True)
    shutil.move(ws / "teach" / "answers.jsonl", ws / "answers.jsonl")
    shutil.rmtree(ws / "teach")
    good = json.loads((ws / "answers.jsonl").read_text().splitlines()[0])
    bad = {**good, "completion": 5, "decision": ["APE IN"], "amount_eth": "lots", "system": None}
    (ws / "badtypes.jsonl").write_text(json.dumps(bad) + "\n")
    return ws


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("APE_DEBUG", "OPENAI_API_KEY")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OPENAI_API_KEY"] = KEY  # a bearer key the openai teacher must not send over http
    env["COLUMNS"] = "200"
    return env


def _run(case, ws: Path, base: Path) -> dict:
    name, command, argv, needle = case
    cwd = base / name
    shutil.copytree(ws, cwd)
    before = _tree(cwd)
    exe = [str(ROOT / "scripts" / "pipeline.py")] if command == "pipeline" else ["-m", command]
    p = subprocess.run([sys.executable, *exe, *argv], cwd=cwd, env=_env(), capture_output=True,
                       text=True, errors="replace", timeout=300)
    return {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout, "changed": before != _tree(cwd),
            "diff": sorted(set(before.items()) ^ set(_tree(cwd).items()))[:6]}


@pytest.fixture(scope="module")
def results(workspace, tmp_path_factory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = pool.map(lambda c: _run(c, workspace, base), CASES)
        return {c[0]: r for c, r in zip(CASES, runs, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(case, results):
    name, _, _, needle = case
    r = results[name]
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip() and not ln.startswith("[apeagent] BLAS")]
    assert "Traceback" not in r["stderr"] + r["stdout"], r["stderr"][-3000:]
    assert r["rc"] == 2, (r["rc"], r["stderr"][-2000:])
    assert len(lines) == 1, r["stderr"][-2000:]
    assert lines[0].startswith("error: ") and len(lines[0]) <= 420, lines[0][:500]
    assert needle.lower() in lines[0].lower(), lines[0]
    assert not any(s in r["stderr"] + r["stdout"] for s in SECRETS), lines[0]
    assert not r["changed"], r["diff"]


def test_debug_shows_the_traceback(workspace, tmp_path):
    shutil.copytree(workspace, tmp_path / "ws")
    for argv, env in ((["--debug"], {}), ([], {"APE_DEBUG": "1"})):
        p = subprocess.run([sys.executable, "-m", "chain", "simulate", "--n-swaps", "5", "--out", "adir", *argv],
                           cwd=tmp_path / "ws", env={**_env(), **env}, capture_output=True, text=True)
        assert p.returncode != 0 and "Traceback" in p.stderr and "IsADirectoryError" in p.stderr
