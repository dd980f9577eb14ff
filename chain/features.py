"""Swaps -> market features: ``swaps.parquet`` (one row per swap) and ``bars.parquet`` (time bars).

Formulas (see docs/chain.md):

* price (USDC per ETH) = ``sqrtPriceX96**2 / 2**192 * 10**(18-6)``, from the exact integer;
  never from the tick (the tick is a floor and loses up to 1 bp).
* Event amounts are the swapper's deltas (V4 ``Swap`` event): ``amount0 < 0`` means ETH was
  paid *into* the pool, i.e. the trader sold ETH. The processed files use the *pool side*:
  ``amount_eth = -amount0 / 1e18``, ``amount_usdc = -amount1 / 1e6`` (positive = into the pool).
* ``direction`` = +1 when the trader bought ETH (ETH left the pool, ``amount_eth < 0``), -1 when
  they sold.
* per-swap ``log_return`` = ``ln(price_i / price_{i-1})`` (0 for the first swap).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from apeagent.errors import UserError
from apeagent.files import atomic_path
from chain.amm import price_from_sqrt_price_x96
from chain.pool import BLOCK_SECONDS, DECIMALS0, DECIMALS1

SWAPS_SCHEMA = pa.schema(
    [
        ("block_number", pa.int64()),
        ("log_index", pa.int64()),
        ("timestamp", pa.int64()),
        ("transaction_hash", pa.string()),
        ("price", pa.float64()),
        ("tick", pa.int64()),
        ("log_return", pa.float64()),
        ("amount_eth", pa.float64()),
        ("amount_usdc", pa.float64()),
        ("abs_eth", pa.float64()),
        ("abs_usdc", pa.float64()),
        ("direction", pa.int64()),
        ("liquidity", pa.float64()),
        ("tick_change", pa.int64()),
        ("dt", pa.float64()),
    ]
)

BARS_SCHEMA = pa.schema(
    [
        ("bar_start", pa.int64()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("log_return", pa.float64()),
        ("volume_eth", pa.float64()),
        ("volume_usdc", pa.float64()),
        ("net_flow_eth", pa.float64()),
        ("swap_count", pa.int64()),
        ("realized_vol", pa.float64()),
        ("liquidity", pa.float64()),
        ("tick", pa.int64()),
    ]
)


def swap_features(rows: list[dict[str, Any]]) -> dict[str, np.ndarray | list]:
    """Per-swap features from store rows already in chain order."""
    if not rows:
        raise UserError("no swaps to process")
    keys = [(r["block_number"], r["log_index"]) for r in rows]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise UserError("swaps are not in chain order (block_number, log_index)")
    price = np.array(
        [price_from_sqrt_price_x96(r["sqrt_price_x96"], DECIMALS0, DECIMALS1) for r in rows]
    )
    tick = np.array([r["tick"] for r in rows], dtype=np.int64)
    ts = np.array([r["timestamp"] for r in rows], dtype=np.int64)
    # Exact ints -> float only at the end (int128 / 10**18 keeps full float precision).
    amount_eth = np.array([-r["amount0"] / 10**DECIMALS0 for r in rows])
    amount_usdc = np.array([-r["amount1"] / 10**DECIMALS1 for r in rows])
    log_ret = np.zeros(len(rows))
    log_ret[1:] = np.log(price[1:] / price[:-1])
    tick_change = np.zeros(len(rows), dtype=np.int64)
    tick_change[1:] = np.diff(tick)
    dt = np.zeros(len(rows))
    dt[1:] = np.diff(ts).astype(np.float64)
    return {
        "block_number": np.array([k[0] for k in keys], dtype=np.int64),
        "log_index": np.array([k[1] for k in keys], dtype=np.int64),
        "timestamp": ts,
        "transaction_hash": [r["transaction_hash"] for r in rows],
        "price": price,
        "tick": tick,
        "log_return": log_ret,
        "amount_eth": amount_eth,
        "amount_usdc": amount_usdc,
        "abs_eth": np.abs(amount_eth),
        "abs_usdc": np.abs(amount_usdc),
        "direction": np.where(amount_eth < 0, 1, -1).astype(np.int64),
        "liquidity": np.array([float(r["liquidity"]) for r in rows]),
        "tick_change": tick_change,
        "dt": dt,
    }


def make_bars(sw: dict[str, Any], bar_seconds: int = 300) -> dict[str, np.ndarray]:
    """Time bars over [first swap's bar, last swap's bar]; empty bars carry the price forward.

    Refuses more bars than twice the swaps' block span at Base's block time allows (a bad
    timestamp would otherwise allocate millions of bars)."""
    if bar_seconds <= 0:
        raise UserError(f"bar seconds must be positive, got {bar_seconds}")
    ts, price = sw["timestamp"], sw["price"]
    if np.any(np.diff(ts) < 0):
        # Chain order is authoritative; a timestamp going back would mean a broken input.
        raise UserError("timestamps decrease along chain order")
    idx = (ts // bar_seconds).astype(np.int64)
    first, last = int(idx[0]), int(idx[-1])
    n = last - first + 1
    blocks = int(sw["block_number"][-1] - sw["block_number"][0])
    bound = (blocks + 1) * BLOCK_SECONDS * 2 // bar_seconds + 2
    if n > bound:
        raise UserError(
            f"timestamps span {int(ts[-1] - ts[0])} s ({n} bars of {bar_seconds} s) but the swaps "
            f"span only {blocks} blocks (~{blocks * BLOCK_SECONDS} s at {BLOCK_SECONDS} s a block): "
            f"refusing more than {bound} bars; check the input's timestamps"
        )
    b = idx - first
    counts = np.bincount(b, minlength=n).astype(np.int64)
    starts = np.searchsorted(b, np.arange(n), side="left")
    ends = np.searchsorted(b, np.arange(n), side="right")
    open_ = np.empty(n)
    high = np.empty(n)
    low = np.empty(n)
    close = np.empty(n)
    liq = np.empty(n)
    tick = np.empty(n, dtype=np.int64)
    prev_close, prev_liq, prev_tick = price[0], sw["liquidity"][0], sw["tick"][0]
    for i in range(n):
        s, e = starts[i], ends[i]
        if e > s:
            seg = price[s:e]
            open_[i], high[i], low[i], close[i] = seg[0], seg.max(), seg.min(), seg[-1]
            liq[i], tick[i] = sw["liquidity"][e - 1], sw["tick"][e - 1]
        else:
            open_[i] = high[i] = low[i] = close[i] = prev_close
            liq[i], tick[i] = prev_liq, prev_tick
        prev_close, prev_liq, prev_tick = close[i], liq[i], tick[i]
    log_return = np.empty(n)
    log_return[0] = math.log(close[0] / open_[0])
    log_return[1:] = np.log(close[1:] / close[:-1])
    return {
        "bar_start": (np.arange(first, last + 1, dtype=np.int64) * bar_seconds),
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "log_return": log_return,
        "volume_eth": np.bincount(b, weights=sw["abs_eth"], minlength=n),
        "volume_usdc": np.bincount(b, weights=sw["abs_usdc"], minlength=n),
        "net_flow_eth": np.bincount(b, weights=sw["amount_eth"], minlength=n),
        "swap_count": counts,
        "realized_vol": np.sqrt(np.bincount(b, weights=sw["log_return"] ** 2, minlength=n)),
        "liquidity": liq,
        "tick": tick,
    }


def write_parquet(path: str | Path, columns: dict[str, Any], schema: pa.Schema) -> None:
    table = pa.table(
        {f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def process(
    rows: list[dict[str, Any]], out_dir: str | Path, bar_seconds: int = 300
) -> dict[str, Any]:
    """Write ``swaps.parquet`` and ``bars.parquet`` under ``out_dir``; returns a summary."""
    out_dir = Path(out_dir)
    sw = swap_features(rows)
    bars = make_bars(sw, bar_seconds)
    write_parquet(out_dir / "swaps.parquet", sw, SWAPS_SCHEMA)
    write_parquet(out_dir / "bars.parquet", bars, BARS_SCHEMA)
    return {
        "swaps": len(rows),
        "bars": len(bars["bar_start"]),
        "empty_bars": int((bars["swap_count"] == 0).sum()),
        "bar_seconds": bar_seconds,
        "first_block": int(sw["block_number"][0]),
        "last_block": int(sw["block_number"][-1]),
        "price_min": float(sw["price"].min()),
        "price_max": float(sw["price"].max()),
    }
