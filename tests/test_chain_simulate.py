import subprocess
import sys

from chain.amm import (
    AmmError,
    sqrt_price_x96_from_price,
    swap_exact_input,
    swap_exact_output,
    tick_from_sqrt_price_x96,
)
from chain.csvio import read_swaps_csv
from chain.pool import ETH_USDC_POOL_ID, SIMULATED
from chain.simulate import simulate


def _replays(prev_sqrt, row):
    """Some exact-input or exact-output swap from prev_sqrt gives this row to the integer."""
    a0, a1, liq = row["amount0"], row["amount1"], row["liquidity"]
    zfo = a0 < 0
    paid, got = (-a0, a1) if zfo else (-a1, a0)
    for fn, amt in ((swap_exact_input, paid), (swap_exact_output, got)):
        try:
            r = fn(prev_sqrt, liq, amt, zfo, row["fee"])
        except AmmError:
            continue
        if (r.amount0, r.amount1, r.sqrt_price_x96, r.tick) == (
            a0,
            a1,
            row["sqrt_price_x96"],
            row["tick"],
        ):
            return r
    return None


def test_simulator_invariants_on_every_event():
    rows = simulate(1500, seed=7)
    assert len(rows) == 1500
    prev = sqrt_price_x96_from_price(3200.0)
    keys = [(r["block_number"], r["log_index"]) for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for r in rows:
        assert r["sender"] == SIMULATED and r["original_sender"] == SIMULATED
        assert r["pool_id"] == ETH_USDC_POOL_ID and r["fee"] == 500
        # one side paid in (negative, swapper's delta), the other paid out
        assert (r["amount0"] < 0 < r["amount1"]) or (r["amount1"] < 0 < r["amount0"])
        # price moves against the trader: selling ETH lowers the price
        assert (r["sqrt_price_x96"] < prev) == (r["amount0"] < 0)
        assert r["tick"] == tick_from_sqrt_price_x96(r["sqrt_price_x96"])
        res = _replays(prev, r)
        assert res is not None, r
        # fee = 5 bps of the input, rounded up in the pool's favour
        assert res.fee_amount * 1_000_000 >= (res.amount_in - res.fee_amount) * 500
        prev = r["sqrt_price_x96"]
    ts = [r["timestamp"] for r in rows]
    assert ts == sorted(ts)


def test_simulator_is_seeded_and_realistic():
    a, b, c = simulate(400, seed=1), simulate(400, seed=1), simulate(400, seed=2)
    assert a == b and a != c
    from chain.amm import price_from_sqrt_price_x96

    prices = [price_from_sqrt_price_x96(r["sqrt_price_x96"]) for r in simulate(3000, seed=3)]
    assert 2700 < min(prices) and max(prices) < 3800
    liq = {r["liquidity"] for r in a}
    assert all(1e16 < x < 2e17 for x in liq)


def test_simulate_cli_writes_labelled_csv(tmp_path):
    out = tmp_path / "sim.csv"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "chain",
            "simulate",
            "--out",
            str(out),
            "--n-swaps",
            "200",
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "SIMULATED" in r.stderr
    rows = read_swaps_csv(out)
    assert rows == simulate(200, seed=5)
    assert ",simulated,simulated," in out.read_text().splitlines()[1]
