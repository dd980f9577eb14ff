"""Bars -> model features, robust scaling, windows with condition vectors, time splits.

Per bar the model sees four features: the log return, ``log1p(volume_eth)``,
``log1p(swap_count)`` and the realized volatility. Each is robust-scaled (median, IQR) and
squashed with ``asinh`` so launch-week jumps of 200 robust sigmas stay finite without being
clipped; the inverse is exact (``sinh``). The same scaler object (plain tensors) is saved with
the checkpoint and used to decode generated windows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from apeagent.errors import UserError

BAR_COLUMNS = (
    "bar_start",
    "open",
    "high",
    "low",
    "close",
    "log_return",
    "volume_eth",
    "volume_usdc",
    "net_flow_eth",
    "swap_count",
    "realized_vol",
    "liquidity",
    "tick",
)
# what the GAN itself needs from bars.parquet
NEEDED = ("bar_start", "close", "log_return", "volume_eth", "swap_count", "realized_vol", "tick")
FEATURES = ("log_return", "log_volume_eth", "log_swap_count", "realized_vol")
CONDITIONS = ("log_prev_vol", "prev_trend", "prev_log_volume")
WINDOW_COLUMNS = (
    "window_id",
    "step",
    "source",
    "close",
    "log_return",
    "volume_eth",
    "volume_usdc",
    "swap_count",
    "realized_vol",
    "tick",
)
# the per-bar values of a window (the columns after window_id, step, source)
WINDOW_VALUES = WINDOW_COLUMNS[3:]


def read_table(path: str | Path, what: str):
    """A parquet file as a pyarrow table; a missing, empty or unreadable file is a UserError
    naming it (``what``: "bars", "windows")."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")
    try:
        return pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({e})") from None


