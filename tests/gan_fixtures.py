"""Test fixtures for gan_torch: real bars from the shared CSV (stdlib csv), synthetic bars."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # tiny models: threads only add contention on a shared 2-core box

SHARED_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/base_eth_usdc_v4_swaps.csv"
BAR_SECONDS = 300


def _price(sqrt_price_x96: int) -> float:
    return (sqrt_price_x96 / 2**96) ** 2 * 10 ** (18 - 6)


def bars_from_csv(path: Path = SHARED_CSV, bar_seconds: int = BAR_SECONDS) -> dict[str, np.ndarray]:
    """README bar columns from a swaps CSV: stable sort by block (chain order inside a block)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: int(r["block_number"]))  # list.sort is stable
    t0 = int(rows[0]["timestamp"]) // bar_seconds * bar_seconds
    t1 = int(rows[-1]["timestamp"]) // bar_seconds * bar_seconds
    n = (t1 - t0) // bar_seconds + 1
    cols = {
        k: np.zeros(n)
        for k in (
            "open",
            "high",
            "low",
            "close",
            "log_return",
            "volume_eth",
            "volume_usdc",
            "net_flow_eth",
            "realized_vol",
            "liquidity",
        )
    }
    count = np.zeros(n, dtype=np.int64)
    tick = np.zeros(n, dtype=np.int64)
    buckets: list[list[dict]] = [[] for _ in range(n)]
    for r in rows:
        buckets[(int(r["timestamp"]) - t0) // bar_seconds].append(r)
    prev = _price(int(rows[0]["sqrt_price_x96"]))
    prev_close = None
    last_liq, last_tick = float(rows[0]["liquidity"]), int(rows[0]["tick"])
    for i, swaps in enumerate(buckets):
        open_ = prev
        hi = lo = open_
        rv2 = 0.0
        for s in swaps:
            p = _price(int(s["sqrt_price_x96"]))
            rv2 += math.log(p / prev) ** 2
            prev = p
            hi, lo = max(hi, p), min(lo, p)
            a0, a1 = int(s["amount0"]), int(s["amount1"])
            cols["volume_eth"][i] += abs(a0) / 1e18
            cols["volume_usdc"][i] += abs(a1) / 1e6
            cols["net_flow_eth"][i] += a0 / 1e18
            last_liq, last_tick = float(s["liquidity"]), int(s["tick"])
        close = prev
        cols["open"][i], cols["high"][i], cols["low"][i], cols["close"][i] = open_, hi, lo, close
        cols["log_return"][i] = math.log(close / (prev_close if prev_close else open_))
        cols["realized_vol"][i] = math.sqrt(rv2)
        cols["liquidity"][i] = last_liq
        count[i], tick[i] = len(swaps), last_tick
        prev_close = close
    cols["bar_start"] = t0 + np.arange(n, dtype=np.int64) * bar_seconds
    cols["swap_count"] = count
    cols["tick"] = tick
    return cols


def synthetic_bars(n: int = 400, seed: int = 0, empty_frac: float = 0.05) -> dict[str, np.ndarray]:
    """Small GARCH-ish bars with volume tied to |return|, for fast tests."""
    rng = np.random.default_rng(seed)
    sig = np.empty(n)
    r = np.empty(n)
    s2 = 1e-6
    for i in range(n):
        s2 = 2e-7 + 0.1 * (r[i - 1] ** 2 if i else 0.0) + 0.85 * s2
        sig[i] = math.sqrt(s2)
        r[i] = sig[i] * rng.standard_t(5) / math.sqrt(5 / 3)
    count = rng.poisson(6 * (1 + 300 * np.abs(r))).astype(np.int64)
    count[rng.random(n) < empty_frac] = 0
    r[count == 0] = 0.0
    close = 3000.0 * np.exp(np.cumsum(r))
    vol = count * rng.gamma(2.0, 0.3, n) * (1 + 200 * np.abs(r))
    rv = np.abs(r) * np.sqrt(np.maximum(count, 1)) * 0.8
    rv[count == 0] = 0.0
    open_ = np.concatenate([[3000.0], close[:-1]])
    return {
        "bar_start": 1_700_000_000 + np.arange(n, dtype=np.int64) * BAR_SECONDS,
        "open": open_,
        "high": np.maximum(open_, close),
        "low": np.minimum(open_, close),
        "close": close,
        "log_return": r,
        "volume_eth": vol,
        "volume_usdc": vol * close,
        "net_flow_eth": vol * rng.uniform(-1, 1, n),
        "swap_count": count,
        "realized_vol": rv,
        "liquidity": np.full(n, 5.0e16),  # about the real pool's in-range liquidity
        "tick": np.floor(np.log(close * 1e-12) / math.log(1.0001)).astype(np.int64),
    }


def write_bars(path: Path, bars: dict[str, np.ndarray]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: pa.array(v) for k, v in bars.items()}), path)
    return path


def tiny_cfg(**over) -> dict:
    from gan_torch.config import DEFAULTS

    cfg = dict(DEFAULTS)
    cfg.update(
        window_bars=8,
        stride=2,
        d_model=16,
        num_heads=8,
        num_layers=4,
        ff_mult=2,
        noise_dim=4,
        cond_tokens=2,
        critic_hidden=16,
        mb_kernels=4,
        mb_dim=3,
        batch_size=16,
        steps=6,
        n_critic=2,
        checkpoint_every=4,
        eval_every=3,
        log_every=1,
        min_active_frac=0.5,
        threads=1,
    )
    cfg.update(over)
    return cfg


def write_cfg_yaml(path: Path, **over) -> Path:
    """A config file whose gan section is tiny_cfg(**over) (for CLI tests)."""
    import yaml

    from apeagent.config import DEFAULTS

    cfg = tiny_cfg(**over)
    sections = {
        name: {k: v for k, v in cfg.items() if k in DEFAULTS[name] and v != DEFAULTS[name][k]}
        for name in ("market", "gan")
    }
    path.write_text(yaml.safe_dump({k: v for k, v in sections.items() if v}))
    return path
