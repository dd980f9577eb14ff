"""The issue's scenarios: one lying answer, a lying second endpoint, a lying simulation, send
errors, Ctrl-C and a kill between signing and the receipt; each asserts how many orders were
sent and what the journal says.

All against the project's JSON-RPC test node (real HTTP on 127.0.0.1) with a wallet; the
lies are hooks of the node's ``methods`` (tests/agent_fixtures.py). Kills and Ctrl-C run the
real ``python -m agent`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from agent_fixtures import (
    REPO,
    Wallet,
    agent_app,
    anchored,
    devnode_fixture,
    lie_slot0,
    lie_swaps,
    live_node,
    make_keystore,
)
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak
from hexbytes import HexBytes
from typer.testing import CliRunner

from agent.config import DEFAULTS
from agent.live import run_agent
from agent.policies import RulesPolicy
from apeagent.errors import UserError

ACCOUNT = Account.create()
ADDRESS = ACCOUNT.address
PASSPHRASE = "tr0ub4dor&3-passphrase"


node = pytest.fixture(devnode_fixture)


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory.mktemp("keys") / "key.json", ACCOUNT.key, PASSPHRASE)


def trade_args(node, tmp_path, keystore, *extra):
    return [
        "trade", "--execute", "--policy", "rules", "--rpc-url", node.url, "--iterations", "1",
        "--journal", str(tmp_path / "journal.jsonl"), "--account", ADDRESS,
        "--keystore", str(keystore), "--yes", *anchored(list(extra), node),
    ]


def run(node, tmp_path, keystore, *extra):
    return CliRunner().invoke(
        agent_app(),
        trade_args(node, tmp_path, keystore, *extra),
        env={"APE_KEYSTORE_PASSWORD": PASSPHRASE},
    )


def journal(tmp_path):
    path = tmp_path / "journal.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def nonce_of(raw: bytes) -> int:
    return TypedTransaction.from_bytes(HexBytes(raw)).as_dict()["nonce"]


def assert_no_secret(tmp_path, *texts):
    key = ACCOUNT.key.hex()
    blobs = list(texts) + [f.read_text(errors="replace") for f in tmp_path.rglob("*") if f.is_file()]
    for blob in blobs:
        for needle in (key, key.upper(), PASSPHRASE):
            assert needle not in blob


# ---------------------------------------------------------------- one lying answer


@pytest.mark.parametrize("factor", [0.98, 0.90, 0.50])
def test_lying_slot0_places_no_order(node, tmp_path, keystore, factor):
    """getSlot0 off by 2 %, 10 %, 50 % while the pool's swaps keep the real price."""
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    lie_slot0(node, factor)
    res = run(node, tmp_path, keystore)
    assert res.exit_code == 0, res.output
    assert wallet.sent == [] and wallet.quotes == 0 and node.calls.get("eth_sendRawTransaction", 0) == 0
    (rec,) = journal(tmp_path)
    check = rec["price_check"]
    assert not check["ok"] and "swap" not in rec and "decision" not in rec
    assert check["deviation_pct"]["slot0"] == pytest.approx(100 * (factor - 1), abs=0.01)
    assert rec["refused"].startswith("price check: slot0") and "disagrees with the latest swap" in rec["refused"]
    assert rec["refused_by"] == ["price"]
    assert "NO ORDER" in res.output and "slot0" in res.output


