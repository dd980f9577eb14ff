"""Execution: Universal Router calldata decoded back field by field, keys, guards, refusals.

The devnode (real HTTP JSON-RPC) gets a wallet (balances, allowances, nonce, the V4 Quoter)
and accepts signed transactions; the transactions are decoded and checked, never broadcast
anywhere. Lying answers, send errors and kills are in tests/test_agent_safety.py.
"""

from __future__ import annotations

import json
import time

import pytest
from agent_fixtures import Wallet, agent_app, anchored, devnode_fixture, live_node, make_keystore
from eth_account import Account
from eth_utils import keccak
from typer.testing import CliRunner
from web3 import Web3

from agent import execute as ex
from agent.config import DEFAULTS
from apeagent.errors import UserError
from chain.amm import swap_exact_input
from chain.pool import NATIVE_ETH, UNIVERSAL_ROUTER, USDC
from chain.simulate import simulate


def router_decoder():
    """uniswap-universal-router-decoder, with the SWAP_EXACT_IN_SINGLE layout of the router
    deployed on Base (UR v2.0: no ``minHopPriceX36``; release 3.1 of the library, the one that
    accepts web3 8, ships the v2.1.2 layout). Built with the library's own ABI builder."""
    from uniswap_universal_router_decoder._abi_builder import (
        ABIFunctionBuilder,
        ABIMapWrapper,
        _v4_pool_key_struct_builder,
    )
    from uniswap_universal_router_decoder._decoder import Decoder
    from uniswap_universal_router_decoder._enums import V4Actions

    w3 = Web3()
    abi_map = dict(ABIMapWrapper(w3).abi_map)
    fn = ABIFunctionBuilder(V4Actions.SWAP_EXACT_IN_SINGLE.name)
    params = fn.create_struct("exact_in_single_params")
    params.add_struct(_v4_pool_key_struct_builder().build()).add_bool("zeroForOne").add_uint128(
        "amountIn"
    )
    params.add_uint128("amountOutMinimum").add_bytes("hookData")
    abi_map[V4Actions.SWAP_EXACT_IN_SINGLE] = fn.add_struct(params.build()).build()
    return Decoder(w3, abi_map)


def decode_swap(calldata: str | bytes) -> dict:
    fn, args = router_decoder().function_input(calldata)
    assert fn.fn_name == "execute" and args["commands"] == bytes([0x10])  # one V4_SWAP
    ((v4_fn, v4, revert),) = args["inputs"]
    assert v4_fn.fn_name == "V4_SWAP" and revert == {"revert_on_fail": True}
    assert v4["actions"] == bytes([0x06, 0x0C, 0x0F])  # SWAP_EXACT_IN_SINGLE, SETTLE_ALL, TAKE_ALL
    (swap_fn, swap), (settle_fn, settle), (take_fn, take) = v4["params"]
    assert (swap_fn.fn_name, settle_fn.fn_name, take_fn.fn_name) == (
        "SWAP_EXACT_IN_SINGLE",
        "SETTLE_ALL",
        "TAKE_ALL",
    )
    return {
        "deadline": args["deadline"],
        "swap": swap["exact_in_single_params"],
        "settle": settle,
        "take": take,
    }


@pytest.mark.parametrize("zero_for_one", [True, False])
def test_calldata_decodes_field_by_field(zero_for_one):
    amount_in = 10**17 if zero_for_one else 250 * 10**6
    min_out = 123_456_789 if zero_for_one else 7 * 10**16
    d = decode_swap(ex.swap_calldata(zero_for_one, amount_in, min_out, 1_750_000_000))
    assert d["deadline"] == 1_750_000_000
    s = d["swap"]
    assert s["PoolKey"] == {
        "currency0": NATIVE_ETH,
        "currency1": USDC,
        "fee": 500,
        "tickSpacing": 10,
        "hooks": NATIVE_ETH,
    }
    assert s["zeroForOne"] is zero_for_one
    assert s["amountIn"] == amount_in and s["amountOutMinimum"] == min_out and s["hookData"] == b""
    cin, cout = (NATIVE_ETH, USDC) if zero_for_one else (USDC, NATIVE_ETH)
    assert d["settle"] == {"currency": cin, "maxAmount": amount_in}
    assert d["take"] == {"currency": cout, "minAmount": min_out}


