"""Shared pieces of the agent tests: a tiny student, hand-built swap rows, a wallet on the devnode,
and answers that lie.

The wallet extends the chain tests' JSON-RPC node (real HTTP on 127.0.0.1) through its
``methods`` hook with what an execution needs: balances, ERC-20 / Permit2 allowances, nonces,
fee data, the node's own V4 Quoter (``DevNode.serve_quoter``: the exact pool math at the
node's pool state), ``eth_sendRawTransaction`` that keeps the signed transaction, receipts,
and switches for the failures the tests need (a refused send, a send that hangs, a
transaction that stays pending, a quote that lies on its own). :func:`lie_slot0` and
:func:`lie_swaps` make one kind of answer of a node lie about the price; the node's
``price_factor`` makes all of them lie together (a consistent liar).
"""

from __future__ import annotations

import math
import math as _math
import random
import threading
from pathlib import Path
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak

from agent.execute import PERMIT2, V4_QUOTER
from chain.amm import Q96, sqrt_price_x96_from_price
from chain.devnode import RpcError
from chain.pool import (
    ETH_USDC_POOL_ID,
    FEE,
    GET_SLOT0_SELECTOR,
    STATE_VIEW,
    SWAP_DATA_TYPES,
    SWAP_TOPIC,
    USDC,
)
from distill.prompt import LN_TICK, MarketState, format_prompt, system_prompt
from distill.rules import cod_answer

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared/data/base_eth_usdc_v4_swaps.csv"
RULES = {
    "band_low": 35.0,
    "band_high": 65.0,
    "trend_pct": 0.3,
    "trade_fraction": 0.1,
    "high_vol_pct": 1.0,
}


def agent_app():
    """The real `ape-agent` CLI."""
    from agent.cli import app

    return app


def build_student(out: Path) -> Path:
    """A tiny untrained qwen2 model (its answers are mostly garbage: that is the point)."""
    from finetune_mlx.tiny import build_tiny

    rng = random.Random(0)
    corpus = []
    for _ in range(40):
        price, change = rng.uniform(2500, 3500), rng.uniform(-1.5, 1.5)
        s = MarketState(
            price=price,
            change_pct=change,
            change_ticks=int(round(math.log1p(change / 100) / LN_TICK)),
            volume_eth=rng.uniform(1, 300),
            volume_usdc=rng.uniform(1e3, 1e6),
            volatility_pct=rng.uniform(0.1, 2),
            swap_count=rng.randint(1, 900),
            eth_balance=rng.uniform(0, 3),
            usdc_balance=rng.uniform(0, 9000),
            window_minutes=60,
        )
        corpus += [system_prompt("cod"), format_prompt(s), cod_answer(s, RULES)]
    return build_tiny(
        out,
        corpus,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        vocab_size=400,
        seed=0,
    )


def swap_row(
    block: int, log_index: int, ts: int, price: float, liquidity: int, amount0: int = -(10**15)
) -> dict:
    """A store row at ``price`` (amounts are placeholders: the backtest fills at sqrt/liquidity)."""
    sqrt_p = sqrt_price_x96_from_price(price)
    amount1 = -int(amount0 * (sqrt_p / Q96) ** 2)
    return {
        "block_number": block,
        "log_index": log_index,
        "timestamp": ts,
        "transaction_hash": "0x" + keccak(text=f"tx{block}:{log_index}").hex(),
        "pool_id": ETH_USDC_POOL_ID,
        "sender": "0x6fF5693b99212Da76ad316178A184AB56D299b43",
        "original_sender": None,
        "is_contract_sender": None,
        "block_hash": None,
        "tx_to": None,
        "amount0": amount0,
        "amount1": amount1,
        "sqrt_price_x96": sqrt_p,
        "liquidity": liquidity,
        "tick": 0,
        "fee": FEE,
    }


