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
    Chunk,
    CollectError,
    CollectSettings,
    check_chain,
    pool_state,
    scan,
)
from chain.pool import BLOCK_SECONDS, ETH_USDC_POOL_ID, norm_hex32
from chain.rpc import Client, RpcSettings, TransportError


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
    give_up_s: float = 30.0,
) -> dict[str, Any]:
    """One read: every request gives up after ``max_retries`` retries or ``give_up_s``."""
    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    s = CollectSettings(
        rpc=RpcSettings(
            rpc_urls=list(rpc_urls),
            timeout_s=timeout_s,
            rate_limit=None,
            give_up_s=give_up_s,
            max_attempts=max_retries + 1,
        ),
        from_block=0,
        confirmations=0,
        pool_id=norm_hex32(pool_id),
        allow_chain_id=allow_chain_id,
        progress=False,
    )
    try:
        client = Client(s.rpc, log=lambda m: None)
        chain_id, head = check_chain(client, s)
        state = pool_state(client, s.pool_id)
        cache = BlockCache(client, s.batch_size)
        head_hash, head_ts = cache.get([head])[head]
        lo = max(0, head - (minutes * 60) // BLOCK_SECONDS)
        swaps: list[dict[str, Any]] = []

        def keep(_: int, chunk: Chunk | None) -> None:
            if chunk is not None:
                swaps.extend(chunk.events)

        beyond = scan(client, cache, s, [(lo, head)], keep)
        if beyond:
            raise CollectError(f"the endpoint does not serve blocks {beyond[0][0]}.. yet")
    except (TransportError, CollectError) as e:
        raise UserError(f"cannot use RPC {', '.join(map(redact_url, rpc_urls))}: {e}") from None
    swaps.sort(key=lambda e: (e["block_number"], e["log_index"]))
    swaps = [e for e in swaps if e["timestamp"] >= head_ts - minutes * 60]
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
