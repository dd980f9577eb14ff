"""Shared helpers for the chain tests: the real CSV path, small simulated data, a devnode."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared/data/base_eth_usdc_v4_swaps.csv"


def real_csv() -> Path:
    if not REAL_CSV.is_file():
        pytest.skip(f"shared data not present: {REAL_CSV} (the real Base swaps CSV)")
    return REAL_CSV


FIELDS = (
    "block_number",
    "log_index",
    "transaction_hash",
    "pool_id",
    "sender",
    "amount0",
    "amount1",
    "sqrt_price_x96",
    "liquidity",
    "tick",
    "fee",
    "timestamp",
)


def event_fields(rows) -> list[tuple]:
    """What must match to the integer between a collected store and the ground truth."""
    return [tuple(r[k] for k in FIELDS) for r in rows]


_cache: dict = {}


def real_rows(n: int | None = None) -> list[dict]:
    """The shared CSV in chain order (parsed once per session); first ``n`` rows if given."""
    from chain.csvio import read_swaps_csv

    if "real" not in _cache:
        _cache["real"] = read_swaps_csv(real_csv())
    rows = _cache["real"]
    return [dict(r) for r in (rows if n is None else rows[:n])]
