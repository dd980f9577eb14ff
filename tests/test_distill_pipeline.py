"""windows -> rules teacher -> answers cache -> dataset, and the bad-input paths."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from apeagent.errors import UserError
from distill.cache import AnswerStore, read_records
from distill.clean import has_plain_decision
from distill.config import DEFAULTS
from distill.dataset import build_dataset
from distill.parse import CANARIES, parse_answer
from distill.teach import teach
from distill.windows import load_windows

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import window_rows, write_windows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cfg(**kw):
    return dict(DEFAULTS, **kw)


@pytest.fixture
def windows(tmp_path):
    return write_windows(tmp_path / "windows.parquet", 60, seed=1)


def test_teach_rules_and_resume(tmp_path, windows):
    out = tmp_path / "teach"
    rep = teach(cfg(portfolios_per_window=2), [windows], out)
    assert rep["items"] == 120 and rep["accepted"] == 120 and rep["generated_this_run"] == 120
    assert sum(rep["decisions"].values()) == 120
    assert all(rep["decisions"][c] >= 15 for c in CANARIES), rep["decisions"]  # balanced enough
    assert rep["output_tokens"]["mean_accepted"] > 0
    recs = read_records(out / "answers.jsonl")
    assert len(recs) == 120 and len({r["key"] for r in recs}) == 120
    for r in recs:
        assert r["completion"] == r["raw"] and parse_answer(r["completion"]).decision == r["decision"]
    # Re-run: everything cached, nothing appended.
    rep2 = teach(cfg(portfolios_per_window=2), [windows], out)
    assert rep2["generated_this_run"] == 0 and rep2["cached_at_start"] == 120
    assert (out / "answers.jsonl").read_bytes().count(b"\n") == 120
    # More windows later: only the new ones are asked.
    more = write_windows(tmp_path / "more.parquet", 5, seed=9)
    rep3 = teach(cfg(portfolios_per_window=2), [windows, more], out)
    assert rep3["generated_this_run"] == 10 and rep3["accepted"] == 130


def test_torn_last_line_is_repaired(tmp_path, windows):
    out = tmp_path / "teach"
    teach(cfg(max_windows=10), [windows], out)
    path = out / "answers.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:7]) + lines[7][:40])  # killed mid-write of line 8
    assert len(read_records(path)) == 7
    rep = teach(cfg(max_windows=10), [windows], out)
    assert rep["generated_this_run"] == 3 and rep["accepted"] == 10
    recs = read_records(path, strict=True)
    assert len(recs) == 10 and len({r["key"] for r in recs}) == 10


def test_cache_key_changes_with_settings(tmp_path, windows):
    out = tmp_path / "teach"
    cod = teach(cfg(max_windows=5), [windows], out)
    rep = teach(cfg(max_windows=5, trend_pct=0.5), [windows], out)
    assert rep["generated_this_run"] == 5  # other settings: other answers
    cot = teach(cfg(max_windows=5, style="cot"), [windows], out)
    assert cot["generated_this_run"] == 5
    # Output tokens are recorded for both styles: Chain of Draft is much shorter.
    assert cot["output_tokens"]["mean_accepted"] > 2 * cod["output_tokens"]["mean_accepted"]
    assert len(AnswerStore(out / "answers.jsonl").by_key) == 15


def test_dataset_split_dedup_balance(tmp_path, windows):
    out = tmp_path / "teach"
    teach(cfg(portfolios_per_window=3), [windows], out)
    # The same answers file twice: every duplicate is dropped.
    rep = build_dataset(cfg(), [out / "answers.jsonl", out / "answers.jsonl"], tmp_path / "ds")
    assert sum(rep["counts"].values()) == 180 and rep["stats"]["duplicate keys"] == 180
    groups = {}
    rows = {}
    for s in ("train", "valid", "test"):
        rows[s] = [json.loads(x) for x in (tmp_path / "ds" / f"{s}.jsonl").read_text().splitlines()]
        assert len(rows[s]) == rep["counts"][s] > 0
        for row in rows[s]:
            roles = [m["role"] for m in row["messages"]]
            assert roles == ["system", "user", "assistant"]
            text = row["messages"][-1]["content"]
            a = parse_answer(text)
            assert a.valid and a.has_separator and not has_plain_decision(text)
    recs = read_records(out / "answers.jsonl")
    for r in recs:
        s = next(s for s in rows if any(x["messages"][1]["content"] == r["prompt"] for x in rows[s]))
        groups.setdefault(r["group"], set()).add(s)
    assert all(len(v) == 1 for v in groups.values())  # no window in two splits
    order = {r["group"]: r["order"] for r in recs}
    by_split = {s: [order[g] for g, v in groups.items() if s in v] for s in rows}
    assert max(by_split["train"]) < min(by_split["valid"]) <= max(by_split["valid"]) < min(by_split["test"])
    assert rep["windows"] == {"train": 48, "valid": 6, "test": 6}

    rep = build_dataset(cfg(rebalance="downsample"), [out / "answers.jsonl"], tmp_path / "ds2")
    assert len(set(rep["classes"]["train"].values())) == 1
    assert rep["classes"]["test"] == json.loads((tmp_path / "ds" / "dataset_report.json").read_text())["classes"]["test"]
    rep = build_dataset(cfg(rebalance="upsample", format="completions"), [out / "answers.jsonl"], tmp_path / "ds3")
    assert len(set(rep["classes"]["train"].values())) == 1
    first = json.loads((tmp_path / "ds3" / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prompt", "completion"}


def test_dataset_takes_only_what_the_last_teach_asked(tmp_path, windows):
    """Fewer portfolios per window after a larger run: the cache keeps the old answers (a later
    larger run reuses them), but the dataset holds only the prompts the last run asked."""
    out = tmp_path / "teach"
    teach(cfg(portfolios_per_window=3), [windows], out)
    rep = teach(cfg(portfolios_per_window=1), [windows], out)
    assert rep["items"] == 60 and rep["generated_this_run"] == 0 and len(rep["item_keys"]) == 60
    assert len(read_records(out / "answers.jsonl")) == 180
    ds = build_dataset(cfg(), [out / "answers.jsonl"], tmp_path / "ds")
    assert sum(ds["counts"].values()) == 60 and ds["stats"]["not asked by the last teach"] == 120
    asked = {json.loads(x)["messages"][1]["content"] for s in ("train", "valid", "test")
             for x in (tmp_path / "ds" / f"{s}.jsonl").read_text().splitlines()}
    first = {r["prompt"] for r in read_records(out / "answers.jsonl") if r["portfolio"] == 0}
    assert asked == first
    # an answers file with no teacher report beside it (someone else's): every answer counts
    alone = tmp_path / "alone" / "answers.jsonl"
    alone.parent.mkdir()
    alone.write_bytes((out / "answers.jsonl").read_bytes())
    assert sum(build_dataset(cfg(), [alone], tmp_path / "ds2")["counts"].values()) == 180
    # a report that is not one: one clear error, nothing written
    (alone.parent / "teacher_report.json").write_text('{"item_keys": 3}')
    with pytest.raises(UserError, match="item_keys"):
        build_dataset(cfg(), [alone], tmp_path / "ds3")
    assert not (tmp_path / "ds3").exists()


def test_dataset_token_length_check(tmp_path, windows):
    from finetune_mlx.tiny import build_tiny

    out = tmp_path / "teach"
    teach(cfg(max_windows=20), [windows], out)
    corpus = [r["prompt"] + "\n" + r["completion"] + "\n" + r["system"] for r in read_records(out / "answers.jsonl")]
    model = build_tiny(tmp_path / "student", corpus, hidden_size=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, vocab_size=400)
    rep = build_dataset(cfg(), [out / "answers.jsonl"], tmp_path / "ds", tokenizer_dir=model)
    tl = rep["token_lengths"]
    assert 0 < tl["mean"] <= tl["max"] <= 384 and tl["over_limit"] == 0
    with pytest.raises(UserError, match="exceed max_seq_length=50"):
        build_dataset(cfg(max_seq_length=50), [out / "answers.jsonl"], tmp_path / "ds_short", tokenizer_dir=model)
    assert not (tmp_path / "ds_short").exists()  # nothing half-written
    r = subprocess.run(
        [sys.executable, "-m", "distill", "check", "-d", str(tmp_path / "ds"), "--model", str(model)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr


def test_bars_parquet_is_cut_into_windows(tmp_path):
    cols = window_rows(1, steps=30, seed=3)
    table = pa.table({"bar_start": np.arange(30) * 300, **{k: cols[k] for k in (
        "close", "log_return", "volume_eth", "volume_usdc", "swap_count", "realized_vol", "tick")}})
    pq.write_table(table, tmp_path / "bars.parquet")
    ws = load_windows([tmp_path / "bars.parquet"], window_bars=12)
    assert len(ws) == 2 and all(w.source == "real" for w in ws) and len(ws[0].columns["close"]) == 12
    assert ws[1].columns["close"][0] == cols["close"][12]


def _bad_files(tmp_path):
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "junk.parquet").write_text("window_id,close\n1,2\n")
    pq.write_table(pa.table({"window_id": pa.array([], pa.int64())}), tmp_path / "nocols.parquet")
    cols = window_rows(2, seed=0)
    full = {k: cols[k] for k in cols}
    pq.write_table(pa.table({k: v[:0] for k, v in full.items()}), tmp_path / "norows.parquet")
    full["close"] = list(full["close"])
    full["close"][5] = float("nan")
    pq.write_table(pa.table(full), tmp_path / "nan.parquet")
    return {
        "empty.parquet": "file is empty",
        "junk.parquet": "not a readable parquet file",
        "nocols.parquet": "missing column",
        "norows.parquet": "no rows",
        "nan.parquet": "window 0 has a non-positive or non-finite close",
        "absent.parquet": "not found",
    }


def test_bad_windows_files(tmp_path, windows):
    for name, message in _bad_files(tmp_path).items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(UserError, match=message):
            teach(cfg(), [windows, tmp_path / name], out)  # a good file first: still nothing done
        assert not out.exists()


def test_cli_errors_and_success(tmp_path, windows):
    _bad_files(tmp_path)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, cwd=REPO)

    r = run("teach", "-w", str(tmp_path / "empty.parquet"), "-o", str(tmp_path / "o1"))
    assert r.returncode == 2 and "error:" in r.stderr and "empty.parquet" in r.stderr
    assert not (tmp_path / "o1").exists()
    r = run("teach", "-w", str(windows), "-o", str(tmp_path / "o2"), "--teacher", "nope")
    assert r.returncode == 2 and "unknown teacher" in r.stderr and not (tmp_path / "o2").exists()
    r = run("dataset", "-a", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "d"))
    assert r.returncode == 2 and "missing.jsonl" in r.stderr
    more = write_windows(tmp_path / "more.parquet", 3, seed=5)
    r = run("teach", "-w", str(windows), str(more), "-o", str(tmp_path / "o3"), "--portfolios", "1", "--style", "cot")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "o3" / "teacher_report.json").read_text())
    assert rep["accepted"] == 63 and rep["style"] == "cot" and rep["windows"] == 63
    r = run("dataset", "-a", str(tmp_path / "o3" / "answers.jsonl"), "-o", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert Counter(p.name for p in (tmp_path / "d").iterdir()) == Counter(
        ["train.jsonl", "valid.jsonl", "test.jsonl", "dataset_report.json"])
