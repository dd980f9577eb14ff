"""Bad input, as a new user types it, to every command line (issues 15 and 26).

Each case runs the real CLI in this process (``run_cli(app, argv)``, the console scripts'
own entry, with typer's app; ``scripts/pipeline.py`` too), in its own copy of a small
workspace, and must give: exit code 2, one line on stderr that names the problem, no
traceback, no secret, and not one byte changed in the workspace (the output path included:
nothing half-written; a FIFO standing where an output goes stays a FIFO). The boundary turns
only the project's own errors into that line (a bug is a ``bug:`` line and exit code 1), so
each case passes on its own validation. In-process, the whole table takes seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import os
import random
import shutil
import socket
import stat
import sys
from pathlib import Path

import pytest

from apeagent.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
HUGE = "9" * 100_000  # a 100,000-digit integer
KEY = "FAKEKEY0123456789abcdefSECRET"
PASSWORD = "hunter2pass"
SECRET_URL = f"https://alice:{PASSWORD}@rpc.example.com/v2/{KEY}?apikey=QSECRET987"
SHORT_KEY, LETTERS_KEY = "shortk3y", "lowercasekeyonlyletters"
SECRETS = (KEY, PASSWORD, "QSECRET987", SHORT_KEY, LETTERS_KEY, "FAKEKEY0123")
DEAD = "http://127.0.0.1:{dead}"  # a port where nothing listens (filled in per run)
NODE = "http://127.0.0.1:{node}"  # the project's devnode (chain/devnode.py)

# (case id, command: chain | gan_torch | distill | finetune_mlx | agent | pipeline, argv, the
# words the error line must contain: one string or a tuple of them). Workspace files: see
# `workspace` below; {dead} and {node} in an argument are ports, {far} a block far beyond the
# node's head. A case that could start heavy work if its check were missing stops early
# (`--until simulate`, a missing input after the check) so that it fails fast.
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
    ("import-huge-pool-id", "chain", ["import-csv", "sim.csv", "--db", "new.db", "--pool-id", HUGE], ("--pool-id", "32 bytes")),
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
      "--base-url", "http://teacher.example.com:8080/v1"], ("plain http", "teacher.example.com")),
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
    ("pipeline-rpc-without-url", "pipeline", ["--set", "run.source=rpc"], ("run.source is rpc", "--rpc-url")),
    # --- issue 26: tracebacks, secrets, crashes, silent acceptances, errors after writing
    ("config-null-value", "chain", ["simulate", "-c", "null.yaml"], ("null.yaml", "sim_swaps", "null")),
    ("config-list-of-ints", "agent", ["backtest", "-c", "policies.yaml"], ("policies.yaml", "agent.policies")),
    ("config-url-list-of-ints", "distill", ["teach", "--windows", "windows.parquet", "-c", "baseurls.yaml"],
     ("baseurls.yaml", "distill.base_urls", "list of strings")),
    ("config-unknown-device", "gan_torch", ["windows", "-c", "device.yaml"], ("device.yaml", "gan.device", "bogus")),
    ("simulate-out-fifo", "chain", ["simulate", "--n-swaps", "5", "--out", "fifo"], ("--out", "fifo", "regular")),
    ("export-csv-fifo", "chain", ["export", "--db", "good.db", "--csv", "fifo"], ("--csv", "fifo", "regular")),
    ("export-bar-seconds-int64", "chain", ["export", "--db", "good.db", "--csv", "x.csv", "--bar-seconds", str(2**64)],
     ("--bar-seconds", "64 bits")),
    ("import-columns-out-of-order", "chain", ["import-csv", "order.csv", "--db", "new.db"], ("order.csv", "out of order")),
    ("import-extra-column", "chain", ["import-csv", "extra.csv", "--db", "new.db"], ("extra.csv", "unknown column", "bonus")),
    ("import-100000-digit-field", "chain", ["import-csv", "digits.csv", "--db", "new.db"], ("digits.csv:2", "digits")),
    ("import-bad-hex-pool-id", "chain", ["import-csv", "sim.csv", "--db", "new.db", "--pool-id", "0xZZ"], ("--pool-id", "0xZZ")),
    ("collect-to-block-beyond-head", "chain",
     ["collect", "--rpc-url", NODE + "/v2/" + SHORT_KEY, "--from-block", "{first}", "--to-block", "{far}", "--db", "c.db"], ("--to-block", "head")),
    ("collect-from-above-to", "chain",
     ["collect", "--rpc-url", NODE, "--from-block", "100", "--to-block", "50", "--db", "c.db"], ("--to-block", "--from-block")),
    ("collect-short-key-dead-port", "chain",
     ["collect", "--rpc-url", DEAD + "/v2/" + SHORT_KEY, "--give-up", "0.5", "--db", "c.db"], ("cannot use rpc", "/v2/***")),
    ("collect-letters-key-dead-port", "chain",
     ["collect", "--rpc-url", DEAD + "/v2/" + LETTERS_KEY, "--give-up", "0.5", "--db", "c.db"], ("cannot use rpc", "/v2/***")),
    ("collect-url-without-scheme", "chain",
     ["collect", "--rpc-url", f"alice:{PASSWORD}@127.0.0.1:9/FAKEKEY0123", "--give-up", "0.5", "--db", "c.db"],
     ("--rpc-url", "http")),
    ("windows-min-active-nan", "gan_torch", ["windows", "--bars", "bars.parquet", "--min-active-frac", "nan"],
     ("--min-active-frac", "finite")),
    ("train-batch-too-big", "gan_torch", ["train", "--bars", "nope.parquet", "--batch-size", "1000000000"],
     ("--batch-size", "16384")),
    ("train-batch-beyond-memory", "gan_torch",
     ["train", "--bars", "nope.parquet", "--batch-size", "16384", "-c", "wide.yaml"], ("--batch-size", "GiB")),
    ("generate-swaps-out-under-file", "gan_torch",
     ["generate", "--checkpoint", "junk.pt", "--out", "s.parquet", "--swaps-out", "afile/sw.csv"], ("--swaps-out", "afile")),
    ("validate-junk-swaps", "gan_torch",
     ["validate", "--bars", "bars.parquet", "--windows", "windows.parquet", "--swaps", "junk.bin", "--out-dir", "v"],
     ("junk.bin",)),
    ("bench-negative-steps", "gan_torch", ["bench", "--steps", "-1", "--bars", "bars.parquet"], ("steps",)),
    ("bench-bogus-device", "gan_torch", ["bench", "--devices", "bogus", "--bars", "bars.parquet"], ("--devices", "bogus")),
    ("bench-no-device", "gan_torch", ["bench", "--devices", "", "--bars", "bars.parquet"], ("--devices",)),
    ("teach-binary-cache", "distill", ["teach", "--windows", "windows.parquet", "--out-dir", "tbin"],
     ("tbin/answers.jsonl", "not a json line")),
    ("teach-unknown-style", "distill", ["teach", "--windows", "windows.parquet", "--style", "bogus"], ("--style", "bogus")),
    ("dataset-torn-answers", "distill", ["dataset", "--answers", "torn.jsonl", "--out-dir", "d"], ("torn.jsonl", "torn")),
    ("lora-truncated-weights", "finetune_mlx", ["lora", "--model", "m_trunc", "--data", "ds"],
     ("m_trunc/model.safetensors", "truncated")),
    ("lora-other-architecture", "finetune_mlx", ["lora", "--model", "m_mamba", "--data", "ds"], ("m_mamba/config.json", "mamba")),
    ("lora-unknown-architecture", "finetune_mlx", ["lora", "--model", "m_nope", "--data", "ds"], ("m_nope/config.json", "nosucharch")),
    ("lora-truncated-resume-adapter", "finetune_mlx",
     ["lora", "--model", "m_trunc", "--data", "ds", "--resume-adapter-file", "trunc.safetensors"],
     ("--resume-adapter-file", "trunc.safetensors")),
    ("lora-no-canary", "finetune_mlx", ["lora", "--model", "m_trunc", "--data", "ds_plain"], ("--data ds_plain", "canary")),
    ("lora-rank-huge", "finetune_mlx", ["lora", "--data", "ds", "--lora-rank", "100000000"], ("finetune.lora_rank", "4096")),
    ("fuse-truncated-weights", "finetune_mlx", ["fuse", "--model", "m_trunc", "--adapter-path", "adir", "--out", "f"],
     ("m_trunc/model.safetensors",)),
    ("generate-other-architecture", "finetune_mlx", ["generate", "--model", "m_mamba"], ("m_mamba/config.json", "mamba")),
    ("build-tiny-layers-huge", "finetune_mlx", ["build-tiny", "--data", "ds", "--out", "m", "--num-layers", "100000000"],
     ("finetune.tiny_num_layers", "256")),
    ("build-tiny-vocab-one", "finetune_mlx", ["build-tiny", "--data", "ds", "--out", "m", "--vocab-size", "1"],
     ("finetune.tiny_vocab_size", "260")),
    ("finetune-generate-price-nan", "finetune_mlx", ["generate", "--model", "m_trunc", "--price", "nan"], ("--price", "finite")),
    ("finetune-generate-price-negative", "finetune_mlx", ["generate", "--model", "m_trunc", "--price", "-5"], ("--price", "> 0")),
    ("finetune-generate-swap-count", "finetune_mlx", ["generate", "--model", "m_trunc", "--swap-count", "-3"], ("--swap-count",)),
    ("finetune-generate-window-zero", "finetune_mlx", ["generate", "--model", "m_trunc", "--window-minutes", "0"],
     ("--window-minutes",)),
    ("export-gguf-num-ctx", "finetune_mlx", ["export-gguf", "--model", "m_trunc", "--out", "g.gguf", "--num-ctx", "-1"],
     ("--num-ctx",)),
    ("recipe-port-negative", "finetune_mlx", ["recipe", "--port", "-1"], ("--port",)),
    ("recipe-port-huge", "finetune_mlx", ["recipe", "--port", "99999"], ("--port",)),
    ("pipeline-null-set", "pipeline", ["--until", "simulate", "--set", "gan.steps=null"], ("--set gan.steps", "null")),
    ("pipeline-bogus-device", "pipeline", ["--until", "simulate", "--set", "gan.device=bogus"], ("--set gan.device", "bogus")),
    ("pipeline-bogus-style", "pipeline", ["--until", "simulate", "--set", "distill.style=bogus"], ("--set distill.style", "bogus")),
    ("pipeline-policies-ints", "pipeline", ["--until", "simulate", "--set", "agent.policies=[1,2]"], ("--set agent.policies", "list of strings")),
    ("pipeline-to-block-word", "pipeline", ["--until", "simulate", "--set", "chain.to_block=abc"], ("chain.to_block", "abc")),
    ("pipeline-swaps-binary", "pipeline", ["--until", "ingest", "--swaps", "bin.csv"], ("--swaps", "bin.csv")),
    ("pipeline-swaps-nul-bytes", "pipeline", ["--until", "ingest", "--swaps", "nul.csv"], ("nul.csv", "nul")),
    ("pipeline-swaps-100000-digits", "pipeline", ["--until", "ingest", "--swaps", "digits.csv"], ("digits.csv:2", "digits")),
    ("pipeline-swaps-column-order", "pipeline", ["--until", "ingest", "--swaps", "order.csv"], ("order.csv", "out of order")),
    ("pipeline-blocks-reversed", "pipeline", ["--until", "ingest", "--rpc-url", DEAD, "--from-block", "100", "--to-block", "50"],
     ("--to-block 50", "--from-block 100")),
    ("pipeline-blocks-without-rpc", "pipeline", ["--until", "simulate", "--from-block", "5"], ("--from-block", "--rpc-url")),
    ("pipeline-manifest-not-json", "pipeline", ["--until", "simulate", "--run-dir", "run_junk"], ("run_junk/manifest.json", "--force all")),
    ("pipeline-manifest-wrong-shape", "pipeline", ["--until", "simulate", "--run-dir", "run_five"], ("run_five/manifest.json", "not a manifest")),
]


def _noise(n: int) -> bytes:
    """Binary junk, the same every run."""
    return random.Random(n).randbytes(n)


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its bytes (folders: '<dir>', a FIFO
    '<fifo>': never opened, it would block)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        mode = p.lstat().st_mode
        if stat.S_ISFIFO(mode):
            out[rel] = "<fifo>"
        else:
            out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _app(command: str):
    if command == "pipeline":
        spec = importlib.util.spec_from_file_location("_pipeline_script", ROOT / "scripts" / "pipeline.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.app
    return importlib.import_module(f"{command}.cli").app


@contextlib.contextmanager
def _env(**extra: str):
    """The environment of one command: no APE_DEBUG, a bearer key the openai teacher must not
    send over http, this checkout first on PYTHONPATH (the pipeline's one check subprocess)."""
    saved = dict(os.environ)
    os.environ.pop("APE_DEBUG", None)
    os.environ.update(OPENAI_API_KEY=KEY, COLUMNS="200", APEAGENT_BLAS="reference",
                      PYTHONPATH=os.pathsep.join([str(ROOT), saved.get("PYTHONPATH", "")]), **extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_in_process(command: str, argv: list[str], cwd: Path) -> dict:
    """``run_cli`` of one command line in ``cwd``: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with _env(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(_app(command), argv)
                rc = 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(here)
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def _fake_model(folder: Path, model_type: str = "qwen2", truncate: bool = False) -> None:
    """A model dir of 2 tensors (what the checks read: config.json, safetensors header and size)."""
    folder.mkdir()
    config = {"model_type": model_type, "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 16,
              "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "vocab_size": 300}
    (folder / "config.json").write_text(json.dumps(config))
    header = json.dumps({"a": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
                         "b": {"dtype": "F16", "shape": [8], "data_offsets": [128, 144]}}).encode()
    data = len(header).to_bytes(8, "little") + header + bytes(144)
    (folder / "model.safetensors").write_bytes(data[:-40] if truncate else data)


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
    (ws / "junk.bin").write_bytes(_noise(2048))
    (ws / "bin.csv").write_bytes(_noise(4096))
    lines = (ws / "sim.csv").read_text().splitlines()
    header = lines[0]
    (ws / "header.csv").write_text(header + "\n")
    (ws / "bin2.csv").write_bytes(header.encode() + b"\n" + _noise(512))
    (ws / "nul.csv").write_bytes(header.encode() + b"\n" + lines[1].encode().replace(b",", b"\x00,", 1) + b"\n")
    cols = header.split(",")
    (ws / "order.csv").write_text(",".join([cols[1], cols[0], *cols[2:]]) + "\n" + lines[1] + "\n")
    (ws / "extra.csv").write_text(header + ",bonus\n" + lines[1] + ",1\n")
    first = lines[1].split(",")
    (ws / "digits.csv").write_text(header + "\n" + ",".join([*first[:6], HUGE, *first[7:]]) + "\n")
    (ws / "bin.jsonl").write_bytes(_noise(1024))
    (ws / "adir").mkdir()
    (ws / "adir" / "keep.txt").write_text("keep\n")
    (ws / "afile").write_text("a file, not a folder\n")
    os.mkfifo(ws / "fifo")  # an output that is not a regular file (as /dev/full is)
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
    (ws / "null.yaml").write_text("chain:\n  sim_swaps: null\n")
    (ws / "policies.yaml").write_text("agent:\n  policies: [1, 2]\n")
    (ws / "device.yaml").write_text("gan:\n  device: bogus\n")
    (ws / "baseurls.yaml").write_text("distill:\n  teacher: openai\n  base_urls: [1]\n")
    (ws / "wide.yaml").write_text("gan:\n  d_model: 4096\n  num_layers: 64\n")
    for name, kind, cut in (("m_trunc", "qwen2", True), ("m_mamba", "mamba", False), ("m_nope", "nosucharch", False)):
        _fake_model(ws / name, kind, cut)
    (ws / "trunc.safetensors").write_bytes((ws / "m_trunc" / "model.safetensors").read_bytes())
    for run, text in (("run_junk", "{not json"), ("run_five", "5")):
        (ws / run).mkdir()
        (ws / run / "manifest.json").write_text(text)
    process(rows, ws / "feat", 300)
    shutil.move(ws / "feat" / "bars.parquet", ws / "bars.parquet")
    shutil.rmtree(ws / "feat")
    for cmd, argv in (("gan_torch", ["windows", "--bars", "bars.parquet", "--out", "windows.parquet"]),
                      ("distill", ["teach", "--windows", "windows.parquet", "--out-dir", "teach"]),
                      ("distill", ["dataset", "--answers", "teach/answers.jsonl", "--out-dir", "ds"])):
        r = run_in_process(cmd, argv, ws)
        assert r["rc"] == 0, r["stderr"][-2000:]
    shutil.copytree(ws / "ds", ws / "ds_plain")  # the same dataset, its answers without a canary
    for split in ("train", "valid", "test"):
        path = ws / "ds_plain" / f"{split}.jsonl"
        path.write_text(path.read_text().replace("#### APE ", "#### "))
    shutil.move(ws / "teach" / "answers.jsonl", ws / "answers.jsonl")
    shutil.rmtree(ws / "teach")
    good = json.loads((ws / "answers.jsonl").read_text().splitlines()[0])
    bad = {**good, "completion": 5, "decision": ["APE IN"], "amount_eth": "lots", "system": None}
    (ws / "badtypes.jsonl").write_text(json.dumps(bad) + "\n")
    answers = (ws / "answers.jsonl").read_text()
    (ws / "torn.jsonl").write_text(answers[: len(answers) - 40])  # a teacher killed mid-line
    (ws / "tbin").mkdir()
    (ws / "tbin" / "answers.jsonl").write_bytes(_noise(3000))  # a binary cache, no final newline
    return ws


@pytest.fixture(scope="module")
def ports():
    """A devnode on 127.0.0.1 (a chain whose head is far below 99999999999) and a dead port."""
    from chain.devnode import start_devnode
    from chain.simulate import simulate

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # closed again: nothing listens there
    node = start_devnode(simulate(50, seed=3))
    far = node.head + 200_000  # days of blocks beyond the head (not 99999999999: a scan that
    # does not refuse it must end soon, and fail the case, not hang the suite)
    yield {"node": node.url.rsplit(":", 1)[1].split("/")[0], "dead": str(dead), "far": str(far),
           "first": str(node.head - 100)}
    node.stop()


def _run(case, ws: Path, base: Path, ports: dict) -> dict:
    name, command, argv, _ = case
    cwd = base / name
    shutil.copytree(ws, cwd, symlinks=True, copy_function=_copy)
    before = _tree(cwd)
    for k, v in ports.items():
        argv = [a.replace("{" + k + "}", v) for a in argv]
    r = run_in_process(command, argv, cwd)
    after = _tree(cwd)
    return {**r, "changed": before != after, "diff": sorted(set(before.items()) ^ set(after.items()))[:6]}


def _copy(src: str, dst: str) -> None:
    """shutil.copy2, but a FIFO is made anew (copying one would block on reading it)."""
    if stat.S_ISFIFO(os.lstat(src).st_mode):
        os.mkfifo(dst)
    else:
        shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def results(workspace, ports, tmp_path_factory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("cases")
    return {c[0]: _run(c, workspace, base, ports) for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(case, results):
    name, _, _, needles = case
    r = results[name]
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip() and not ln.startswith("[apeagent] BLAS")]
    assert "Traceback" not in r["stderr"] + r["stdout"], r["stderr"][-3000:]
    assert r["rc"] == 2, (r["rc"], r["stderr"][-2000:])
    assert len(lines) == 1, r["stderr"][-2000:]
    assert lines[0].startswith("error: ") and len(lines[0]) <= 420, lines[0][:500]
    for needle in (needles,) if isinstance(needles, str) else needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    assert not any(s in r["stderr"] + r["stdout"] for s in SECRETS), lines[0]
    assert not r["changed"], r["diff"]


@pytest.mark.parametrize("error", [KeyError("missing"), ValueError("missing"), OSError(5, "missing"),
                                   UnicodeDecodeError("utf-8", b"x", 0, 1, "missing")],
                         ids=lambda e: type(e).__name__)
def test_a_bug_is_not_bad_input(tmp_path, error):
    """An exception the project did not raise as bad input (builtin ValueError and OSError
    included: a library's, or a programming error): a `bug:` line, exit code 1, the traceback
    in RUN/logs (with --run-dir) else the temp folder, shown with --debug."""
    def broken() -> None:
        raise error

    for argv, where in ((["--run-dir", str(tmp_path)], tmp_path / "logs"), ([], None)):
        err = io.StringIO()
        with _env(), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            run_cli(broken, argv)
        line = err.getvalue().strip()
        assert exit_.value.code == 1 and line.startswith(f"bug: {type(error).__name__}") and "\n" not in line, line
        log = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
        assert log.is_file() and "Traceback" in log.read_text() and "missing" in log.read_text()
        if where is not None:
            assert log.parent == where
        else:
            log.unlink()
    with _env(), pytest.raises(type(error)):
        run_cli(broken, ["--debug"])


def test_debug_shows_the_traceback(workspace, tmp_path):
    import subprocess

    shutil.copytree(workspace, tmp_path / "ws", copy_function=_copy)
    env = {k: v for k, v in os.environ.items() if k != "APE_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-m", "chain", "simulate", "--n-swaps", "5", "--out", "adir", "--debug"],
                       cwd=tmp_path / "ws", env=env, capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr and "UserError" in p.stderr and "adir" in p.stderr


@pytest.mark.parametrize("text", ["vol=inf", "trend=nan", "vol=inf,trend=nan", "volume=1e300"])
def test_generate_condition_must_be_finite(text):
    """`ape-gan generate --condition 'vol=inf,trend=nan'` (a checkpoint is not needed to see
    the check: it runs on the condition bank before any window is generated)."""
    import numpy as np

    from apeagent.errors import UserError
    from gan_torch.generate import parse_condition

    with pytest.raises(UserError, match="--condition .*finite"):
        parse_condition(text, np.zeros((4, 3)))
