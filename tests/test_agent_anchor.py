"""Issue 25's table: one endpoint that lies *consistently* (its getSlot0, its Swap logs and its
V4 Quoter scaled by one factor), a stalled or stale head, another chain, the same endpoint
given twice. Each case runs the real agent against the project's JSON-RPC test node on
127.0.0.1 replaying the shared real swaps (simulated swaps when the CSV is absent) and asserts
whether a transaction was signed (the node counts every ``eth_sendRawTransaction``; the journal
holds a hash only for a signed one) and what the journal says. The fair output is the exact
pool math at the true pool state of the replayed swaps.
"""

from __future__ import annotations

import json

import pytest
from agent_fixtures import REAL_CSV, Wallet, agent_app, live_node, make_keystore
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes
from typer.testing import CliRunner

from agent.config import DEFAULTS
from agent.live import EXECUTE, run_agent
from agent.policies import RebalancePolicy
from apeagent.cli import run_cli
from apeagent.errors import UserError
from chain.amm import price_from_sqrt_price_x96, swap_exact_input
from chain.simulate import simulate

ACCOUNT = Account.create()
ADDRESS = ACCOUNT.address
PASSPHRASE = "anchor-test-passphrase"
_ROWS: list = []


def rows():
    """The last 400 swaps of the shared real CSV (else 300 simulated ones)."""
    if not _ROWS:
        from chain.csvio import read_swaps_csv

        _ROWS.extend(read_swaps_csv(REAL_CSV, pool=None)[-400:] if REAL_CSV.is_file() else simulate(300, seed=1))
    return _ROWS


@pytest.fixture
def node():
    """The trading endpoint (a live devnode) and ``node.check``: an honest one of "another
    provider" replaying the same swaps."""
    n, check = live_node(rows()), live_node(rows())
    n.check = check
    yield n
    n.stop()
    check.stop()


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory.mktemp("keys") / "key.json", ACCOUNT.key, PASSPHRASE)


def trade(node, tmp_path, keystore, *extra, anchor=True):
    args = ["trade", "--execute", "--policy", "rebalance", "--rpc-url", node.url, "--iterations", "1",
            "--journal", str(tmp_path / "journal.jsonl"), "--account", ADDRESS, "--keystore",
            str(keystore), "--yes", *extra]
    if anchor:
        args += ["--check-rpc-url", node.check.url]
    return CliRunner().invoke(agent_app(), args, env={"APE_KEYSTORE_PASSWORD": PASSPHRASE})


def journal(tmp_path, name="journal.jsonl"):
    path = tmp_path / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def seller(node):
    return Wallet(node, ADDRESS, wei=2 * 10**18)  # all ETH: the 50/50 rebalancer sells


def buyer(node):
    import time

    w = Wallet(node, ADDRESS, wei=10**16, usdc=5_000 * 10**6)  # all USDC: it buys
    w.erc20_allowance, w.permit2 = 2**256 - 1, (2**160 - 1, int(time.time()) + 3600)
    return w


def assert_nothing_signed(node, wallet, recs):
    assert node.calls.get("eth_sendRawTransaction", 0) == 0 and wallet.sent == []
    assert not any((r.get("swap") or {}).get("tx_hash") for r in recs)
    assert not any(r.get("event") == "tx" for r in recs)


def fair_out(zero_for_one: bool, amount_in: int) -> int:
    """The exact output at the true pool state (the last replayed swap)."""
    st = rows()[-1]
    return swap_exact_input(st["sqrt_price_x96"], st["liquidity"], amount_in, zero_for_one, st["fee"]).amount_out


def true_price() -> float:
    return price_from_sqrt_price_x96(rows()[-1]["sqrt_price_x96"])


# ---------------------------------------------------------------- the table


def test_true_price_trades_with_min_out_from_the_anchor(node, tmp_path, keystore):
    wallet = seller(node)
    res = trade(node, tmp_path, keystore)
    assert res.exit_code == 0, res.output
    (raw,) = wallet.sent
    rec = journal(tmp_path)[0]
    plan = rec["swap"]["plan"]
    assert rec["decision"] == "APE OUT" and rec["swap"]["status"] == "signed"
    assert rec["price_check"]["anchor"]["kind"] == "check"
    # the per-trade cap of 100 USDC at the anchored (true) price
    assert rec["capped_by"] == "max_trade_usdc" and plan["amount_in"] == int(100 / true_price() * 1e18)
    fair = fair_out(True, plan["amount_in"])
    assert plan["anchor_out"] == fair and plan["min_amount_out"] == fair * 9950 // 10_000
    tx = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    assert tx["value"] == plan["amount_in"]


