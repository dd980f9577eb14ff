"""What real providers do, against the JSON-RPC test node on 127.0.0.1 (chain.devnode): rate
limits, lying answers, endpoints behind their head, timestamps in logs; and a CSV import
that never deletes silently. Each case: the store equals the truth exactly, or the run stopped
with a clear error and stored nothing unvalidated."""

import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from chain_fixtures import event_fields, real_csv, real_rows
from test_chain_collect import settings, stored

from apeagent.errors import UserError
from chain.collect import CollectError, collect
from chain.csvio import write_swaps_csv
from chain.devnode import FORGE_KINDS, start_devnode
from chain.features import make_bars, swap_features
from chain.simulate import simulate
from chain.store import Store


@pytest.fixture(scope="module")
def rows():
    return real_rows(200)


def test_free_tier_rate_limit_ends_exact_in_one_run(tmp_path, rows):
    with start_devnode(rows, faults=dict(rps=40, rps_burst=8, retry_after=1)) as node:
        s = settings(node, rows, chunk_size=3000, max_chunk=3000, concurrency=8, batch_size=20)
        stats = collect(tmp_path / "s.db", s)
    assert event_fields(stored(tmp_path / "s.db")) == event_fields(rows)
    assert stats.rpc["errors"]["http_429"] > 0 and stats.rpc["rate_cuts"] > 0, stats.as_dict()


@pytest.mark.parametrize("kind", FORGE_KINDS)
def test_forged_answers_stop_the_run_and_store_nothing_unvalidated(tmp_path, rows, kind):
    logs = []
    with start_devnode(rows, faults=dict(forge=kind)) as node:
        with pytest.raises(CollectError, match="no honest endpoint left"):
            collect(tmp_path / "s.db", settings(node, rows, chunk_size=5000), log=logs.append)
        calls = node.calls["eth_getLogs"]
    assert calls < 40  # bounded: three invalid answers drop the endpoint
    assert any("dropping endpoint" in m for m in logs)
    truth = set(event_fields(rows))
    got = event_fields(stored(tmp_path / "s.db"))
    assert set(got) <= truth  # only validated (here: empty) chunks were committed


def test_lying_endpoint_is_dropped_and_the_honest_one_finishes(tmp_path, rows):
    logs = []
    with start_devnode(rows, faults=dict(forge="address")) as bad, start_devnode(rows) as good:
        s = settings(bad, rows, rpc_urls=[bad.url, good.url], chunk_size=5000)
        stats = collect(tmp_path / "s.db", s, log=logs.append)
    assert event_fields(stored(tmp_path / "s.db")) == event_fields(rows)
    assert stats.rpc["errors"]["invalid_answer"] >= 3
    assert any("dropping endpoint" in m and bad.url in m for m in logs)


def test_occasional_forgeries_are_retried(tmp_path, rows):
    faults = dict(forge="topic0", forge_p=0.3, seed=1)
    with start_devnode(rows, faults=faults) as node:
        s = settings(node, rows, chunk_size=5000, max_invalid=50)
        stats = collect(tmp_path / "s.db", s)
    assert event_fields(stored(tmp_path / "s.db")) == event_fields(rows)
    assert stats.rpc["errors"]["invalid_answer"] > 0


def test_blocks_beyond_the_endpoint_head_are_never_marked_done(tmp_path, rows):
    mid = rows[120]["block_number"]
    db = tmp_path / "s.db"
    with start_devnode(rows, head=mid) as node:
        s = settings(node, rows, confirmations=3, chunk_size=5000)
        with pytest.raises(CollectError, match="above every endpoint's head"):
            collect(db, s)
        with Store(db) as st:
            assert max(b for _, b in st.done_ranges()) <= mid - 3
        assert event_fields(stored(db)) == event_fields([r for r in rows if r["block_number"] <= mid - 3])
        node.head = rows[-1]["block_number"] + 3  # the endpoint caught up: the resume fetches them
        collect(db, s)
    assert event_fields(stored(db)) == event_fields(rows)


def test_verify_empty_catches_an_endpoint_whose_logs_lag(tmp_path, rows):
    # the lagging endpoint sees only the first 20 swaps' blocks: every chunk it serves after them
    # (about half of some 70 chunks, by the rotation) hides swaps the honest one has
    lag = rows[-1]["block_number"] - rows[20]["block_number"]
    head = rows[-1]["block_number"] + 5
    with start_devnode(rows, head=head, faults=dict(logs_lag=lag)) as lagging, start_devnode(
        rows, head=head
    ) as honest:
        s = settings(
            lagging, rows, rpc_urls=[lagging.url, honest.url], chunk_size=5000, max_chunk=5000,
            verify_empty=True,
        )
        stats = collect(tmp_path / "s.db", s)
    assert event_fields(stored(tmp_path / "s.db")) == event_fields(rows)
    assert stats.rpc["errors"]["invalid_answer"] > 0