def price_path(
    prices: list[float], start_ts: int = 1_700_000_000, every_s: int = 300, liquidity: int = 10**17
) -> list[dict]:
    """One swap per ``every_s`` seconds at each price (one swap per 5-minute bar by default)."""
    return [
        swap_row(1000 + i * every_s // 2, 0, start_ts + i * every_s + 1, p, liquidity)  # Base: 2 s a block
        for i, p in enumerate(prices)
    ]


class Wallet:
    """Account state served by a DevNode: balances, allowances, nonce; records sent txs."""

    def __init__(self, node, address: str, wei: int = 0, usdc: int = 0):
        self.node, self.address = node, address.lower()
        self.wei, self.usdc = wei, usdc
        self.erc20_allowance = 0  # USDC -> Permit2
        self.permit2 = (0, 0)  # (amount, expiration) Permit2 -> router
        self.sent: list[bytes] = []
        self.mine = True  # False: sent transactions stay pending (no receipt)
        self.send_error: str | None = None  # a JSON-RPC error for eth_sendRawTransaction
        self.send_hold: threading.Event | None = None  # set: the send hangs until it is set
        self.quote_factor = 1.0  # the Quoter's answer times this (a lying simulation alone)
        self.quote_revert = False
        self.quotes = 0
        node.serve_quoter(V4_QUOTER)
        state_call = node.methods["eth_call"]
        sel = {
            keccak(text=s)[:4].hex(): s
            for s in (
                "balanceOf(address)",
                "allowance(address,address)",
                "allowance(address,address,address)",
            )
        }

        def call(params: list) -> str:
            tx = params[0]
            to = (tx.get("to") or "").lower()
            data = bytes.fromhex((tx.get("data") or tx.get("input") or "0x")[2:])
            name = sel.get(data[:4].hex())
            if to == USDC.lower() and name == "balanceOf(address)":
                (who,) = decode(["address"], data[4:])
                return (
                    "0x"
                    + encode(["uint256"], [self.usdc if who.lower() == self.address else 0]).hex()
                )
            if to == USDC.lower() and name == "allowance(address,address)":
                owner, spender = decode(["address", "address"], data[4:])
                ok = owner.lower() == self.address and spender.lower() == PERMIT2.lower()
                return "0x" + encode(["uint256"], [self.erc20_allowance if ok else 0]).hex()
            if to == PERMIT2.lower() and name == "allowance(address,address,address)":
                amount, exp = self.permit2
                return "0x" + encode(["uint160", "uint48", "uint48"], [amount, exp, 0]).hex()
            if to == V4_QUOTER.lower():
                return self._quote(params, state_call)
            return state_call(params)

        node.methods.update(
            eth_call=call,
            eth_getBalance=lambda p: hex(self.wei if p[0].lower() == self.address else 0),
            eth_getTransactionCount=lambda p: hex(len(self.sent)),
            eth_getTransactionByHash=self._get_tx,
            eth_maxPriorityFeePerGas=lambda p: hex(1_000_000),
            eth_sendRawTransaction=self._send,
            eth_getTransactionReceipt=self._receipt,
        )

    def pool_state(self) -> dict:
        """The node's pool state at its head, as the node tells it."""
        return self.node.pool_state()

    def _quote(self, params: list, node_call) -> str:
        self.quotes += 1
        if self.quote_revert:
            raise RpcError(3, "execution reverted")
        out, gas = decode(["uint256", "uint256"], bytes.fromhex(node_call(params)[2:]))
        return "0x" + encode(["uint256", "uint256"], [int(out * self.quote_factor), gas]).hex()

    def _send(self, params: list) -> str:
        if self.send_hold is not None:
            self.send_hold.wait(60)
        if self.send_error:
            raise RpcError(-32000, self.send_error)
        raw = bytes.fromhex(params[0][2:])
        self.sent.append(raw)
        return "0x" + keccak(raw).hex()

    def _get_tx(self, params: list) -> dict[str, Any] | None:
        h = params[0].lower()
        for raw in self.sent:
            if "0x" + keccak(raw).hex() == h:
                from eth_account.typed_transactions import TypedTransaction
                from hexbytes import HexBytes

                tx = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
                return {
                    "hash": h, "from": self.address, "to": "0x" + bytes(tx["to"]).hex(),
                    "nonce": hex(tx["nonce"]), "value": hex(tx["value"]), "gas": hex(tx["gas"]),
                    "input": "0x", "blockNumber": None, "blockHash": None, "transactionIndex": None,
                    "type": "0x2", "chainId": hex(tx["chainId"]),
                    "maxFeePerGas": hex(tx["maxFeePerGas"]),
                    "maxPriorityFeePerGas": hex(tx["maxPriorityFeePerGas"]),
                    "v": "0x0", "r": "0x1", "s": "0x1",
                }
        return self.node._get_tx(params)

    def _receipt(self, params: list) -> dict[str, Any] | None:
        h = params[0].lower()
        if not self.mine:
            return None
        for raw in self.sent:
            if "0x" + keccak(raw).hex() == h:
                head = self.node.head
                return {
                    "transactionHash": h,
                    "transactionIndex": "0x0",
                    "blockHash": "0x" + "11" * 32,
                    "blockNumber": hex(head),
                    "from": self.address,
                    "to": None,
                    "cumulativeGasUsed": "0x2bf20",
                    "gasUsed": "0x2bf20",
                    "contractAddress": None,
                    "logs": [],
                    "logsBloom": "0x" + "00" * 256,
                    "status": "0x1",
                    "effectiveGasPrice": "0x3b9aca00",
                    "type": "0x2",
                }
        return None


def lie_slot0(node, factor: float) -> None:
    """StateView ``getSlot0`` on ``node`` answers ``factor`` times the real price (every other
    answer, the Swap logs included, stays true)."""
    real = node.methods["eth_call"]

    def call(params: list) -> str:
        out = real(params)
        data = params[0].get("data") or params[0].get("input") or "0x"
        if (params[0].get("to") or "").lower() == STATE_VIEW.lower() and data[:10] == GET_SLOT0_SELECTOR:
            sqrt_p, tick, pfee, lpfee = decode(["uint160", "int24", "uint24", "uint24"], bytes.fromhex(out[2:]))
            sqrt_p = int(sqrt_p * _math.sqrt(factor))
            return "0x" + encode(["uint160", "int24", "uint24", "uint24"], [sqrt_p, tick, pfee, lpfee]).hex()
        return out

    node.methods["eth_call"] = call


def lie_swaps(node, factor: float) -> None:
    """``eth_getLogs`` on ``node`` answers Swap events at ``factor`` times their real price."""
    real = node.methods["eth_getLogs"]

    def get_logs(params: list) -> list:
        out = []
        for log in real(params):
            if log["topics"][0].lower() == SWAP_TOPIC:
                vals = list(decode(list(SWAP_DATA_TYPES), bytes.fromhex(log["data"][2:])))
                vals[2] = int(vals[2] * _math.sqrt(factor))
                log = {**log, "data": "0x" + encode(list(SWAP_DATA_TYPES), vals).hex()}
            out.append(log)
        return out

    node.methods["eth_getLogs"] = get_logs


def make_keystore(path: Path, key: bytes, passphrase: str) -> Path:
    """An eth-account keystore with a cheap KDF (pbkdf2, 1024 rounds: tests only)."""
    import json

    from eth_account import Account

    path.write_text(json.dumps(Account.encrypt(key, passphrase, kdf="pbkdf2", iterations=1024)))
    return path


def live_node(rows=None, **kw):
    """A devnode serving ``rows`` (300 simulated swaps) that looks live: the head block is
    dated now and a block comes every 2 s (``DevNode.set_clock``)."""
    from chain.devnode import start_devnode
    from chain.simulate import simulate

    n = start_devnode(simulate(300, seed=1) if rows is None else rows, **kw)
    n.set_clock()
    return n


def devnode_fixture():
    """A fresh live devnode serving 300 simulated swaps (the agent tests' ``node`` fixture);
    ``node.check``: a second, independent live devnode with the same swaps (the anchor)."""
    check = live_node()
    n = live_node()
    n.check = check
    yield n
    n.stop()
    check.stop()


def anchored(args: list[str], node) -> list[str]:
    """``args`` with ``--check-rpc-url node.check.url`` unless they name an anchor already."""
    if any(a in args for a in ("--check-rpc-url", "--min-price", "--max-price", "--no-anchor")):
        return [a for a in args if a != "--no-anchor"]
    return [*args, "--check-rpc-url", node.check.url]
