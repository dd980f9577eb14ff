"""Bars from the real CSV, features/scalers, time split, real windows, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from gan_fixtures import SHARED_CSV, bars_from_csv, synthetic_bars, tiny_cfg, write_bars

from apeagent.errors import UserError
from gan_torch import data as D

needs_csv = pytest.mark.skipif(
    not SHARED_CSV.is_file(), reason=f"shared real data absent: {SHARED_CSV}"
)


@needs_csv
def test_real_bars_use_sqrt_price_not_tick():
    bars = bars_from_csv()
    r = bars["log_return"][bars["swap_count"] > 0]
    # from sqrtPriceX96 almost no active bar has an exactly zero return (tick prices: many)
    assert np.mean(r == 0.0) < 0.02
    tick_price = 1.0001 ** bars["tick"].astype(float) * 1e12
    assert np.max(np.abs(tick_price / bars["close"] - 1)) < 2e-4  # same price, quantised


@needs_csv
def test_real_dataset_split_by_time_and_scaled():
    bars = bars_from_csv()
    ds = D.build_dataset(bars, tiny_cfg(window_bars=16, stride=4))
    (a, b), (c, d), (e, f) = ds["bounds"]["train"], ds["bounds"]["val"], ds["bounds"]["test"]
    assert a == 0 and b == c and d == e and f == len(bars["close"])
    assert max(ds["train"]["starts"]) + 16 <= b and min(ds["test"]["starts"]) >= e
    assert np.all(np.isfinite(ds["train"]["x"])) and np.abs(ds["train"]["x"]).max() < 10
    # the max |r| of the training period is a launch-week jump (~23%); the default bound, the
    # 0.99 quantile, is far below it yet above every move inside a training window
    full = D.build_dataset(bars, tiny_cfg(window_bars=16, stride=4, step_bound_quantile=1.0))
    assert full["step_bound"] > 0.1
    in_windows = np.abs(ds["train"]["raw"][..., 0]).max()
    assert in_windows <= ds["step_bound"] < 0.05


def test_scaler_roundtrip_and_condition_scaler():
    x = np.random.default_rng(0).standard_t(3, (500, 4)) * [1e-3, 1, 0.5, 1e-3] + [0, 2, 1, 0]
    sc = D.robust_scaler(x)
    assert np.allclose(D.unscale(D.scale(x, sc), sc), x)
    const = D.robust_scaler(np.zeros((10, 1)))
    assert const["scale"] == [1.0]
    c = np.array([[1.0, 2.0, 3.0]])
    cs = {"center": [1.0, 0.0, 1.0], "scale": [2.0, 1.0, 1.0]}
    assert np.allclose(D.scale_condition(c, cs), [[0.0, 2.0, 2.0]])


def test_too_little_data_is_a_clear_error():
    with pytest.raises(UserError, match="too little data"):
        D.build_dataset(synthetic_bars(20), tiny_cfg(window_bars=16))


def test_missing_columns_name_the_file(tmp_path):
    bars = synthetic_bars(50)
    del bars["realized_vol"], bars["tick"]
    p = write_bars(tmp_path / "bars.parquet", bars)
    with pytest.raises(UserError, match=r"bars.parquet: missing columns realized_vol, tick"):
        D.read_bars(p)


def test_real_windows_schema_and_time_order(tmp_path):
    bars = synthetic_bars(60)
    cols = D.real_windows(bars, window=10, stride=5)
    D.write_windows(tmp_path / "w.parquet", cols)
    back = D.read_windows(tmp_path / "w.parquet")
    assert list(back) == list(D.WINDOW_COLUMNS)
    assert set(back["source"]) == {"real"}
    ids = back["window_id"]
    assert ids.max() + 1 == 11 and np.all(np.diff(ids) >= 0)
    # window k starts at bar 5k: its closes are the bars' closes, in time order
    assert np.allclose(back["close"][ids == 3], bars["close"][15:25])
    feats, closes = D.windows_to_array(back)
    assert feats.shape == (11, 10, 4) and closes.shape == (11, 10)
