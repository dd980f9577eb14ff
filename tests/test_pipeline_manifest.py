"""Pipeline bookkeeping: what makes a finished stage current, and bad input."""

import subprocess
import sys
from pathlib import Path

import pytest

from apeagent.pipeline import Stage, fingerprint, is_current, settings_hash

ROOT = Path(__file__).resolve().parents[1]


def _record(stage):
    return {
        "status": "done",
        "settings": settings_hash(stage),
        "inputs": {str(p): fingerprint(p) for p in stage.inputs},
        "outputs": {str(p): fingerprint(p) for p in stage.outputs},
    }


def test_stage_is_current_until_an_input_setting_or_output_changes(tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out" / "model"
    src.write_text("a,b\n1,2\n")
    out.mkdir(parents=True)
    (out / "w.bin").write_bytes(b"\x00" * 10)
    stage = Stage("s", "chain", "process", ["--x", "1"], [src], [out], {"chain": {"bar_seconds": 300}})
    rec = _record(stage)
    assert is_current(stage, rec)
    src.write_text("a,b\n1,3\n")
    assert not is_current(stage, rec)
    rec = _record(stage)
    (out / "w.bin").write_bytes(b"\x01" * 10)
    assert not is_current(stage, rec)
    rec = _record(stage)
    stage.settings = {"chain": {"bar_seconds": 60}}
    assert not is_current(stage, rec)
    assert not is_current(stage, {**_record(stage), "status": "failed"})
    assert not is_current(stage, None)


def test_fingerprint_of_missing_path_is_none(tmp_path):
    assert fingerprint(tmp_path / "nope") is None


def _pipeline(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "pipeline.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--swaps", "no/such.csv"], "swaps file not found: no/such.csv"),
        (["--force", "gan-tran"], "--force: unknown stage(s) gan-tran"),
        (["--set", "gan=3"], "section.key=value"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, needle):
    r = _pipeline(*args, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


REAL_CSV = ROOT.parent / "shared" / "data" / "base_eth_usdc_v4_swaps.csv"


@pytest.mark.skipif(not REAL_CSV.is_file(), reason=f"shared real data absent: {REAL_CSV}")
def test_failed_stage_stops_the_run_and_the_next_run_resumes_there(tmp_path):
    import json

    lines = REAL_CSV.read_text().splitlines()[:301]
    bad = tmp_path / "swaps.csv"
    bad.write_text("\n".join(lines[:150] + ["not,a,swap"] + lines[150:]) + "\n")
    run = tmp_path / "run"
    r = _pipeline("--swaps", str(bad), "--run-dir", str(run), "--until", "process")
    # a bad row among the first ones: refused before the first stage, nothing written
    assert r.returncode == 2 and "swaps.csv:151" in r.stderr and not run.exists(), r.stderr
    # a file whose rows parse but whose timestamps cannot be: the ingest stage fails
    row = lines[150].split(",")
    row[-1] = "1000"
    bad.write_text("\n".join([*lines[:150], ",".join(row), *lines[151:]]) + "\n")
    r = _pipeline("--swaps", str(bad), "--run-dir", str(run), "--until", "process")
    assert r.returncode == 1
    assert "implausible timestamps" in r.stderr and "stage ingest failed" in r.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed at ingest" and manifest["stages"]["ingest"]["status"] == "failed"

    bad.write_text("\n".join(lines) + "\n")  # the user fixes the file: the run goes on from ingest
    r = _pipeline("--swaps", str(bad), "--run-dir", str(run), "--until", "process")
    assert r.returncode == 0, r.stderr
    assert "▶ ingest" in r.stderr and "▶ process" in r.stderr
    r = _pipeline("--swaps", str(bad), "--run-dir", str(run), "--until", "process")
    assert r.returncode == 0 and r.stderr.count("up to date") == 2 and "▶" not in r.stderr


def test_real_windows_for_the_teacher_follow_the_distill_cut(tmp_path):
    """distill.real_window_stride / real_min_active_frac reach `ape-gan windows`, and changing
    them makes the stage (and so the teacher after it) stale."""
    from apeagent.config import load
    from apeagent.pipeline import plan

    cfg = load("tiny")
    source = {"kind": "csv", "path": str(tmp_path / "swaps.csv")}
    stage = next(s for s in plan(cfg, tmp_path, tmp_path / "c.yaml", source) if s.name == "real-windows")
    args = stage.args
    assert args[args.index("--stride") + 1] == str(cfg["distill"]["real_window_stride"])
    assert args[args.index("--min-active-frac") + 1] == str(cfg["distill"]["real_min_active_frac"])
    cfg["distill"] = {**cfg["distill"], "real_window_stride": 0}
    other = next(s for s in plan(cfg, tmp_path, tmp_path / "c.yaml", source) if s.name == "real-windows")
    assert other.args[other.args.index("--stride") + 1] == "0"  # 0: window_bars, no overlap
    assert settings_hash(other) != settings_hash(stage)


def test_the_teacher_report_is_an_output_of_teach_and_an_input_of_dataset(tmp_path):
    """The dataset keeps only the answers the report's item_keys name: a run whose report is
    gone (or edited) must teach and build the dataset again, not read the whole answer cache."""
    from apeagent.config import load
    from apeagent.layout import RunLayout
    from apeagent.pipeline import is_current, plan

    source = {"kind": "csv", "path": str(tmp_path / "swaps.csv")}
    stages = {s.name: s for s in plan(load("tiny"), tmp_path, tmp_path / "c.yaml", source)}
    report = RunLayout(tmp_path).teacher_report
    assert report in stages["teacher"].outputs and report in stages["dataset"].inputs
    report.parent.mkdir(parents=True)
    (report.parent / "answers.jsonl").write_text("{}\n")
    report.write_text('{"item_keys": ["a"]}')
    rec = _record(stages["dataset"])
    assert is_current(stages["dataset"], rec)
    report.write_text('{"item_keys": ["a", "b"]}')
    assert not is_current(stages["dataset"], rec)