@pytest.mark.parametrize("factor", [0.95, 0.5, 0.03])
def test_consistent_liar_sells_nothing(node, tmp_path, keystore, factor):
    """slot0, Swap logs and the Quoter all at ``factor`` x the price: they agree with each
    other; the independent endpoint does not."""
    wallet = seller(node)
    node.set_faults(price_factor=factor)
    res = trade(node, tmp_path, keystore)
    assert res.exit_code == 0, res.output
    recs = journal(tmp_path)
    assert_nothing_signed(node, wallet, recs)
    (rec,) = recs
    check = rec["price_check"]
    assert rec["refused_by"] == ["anchor"] and "decision" not in rec
    assert check["deviation_pct"]["slot0"] == pytest.approx(0.0, abs=0.01)  # the liar agrees with itself
    name = f"check:{node.check.url}"
    assert check["deviation_pct"][name] == pytest.approx(100 * (1 / factor - 1), rel=1e-3)
    assert rec["refused"].startswith(f"anchor: {name} ") and "disagrees with the latest swap" in rec["refused"]
    assert "NO ORDER" in res.output and wallet.quotes == 0


def test_consistent_liar_high_buys_nothing(node, tmp_path, keystore):
    wallet = buyer(node)
    node.set_faults(price_factor=2.0)
    res = trade(node, tmp_path, keystore)
    assert res.exit_code == 0, res.output
    recs = journal(tmp_path)
    assert_nothing_signed(node, wallet, recs)
    assert recs[0]["refused_by"] == ["anchor"]
    # the same endpoint honest: it buys, for 100 USDC, min out from the anchor
    node.set_faults(price_factor=1.0)
    res = trade(node, tmp_path, keystore)
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output
    plan = journal(tmp_path)[-3]["swap"]["plan"]
    assert plan["side"] == "buy" and plan["amount_in"] == 100 * 10**6
    assert plan["min_amount_out"] == fair_out(False, plan["amount_in"]) * 9950 // 10_000