@pytest.mark.parametrize("mode", ["auto", "headers", "derive"])
def test_timestamps_from_logs_headers_or_block_time(tmp_path, rows, mode):
    with start_devnode(rows, faults=dict(log_timestamps=True)) as node:
        collect(tmp_path / "s.db", settings(node, rows, timestamps=mode, reorg_depth=0))
        headers = node.calls.get("eth_getBlockByNumber", 0)
    got = stored(tmp_path / "s.db")
    assert event_fields(got) == event_fields(rows)
    assert [g["timestamp"] for g in got] == [r["timestamp"] for r in rows]
    n_blocks = len({r["block_number"] for r in rows})
    assert {"auto": headers == 0, "headers": headers == n_blocks, "derive": 0 < headers < n_blocks}[mode]


def test_derived_timestamps_checked_against_headers(tmp_path, rows):
    with start_devnode(rows) as node:  # no blockTimestamp in logs: derive checks 2 headers a chunk
        collect(tmp_path / "a.db", settings(node, rows, timestamps="derive", reorg_depth=0))
        assert 0 < node.calls["eth_getBlockByNumber"] < len({r["block_number"] for r in rows})
    assert [g["timestamp"] for g in stored(tmp_path / "a.db")] == [r["timestamp"] for r in rows]
    sim = simulate(300, seed=0)  # timestamps rounded to blocks, not exactly 2 s apart
    with start_devnode(sim) as node:
        s = settings(node, sim, timestamps="derive")
        with pytest.raises(CollectError, match="block time check failed"):
            collect(tmp_path / "b.db", s)


# ---------------------------------------------------------------- import-csv


def ape_chain(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "chain", *map(str, args)], cwd=cwd, capture_output=True, text=True
    )


def _count(db):
    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM swaps").fetchone()[0]


def test_import_upserts_and_replace_says_what_it_removes(tmp_path):
    db = tmp_path / "s.db"
    r = ape_chain("import-csv", real_csv(), "--db", db, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    full = _count(db)
    assert full == 9965
    lines = real_csv().read_text().splitlines()
    two = tmp_path / "two.csv"
    two.write_text("\n".join([lines[0], lines[10], lines[20]]) + "\n")
    r = ape_chain("import-csv", two, "--db", db, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "0 new, 0 updated, 2 unchanged" in r.stderr and _count(db) == full
    before = sqlite3.connect(db).execute("SELECT * FROM swaps ORDER BY 1, 2").fetchall()
    r = ape_chain("import-csv", two, "--db", db, "--replace", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0 and "would be removed" in r.stderr, r.stderr
    assert sqlite3.connect(db).execute("SELECT * FROM swaps ORDER BY 1, 2").fetchall() == before
    r = ape_chain("import-csv", two, "--db", db, "--replace", cwd=tmp_path)
    removed = int(r.stderr.split(" stored swaps in blocks")[0].rsplit(" ", 1)[-1])
    assert r.returncode == 0 and removed > 0 and _count(db) == full - removed, r.stderr
    # an export with log indexes: a changed amount is an update, found by its key
    rows = real_rows(50)
    write_swaps_csv(tmp_path / "e.csv", [dict(rows[0], amount1=rows[0]["amount1"] + 1), *rows[1:]])
    r = ape_chain("import-csv", tmp_path / "e.csv", "--db", tmp_path / "e.db", cwd=tmp_path)
    write_swaps_csv(tmp_path / "f.csv", rows)
    r = ape_chain("import-csv", tmp_path / "f.csv", "--db", tmp_path / "e.db", cwd=tmp_path)
    assert "0 new, 1 updated, 49 unchanged" in r.stderr, r.stderr
    assert event_fields(list(Store(tmp_path / "e.db").swaps())) == event_fields(rows)


def test_import_refuses_implausible_timestamps_and_reports_a_missing_newline(tmp_path):
    rows = real_rows(100)
    write_swaps_csv(tmp_path / "x10.csv", [dict(r, timestamp=r["timestamp"] * 10) for r in rows])
    r = ape_chain("import-csv", tmp_path / "x10.csv", "--db", tmp_path / "s.db", cwd=tmp_path)
    assert r.returncode == 2 and "implausible timestamps" in r.stderr
    assert not (tmp_path / "s.db").exists()
    write_swaps_csv(tmp_path / "ok.csv", rows)
    cut = tmp_path / "cut.csv"
    cut.write_text((tmp_path / "ok.csv").read_text().rstrip("\n"))
    r = ape_chain("import-csv", cut, "--db", tmp_path / "s.db", cwd=tmp_path)
    assert r.returncode == 0 and "the last line has no newline" in r.stderr, r.stderr


def test_process_refuses_more_bars_than_the_block_span_allows():
    rows = real_rows(300)
    sw = swap_features([dict(r, timestamp=r["timestamp"] * 10) for r in rows])
    with pytest.raises(UserError, match="refusing more than"):
        make_bars(sw, 300)
    assert len(make_bars(swap_features(rows), 300)["bar_start"]) == np.int64(
        rows[-1]["timestamp"] // 300 - rows[0]["timestamp"] // 300 + 1
    )
