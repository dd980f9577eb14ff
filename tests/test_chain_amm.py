import csv
import math

import pytest
from chain_fixtures import real_csv

from chain import amm
from chain.amm import (
    MAX_SQRT_PRICE,
    MAX_TICK,
    MIN_SQRT_PRICE,
    MIN_TICK,
    Q96,
    AmmError,
    price_from_sqrt_price_x96,
    sqrt_price_x96_from_price,
    sqrt_price_x96_from_tick,
    swap_exact_input,
    swap_exact_output,
    tick_from_sqrt_price_x96,
)

# Pool state of the first real row (block 25,428,824).
P = 4458936925670369649410795
L = 562108584583


def test_tick_math_known_values():
    assert sqrt_price_x96_from_tick(0) == Q96
    assert sqrt_price_x96_from_tick(MIN_TICK) == MIN_SQRT_PRICE
    assert sqrt_price_x96_from_tick(MAX_TICK) == MAX_SQRT_PRICE
    # Values from Uniswap v3-core's TickMath tests.
    assert sqrt_price_x96_from_tick(50) == 79426470787362580746886972461
    assert sqrt_price_x96_from_tick(-50) == 79030349367926598376800521322
    with pytest.raises(AmmError):
        sqrt_price_x96_from_tick(MAX_TICK + 1)


def test_tick_math_every_factor_against_float():
    # Each power-of-two tick uses one magic constant: a typo in any would show here.
    for i in range(20):
        for t in (1 << i, -(1 << i)):
            want = math.exp(t / 2 * math.log1p(1e-4)) * 2**96
            assert abs(sqrt_price_x96_from_tick(t) / want - 1) < 1e-12, t


def test_tick_from_sqrt_price_is_greatest_tick_below():
    for t in (MIN_TICK, -195714, -1, 0, 1, 10, 123456, MAX_TICK - 1):
        s = sqrt_price_x96_from_tick(t)
        assert tick_from_sqrt_price_x96(s) == t
        assert tick_from_sqrt_price_x96(s - 1) == t - 1 if t > MIN_TICK else True
        nxt = sqrt_price_x96_from_tick(t + 1)
        assert tick_from_sqrt_price_x96(nxt - 1) == t
    with pytest.raises(AmmError):
        tick_from_sqrt_price_x96(MIN_SQRT_PRICE - 1)
    with pytest.raises(AmmError):
        tick_from_sqrt_price_x96(MAX_SQRT_PRICE)


def test_price_conversions():
    # (P / 2**96)**2 * 1e12, by hand: P/2**96 = 5.62797e-5 -> 3167.4 USDC per ETH
    assert price_from_sqrt_price_x96(P) == pytest.approx(3167.40, abs=0.05)
    assert price_from_sqrt_price_x96(Q96, 18, 18) == 1.0
    s = sqrt_price_x96_from_price(3000.0)
    assert price_from_sqrt_price_x96(s) == pytest.approx(3000.0, rel=1e-15)
    # floor of the exact root: s**2 <= 3000e-12 * 2**192 < (s + 1)**2, checked in integers
    assert s * s * 10**12 <= 3000 * 2**192 < (s + 1) ** 2 * 10**12
    with pytest.raises(AmmError):
        sqrt_price_x96_from_price(-1.0)


