"""Read market windows (windows.parquet, or bars.parquet cut into windows) and draw portfolios.

Everything is validated before any teacher work starts: a bad file is a :class:`UserError`
naming the file (and the window) with nothing written.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apeagent.errors import UserError
from distill.prompt import MarketState, state_from_window
from gan_torch.data import WINDOW_VALUES, read_table, windows_from_table


@dataclass
class Window:
    file: str  # the path as given
    window_id: int
    source: str  # "synthetic" | "real"
    order: int  # position over all files: file order, then window order (time for real data)
    columns: dict[str, np.ndarray]

    @property
    def group(self) -> str:
        """Identity for the splits: every example of one window lands in the same split."""
        return f"{self.file}#{self.window_id}"


def _check_columns(path: Path, names: list[str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(names)})")


def _check_window(path: Path, wid: int, cols: dict[str, np.ndarray]) -> None:
    close = cols["close"]
    if not np.all(np.isfinite(close)) or np.any(close <= 0):
        raise UserError(f"{path}: window {wid} has a non-positive or non-finite close price")
    for name in ("volume_eth", "volume_usdc", "swap_count", "log_return"):
        if not np.all(np.isfinite(cols[name])):
            raise UserError(f"{path}: window {wid} has non-finite values in {name}")


def load_windows(
    paths: list[str | Path], window_bars: int = 12, max_windows: int = 0
) -> list[Window]:
    """All windows of ``paths`` in order. A file without ``window_id`` but with ``bar_start``
    is a bars.parquet: it is cut into consecutive non-overlapping windows of ``window_bars``.
    """
    if not paths:
        raise UserError("no windows file given (--windows)")
    out: list[Window] = []
    for path in map(Path, paths):
        table = read_table(path, "windows")  # one owner of the file formats: gan_torch.data
        names = table.column_names
        if "window_id" in names:
            data = windows_from_table(table, path)
            wids = data["window_id"].astype(np.int64)
            order = np.lexsort((data["step"], wids))
            data = {c: v[order] for c, v in data.items()}
            wids = wids[order]
            cuts = np.flatnonzero(np.diff(wids)) + 1
            starts = np.concatenate([[0], cuts])
            ends = np.concatenate([cuts, [len(wids)]])
            for a, b in zip(starts, ends, strict=True):
                cols = {c: np.asarray(data[c][a:b], dtype=np.float64) for c in WINDOW_VALUES}
                wid = int(wids[a])
                _check_window(path, wid, cols)
                out.append(Window(str(path), wid, str(data["source"][a]), len(out), cols))
        elif "bar_start" in names:
            _check_columns(path, names, ("bar_start", *WINDOW_VALUES))
            if table.num_rows == 0:
                raise UserError(f"{path}: no rows")
            data = {c: table.column(c).to_numpy(zero_copy_only=False) for c in names}
            order = np.argsort(data["bar_start"], kind="stable")
            n = (len(order) // window_bars) * window_bars
            if n == 0:
                raise UserError(f"{path}: fewer bars ({len(order)}) than one window ({window_bars})")
            for k, a in enumerate(range(0, n, window_bars)):
                idx = order[a : a + window_bars]
                cols = {c: np.asarray(data[c][idx], dtype=np.float64) for c in WINDOW_VALUES}
                _check_window(path, k, cols)
                out.append(Window(str(path), k, "real", len(out), cols))
        else:
            raise UserError(f"{path}: neither a windows file (window_id) nor a bars file (bar_start)")
        if max_windows and len(out) >= max_windows:
            return out[:max_windows]
    return out


def draw_portfolio(window: Window, j: int, price: float, cfg: dict) -> tuple[float, float]:
    """A seeded random (eth, usdc) holding for portfolio ``j`` of ``window``.

    Seeded by (seed, file name, window id, j), so adding windows or files never changes the
    portfolios (and so the cached answers) of the others. A share ``in_band_fraction`` of
    portfolios is drawn inside the balance band, where the trend decides: that keeps the
    three decisions roughly balanced.
    """
    key = [cfg["seed"], zlib.crc32(Path(window.file).name.encode()), window.window_id, j]
    rng = np.random.default_rng(key)
    lo, hi = cfg["portfolio_min_usdc"], cfg["portfolio_max_usdc"]
    value = math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo))))
    if rng.uniform() < cfg["in_band_fraction"]:
        share = rng.uniform(cfg["band_low"], cfg["band_high"]) / 100.0
    else:
        share = rng.uniform(0.0, 1.0)
    return round(value * share / price, 4), round(value * (1.0 - share), 2)


def states(windows: list[Window], cfg: dict) -> list[tuple[Window, MarketState]]:
    """One market state per (window, portfolio)."""
    out = []
    for w in windows:
        price = float(w.columns["close"][-1])
        for j in range(cfg["portfolios_per_window"]):
            eth, usdc = draw_portfolio(w, j, price, cfg)
            out.append((w, state_from_window(w.columns, eth, usdc, (cfg["bar_seconds"] // 60))))
    return out