@pytest.mark.parametrize("same", ["url", "host:port", "localhost"])
def test_same_endpoint_twice_is_not_independent(node, tmp_path, keystore, capsys, same):
    wallet = seller(node)
    node.set_faults(price_factor=0.5)
    check = {"url": node.url, "host:port": node.url + "/another/path",
             "localhost": node.url.replace("127.0.0.1", "localhost") + "/v2/4f2c9a7e1b3d4c8e9f0a1b2c"}[same]
    with pytest.raises(SystemExit) as e:
        run_cli(agent_app(), ["trade", "--execute", "--policy", "rebalance", "--rpc-url", node.url,
                              "--check-rpc-url", check, "--iterations", "1", "--account", ADDRESS,
                              "--keystore", str(keystore), "--yes", "--journal", str(tmp_path / "j.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    want = "the same URL" if same == "url" else "the same host:port"
    assert err[0].startswith("error: --check-rpc-url http://127.0.0.1:") or same == "localhost"
    assert err[0].endswith(f"{want} as --rpc-url {node.url}") and "4f2c9a7e1b3d" not in err[0]
    assert "is not an independent price source (use another provider)" in err[0]
    assert_nothing_signed(node, wallet, journal(tmp_path, "j.jsonl"))
    assert node.calls == {}  # refused before any request


def test_no_anchor_no_live_order(node, tmp_path, keystore):
    """--execute on one endpoint (here a 0.03x liar): refused before anything is read."""
    wallet = seller(node)
    node.set_faults(price_factor=0.03)
    res = trade(node, tmp_path, keystore, anchor=False)
    assert isinstance(res.exception, UserError) and "needs an independent price anchor" in str(res.exception)
    recs = journal(tmp_path)
    assert_nothing_signed(node, wallet, recs)
    (rec,) = recs  # the reason is journaled too
    assert rec["event"] == "refused" and rec["refused_by"] == ["anchor"]
    assert node.calls == {}
    res = trade(node, tmp_path, keystore, "--min-price", "3000", anchor=False)  # half a band: no
    assert isinstance(res.exception, UserError) and "both --min-price and --max-price" in str(res.exception)


def test_stale_head_4h(node, tmp_path, keystore):
    wallet = seller(node)
    node.set_clock(lag_s=4 * 3600, advance=False)  # a node that stopped four hours ago
    res = trade(node, tmp_path, keystore)
    assert res.exit_code == 0, res.output
    recs = journal(tmp_path)
    assert_nothing_signed(node, wallet, recs)
    (rec,) = recs
    assert rec["refused_by"] == ["head_lag"] and "decision" not in rec
    assert rec["refused"].startswith(f"stale head: {node.url} head block ") and "s old (bound 60 s)" in rec["refused"]
    assert rec["price_check"]["freshness"][node.url]["lag_s"] == pytest.approx(4 * 3600, abs=30)


def _two_iterations(node, tmp_path, between, policy_cfg=None):
    """Two iterations in-process: a balanced wallet first (the rebalancer holds), then
    ``between(wallet)`` runs during the pause (a deposit makes it all ETH: it wants to sell)."""
    wallet = Wallet(node, ADDRESS, wei=10**18)
    wallet.usdc = int(true_price() * 1e6)  # 1 ETH + its worth in USDC: 50/50

    def pause(_seconds):
        wallet.usdc = 0
        wallet.wei = 2 * 10**18
        between()

    cfg = dict(DEFAULTS, account=ADDRESS, check_rpc_urls=[node.check.url], head_stall_s=0.0,
               **(policy_cfg or {}))
    summary = run_agent(RebalancePolicy(5.0), cfg, mode=EXECUTE, rpc_urls=[node.url],
                        journal=tmp_path / "journal.jsonl", iterations=2, account=ACCOUNT,
                        sleep=pause, echo=lambda s: None)
    return wallet, summary, journal(tmp_path)


def test_head_not_advancing(node, tmp_path):
    node.set_clock(advance=False)  # fresh, but it stopped: the head stays

    def between():
        node.check.head += 1  # the other provider's chain moves on

    wallet, summary, recs = _two_iterations(node, tmp_path, between)
    assert_nothing_signed(node, wallet, recs)
    first, second = recs
    assert first["decision"] == "APE NEUTRAL" and "refused" not in first
    assert second["refused_by"] == ["head_stalled"] and summary["refused"] == 1
    assert second["refused"].startswith(f"head not advancing: {node.url} head is block {first['block']}")


def test_head_advancing_trades(node, tmp_path):
    """The same two iterations with both heads moving on: the second sells (the control)."""
    node.set_clock(advance=False)

    def between():
        node.head += 1
        node.check.head += 1

    wallet, summary, recs = _two_iterations(node, tmp_path, between)
    assert len(wallet.sent) == 1 and summary["trades"] == 1
    assert recs[1]["swap"]["status"] == "signed" and recs[1]["block"] == recs[0]["block"] + 1


def test_chain_id_changes_mid_run(node, tmp_path):
    def between():
        node.chain_id = 1  # the provider fails over to another network
        node.check.head += 1

    wallet, summary, recs = _two_iterations(node, tmp_path, between)
    assert_nothing_signed(node, wallet, recs)
    assert recs[1]["refused_by"] == ["chain_id"]
    assert recs[1]["refused"] == f"chain id: {node.url} answers chain id 1, not 8453"


def test_check_endpoint_on_another_chain_is_refused_at_start(node, tmp_path, keystore):
    wallet = seller(node)
    node.check.chain_id = 10
    res = trade(node, tmp_path, keystore)
    assert isinstance(res.exception, UserError) and "is chain id 10, not Base (8453)" in str(res.exception)
    assert_nothing_signed(node, wallet, journal(tmp_path))


# ---------------------------------------------------------------- within the price tolerance


def test_small_lie_gets_min_out_from_the_anchor(node, tmp_path, keystore):
    """0.4 % low, inside the 1 % tolerance: the order goes out, but sized at the anchor and
    with amountOutMinimum = the anchored fair output less 0.5 %, not the liar's quote less 0.5 %."""
    wallet = seller(node)
    node.set_faults(price_factor=0.996)
    res = trade(node, tmp_path, keystore)
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output
    plan = journal(tmp_path)[0]["swap"]["plan"]
    assert plan["amount_in"] == int(100 / true_price() * 1e18)  # the cap at the anchored price
    fair = fair_out(True, plan["amount_in"])
    liar = min(plan["simulated_out"], plan["quote_out"]) * 9950 // 10_000
    assert plan["min_amount_out"] == plan["floor_out"] == fair * 9950 // 10_000 > liar


def test_lie_below_the_anchored_floor_is_refused(node, tmp_path, keystore):
    """0.7 % low: inside the price tolerance, but its quote is below the anchored floor."""
    wallet = seller(node)
    node.set_faults(price_factor=0.993)
    res = trade(node, tmp_path, keystore)
    assert res.exit_code == 0, res.output
    recs = journal(tmp_path)
    assert_nothing_signed(node, wallet, recs)
    assert "below the anchored floor" in recs[0]["refused"] and recs[0]["price_check"]["ok"]
    assert recs[0]["refused_by"] == ["quote"] and recs[0]["swap"]["plan"]["floor_out"] > 0


# ---------------------------------------------------------------- bounds and caps in both assets


def test_bounds_anchor_refuses_a_liar_and_caps_at_the_band(node, tmp_path, keystore):
    p = true_price()
    lo, hi = f"{p * 0.9:.2f}", f"{p * 1.25:.2f}"
    wallet = seller(node)
    node.set_faults(price_factor=0.5)
    res = trade(node, tmp_path, keystore, "--min-price", lo, "--max-price", hi, anchor=False)
    assert res.exit_code == 0, res.output
    assert_nothing_signed(node, wallet, journal(tmp_path))
    assert journal(tmp_path)[0]["refused_by"] == ["anchor"] and "outside the bounds" in journal(tmp_path)[0]["refused"]
    node.set_faults(price_factor=1.0)
    res = trade(node, tmp_path, keystore, "--min-price", lo, "--max-price", hi, anchor=False)
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output
    plan = journal(tmp_path)[1]["swap"]["plan"]
    # an ETH input is valued at the band's top for the USDC cap; the floor is the band's bottom
    assert plan["amount_in"] == int(100 / float(hi) * 1e18)
    assert plan["floor_out"] == int(plan["amount_in"] / 1e18 * float(lo) * 0.9995 * 1e6) * 9950 // 10_000
    assert plan["min_amount_out"] == fair_out(True, plan["amount_in"]) * 9950 // 10_000


def test_daily_limit_in_eth(node, tmp_path, keystore):
    wallet = seller(node)
    res = trade(node, tmp_path, keystore, "--max-daily-eth", "0.05")
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output  # ~0.035 ETH: fits
    res = trade(node, tmp_path, keystore, "--max-daily-eth", "0.05")
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output  # 0.071 > 0.05: no order
    last = journal(tmp_path)[-1]
    assert last["refused"].startswith("daily notional limit: 0.035") and "max_daily_eth 0.05" in last["refused"]
    assert last["refused_by"] == ["daily_limit"]


def test_buy_capped_in_eth_at_the_anchor(node, tmp_path, keystore):
    wallet = buyer(node)
    res = trade(node, tmp_path, keystore, "--max-trade-eth", "0.01")
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output
    rec = journal(tmp_path)[0]
    assert rec["capped_by"] == "max_trade_eth"
    assert rec["swap"]["plan"]["amount_in"] == int(0.01 * true_price() * 1e6)


# ---------------------------------------------------------------- an endpoint's error answer


def test_method_unavailable_is_one_line_exit_2(tmp_path, keystore, capsys, monkeypatch):
    """A fork node that does not serve eth_getBalance (issue 26): one line, exit 2."""
    monkeypatch.setenv("APE_KEYSTORE_PASSWORD", PASSPHRASE)
    fork, check = live_node(rows(), chain_id=31337), live_node(rows(), chain_id=31337)
    try:
        with pytest.raises(SystemExit) as e:
            run_cli(agent_app(), ["trade", "--execute", "--fork", "--policy", "rebalance", "--rpc-url",
                                  fork.url, "--check-rpc-url", check.url, "--iterations", "1",
                                  "--account", ADDRESS, "--keystore", str(keystore), "--yes",
                                  "--journal", str(tmp_path / "j.jsonl")])
    finally:
        fork.stop()
        check.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0] == (f"error: the RPC endpoint {fork.url} does not serve a method live trading needs "
                      "(method eth_getBalance not found): use a full Base node or provider")
    assert fork.calls["eth_getBalance"] == 1 and "eth_sendRawTransaction" not in fork.calls


def test_check_endpoint_down_mid_run(node, tmp_path):
    """The anchor goes away after the start: no anchor, no order, the reason journaled."""
    def between():
        node.head += 1
        node.check.stop()

    wallet, summary, recs = _two_iterations(node, tmp_path, between)
    assert_nothing_signed(node, wallet, recs)
    assert recs[1]["refused_by"] == ["anchor"]
    assert recs[1]["refused"].startswith(f"anchor: check:{node.check.url} failed (")