def read_bars(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``bars.parquet`` into numpy columns (chain order kept: no re-sorting)."""
    table = read_table(path, "bars")
    missing = [c for c in NEEDED if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: missing columns {', '.join(missing)} (see README bars.parquet)")
    bars = {c: table.column(c).to_numpy() for c in table.column_names if c in BAR_COLUMNS}
    bars["bar_start"] = bars["bar_start"].astype(np.int64)
    if len(bars["bar_start"]) > 1 and np.any(np.diff(bars["bar_start"]) <= 0):
        raise UserError(f"{path}: bar_start is not strictly increasing")
    for c in ("close", "log_return", "volume_eth", "realized_vol"):
        if not np.all(np.isfinite(bars[c])):
            raise UserError(f"{path}: column {c} has non-finite values")
    if np.any(bars["close"] <= 0):
        raise UserError(f"{path}: column close has non-positive prices")
    return bars


def bar_features(bars: dict[str, np.ndarray]) -> np.ndarray:
    """(n_bars, 4) raw model features in FEATURES order."""
    return np.stack(
        [
            bars["log_return"].astype(np.float64),
            np.log1p(np.maximum(bars["volume_eth"].astype(np.float64), 0.0)),
            np.log1p(np.maximum(bars["swap_count"].astype(np.float64), 0.0)),
            np.maximum(bars["realized_vol"].astype(np.float64), 0.0),
        ],
        axis=1,
    )


def robust_scaler(x: np.ndarray) -> dict[str, list[float]]:
    """Median and a robust scale per column (IQR/1.349, else MAD*1.4826, else std, else 1)."""
    center, scale = [], []
    for col in x.T:
        med = float(np.median(col))
        q75, q25 = np.percentile(col, [75, 25])
        s = (q75 - q25) / 1.349
        if not s > 1e-12:
            s = 1.4826 * float(np.median(np.abs(col - med)))
        if not s > 1e-12:
            s = float(np.std(col))
        if not s > 1e-12:
            s = 1.0
        center.append(med)
        scale.append(float(s))
    return {"center": center, "scale": scale}


def scale(x: np.ndarray, scaler: dict) -> np.ndarray:
    return np.arcsinh((x - np.asarray(scaler["center"])) / np.asarray(scaler["scale"]))


def unscale(y: np.ndarray, scaler: dict) -> np.ndarray:
    return np.sinh(y) * np.asarray(scaler["scale"]) + np.asarray(scaler["center"])


def scale_condition(cond_raw: np.ndarray, cond_scaler: dict) -> np.ndarray:
    """The one condition scaler, used on the training and the generation paths alike."""
    c = np.asarray(cond_raw, dtype=np.float64)
    return ((c - np.asarray(cond_scaler["center"])) / np.asarray(cond_scaler["scale"])).astype(
        np.float32
    )


def condition_of(features: np.ndarray) -> np.ndarray:
    """Condition vector from the bars before a window: volatility, trend, volume regime."""
    r = features[:, 0]
    return np.array(
        [math.log(float(np.std(r)) + 1e-6), float(np.sum(r)), float(np.mean(features[:, 1]))]
    )


def split_bounds(
    swap_count: np.ndarray, holdout_frac: float, val_frac: float
) -> dict[str, tuple[int, int]]:
    """Time split: train, then val, then test (the last bars), contiguous and in order.

    The cut points are quantiles of the cumulative swap count, not of wall-clock time: the
    pool's launch week is days of nearly empty bars, and a calendar split would leave the
    training period with a fraction of the swaps.
    """
    n_bars = len(swap_count)
    cum = np.cumsum(np.maximum(swap_count, 0))
    total = cum[-1] if n_bars and cum[-1] > 0 else 0
    if total == 0:
        test_start = int(round(n_bars * (1.0 - holdout_frac)))
        val_start = int(round(n_bars * (1.0 - holdout_frac - val_frac)))
    else:
        test_start = int(np.searchsorted(cum, total * (1.0 - holdout_frac)))
        val_start = int(np.searchsorted(cum, total * (1.0 - holdout_frac - val_frac)))
    return {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, n_bars)}


def window_starts(
    active: np.ndarray,
    lo: int,
    hi: int,
    window: int,
    stride: int,
    min_active_frac: float,
    context: int,
) -> list[int]:
    """Starts s with the window [s, s+window) inside [lo, hi) and a full context before s."""
    starts = []
    for s in range(max(lo, context), hi - window + 1, stride):
        if active[s : s + window].mean() < min_active_frac:
            continue
        if context and active[s - context : s].mean() < min_active_frac:
            continue
        starts.append(s)
    return starts


def step_bound(train_r: np.ndarray, quantile: float) -> float:
    """Largest |log return| per bar that generation allows (before ``step_bound_mult``): the
    ``quantile`` of |r| over the active training bars (1.0: the max). A high quantile rather
    than the max: on the shared CSV the pool's launch week (dropped from the training
    windows by ``min_active_frac``) has 23% moves, 8x the largest move in any training window.
    """
    if not 0.0 < float(quantile) <= 1.0:
        raise UserError(f"step_bound_quantile must be in (0, 1], got {quantile!r}")
    a = np.abs(np.asarray(train_r, dtype=np.float64))
    return float(np.quantile(a, float(quantile))) if len(a) else 0.05


def build_dataset(bars: dict[str, np.ndarray], cfg: dict, source: str = "bars") -> dict:
    """Scaled windows + scaled conditions per split, the scalers, and real reference data.

    The scalers are fitted on the training period only (no look-ahead into val/test).
    """
    window, stride = cfg["window_bars"], cfg["stride"]
    feats = bar_features(bars)
    n = len(feats)
    active = bars["swap_count"] > 0
    bounds = split_bounds(bars["swap_count"], cfg["holdout_frac"], cfg["val_frac"])
    out: dict = {"bounds": bounds}
    starts = {}
    for name, (lo, hi) in bounds.items():
        starts[name] = window_starts(active, lo, hi, window, stride, cfg["min_active_frac"], window)
    if not starts["train"]:
        raise UserError(
            f"{source}: too little data for one training window ({n} bars, window {window}, "
            f"min_active_frac {cfg['min_active_frac']}, training period {bounds['train']})"
        )
    lo, hi = bounds["train"]
    train_rows = feats[lo:hi][active[lo:hi]] if active[lo:hi].any() else feats[lo:hi]
    scaler = robust_scaler(train_rows)
    raw_cond = {
        k: np.array([condition_of(feats[s - window : s]) for s in v]).reshape(-1, 3)
        for k, v in starts.items()
    }
    cond_scaler = robust_scaler(raw_cond["train"])
    for name, st in starts.items():
        x = np.array([feats[s : s + window] for s in st]).reshape(-1, window, len(FEATURES))
        out[name] = {
            "starts": st,
            "x": scale(x, scaler).astype(np.float32),
            "raw": x,
            "cond_raw": raw_cond[name],
            "cond": scale_condition(raw_cond[name], cond_scaler),
            "start_price": np.array([bars["close"][s - 1] for s in st], dtype=np.float64),
        }
    train_r = feats[lo:hi, 0][active[lo:hi]]
    out["scaler"] = scaler
    out["cond_scaler"] = cond_scaler
    out["feature_max"] = [float(v) for v in feats[lo:hi].max(axis=0)] if hi > lo else [np.inf] * 4
    out["step_bound"] = step_bound(train_r, cfg["step_bound_quantile"])
    liq = bars.get("liquidity")
    out["liquidity"] = float(np.median(liq[active])) if liq is not None and active.any() else 0.0
    out["bar_seconds"] = int(np.median(np.diff(bars["bar_start"]))) if n > 1 else 300
    out["last_close"] = float(bars["close"][hi - 1])
    return out


def real_windows(
    bars: dict[str, np.ndarray], window: int, stride: int, min_active_frac: float = 0.0
) -> dict[str, np.ndarray]:
    """Cut real windows (time order) into the windows.parquet columns."""
    n = len(bars["close"])
    if n < window:
        raise UserError(f"too little data for one window: {n} bars < window {window}")
    active = bars["swap_count"] > 0
    starts = window_starts(active, 0, n, window, stride, min_active_frac, 0)
    if not starts:
        raise UserError(f"no window of {window} bars has min_active_frac >= {min_active_frac}")
    idx = np.concatenate([np.arange(s, s + window) for s in starts])
    k = len(starts)
    cols = {
        "window_id": np.repeat(np.arange(k, dtype=np.int64), window),
        "step": np.tile(np.arange(window, dtype=np.int64), k),
        "source": np.array(["real"] * (k * window)),
    }
    for c in WINDOW_COLUMNS[3:]:
        if c == "volume_usdc" and c not in bars:
            cols[c] = bars["volume_eth"][idx] * bars["close"][idx]
        else:
            cols[c] = bars[c][idx]
    cols["swap_count"] = cols["swap_count"].astype(np.int64)
    cols["tick"] = cols["tick"].astype(np.int64)
    return cols


def cut_real_windows(
    bars_path: str | Path,
    out: str | Path,
    window: int,
    stride: int,
    min_active_frac: float = 0.0,
    holdout_frac: float = 0.0,
) -> int:
    """`ape-gan windows`: real windows of ``bars_path`` written to ``out`` (source=real, ids in
    time order), leaving out the last ``holdout_frac`` of the swaps (the same cut as the
    training split and the backtest: a quantile of the swap count). Returns the count."""
    if window < 2 or stride < 1:
        raise UserError(f"--window must be >= 2 and --stride >= 1 (got {window}, {stride})")
    if not 0.0 <= holdout_frac < 1.0:
        raise UserError(f"--holdout-frac must be in [0, 1) (got {holdout_frac})")
    table = read_bars(bars_path)
    if holdout_frac > 0:
        cut = split_bounds(table["swap_count"], holdout_frac, 0.0)["test"][0]
        table = {k: v[:cut] for k, v in table.items()}
    cols = real_windows(table, window, stride, min_active_frac)
    write_windows(out, cols)
    return int(cols["window_id"].max()) + 1


def write_windows(path: str | Path, cols: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from apeagent.files import atomic_path

    types = {
        "window_id": pa.int64(),
        "step": pa.int64(),
        "source": pa.string(),
        "swap_count": pa.int64(),
        "tick": pa.int64(),
    }
    arrays = [pa.array(cols[c], type=types.get(c, pa.float64())) for c in WINDOW_COLUMNS]
    table = pa.Table.from_arrays(arrays, names=list(WINDOW_COLUMNS))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_windows(path: str | Path) -> dict[str, np.ndarray]:
    """Read a windows.parquet (the one reader: gan_torch, distill): every column of
    ``WINDOW_COLUMNS``, rows as stored. A missing column or an empty table is a UserError."""
    return windows_from_table(read_table(path, "windows"), path)


def windows_from_table(table, path: str | Path) -> dict[str, np.ndarray]:
    """The windows.parquet columns of an already-read table (see :func:`read_windows`)."""
    missing = [c for c in WINDOW_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(
            f"{path}: missing columns {', '.join(missing)} (see README windows.parquet)"
        )
    if table.num_rows == 0:
        raise UserError(f"{path}: no rows")
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in WINDOW_COLUMNS}


def windows_to_array(cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """windows.parquet columns -> (n, T, 4) raw features and (n, T) closes."""
    ids = cols["window_id"]
    order = np.lexsort((cols["step"], ids))
    uniq, counts = np.unique(ids, return_counts=True)
    if len(set(counts.tolist())) != 1:
        raise UserError("windows have different lengths")
    n, t = len(uniq), int(counts[0])
    f = bar_features(
        {k: cols[k][order] for k in ("log_return", "volume_eth", "swap_count", "realized_vol")}
    )
    return f.reshape(n, t, len(FEATURES)), cols["close"][order].reshape(n, t)
