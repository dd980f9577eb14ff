"""Shared pieces of the agent tests: a tiny student, hand-built swap rows, a wallet on the devnode.

The wallet extends the chain tests' JSON-RPC node (real HTTP on 127.0.0.1) through its
``methods`` hook with what an execution needs: balances, ERC-20 / Permit2 allowances, nonces,
fee data, and ``eth_sendRawTransaction`` that decodes and keeps the signed transaction.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak

from agent.execute import PERMIT2
from chain.amm import Q96, sqrt_price_x96_from_price
from chain.pool import ETH_USDC_POOL_ID, FEE, USDC
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
        swap_row(1000 + i, 0, start_ts + i * every_s + 1, p, liquidity)
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
            return state_call(params)

        node.methods.update(
            eth_call=call,
            eth_getBalance=lambda p: hex(self.wei if p[0].lower() == self.address else 0),
            eth_getTransactionCount=lambda p: hex(len(self.sent)),
            eth_maxPriorityFeePerGas=lambda p: hex(1_000_000),
            eth_sendRawTransaction=self._send,
            eth_getTransactionReceipt=self._receipt,
        )

    def _send(self, params: list) -> str:
        raw = bytes.fromhex(params[0][2:])
        self.sent.append(raw)
        return "0x" + keccak(raw).hex()

    def _receipt(self, params: list) -> dict[str, Any] | None:
        h = params[0].lower()
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