def test_plan_swap_quote_and_minimum():
    sqrt_p, liq = 4_458_936_925_670_369_649_410_795, 562_108_584_583
    plan = ex.plan_swap(
        "sell", 10**15, sqrt_p, liq, 500, max_slippage_bps=50, deadline_seconds=120, now=1000
    )
    exact = swap_exact_input(sqrt_p, liq, 10**15, True, 500)
    assert plan.quote_out == exact.amount_out
    assert plan.min_amount_out == exact.amount_out * 9950 // 10_000
    assert (plan.deadline, plan.value, plan.zero_for_one) == (1120, 10**15, True)
    buy = ex.plan_swap(
        "buy", 10**6, sqrt_p, liq, 500, max_slippage_bps=0, deadline_seconds=60, now=0
    )
    assert buy.value == 0 and buy.min_amount_out == buy.quote_out and not buy.zero_for_one
    with pytest.raises(UserError, match="max-slippage-bps"):
        ex.min_output(100, 10_000)
    with pytest.raises(UserError, match="above the 300 bps cap"):
        ex.check_slippage(9999)
    assert ex.check_slippage(9999, allow_high=True) == 9999 and ex.check_slippage(300) == 300


def test_simulated_quote_bounds_the_minimum():
    plan = ex.plan_swap("sell", 10**17, 4_458_936_925_670_369_649_410_795, 562_108_584_583, 500, 50, 60)
    q = plan.quote_out
    ex.apply_simulation(plan, q - q * 40 // 10_000, 50)  # 0.4 % short: within 0.5 %
    assert plan.min_amount_out == (q - q * 40 // 10_000) * 9950 // 10_000
    ex.apply_simulation(plan, q * 2, 50)  # a high answer never raises the minimum above the quote
    assert plan.min_amount_out == q * 9950 // 10_000
    with pytest.raises(UserError, match="below the checked quote"):
        ex.apply_simulation(plan, q * 9900 // 10_000, 50)


# ---------------------------------------------------------------- the CLI against a devnode

ACCOUNT = Account.create()
KEY = ACCOUNT.key.hex()  # bare hex, no 0x
ADDRESS = ACCOUNT.address
PASSPHRASE = "correct horse battery staple"


node = pytest.fixture(devnode_fixture)


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    return make_keystore(tmp_path_factory.mktemp("keys") / "key.json", ACCOUNT.key, PASSPHRASE)


def run(node, tmp_path, *args, env=None, input=None, url=None):
    env = {"APE_KEYSTORE_PASSWORD": PASSPHRASE, **(env or {})}
    return CliRunner().invoke(
        agent_app(),
        [
            "trade",
            "--execute",
            "--policy",
            "rules",
            "--rpc-url",
            url or node.url,
            "--iterations",
            "1",
            "--journal",
            str(tmp_path / "journal.jsonl"),
            *anchored(list(args), node),
        ],
        env=env,
        input=input,
    )


def journal(tmp_path):
    return [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]


def assert_no_secret(tmp_path, res, secrets=(KEY, PASSPHRASE)):
    text = (
        res.output + (res.stderr if res.stderr_bytes is not None else "") + str(res.exception or "")
    )
    for secret in secrets:
        for needle in (secret.lower(), secret.upper()):
            assert needle not in text
            for f in tmp_path.rglob("*"):
                if f.is_file():
                    assert needle not in f.read_text(errors="replace")


def test_dry_run_needs_only_an_address(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18, usdc=0)  # all ETH: the rules sell toward 50/50
    res = run(node, tmp_path, "--dry-run", "--account", ADDRESS, env={"APE_KEYSTORE_PASSWORD": None})
    assert res.exit_code == 0, res.output
    assert wallet.sent == [] and node.calls.get("eth_sendRawTransaction", 0) == 0
    calldata = next(
        line.split()[1] for line in res.output.splitlines() if line.startswith("calldata ")
    )
    d = decode_swap(calldata)
    (rec,) = journal(tmp_path)
    plan = rec["swap"]["plan"]
    assert rec["decision"] == "APE OUT" and rec["account"] == ADDRESS
    assert rec["swap"]["calldata"] == calldata and "tx_hash" not in rec["swap"]
    # cut to max_trade_usdc (100 USDC of notional at the checked price)
    price = rec["price_check"]["sources"]["swaps"]
    assert rec["capped_by"] == "max_trade_usdc" and plan["amount_in"] == int(100 / price * 1e18)
    assert d["swap"]["zeroForOne"] is True and d["swap"]["amountIn"] == plan["amount_in"]
    assert wallet.quotes == 1 and plan["simulated_out"] == plan["quote_out"]
    assert d["swap"]["amountOutMinimum"] == plan["min_amount_out"] == plan["quote_out"] * 9950 // 10_000
    assert abs(d["deadline"] - (time.time() + DEFAULTS["deadline_seconds"])) < 30
    check = rec["price_check"]
    assert check["ok"] and set(check["sources"]) == {"slot0", "swaps", f"check:{node.check.url}"}
    # anchored by the independent endpoint: the fair output there is the honest quote
    assert check["anchor"]["kind"] == "check" and check["anchor"]["price"] == price
    assert plan["anchor_out"] == plan["quote_out"] and plan["floor_out"] == plan["min_amount_out"]


def test_execute_needs_account_and_a_sane_slippage(node, tmp_path, keystore):
    Wallet(node, ADDRESS, wei=2 * 10**18)
    res = run(node, tmp_path, "--keystore", str(keystore), "--yes")
    assert isinstance(res.exception, UserError) and "--execute needs --account" in str(res.exception)
    res = run(node, tmp_path, "--dry-run")
    assert isinstance(res.exception, UserError) and "--execute needs --account" in str(res.exception)
    res = run(node, tmp_path, "--dry-run", "--account", ADDRESS, "--max-slippage-bps", "9999")
    assert isinstance(res.exception, UserError) and "300 bps cap" in str(res.exception)
    assert not (tmp_path / "journal.jsonl").exists()
    res = run(node, tmp_path, "--dry-run", "--account", ADDRESS, "--max-slippage-bps", "400",
              "--allow-high-slippage")
    assert res.exit_code == 0 and "WARNING" in res.output, res.output
    plan = journal(tmp_path)[-1]["swap"]["plan"]
    assert plan["min_amount_out"] == plan["quote_out"] * 9600 // 10_000


def test_execute_signs_journals_first_and_sends(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18, usdc=0)
    url = node.url.replace("http://", "http://user:s3cr3t-userinfo@") + "/v2/sk-live-APIKEY123"
    res = run(node, tmp_path, "--account", ADDRESS, "--keystore", str(keystore), "--yes",
              "--max-slippage-bps", "30", url=url)  # the anchor: node.check, an agreeing endpoint
    assert res.exit_code == 0, res.output
    (raw,) = wallet.sent
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    decoded = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    assert Account.recover_transaction(raw) == ADDRESS
    assert decoded["chainId"] == 8453 and Web3.to_checksum_address(decoded["to"]) == UNIVERSAL_ROUTER
    d = decode_swap(decoded["data"])
    assert decoded["value"] == d["swap"]["amountIn"] == d["settle"]["maxAmount"]
    recs = journal(tmp_path)
    first, events = recs[0], recs[1:]
    tx_hash = "0x" + keccak(raw).hex()
    # Journal first: the signed transaction's hash and intent, then what became of it.
    assert first["swap"]["tx_hash"] == tx_hash and first["swap"]["status"] == "signed"
    assert first["swap"]["nonce"] == decoded["nonce"] == 0
    assert [e["outcome"] for e in events] == ["sent", "mined"] and events[1]["status"] == 1
    assert all(e["tx_hash"] == tx_hash for e in events)
    assert first["swap"]["plan"]["min_amount_out"] == first["swap"]["plan"]["quote_out"] * 9970 // 10_000
    assert any(k.startswith("check:http://127.0.0.1") for k in first["price_check"]["sources"])
    assert_no_secret(tmp_path, res, (KEY, PASSPHRASE, "s3cr3t-userinfo", "sk-live-APIKEY123"))


def test_first_order_is_confirmed(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    res = run(node, tmp_path, "--account", ADDRESS, "--keystore", str(keystore), input="n\n")
    assert isinstance(res.exception, UserError) and "not confirmed" in str(res.exception)
    assert wallet.sent == [] and "Sign and send?" in res.output
    assert "tx_hash" not in journal(tmp_path)[-1]["swap"]
    res = run(node, tmp_path, "--account", ADDRESS, "--keystore", str(keystore), input="y\n")
    assert res.exit_code == 0, res.output
    assert len(wallet.sent) == 1


def test_daily_notional_limit(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    res = run(node, tmp_path, "--account", ADDRESS, "--keystore", str(keystore), "--yes",
              "--max-daily-usdc", "150")
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output  # 100 USDC: fits
    res = run(node, tmp_path, "--account", ADDRESS, "--keystore", str(keystore), "--yes",
              "--max-daily-usdc", "150")
    assert res.exit_code == 0 and len(wallet.sent) == 1, res.output  # 200 > 150: no order
    last = journal(tmp_path)[-1]
    assert last["refused"].startswith("daily notional limit: 100.00 USDC signed today")


def test_wrong_account_refused_before_building(node, tmp_path, keystore):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    other = "0x000000000000000000000000000000000000dEaD"
    res = run(node, tmp_path, "--account", other, "--keystore", str(keystore), "--yes")
    assert isinstance(res.exception, UserError) and f"is for {ADDRESS}, not the expected account" in str(res.exception)
    assert wallet.sent == [] and not (tmp_path / "journal.jsonl").exists()
    assert_no_secret(tmp_path, res)


def test_insufficient_balance_refused_before_building(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=10**12, usdc=0)  # dust: not even the gas
    res = run(node, tmp_path, "--dry-run", "--account", ADDRESS)
    assert isinstance(res.exception, UserError) and "insufficient ETH balance" in str(res.exception)
    assert wallet.sent == [] and node.calls.get("eth_getTransactionCount", 0) == 0  # no tx built
    (rec,) = journal(tmp_path)
    assert "insufficient" in rec["error"] and "swap" not in rec


def test_usdc_sell_needs_permit2_allowances(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=10**16, usdc=5_000 * 10**6)  # mostly USDC: the rules buy ETH
    res = run(node, tmp_path, "--dry-run", "--account", ADDRESS)
    assert isinstance(res.exception, UserError) and "Permit2" in str(res.exception)
    wallet.erc20_allowance = 2**256 - 1
    wallet.permit2 = (2**160 - 1, int(time.time()) + 3600)
    res = run(node, tmp_path, "--dry-run", "--account", ADDRESS)
    assert res.exit_code == 0, res.output
    rec = journal(tmp_path)[-1]
    d = decode_swap(rec["swap"]["calldata"])
    assert d["swap"]["zeroForOne"] is False and d["settle"]["currency"] == USDC
    assert d["take"]["currency"] == NATIVE_ETH and rec["swap"]["value"] == 0
    assert d["swap"]["amountIn"] == 100 * 10**6  # max_trade_usdc


def test_keystore_only(tmp_path, keystore, monkeypatch):
    cfg = dict(DEFAULTS, account=ADDRESS)
    monkeypatch.setenv("APE_PRIVATE_KEY", "0x" + KEY)  # the old way: never read
    with pytest.raises(UserError, match="needs an encrypted keystore"):
        ex.load_account(cfg)
    monkeypatch.setenv("APE_KEYSTORE_PASSWORD", PASSPHRASE)
    assert ex.load_account(dict(cfg, keystore=str(keystore))).address == ADDRESS
    monkeypatch.setenv("APE_KEYSTORE_PASSWORD", "wrong-pw")
    with pytest.raises(UserError, match="wrong passphrase") as e:
        ex.load_account(dict(cfg, keystore=str(keystore)))
    assert "wrong-pw" not in str(e.value)
    with pytest.raises(UserError, match="needs --account"):
        ex.load_account(dict(DEFAULTS, keystore=str(keystore)))
    # ape-agent keystore's writer: 0600, refuses to overwrite, round-trips
    out = tmp_path / "new.json"
    assert ex.write_keystore(out, "0x" + KEY, PASSPHRASE) == ADDRESS
    assert out.stat().st_mode & 0o777 == 0o600 and KEY not in out.read_text()
    with pytest.raises(UserError, match="refusing to overwrite"):
        ex.write_keystore(out, "0x" + KEY, PASSPHRASE)
    monkeypatch.setenv("APE_KEYSTORE_PASSWORD", PASSPHRASE)
    assert ex.load_account(dict(cfg, keystore=str(out))).address == ADDRESS
    assert not any(k == "key" or k.endswith("private_key") or k == "key_env" for k in DEFAULTS)


def test_execute_refuses_other_chains(tmp_path):
    other = live_node(simulate(100, seed=2), chain_id=1)
    try:
        Wallet(other, ADDRESS, wei=10**18)
        res = run(other, tmp_path, "--dry-run", "--account", ADDRESS, "--min-price", "1", "--max-price", "1e6")
        assert isinstance(res.exception, UserError) and "not Base (8453)" in str(res.exception)
    finally:
        other.stop()
    with pytest.raises(UserError, match="only accepted for a loopback"):
        ex.connect(["https://base.example.invalid/v2/KEY"], fork=True)  # refused before any request
