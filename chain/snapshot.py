"""Live pool state for the agent: StateView slot0 + liquidity and last-N-minutes swap metrics."""

from __future__ import annotations

import math
import time
from typing import Any

from apeagent.errors import UserError
from apeagent.redact import redact_url
from chain.amm import price_from_sqrt_price_x96
from chain.collect import (
    BlockCache,
    Client,
    CollectError,
    CollectSettings,
    CollectStats,
    RangeTooLarge,
    RetryChunk,
    check_chain,
    fetch_chunk,
    pool_state,
)
from chain.pool import ETH_USDC_POOL_ID, norm_hex32

BLOCK_SECONDS = 2


def recent_swaps(
    client: Client, cache: BlockCache, s: CollectSettings, lo: int, hi: int
) -> list[dict[str, Any]]:
    """Swaps in [lo, hi], splitting ranges the provider refuses."""
    out: list[dict[str, Any]] = []
    stack = [(lo, hi)]
    while stack:
        a, b = stack.pop()
        try:
            events, _ = fetch_chunk(client, cache, s, a, b)
        except RangeTooLarge:
            if a == b:
                raise CollectError(f"provider refuses even a single block ({a})") from None
            mid = (a + b) // 2
            stack += [(mid + 1, b), (a, mid)]
            continue
        except RetryChunk:
            stack.append((a, b))
            continue
        out += events
    out.sort(key=lambda e: (e["block_number"], e["log_index"]))
    return out


def window_metrics(swaps: list[dict[str, Any]], now_price: float) -> dict[str, Any]:
    """Metrics of the swaps in a window (chain order). Volumes pool side, see docs/chain.md."""
    prices = [price_from_sqrt_price_x96(e["sqrt_price_x96"]) for e in swaps]
    eth = [-e["amount0"] / 1e18 for e in swaps]  # + : ETH into the pool (traders sold)
    usdc = [-e["amount1"] / 1e6 for e in swaps]
    rets = [math.log(b / a) for a, b in zip(prices, prices[1:], strict=False)]
    first = prices[0] if prices else now_price
    return {
        "swap_count": len(swaps),
        "buys": sum(1 for x in eth if x < 0),
        "sells": sum(1 for x in eth if x > 0),
        "volume_eth": sum(abs(x) for x in eth),
        "volume_usdc": sum(abs(x) for x in usdc),
        "net_flow_eth": sum(eth),
        "price_first": first,
        "price_high": max(prices) if prices else now_price,
        "price_low": min(prices) if prices else now_price,
        "price_change_pct": (now_price / first - 1) * 100,
        "realized_vol": math.sqrt(sum(r * r for r in rets)),
    }


def snapshot(
    rpc_urls: list[str],
    pool_id: str = ETH_USDC_POOL_ID,
    minutes: int = 60,
    allow_chain_id: int | None = None,
    timeout_s: float = 10.0,
    max_retries: int = 5,
) -> dict[str, Any]:
    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    s = CollectSettings(
        rpc_urls=list(rpc_urls),
        from_block=0,
        pool_id=norm_hex32(pool_id),
        allow_chain_id=allow_chain_id,
        timeout_s=timeout_s,
        max_retries=max_retries,
        rate_limit=None,
        progress=False,
    )
    client = Client(s, CollectStats())
    try:
        chain_id, head = check_chain(client, s)
        state = pool_state(client, s.pool_id)
        cache = BlockCache(client, s.batch_size)
        head_hash, head_ts = cache.get([head])[head]
        lo = max(0, head - (minutes * 60) // BLOCK_SECONDS)
        swaps = [
            e
            for e in recent_swaps(client, cache, s, lo, head)
            if e["timestamp"] >= head_ts - minutes * 60
        ]
    except CollectError as e:
        raise UserError(f"cannot use RPC {', '.join(map(redact_url, rpc_urls))}: {e}") from None
    price = price_from_sqrt_price_x96(state["sqrt_price_x96"])
    return {
        "chain_id": chain_id,
        "pool_id": s.pool_id,
        "block_number": head,
        "block_hash": head_hash,
        "block_timestamp": head_ts,
        "fetched_at": int(time.time()),
        "price": price,
        "sqrt_price_x96": str(state["sqrt_price_x96"]),
        "tick": state["tick"],
        "liquidity": str(state["liquidity"]),
        "lp_fee": state["lp_fee"],
        "protocol_fee": state["protocol_fee"],
        "window_minutes": minutes,
        **window_metrics(swaps, price),
    }