def test_lying_swap_logs_place_no_order(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    lie_swaps(node, 1.05)
    res = run(node, tmp_path, keystore)
    assert res.exit_code == 0 and wallet.sent == [], res.output
    (rec,) = journal(tmp_path)
    assert rec["price_check"]["deviation_pct"]["slot0"] == pytest.approx(100 * (1 / 1.05 - 1), abs=0.01)


def test_paper_mode_checks_the_price_too(node, tmp_path):
    lie_slot0(node, 0.5)
    s = run_agent(RulesPolicy({**DEFAULTS, **_rules()}), dict(DEFAULTS), rpc_urls=[node.url],
                  journal=tmp_path / "journal.jsonl", iterations=1, echo=lambda s: None)
    (rec,) = journal(tmp_path)
    assert s["refused"] == 1 and s["trades"] == 0 and "fill" not in rec and not rec["price_check"]["ok"]
    assert rec["refused_by"] == ["price"]


def _rules():
    from agent_fixtures import RULES

    return RULES


def test_second_endpoint_that_disagrees(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    other = live_node()
    try:
        lie_slot0(other, 0.97)
        res = run(node, tmp_path, keystore, "--check-rpc-url", other.url)
    finally:
        other.stop()
    assert res.exit_code == 0 and wallet.sent == [], res.output
    (rec,) = journal(tmp_path)
    name = f"check:{other.url}"
    assert rec["price_check"]["deviation_pct"] == {"slot0": 0.0, name: pytest.approx(-3.0, abs=0.01)}
    assert f"{name} " in rec["refused"] and "slot0 " not in rec["refused"]
    assert rec["refused_by"] == ["anchor"]


def test_second_endpoint_down_refuses(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    other = live_node()
    url = other.url
    other.stop()
    res = run(node, tmp_path, keystore, "--check-rpc-url", url)
    assert isinstance(res.exception, UserError) and "cannot reach" in str(res.exception)
    assert wallet.sent == []


@pytest.mark.parametrize("lie", ["low", "revert"])
def test_quote_simulation_worse_than_the_checked_price(node, tmp_path, keystore, lie):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    wallet.quote_factor, wallet.quote_revert = 0.99, lie == "revert"  # 1 % short > 0.5 % bound
    res = run(node, tmp_path, keystore)
    assert res.exit_code == 0 and wallet.sent == [] and wallet.quotes == 1, res.output
    (rec,) = journal(tmp_path)
    assert "tx_hash" not in rec["swap"] and node.calls.get("eth_getTransactionCount", 0) == 0
    want = "below the checked quote" if lie == "low" else "did not simulate the swap"
    assert want in rec["refused"] and rec["price_check"]["ok"]


# ---------------------------------------------------------------- send errors, kills, Ctrl-C


def agent_process(node, tmp_path, keystore, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), "APE_KEYSTORE_PASSWORD": PASSPHRASE}
    # Under a shell's background job (CI runners, `make test &`) SIGINT is ignored and the
    # child would inherit that: Ctrl-C must reach the agent as it does on a terminal. A
    # handled signal is reset to its default by exec, so handle it while starting the child.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", *trade_args(node, tmp_path, keystore, *extra)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )
    finally:
        signal.signal(signal.SIGINT, old)


def wait_for(cond, timeout=60.0):
    t_end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_send_error_is_one_line_and_journaled(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    wallet.send_error = "nonce too low: next nonce 7, tx nonce 0"
    p = agent_process(node, tmp_path, keystore)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: the node refused the transaction 0x")
    assert "nonce too low" in err and wallet.sent == []
    signed, failed = journal(tmp_path)
    assert signed["swap"]["status"] == "signed" and failed["outcome"] == "send_failed"
    assert failed["tx_hash"] == signed["swap"]["tx_hash"] and "nonce too low" in failed["error"]
    assert_no_secret(tmp_path, out, err)


def test_kill_between_sign_and_receipt_then_restart_reconciles(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    wallet.mine = False  # broadcast, never mined while the agent waits
    p = agent_process(node, tmp_path, keystore)
    wait_for(lambda: wallet.sent)
    p.kill()  # SIGKILL: no handler runs
    p.wait(30)
    (raw,) = wallet.sent
    recs = journal(tmp_path)
    assert recs[0]["swap"]["tx_hash"] == "0x" + keccak(raw).hex()  # on disk before the node saw it
    assert recs[0]["swap"]["nonce"] == nonce_of(raw) == 0
    # Restart: the transaction got mined meanwhile; the journal learns it by hash, then trades on.
    wallet.mine = True
    res = run(node, tmp_path, keystore)
    assert res.exit_code == 0, res.output
    events = [r for r in journal(tmp_path) if r.get("event") == "tx"]
    reconciled = [e for e in events if e.get("reconciled")]
    assert [e["outcome"] for e in reconciled] == ["mined"] and reconciled[0]["tx_hash"] == recs[0]["swap"]["tx_hash"]
    assert [nonce_of(r) for r in wallet.sent] == [0, 1]  # the used nonce is never sent again
    # A node that reports an already-mined nonce as free gets nothing signed.
    node.methods["eth_getTransactionCount"] = lambda params: hex(1)
    res = run(node, tmp_path, keystore)
    assert isinstance(res.exception, UserError) and "not above nonce 1" in str(res.exception)
    assert len(wallet.sent) == 2


def test_kill_before_broadcast_expires_at_the_deadline(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    wallet.send_hold = threading.Event()
    cfg = tmp_path / "short.yaml"
    cfg.write_text("extends: tiny\nagent:\n  deadline_seconds: 2\n")
    p = agent_process(node, tmp_path, keystore, "-c", str(cfg))
    wait_for(lambda: journal(tmp_path))
    p.kill()
    p.wait(30)
    wallet.send_error = "connection closed"  # the held request never lands
    wallet.send_hold.set()
    time.sleep(0.5)  # let the held request fail before the switches are reset
    wallet.send_hold, wallet.send_error = None, None
    (rec,) = journal(tmp_path)
    assert rec["swap"]["status"] == "signed" and wallet.sent == []
    # Restart: no receipt and no node knows it; once its deadline passed the router could
    # never execute it, so it is journaled as expired and its nonce (never seen) is free.
    res = run(node, tmp_path, keystore, "-c", str(cfg))
    assert res.exit_code == 0, res.output
    expired = [r for r in journal(tmp_path) if r.get("outcome") == "expired"]
    assert len(expired) == 1 and expired[0]["known_to_node"] is False
    assert expired[0]["tx_hash"] == rec["swap"]["tx_hash"] and time.time() > rec["swap"]["plan"]["deadline"]
    (raw,) = wallet.sent
    assert nonce_of(raw) == 0 and "0x" + keccak(raw).hex() != rec["swap"]["tx_hash"]


def test_ctrl_c_during_the_receipt_wait_is_journaled(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    wallet.mine = False
    p = agent_process(node, tmp_path, keystore)
    wait_for(lambda: any(r.get("outcome") == "sent" for r in journal(tmp_path)))
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "interrupted with transaction 0x" in err and "broadcast" in err
    last = journal(tmp_path)[-1]
    assert last["outcome"] == "interrupted" and last["broadcast"] is True
    assert last["tx_hash"] == "0x" + keccak(wallet.sent[0]).hex()
    assert_no_secret(tmp_path, out, err)


def test_key_nowhere(node, tmp_path, keystore):
    """A full run: key, passphrase and the RPC URL's credentials appear in no output, the
    journal, or an exception's text (an unreachable URL with credentials included)."""
    Wallet(node, ADDRESS, wei=2 * 10**18)
    url = node.url.replace("http://", "http://alice:pw-in-url@") + "/v3/4f2c9a7e1b3d4c8e9f0a1b2c3d4e5f67"
    res = CliRunner().invoke(
        agent_app(),
        trade_args(node, tmp_path, keystore)[:5] + [url] + trade_args(node, tmp_path, keystore)[6:],
        env={"APE_KEYSTORE_PASSWORD": PASSPHRASE},
    )
    assert res.exit_code == 0, res.output
    dead = CliRunner().invoke(
        agent_app(),
        ["trade", "--execute", "--rpc-url", "http://bob:pw-in-url@127.0.0.1:9/v3/4f2c9a7e1b3d4c8e9f0a1b2c3d4e5f67",
         "--account", ADDRESS, "--keystore", str(keystore), "--journal", str(tmp_path / "j2.jsonl"),
         "--check-rpc-url", node.check.url],
        env={"APE_KEYSTORE_PASSWORD": PASSPHRASE},
    )
    assert isinstance(dead.exception, UserError) and "cannot reach" in str(dead.exception)
    texts = [res.output, dead.output, str(dead.exception)]
    assert_no_secret(tmp_path, *texts)
    for t in texts + [Path(tmp_path / "journal.jsonl").read_text()]:
        assert "pw-in-url" not in t and "4f2c9a7e1b3d4c8e9f0a1b2c3d4e5f67" not in t
