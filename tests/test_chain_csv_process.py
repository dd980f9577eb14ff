import csv
import math
import sqlite3
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from chain_fixtures import REPO, real_csv, real_rows

from apeagent.errors import UserError
from chain.amm import price_from_sqrt_price_x96, tick_from_sqrt_price_x96
from chain.csvio import read_swaps_csv, write_swaps_csv
from chain.features import BARS_SCHEMA, SWAPS_SCHEMA, make_bars, process, swap_features
from chain.store import Store


def ape_chain(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "chain", *map(str, args)], cwd=cwd, capture_output=True, text=True
    )


def test_import_real_csv_keeps_every_swap_exactly(tmp_path):
    path = real_csv()
    raw = list(csv.DictReader(path.open()))
    r = ape_chain("import-csv", path, "--db", tmp_path / "s.db", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "35 exact duplicate rows kept once" in r.stderr and "store holds 9965" in r.stderr
    with Store(tmp_path / "s.db") as st:
        got = list(st.swaps())
    assert len(raw) == 10_000 and len(got) == len({tuple(x.values()) for x in raw}) == 9965
    want = {
        (
            x["transaction_hash"],
            x["amount0"],
            x["amount1"],
            x["sqrt_price_x96"],
            x["liquidity"],
            x["tick"],
        )
        for x in raw
    }
    have = {
        (
            g["transaction_hash"][2:],
            str(g["amount0"]),
            str(g["amount1"]),
            str(g["sqrt_price_x96"]),
            str(g["liquidity"]),
            str(g["tick"]),
        )
        for g in got
    }
    assert have == want
    keys = [(g["block_number"], g["log_index"]) for g in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for g in got:
        assert abs(g["tick"] - tick_from_sqrt_price_x96(g["sqrt_price_x96"])) <= 1
        # late Jan - early Feb 2025 on this thin pool
        assert 2000 < price_from_sqrt_price_x96(g["sqrt_price_x96"]) < 3600
    # Within one transaction the file order is kept.
    by_tx = {}
    for x in {tuple(x.values()): x for x in raw}.values():  # duplicates kept once, in order
        by_tx.setdefault(x["transaction_hash"], []).append(x["amount0"])
    got_by_tx = {}
    for g in got:
        got_by_tx.setdefault(g["transaction_hash"][2:], []).append(str(g["amount0"]))
    assert got_by_tx == by_tx


def test_export_round_trip(tmp_path):
    rows = real_rows(300)
    write_swaps_csv(tmp_path / "a.csv", rows)
    back = read_swaps_csv(tmp_path / "a.csv")
    assert back == rows
    header = (tmp_path / "a.csv").read_text().splitlines()[0]
    assert header.endswith(",timestamp,log_index")


def _bad_csv(tmp_path, line3):
    src = real_csv().read_text().splitlines()
    lines = src[:2] + [line3] + src[3:6]
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda f: f[:6] + ["12.5"] + f[7:], "amount0"),
        (lambda f: f[:8] + ["-5"] + f[9:], "sqrt_price_x96"),
        (lambda f: f[:-1], "wrong number of fields"),
        (lambda f: f[:2] + ["ab" * 32] + f[3:], "unknown pool id"),
        (lambda f: f[:1] + ["xyz"] + f[2:], "transaction_hash"),
    ],
)
def test_bad_csv_line_named_and_store_untouched(tmp_path, mutate, needle):
    fields = real_csv().read_text().splitlines()[2].split(",")
    bad = _bad_csv(tmp_path, ",".join(mutate(fields)))
    db = tmp_path / "s.db"
    with Store(db) as st:
        st.commit_chunk(0, 10**9, real_rows(5), mark_done=False)
    before = sqlite3.connect(db).execute("SELECT * FROM swaps ORDER BY 1, 2").fetchall()
    r = ape_chain("import-csv", bad, "--db", db, cwd=tmp_path)
    assert r.returncode == 2
    assert "bad.csv:3:" in r.stderr and needle in r.stderr, r.stderr
    assert sqlite3.connect(db).execute("SELECT * FROM swaps ORDER BY 1, 2").fetchall() == before
    r = ape_chain("import-csv", bad, "--db", tmp_path / "new.db", cwd=tmp_path)
    assert r.returncode == 2 and not (tmp_path / "new.db").exists()


