"""The collector against a real JSON-RPC server on 127.0.0.1 (chain.devnode), web3 as client."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from chain_fixtures import event_fields, real_rows

from apeagent.errors import UserError
from chain.collect import CollectSettings, collect
from chain.devnode import start_devnode
from chain.rpc import RpcSettings
from chain.snapshot import snapshot
from chain.store import Store

RPC_KEYS = set(RpcSettings.__dataclass_fields__)


def settings(node, rows, **kw):
    rpc = dict(
        rpc_urls=[node.url], timeout_s=0.5, backoff_base_s=0.01, rate_limit=None, seed=0, give_up_s=20
    )
    rpc.update({k: v for k, v in kw.items() if k in RPC_KEYS})
    base = dict(
        from_block=rows[0]["block_number"],
        to_block=rows[-1]["block_number"],
        chunk_size=20_000,
        concurrency=4,
        confirmations=2,
        progress=False,
    )
    base.update({k: v for k, v in kw.items() if k not in RPC_KEYS})
    return CollectSettings(rpc=RpcSettings(**rpc), **base)


def stored(db):
    with Store(db) as st:
        return list(st.swaps())


@pytest.fixture(scope="module")
def rows():
    return real_rows(600)


def test_collect_exact_under_faults(tmp_path, rows):
    faults = dict(
        rate_limit=0.04,
        retry_after=0.02,
        server_error=0.08,
        malformed=0.08,
        slow=0.03,
        slow_s=0.8,
        max_range=20_000,
        max_results=40,
        seed=3,
    )
    with start_devnode(rows, faults=faults) as node:
        stats = collect(tmp_path / "s.db", settings(node, rows))
        calls = dict(node.calls)
    got = stored(tmp_path / "s.db")
    assert event_fields(got) == event_fields(rows)
    assert stats.splits > 0 and stats.events == len(rows)
    for kind in ("http_429", "http_5xx", "malformed", "timeout"):
        assert stats.rpc["errors"].get(kind, 0) > 0, stats.as_dict()
    assert calls["eth_getBlockByNumber"] > 0
    # timestamps and block hashes came from the node's headers
    assert all(g["block_hash"] for g in got) and [g["timestamp"] for g in got] == [
        r["timestamp"] for r in rows
    ]


def test_collect_two_endpoints_with_tx_and_resume_is_a_no_op(tmp_path, rows):
    part = rows[:150]
    with start_devnode(part) as a, start_devnode(part) as b:
        s = settings(
            a, part, rpc_urls=[a.url, b.url], with_tx=True, rate_limit=200.0, chunk_size=5000
        )
        collect(tmp_path / "s.db", s)
        assert a.calls.get("eth_getLogs", 0) > 0 and b.calls.get("eth_getLogs", 0) > 0
        got = stored(tmp_path / "s.db")
        assert event_fields(got) == event_fields(part)
        assert [g["original_sender"] for g in got] == [r["original_sender"] for r in part]
        assert all(g["is_contract_sender"] is False for g in got)
        before = dict(a.calls)
        again = collect(tmp_path / "s.db", s)
        assert again.events == 0 and a.calls.get("eth_getLogs") == before.get("eth_getLogs")


def test_reorg_is_detected_and_redone(tmp_path, rows):
    part = rows[:200]
    cut = part[120]["block_number"]
    with start_devnode(part, head=part[-1]["block_number"] + 3) as node:
        s = settings(node, part)
        collect(tmp_path / "s.db", s)
        # The chain from `cut` is replaced: new hashes, and the swaps there changed.
        new = [dict(r, amount1=r["amount1"] + 1) for r in part if r["block_number"] >= cut]
        node.reorg(cut, new)
        stats = collect(tmp_path / "s.db", s)
    assert stats.reorg_rollbacks == 1
    truth = [r for r in part if r["block_number"] < cut] + new
    assert event_fields(stored(tmp_path / "s.db")) == event_fields(truth)


def test_follow_picks_up_new_blocks(tmp_path, rows):
    part = rows[:100]
    mid = part[60]["block_number"]
    with start_devnode(part, head=mid + 10) as node:
        s = settings(node, part, to_block="latest", confirmations=10, follow=True, follow_polls=1)
        collect(tmp_path / "s.db", s)
        assert event_fields(stored(tmp_path / "s.db")) == event_fields(
            [r for r in part if r["block_number"] <= mid]
        )
        node.head = part[-1]["block_number"] + 10
        collect(tmp_path / "s.db", s)
    assert event_fields(stored(tmp_path / "s.db")) == event_fields(part)


def test_bad_inputs_leave_the_store_untouched(tmp_path, rows):
    part = rows[:50]
    db = tmp_path / "s.db"
    with start_devnode(part, chain_id=1) as node:
        with pytest.raises(UserError, match="chain id 1"):
            collect(db, settings(node, part))
        assert not db.exists()
        collect(db, settings(node, part, allow_chain_id=1))  # explicitly allowed
    before = sqlite3.connect(db).execute("SELECT * FROM swaps").fetchall()
    with start_devnode(part) as node:
        with pytest.raises(UserError, match="unknown pool id"):
            collect(db, settings(node, part, pool_id="0x" + "12" * 32))
        with pytest.raises(UserError, match="chain_id=1"):  # store belongs to chain 1
            collect(db, settings(node, part))
        url = node.url
    with pytest.raises(UserError, match="cannot use RPC"):  # nothing listens there any more
        collect(db, settings(node, part, rpc_urls=[url], give_up_s=0.5))
    assert sqlite3.connect(db).execute("SELECT * FROM swaps").fetchall() == before


def test_cli_errors_exit_nonzero(tmp_path, rows):
    with start_devnode(rows[:20], chain_id=10) as node:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "chain",
                "collect",
                "--rpc-url",
                node.url,
                "--db",
                str(tmp_path / "x.db"),
                "--from-block",
                "1",
                "--to-block",
                "2",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
    assert r.returncode == 2 and "chain id 10" in r.stderr and not (tmp_path / "x.db").exists()


def test_sigkill_mid_run_then_restart_is_exact(tmp_path, rows):
    db = tmp_path / "s.db"
    with start_devnode(
        rows, latency_s=0.03, faults=dict(max_results=30, rate_limit=0.05, retry_after=0.01)
    ) as node:
        cmd = [
            sys.executable,
            "-m",
            "chain",
            "collect",
            "--rpc-url",
            node.url,
            "--db",
            str(db),
            "--from-block",
            str(rows[0]["block_number"]),
            "--to-block",
            str(rows[-1]["block_number"]),
            "--chunk-size",
            "3000",
            "--concurrency",
            "2",
            "--rate-limit",
            "0",
            "--confirmations",
            "2",
            "--quiet",
        ]
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.time() + 60
        count = 0
        while time.time() < deadline and count < len(rows) // 4:
            time.sleep(0.1)
            if db.exists():
                try:
                    count = (
                        sqlite3.connect(db, timeout=5)
                        .execute("SELECT COUNT(*) FROM swaps")
                        .fetchone()[0]
                    )
                except sqlite3.OperationalError:
                    pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        partial = len(stored(db))
        assert 0 < partial < len(rows)
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert event_fields(stored(db)) == event_fields(rows)


def test_snapshot_against_devnode(rows):
    head = rows[-1]["block_number"] + 5
    with start_devnode(rows, head=head) as node:
        snap = snapshot([node.url], minutes=120)
    last = rows[-1]
    assert snap["block_number"] == head and snap["sqrt_price_x96"] == str(last["sqrt_price_x96"])
    assert snap["tick"] == last["tick"] and snap["liquidity"] == str(last["liquidity"])
    head_ts = last["timestamp"] + 10
    window = [r for r in rows if r["timestamp"] >= head_ts - 7200]
    assert snap["swap_count"] == len(window) > 0
    assert snap["volume_eth"] == pytest.approx(sum(abs(r["amount0"]) for r in window) / 1e18)
    assert snap["net_flow_eth"] == pytest.approx(-sum(r["amount0"] for r in window) / 1e18)
    assert 2000 < snap["price"] < 4000
