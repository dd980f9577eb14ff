"""Price sanity: the price an order is sized and bounded with must agree across independent sources.

Before every decision the live loop pins the head block and reads, at that block:

- ``slot0``: StateView ``getSlot0`` / ``getLiquidity`` on the endpoint it trades through (the
  pool state the order is sized and quoted with);
- ``swaps``: the ``sqrtPriceX96`` of the pool's latest Swap event within
  ``price_lookback_blocks`` (a swap leaves the pool exactly at that price; liquidity changes
  do not move it), from ``eth_getLogs`` on the same endpoint;
- ``check:<host>``: ``getSlot0`` on every endpoint of ``check_rpc_urls`` (another provider).

All sources must lie within ``price_tolerance_pct`` of the pool's own latest swap; otherwise
no order is placed and the journal names the sources that disagreed. ``slot0`` and ``swaps``
come from the trading endpoint: an endpoint that lies consistently passes their comparison,
which is why live orders also need the check endpoints or bounds of :mod:`agent.anchor`. Every answer is
validated first (lengths, the pool id and the PoolManager address of every log, the price
range, the static 0.05 % fee of the pool, positive liquidity): a malformed answer is a
failed check, never a price.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_utils import to_checksum_address

from apeagent.errors import UserError
from apeagent.redact import redact_url
from chain.amm import MAX_SQRT_PRICE, MIN_SQRT_PRICE, price_from_sqrt_price_x96
from chain.pool import (
    ETH_USDC_POOL_ID,
    FEE,
    POOL_MANAGER,
    STATE_VIEW,
    SWAP_TOPIC,
    decode_liquidity,
    decode_slot0,
    decode_swap_log,
    encode_get_liquidity,
    encode_get_slot0,
)


@dataclass
class PoolState:
    block: int
    sqrt_price_x96: int
    tick: int
    lp_fee: int
    liquidity: int
    price: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sqrt_price_x96": str(self.sqrt_price_x96)}


def _check_sqrt(sqrt_price_x96: int, what: str) -> None:
    if not MIN_SQRT_PRICE <= sqrt_price_x96 < MAX_SQRT_PRICE:
        raise UserError(f"{what}: sqrtPriceX96 {sqrt_price_x96} is outside the valid range")


def head_block(w3) -> int:
    n = w3.eth.block_number
    if not isinstance(n, int) or n < 0:
        raise UserError(f"the node answered a head block of {n!r}")
    return n


def read_pool(w3, block: int) -> PoolState:
    """StateView slot0 + liquidity of the ETH-USDC pool at ``block``, validated."""
    try:
        slot0 = bytes(w3.eth.call({"to": STATE_VIEW, "data": encode_get_slot0(ETH_USDC_POOL_ID)}, block))
        liq = bytes(w3.eth.call({"to": STATE_VIEW, "data": encode_get_liquidity(ETH_USDC_POOL_ID)}, block))
    except Exception as e:  # reverts, HTTP errors: the caller journals the failed check
        raise UserError(f"StateView getSlot0/getLiquidity failed ({type(e).__name__})") from None
    if len(slot0) != 128 or len(liq) != 32:
        raise UserError(
            f"StateView answered {len(slot0)} + {len(liq)} bytes (expected 128 + 32): is this Base?"
        )
    s = decode_slot0(slot0)
    liquidity = decode_liquidity(liq)
    _check_sqrt(s["sqrt_price_x96"], "getSlot0")
    if s["lp_fee"] != FEE:
        raise UserError(f"getSlot0 reports an LP fee of {s['lp_fee']} pips; the pool's fee is {FEE}")
    if liquidity <= 0:
        raise UserError("getLiquidity reports no in-range liquidity: nothing to trade against")
    return PoolState(
        block=block,
        sqrt_price_x96=s["sqrt_price_x96"],
        tick=s["tick"],
        lp_fee=s["lp_fee"],
        liquidity=liquidity,
        price=price_from_sqrt_price_x96(s["sqrt_price_x96"]),
    )


def latest_swap(w3, block: int, lookback_blocks: int) -> dict[str, Any] | None:
    """The pool's latest Swap event in ``[block - lookback_blocks, block]`` (None: no swap)."""
    lo = max(0, block - int(lookback_blocks))
    try:
        logs = w3.eth.get_logs(
            {
                "fromBlock": lo,
                "toBlock": block,
                "address": to_checksum_address(POOL_MANAGER),
                "topics": [SWAP_TOPIC, ETH_USDC_POOL_ID],
            }
        )
    except Exception as e:
        raise UserError(f"eth_getLogs for the pool's swaps failed ({type(e).__name__})") from None
    best = None
    for log in logs:
        if str(log.get("address", "")).lower() != POOL_MANAGER.lower():
            raise UserError(f"eth_getLogs answered a log of {log.get('address')}, not the PoolManager")
        try:
            e = decode_swap_log(log)
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"eth_getLogs answered a malformed Swap log ({err})") from None
        if e["pool_id"] != ETH_USDC_POOL_ID or not lo <= e["block_number"] <= block:
            raise UserError(
                f"eth_getLogs answered a Swap of pool {e['pool_id']} at block {e['block_number']}, "
                f"not of the ETH-USDC pool in [{lo}, {block}]"
            )
        _check_sqrt(e["sqrt_price_x96"], "a Swap event")
        if best is None or (e["block_number"], e["log_index"]) > (best["block_number"], best["log_index"]):
            best = e
    return best


