"""Execution: Universal Router calldata decoded back field by field, keys, and refusals.

The devnode (real HTTP JSON-RPC) gets a wallet (balances, allowances, nonce) and accepts
signed transactions; the transactions are decoded and checked, never broadcast anywhere.
"""

from __future__ import annotations

import json
import time

import pytest
from agent_fixtures import Wallet, agent_app
from eth_account import Account
from typer.testing import CliRunner
from web3 import Web3

from agent import execute as ex
from agent.config import DEFAULTS
from apeagent.errors import UserError
from chain.amm import swap_exact_input
from chain.devnode import start_devnode
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


# ---------------------------------------------------------------- the CLI against a devnode


KEY = Account.create().key.hex()  # bare hex, no 0x
ADDRESS = Account.from_key(KEY).address


@pytest.fixture
def node():
    n = start_devnode(simulate(300, seed=1))
    yield n
    n.stop()


def run(node, tmp_path, *args, env=None):
    env = {"APE_PRIVATE_KEY": "0x" + KEY, **(env or {})}
    res = CliRunner().invoke(
        agent_app(),
        [
            "trade",
            "--execute",
            "--policy",
            "rules",
            "--rpc-url",
            node.url,
            "--iterations",
            "1",
            "--journal",
            str(tmp_path / "journal.jsonl"),
            *args,
        ],
        env=env,
    )
    return res


def assert_no_secret(tmp_path, res, secret=KEY):
    text = (
        res.output + (res.stderr if res.stderr_bytes is not None else "") + str(res.exception or "")
    )
    for needle in (secret.lower(), secret.upper()):
        assert needle not in text
        for f in tmp_path.rglob("*"):
            if f.is_file():
                assert needle not in f.read_text(errors="replace")


def test_dry_run_prints_calldata_and_sends_nothing(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18, usdc=0)  # all ETH: the rules sell toward 50/50
    res = run(node, tmp_path, "--dry-run")
    assert res.exit_code == 0, res.output
    assert wallet.sent == [] and node.calls.get("eth_sendRawTransaction", 0) == 0
    calldata = next(
        line.split()[1] for line in res.output.splitlines() if line.startswith("calldata ")
    )
    d = decode_swap(calldata)
    (rec,) = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    plan = rec["swap"]["plan"]
    assert (
        rec["decision"] == "APE OUT"
        and rec["account"] == ADDRESS
        and rec["swap"]["calldata"] == calldata
    )
    assert (
        d["swap"]["zeroForOne"] is True and d["swap"]["amountIn"] == plan["amount_in"] == 10**18
    )  # max_trade_eth
    assert (
        d["swap"]["amountOutMinimum"]
        == plan["min_amount_out"]
        == plan["quote_out"] * 9950 // 10_000
    )
    assert abs(d["deadline"] - (time.time() + DEFAULTS["deadline_seconds"])) < 30
    assert_no_secret(tmp_path, res)


def test_execute_signs_and_sends_the_swap(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18, usdc=0)
    res = run(node, tmp_path, "--max-slippage-bps", "30", "--max-trade-eth", "0.5")
    assert res.exit_code == 0, res.output
    (raw,) = wallet.sent
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    decoded = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    assert Account.recover_transaction(raw) == ADDRESS
    assert (
        decoded["chainId"] == 8453 and Web3.to_checksum_address(decoded["to"]) == UNIVERSAL_ROUTER
    )
    d = decode_swap(decoded["data"])
    assert (
        decoded["value"] == d["swap"]["amountIn"] == 5 * 10**17
        and d["settle"]["maxAmount"] == 5 * 10**17
    )
    rec = json.loads((tmp_path / "journal.jsonl").read_text().splitlines()[0])
    assert (
        rec["swap"]["plan"]["min_amount_out"] == rec["swap"]["plan"]["quote_out"] * 9970 // 10_000
    )
    assert rec["swap"]["status"] == 1 and rec["swap"]["tx_hash"].startswith("0x")
    assert_no_secret(tmp_path, res)


