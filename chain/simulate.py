"""Seeded offline market simulator: SIMULATED swap events in the collector's CSV schema.

The embedded default data source for offline runs. Nothing here is real market data, and
every row says so: ``router_address`` and ``original_sender`` are the literal ``simulated``.

Model (per simulated minute):

* a latent "fair" ETH price: log returns with GARCH(1,1) variance (volatility clustering),
  Student-t shocks, Poisson jumps, and a weak pull back to the start price so long runs stay
  in a realistic range (~3000-3400 USDC);
* swap arrivals: Poisson, with an intensity that rises with volatility;
* each swap is either an arbitrageur who moves the pool price to the fair price (when the gap
  beats the fee), or a noise trader with a heavy-tailed (lognormal body, Pareto tail) size,
  exact input or exact output;
* the pool is the real pool's shape: fee 500 pips, in-range liquidity ~3e16-9e16, with
  occasional LP changes; every swap goes through :mod:`chain.amm`'s exact V4 math, so amounts,
  ``sqrt_price_x96``, ``tick`` and fee agree to the integer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from chain.amm import (
    Q96,
    AmmError,
    price_from_sqrt_price_x96,
    sqrt_price_x96_from_price,
    swap_exact_input,
    swap_exact_output,
)
from chain.pool import ETH_USDC_POOL_ID, FEE, SIMULATED

SIM_DEFAULTS = {
    "start_price": 3200.0,
    "liquidity": 5.0e16,
    "annual_vol": 0.5,
    "swaps_per_hour": 30.0,
    "start_block": 25_000_000,
    "block_seconds": 2,
}


def simulate(
    n_swaps: int = 10_000,
    seed: int = 0,
    start_timestamp: int = 1_737_646_800,
    *,
    start_price: float = SIM_DEFAULTS["start_price"],
    liquidity: float = SIM_DEFAULTS["liquidity"],
    annual_vol: float = SIM_DEFAULTS["annual_vol"],
    swaps_per_hour: float = SIM_DEFAULTS["swaps_per_hour"],
    start_block: int = SIM_DEFAULTS["start_block"],
    block_seconds: int = SIM_DEFAULTS["block_seconds"],
) -> list[dict[str, Any]]:
    """``n_swaps`` store rows (chain order, exact log indexes), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    sigma_bar = annual_vol / math.sqrt(365 * 24 * 60)  # per minute
    alpha, beta = 0.08, 0.90
    omega = sigma_bar**2 * (1 - alpha - beta)
    var = sigma_bar**2
    log_p0 = math.log(start_price)
    log_fair = log_p0
    sqrt_p = sqrt_price_x96_from_price(start_price)
    liq = int(liquidity)
    liq_lo, liq_hi = int(liquidity * 0.4), int(liquidity * 2.0)
    rows: list[dict[str, Any]] = []
    minute = 0
    last_block, log_index = -1, 0
    while len(rows) < n_swaps:
        shock = rng.standard_t(5) * math.sqrt(3 / 5) * math.sqrt(var)
        if rng.random() < 1 / (24 * 60):  # about one jump a day
            shock += rng.normal(0, 0.012)
        log_fair += shock - 2e-4 * (log_fair - log_p0)
        var = omega + alpha * shock**2 + beta * var
        if rng.random() < 1 / (12 * 60):  # LP adds / removes liquidity now and then
            liq = int(min(liq_hi, max(liq_lo, liq * math.exp(rng.normal(0, 0.25)))))
        rate = swaps_per_hour / 60 * min(4.0, math.sqrt(var) / sigma_bar)
        k = int(rng.poisson(rate))
        for offset in np.sort(rng.uniform(0, 60, size=k)):
            ts = start_timestamp + minute * 60 + int(offset)
            res = _one_swap(rng, sqrt_p, liq, math.exp(log_fair))
            if res is None:
                continue
            sqrt_p = res.sqrt_price_x96
            block = start_block + (ts - start_timestamp) // block_seconds
            log_index = log_index + 1 if block == last_block else 0
            last_block = block
            rows.append(
                {
                    "block_number": block,
                    "log_index": log_index,
                    "transaction_hash": "0x" + rng.bytes(32).hex(),
                    "block_hash": None,
                    "pool_id": ETH_USDC_POOL_ID,
                    "sender": SIMULATED,
                    "amount0": res.amount0,
                    "amount1": res.amount1,
                    "sqrt_price_x96": res.sqrt_price_x96,
                    "liquidity": liq,
                    "tick": res.tick,
                    "fee": FEE,
                    "timestamp": ts,
                    "original_sender": SIMULATED,
                    "is_contract_sender": False,
                    "tx_to": None,
                }
            )
            if len(rows) >= n_swaps:
                break
        minute += 1
    return rows


def _one_swap(rng: np.random.Generator, sqrt_p: int, liq: int, fair: float):
    price = price_from_sqrt_price_x96(sqrt_p)
    gap = math.log(fair / price)
    try:
        if abs(gap) > 0.0008 and rng.random() < 0.6:
            # Arbitrage: trade the pool exactly to the fair price (input grossed up for the fee).
            target = sqrt_price_x96_from_price(fair)
            if gap > 0:  # pool too cheap: buy ETH with USDC
                net = liq * (target - sqrt_p) // Q96
                return swap_exact_input(
                    sqrt_p, liq, net * 1_000_000 // (1_000_000 - FEE) + 1, False, FEE
                )
            net = (liq * Q96) * (sqrt_p - target) // (sqrt_p * target)
            return swap_exact_input(
                sqrt_p, liq, net * 1_000_000 // (1_000_000 - FEE) + 1, True, FEE
            )
        # Noise trader: heavy-tailed USD notional, leaning slightly toward the fair price.
        usd = math.exp(rng.normal(math.log(120), 1.4))
        if rng.random() < 0.03:
            usd = 500 * (1 + rng.pareto(1.5))
        usd = min(usd, 50_000.0)
        buy_eth = rng.random() < 0.5 + max(-0.1, min(0.1, gap * 50))
        exact_out = rng.random() < 0.25
        if buy_eth:  # oneForZero: pay USDC, get ETH
            if exact_out:
                return swap_exact_output(sqrt_p, liq, max(1, int(usd / price * 1e18)), False, FEE)
            return swap_exact_input(sqrt_p, liq, max(1, int(usd * 1e6)), False, FEE)
        if exact_out:
            return swap_exact_output(sqrt_p, liq, max(1, int(usd * 1e6)), True, FEE)
        return swap_exact_input(sqrt_p, liq, max(1, int(usd / price * 1e18)), True, FEE)
    except AmmError:
        return None