def check_prices(
    w3,
    cfg: dict,
    check_w3s: list[tuple[str, Any]] = (),
    *,
    block: int | None = None,
    check_heads: dict[str, int] | None = None,
) -> tuple[PoolState | None, dict[str, Any], dict[str, PoolState]]:
    """Read every source at one pinned block (``block``, else the head); ``(pool state,
    report, check pool states by source name)``. The pool state is None when the check
    failed: ``report["problems"]`` says which sources disagreed or failed.

    ``report``: ``block``, ``tolerance_pct``, ``sources`` ({name: price}), ``deviation_pct``
    ({name: % from the latest swap}), ``problems`` (list of lines), ``ok``. A check endpoint
    is read at the same block when it has it (``check_heads``: its head), else at its head.
    """
    tol = float(cfg["price_tolerance_pct"])
    block = head_block(w3) if block is None else block
    report: dict[str, Any] = {"block": block, "tolerance_pct": tol, "sources": {}, "problems": []}
    pool, checks = None, {}
    try:
        pool = read_pool(w3, block)
        report["sources"]["slot0"] = pool.price
    except UserError as e:
        report["problems"].append(f"slot0: {e}")
    try:
        swap = latest_swap(w3, block, int(cfg["price_lookback_blocks"]))
        if swap is None:
            report["problems"].append(
                f"swaps: no Swap event of the pool in the last {cfg['price_lookback_blocks']} blocks "
                "to check the price against"
            )
        else:
            report["sources"]["swaps"] = price_from_sqrt_price_x96(swap["sqrt_price_x96"])
            report["swap_block"] = swap["block_number"]
    except UserError as e:
        report["problems"].append(f"swaps: {e}")
    for url, other in check_w3s:
        name = check_name(url)
        try:
            head = (check_heads or {}).get(name)
            checks[name] = read_pool(other, min(block, head_block(other) if head is None else head))
            report["sources"][name] = checks[name].price
        except Exception as e:  # noqa: BLE001 - any failure of a configured check refuses
            report["problems"].append(f"{name} failed: {e if isinstance(e, UserError) else type(e).__name__}")
    ref = report["sources"].get("swaps")
    if ref:
        report["deviation_pct"] = {
            k: 100.0 * (v / ref - 1.0) for k, v in report["sources"].items() if k != "swaps"
        }
        for k, d in report["deviation_pct"].items():
            if abs(d) > tol:
                report["problems"].append(
                    f"{k} {report['sources'][k]:.2f} disagrees with the latest swap {ref:.2f} "
                    f"by {d:+.2f}% (bound {tol:g}%)"
                )
    report["ok"] = not report["problems"]
    return (pool if report["ok"] else None), report, checks


def check_name(url: str) -> str:
    """A check endpoint's source name in reports: ``check:<redacted URL>``."""
    return f"check:{redact_url(url)}"