def test_swap_exact_input_hand_checked():
    # Sell 1 ETH (zeroForOne) into L at P, fee 5 bps.
    r = swap_exact_input(P, L, 10**18, True, 500)
    fee = 10**18 - 10**18 * 999500 // 10**6
    assert r.fee_amount == fee == 500000000000000
    net = 10**18 - fee
    # getNextSqrtPriceFromAmount0RoundingUp: ceil(L*2^96*P / (L*2^96 + net*P))
    num = (L << 96) * P
    den = (L << 96) + net * P
    want_price = -(-num // den)
    assert r.sqrt_price_x96 == want_price < P
    # getAmount1Delta rounding down: floor(L * (P - P') / 2^96)
    assert r.amount1 == L * (P - want_price) // Q96 > 0
    assert r.amount0 == -(10**18)  # the swapper paid 1 ETH into the pool
    assert r.tick == tick_from_sqrt_price_x96(want_price)
    assert r.amount_in == 10**18 and r.amount_out == r.amount1


def test_swap_exact_input_one_for_zero():
    r = swap_exact_input(P, L, 1_000_000_000, False, 500)  # buy ETH with 1000 USDC
    assert r.amount1 == -1_000_000_000 and r.amount0 > 0
    assert r.fee_amount == 1_000_000_000 - 1_000_000_000 * 999500 // 10**6
    assert r.sqrt_price_x96 == P + ((1_000_000_000 - r.fee_amount) << 96) // L
    # floor(L * 2^96 * (P' - P) / P' / P)
    assert r.amount0 == (L << 96) * (r.sqrt_price_x96 - P) // r.sqrt_price_x96 // P


def test_exact_output_round_trip_and_fee_rounding():
    out = swap_exact_output(P, L, 10**14, False, 500)  # get exactly 0.0001 ETH out
    assert out.amount0 == 10**14 and out.amount1 < 0
    # fee = ceil(amountIn * fee / (1e6 - fee))
    net_in = -out.amount1 - out.fee_amount
    assert out.fee_amount == -(-net_in * 500 // 999500)
    # Paying that input back as exact input must give at least the same output.
    back = swap_exact_input(P, L, -out.amount1, False, 500)
    assert back.amount0 >= 10**14
    # More ETH than the range holds: filled only up to the price limit, as the contract does.
    big = swap_exact_output(P, L, 10**30, False, 500)
    assert big.sqrt_price_x96 == amm.MAX_SQRT_PRICE - 1 and 0 < big.amount0 < 10**30


def test_swap_respects_price_limit():
    limit = P - 10**20
    r = swap_exact_input(P, L, 10**21, True, 500, sqrt_price_limit_x96=limit)
    assert r.sqrt_price_x96 == limit
    assert -r.amount0 < 10**21  # only part of the input was used


def test_real_csv_tick_consistency():
    rows = list(csv.DictReader(real_csv().open()))
    assert len(rows) == 10_000
    for r in rows:
        assert abs(int(r["tick"]) - tick_from_sqrt_price_x96(int(r["sqrt_price_x96"]))) <= 1


def test_real_events_reproduced_to_the_integer():
    """Consecutive real swaps at equal liquidity: replaying the second from the first's price
    reproduces amounts, price and tick exactly under the V4 event sign (swapper's delta), and
    never under the opposite sign."""
    rows = sorted(csv.DictReader(real_csv().open()), key=lambda r: int(r["block_number"]))
    hits = {1: 0, -1: 0}
    for a, b in zip(rows, rows[1:], strict=False):
        if a["liquidity"] != b["liquidity"]:
            continue
        p0, liq, p1 = int(a["sqrt_price_x96"]), int(b["liquidity"]), int(b["sqrt_price_x96"])
        for sign in (1, -1):
            x0, x1 = sign * int(b["amount0"]), sign * int(b["amount1"])
            zfo = x0 < 0
            paid, got = (-x0, x1) if zfo else (-x1, x0)
            if paid <= 0 or got <= 0:
                continue
            for fn, amt in ((swap_exact_input, paid), (swap_exact_output, got)):
                try:
                    r = fn(p0, liq, amt, zfo, 500)
                except AmmError:
                    continue
                if (r.amount0, r.amount1, r.sqrt_price_x96) == (x0, x1, p1):
                    assert r.tick == int(b["tick"])
                    hits[sign] += 1
                    break
    assert hits[1] > 3000
    assert hits[-1] == 0


def test_module_constants():
    assert amm.MIN_TICK == -887272 and amm.MAX_TICK == 887272 and amm.Q96 == 2**96