def test_process_outputs_follow_the_schema(tmp_path):
    rows = real_rows(2000)
    summary = process(rows, tmp_path, bar_seconds=300)
    sw = pq.read_table(tmp_path / "swaps.parquet")
    bars = pq.read_table(tmp_path / "bars.parquet")
    assert sw.schema == SWAPS_SCHEMA and bars.schema == BARS_SCHEMA
    assert sw.num_rows == 2000 and summary["bars"] == bars.num_rows
    b = bars.to_pydict()
    assert np.all(np.diff(b["bar_start"]) == 300) and b["bar_start"][0] % 300 == 0
    assert sum(b["swap_count"]) == 2000
    assert np.all(np.array(b["high"]) >= np.array(b["low"]))
    # Log returns telescope: the sum over bars is ln(last close / first open).
    assert math.isclose(sum(b["log_return"]), math.log(b["close"][-1] / b["open"][0]), rel_tol=1e-9)
    s = sw.to_pydict()
    assert s["price"][0] == price_from_sqrt_price_x96(rows[0]["sqrt_price_x96"])
    assert s["direction"][0] == -1  # amount0 = -1e14: the trader paid ETH in, i.e. sold
    assert s["amount_eth"][0] == pytest.approx(1e-4)


def test_bar_formulas_by_hand():
    # Three swaps: two in bar [0, 60), none in [60, 120), one in [120, 180).
    sw = {
        "timestamp": np.array([5, 50, 130]),
        "block_number": np.array([1, 24, 64]),
        "price": np.array([100.0, 110.0, 99.0]),
        "log_return": np.array([0.0, math.log(1.1), math.log(99 / 110)]),
        "amount_eth": np.array([1.0, -2.0, 0.5]),
        "abs_eth": np.array([1.0, 2.0, 0.5]),
        "abs_usdc": np.array([100.0, 220.0, 49.5]),
        "liquidity": np.array([1.0, 2.0, 3.0]),
        "tick": np.array([1, 2, 3]),
    }
    b = make_bars(sw, 60)
    assert list(b["bar_start"]) == [0, 60, 120]
    assert list(b["open"]) == [100.0, 110.0, 99.0] and list(b["close"]) == [110.0, 110.0, 99.0]
    assert list(b["high"]) == [110.0, 110.0, 99.0] and list(b["low"]) == [100.0, 110.0, 99.0]
    assert list(b["swap_count"]) == [2, 0, 1]
    assert list(b["net_flow_eth"]) == [-1.0, 0.0, 0.5] and list(b["volume_eth"]) == [3.0, 0.0, 0.5]
    assert b["log_return"][0] == pytest.approx(math.log(1.1)) and b["log_return"][1] == 0.0
    assert b["realized_vol"][0] == pytest.approx(math.log(1.1)) and b["realized_vol"][1] == 0.0
    assert list(b["tick"]) == [2, 2, 3] and list(b["liquidity"]) == [2.0, 2.0, 3.0]


def test_process_rejects_unordered_rows():
    rows = real_rows(3)
    with pytest.raises(UserError):
        swap_features(rows[::-1])


def test_process_cli_from_csv(tmp_path):
    r = ape_chain(
        "process",
        "--csv",
        real_csv(),
        "--out-dir",
        tmp_path / "o",
        "--bar-seconds",
        900,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    bars = pq.read_table(tmp_path / "o/bars.parquet").to_pydict()
    assert np.all(np.diff(bars["bar_start"]) == 900) and sum(bars["swap_count"]) == 9965
    r = ape_chain("process", cwd=tmp_path)
    assert r.returncode == 2 and "store not found: runs/tiny/chain/swaps.db" in r.stderr  # the run layout's store
    assert REPO.is_dir()