def test_wrong_account_refused_before_building(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=2 * 10**18)
    res = run(node, tmp_path, "--account", "0x000000000000000000000000000000000000dEaD")
    assert isinstance(
        res.exception, UserError
    ) and f"is for {ADDRESS}, not the expected account" in str(res.exception)
    assert wallet.sent == [] and not (tmp_path / "journal.jsonl").exists()
    assert_no_secret(tmp_path, res)


def test_insufficient_balance_refused_before_building(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=10**12, usdc=0)  # dust: not even the gas
    res = run(node, tmp_path)
    assert isinstance(res.exception, UserError) and "insufficient ETH balance" in str(res.exception)
    assert (
        wallet.sent == [] and node.calls.get("eth_getTransactionCount", 0) == 0
    )  # no tx was built
    rec = json.loads((tmp_path / "journal.jsonl").read_text())
    assert "insufficient" in rec["error"] and "swap" not in rec
    assert_no_secret(tmp_path, res)


def test_usdc_sell_needs_permit2_allowances(node, tmp_path):
    wallet = Wallet(node, ADDRESS, wei=10**16, usdc=5_000 * 10**6)  # mostly USDC: the rules buy ETH
    res = run(node, tmp_path, "--dry-run")
    assert isinstance(res.exception, UserError) and "Permit2" in str(res.exception)
    wallet.erc20_allowance = 2**256 - 1
    wallet.permit2 = (2**160 - 1, int(time.time()) + 3600)
    res = run(node, tmp_path, "--dry-run")
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "journal.jsonl").read_text().splitlines()[-1])
    d = decode_swap(rec["swap"]["calldata"])
    assert (
        d["swap"]["zeroForOne"] is False
        and d["settle"]["currency"] == USDC
        and d["take"]["currency"] == NATIVE_ETH
    )
    assert rec["swap"]["value"] == 0


def test_key_sources_and_errors(tmp_path, monkeypatch):
    cfg = dict(DEFAULTS)
    monkeypatch.delenv("APE_PRIVATE_KEY", raising=False)
    with pytest.raises(UserError, match=r"no private key: set \$APE_PRIVATE_KEY"):
        ex.load_account(cfg)
    monkeypatch.setenv("APE_PRIVATE_KEY", KEY[:40])
    with pytest.raises(UserError) as e:
        ex.load_account(cfg)
    assert "not hold a valid" in str(e.value) and KEY[:40] not in str(e.value)
    monkeypatch.delenv("APE_PRIVATE_KEY")
    store = tmp_path / "key.json"
    store.write_text(
        json.dumps(Account.encrypt("0x" + KEY, "s3cret-pw", kdf="pbkdf2", iterations=1024))
    )
    monkeypatch.setenv("APE_KEYSTORE_PASSWORD", "s3cret-pw")
    assert ex.load_account(cfg, str(store)).address == ADDRESS
    monkeypatch.setenv("APE_KEYSTORE_PASSWORD", "wrong-pw")
    with pytest.raises(UserError, match="wrong password") as e:
        ex.load_account(cfg, str(store))
    assert "wrong-pw" not in str(e.value)
    # The config never holds a key: only the name of the variable that does.
    assert not any("key" == k or k.endswith("private_key") for k in DEFAULTS)


def test_execute_refuses_other_chains(tmp_path):
    other = start_devnode(simulate(100, seed=2), chain_id=1)
    try:
        Wallet(other, ADDRESS, wei=10**18)
        res = run(other, tmp_path, "--dry-run")
        assert isinstance(res.exception, UserError) and "not Base (8453)" in str(res.exception)
    finally:
        other.stop()
    with pytest.raises(UserError, match="only accepted for a loopback"):
        ex.connect(["https://base.example.invalid/v2/KEY"], fork=True)  # refused before any request
