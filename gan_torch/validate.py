"""`ape-gan validate`: build every source, score it on two held-out periods, write JSON + PNGs.

Every source gets the same information: the training period. The GAN is conditioned exactly
as `ape-gan generate` conditions it: conditions drawn from the checkpoint's training
``cond_bank`` (or the one ``condition`` the user asks for, as ``--condition``); GBM and the
block bootstrap are fitted on the training windows; ``real_train`` are the training windows.
No source sees the held-out bars before a window. ``heldout_context=True`` adds the old
setup as a diagnostic source ``gan_heldout_context`` (each window's condition computed from
the ``window_bars`` held-out bars before it, bars of other held-out windows): it measures
how much that leak was worth and is never the grade.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apeagent.errors import UserError
from apeagent.files import write_json
from gan_torch import fidelity as V
from gan_torch.data import build_dataset, read_bars, read_windows, windows_to_array

PERIODS = ("test", "val")


def gan_windows(ckpt: dict, n: int, seed: int, cond_raw: np.ndarray | None = None) -> np.ndarray:
    """n generated windows (raw features), conditioned as `ape-gan generate` does: ``None``
    draws conditions from the training ``cond_bank``; one condition (3,) is used for all;
    (k, 3) conditions are cycled to n."""
    from gan_torch import checkpoint as ckio
    from gan_torch.generate import decode_features, sample_scaled

    gnet, _, _ = ckio.build_models(ckpt)
    if cond_raw is not None and np.ndim(cond_raw) == 2:
        cond_raw = cond_raw[np.arange(n) % len(cond_raw)]
    scaled, _, _ = sample_scaled(gnet, ckpt, n, cond_raw=cond_raw, seed=seed)
    return decode_features(scaled, ckpt)


def run_validation(
    bars_path: Path,
    out_dir: Path,
    cfg: dict,
    checkpoint: Path | None = None,
    windows: Path | None = None,
    plots: bool = True,
    condition: str | None = None,
    heldout_context: bool = False,
    swaps: Path | None = None,
) -> dict:
    """Score the GAN (a checkpoint, or generated ``windows``) and the baselines on the held-out
    val and test periods. ``condition``: a preset or ``vol=..,trend=..,volume=..`` as for
    `ape-gan generate --condition` (default: the training conditions)."""
    import torch

    from gan_torch import checkpoint as ckio
    from gan_torch.generate import parse_condition

    torch.set_num_threads(max(1, int(cfg["threads"])))
    bars = read_bars(bars_path)
    ckpt = None
    cfg = dict(cfg)
    if windows is not None:
        fake_all, _ = windows_to_array(read_windows(windows))
        cfg["window_bars"] = fake_all.shape[1]
    else:
        ckpt = ckio.load(checkpoint)
        cfg.update(
            {
                k: v
                for k, v in ckpt["config"].items()
                if k in ("window_bars", "stride", "min_active_frac", "holdout_frac", "val_frac")
            }
        )
    ds = build_dataset(bars, cfg, source=str(bars_path))
    seed = int(cfg["seed"])
    cond = None
    if ckpt is not None:
        cond = parse_condition(condition, ckpt["cond_bank"].double().numpy())
    elif condition is not None or heldout_context:
        raise UserError("--condition needs --checkpoint (generated --windows carry their own)")
    real_train = ds["train"]["raw"]
    result = {
        "bars": str(bars_path),
        "checkpoint": str(checkpoint) if ckpt else None,
        "windows": str(windows) if windows else None,
        "window_bars": cfg["window_bars"],
        "gan_conditioning": _conditioning(ckpt, condition, cond),
        "split_bounds_bars": {k: list(v) for k, v in ds["bounds"].items()},
        "time_split": _time_split(bars, ds),
        "thresholds": {
            g: {"discriminative_max": d, "mean_ks_max": k, "acf_abs_ret_error_max": a}
            for g, d, k, a in V.GRADES
        },
        "periods": {},
    }
    fakes = {}
    for period in PERIODS:
        real = ds[period]["raw"]
        if len(real) < 4:
            result["periods"][period] = {"skipped": f"{len(real)} windows in the {period} period"}
            continue
        n = max(4 * len(real), 64)
        fake = gan_windows(ckpt, n, seed, cond) if ckpt is not None else fake_all
        fakes[period] = fake
        sources = {
            "gan": fake,
            "gbm": V.gbm_baseline(real_train, n, cfg["window_bars"], seed),
            "bootstrap": V.block_bootstrap(
                real_train, n, cfg["window_bars"], cfg["bootstrap_block"], seed
            ),
            "real_train": real_train,
        }
        if heldout_context:
            sources["gan_heldout_context"] = gan_windows(ckpt, n, seed, ds[period]["cond_raw"])
        rep = V.report(real, real_train, sources, seed=seed)
        rep["n_real_windows"] = int(len(real))
        result["periods"][period] = rep
        if plots and period == "test":
            result["plots"] = V.plots(
                out_dir,
                real,
                {k: v for k, v in sources.items()},
                float(ds[period]["start_price"][0]),
            )
    if "sources" not in result["periods"].get("test", {}):
        raise UserError(f"{bars_path}: the held-out test period has too few windows to validate")
    result["grade"] = result["periods"]["test"]["sources"]["gan"]["grade"]
    if swaps is not None:
        wcols = read_windows(windows) if windows is not None else None
        result["swaps"] = swap_validation(
            swaps, ds, cfg, fakes["test"], out_dir, seed, ckpt, wcols, plots
        )
    write_json(Path(out_dir) / "validation.json", result)
    return result


def _conditioning(ckpt: dict | None, condition: str | None, cond) -> dict:
    """What the GAN was told about the market before each window (recorded in the JSON)."""
    if ckpt is None:
        return {"mode": "windows file", "detail": "as generated (ape-gan generate)"}
    if cond is None:
        return {
            "mode": "training cond_bank",
            "detail": f"drawn from the {len(ckpt['cond_bank'])} training conditions, "
            "as ape-gan generate without --condition",
        }
    return {"mode": "condition", "detail": condition, "raw": [float(v) for v in cond]}


def swap_validation(
    swaps_path: Path,
    ds: dict,
    cfg: dict,
    fake_raw: np.ndarray,
    out_dir: Path,
    seed: int,
    ckpt: dict | None = None,
    window_cols: dict | None = None,
    plots: bool = True,
    decoder: str | None = None,
) -> dict:
    """Swap-level section: the GAN windows validate scores (``fake_raw``) decoded to swap
    events (one sequence per window) against the held-out real swaps (the test bars'), with
    per-swap GBM, a block bootstrap of real training swaps and the real training swaps
    (floor)."""
    from gan_torch import swaps as S
    from gan_torch.generate import to_windows

    decoder = decoder or cfg["swap_decoder"]
    sw = S.read_swaps(swaps_path)
    bar_seconds = int(ds["bar_seconds"])
    b = S.bar_of(sw, bar_seconds)
    n_bars = ds["bounds"]["test"][1]
    if int(b[-1]) + 1 != n_bars:
        raise UserError(
            f"{swaps_path}: its swaps span {int(b[-1]) + 1} bars, the bars file {n_bars}: "
            "not the swaps the bars were made from"
        )
    train_end, test_start = ds["bounds"]["train"][1], ds["bounds"]["test"][0]
    real = S.series(sw, b >= test_start)
    real_train = S.series(sw, b < train_end)
    bank = S.swap_bank(sw, bar_seconds, train_end, cfg)
    if window_cols is None:
        starts = ds["test"]["start_price"]
        window_cols = to_windows(fake_raw, starts[np.arange(len(fake_raw)) % len(starts)])
    # decode windows until 4x the real swaps (the classifier subsamples to the real count)
    counts = np.bincount(window_cols["window_id"], weights=window_cols["swap_count"])
    n_win = int(np.searchsorted(np.cumsum(counts), 4 * len(real["log_return"]))) + 1
    keep = window_cols["window_id"] < n_win
    liquidity = int(ckpt["data"]["liquidity"]) if ckpt else int(bank["median_liquidity"])
    rows = S.bars_to_swaps(
        {k: v[keep] for k, v in window_cols.items()},
        decoder,
        bank=bank,
        liquidity=liquidity or 10**16,
        bar_seconds=bar_seconds,
        seed=seed,
    )
    gan = S.rows_series(rows)
    n = len(gan["log_return"])
    sources = {
        "gan": gan,
        "gbm": V.gbm_swaps(real_train, n, seed=seed),
        "bootstrap": V.bootstrap_swaps(real_train, n, int(cfg["bootstrap_block"]), seed),
        "real_train": real_train,
    }
    out = V.swap_report(real, sources, seed=seed)
    out.update(decoder=decoder, swaps=str(swaps_path), gan_windows=n_win)
    if plots:
        out["plots"] = V.swap_plots(out_dir, real, sources)
    return out


def _time_split(bars: dict, ds: dict) -> dict:
    """How the split lands on this data: per-period return scale, and the GBM sigma with and
    without robust fitting (launch-week jumps inflate a raw sigma)."""
    r, active = bars["log_return"], bars["swap_count"] > 0
    out = {}
    for name, (lo, hi) in ds["bounds"].items():
        a = active[lo:hi]
        rr = r[lo:hi][a]
        out[name] = {
            "bars": int(hi - lo),
            "active_bars": int(a.sum()),
            "swaps": int(bars["swap_count"][lo:hi].sum()),
            "ret_std": float(rr.std()) if len(rr) else 0.0,
            "ret_mad_sigma": float(1.4826 * np.median(np.abs(rr - np.median(rr))))
            if len(rr)
            else 0.0,
            "max_abs_ret": float(np.abs(rr).max()) if len(rr) else 0.0,
            "windows": len(ds[name]["starts"]),
        }
    out["gbm_sigma"] = V.gbm_sigmas(ds["train"]["raw"])
    return out


def print_table(result: dict, console, label: str = "ape-gan validate") -> None:
    from rich.table import Table

    for period, rep in result["periods"].items():
        if "sources" not in rep:
            continue
        t = Table(title=f"{label}: held-out {period} period ({rep['n_real_windows']} real windows)")
        for col in (
            "source",
            "grade",
            "disc.",
            "pred. MAE",
            "mean KS",
            "ACF r err",
            "ACF |r| err",
            "kurt err",
            "vol-price err",
        ):
            t.add_column(col)
        for name, m in rep["sources"].items():
            t.add_row(
                name,
                m["grade"],
                f"{m['discriminative_score']:.3f}",
                f"{m['predictive_score']:.3f}",
                f"{m['mean_ks']:.3f}",
                f"{m['acf_ret_error']:.3f}",
                f"{m['acf_abs_ret_error']:.3f}",
                f"{m['kurtosis_error']:.2f}",
                f"{m['vol_price_corr_error']:.3f}",
            )
        console.print(t)
    if "swaps" in result:
        print_swap_table(result["swaps"], console, label)


def print_swap_table(rep: dict, console, label: str = "ape-gan validate") -> None:
    from rich.table import Table

    real = rep["real_test_stats"]
    t = Table(
        title=f"{label}: swap level, held-out test swaps ({real['swaps']} swaps, "
        f"{rep['real_windows']} windows of 24; decoder {rep['decoder']})"
    )
    for col in ("source", "disc. returns", "disc. all", "KS r", "KS size", "KS dt", "kurtosis",
                "max |r|", "same dir"):
        t.add_column(col)
    t.add_row("real_test", "", "", "", "", "", f"{real['ret_excess_kurtosis']:.1f}",
              f"{real['max_abs_ret']:.4f}", f"{real['same_direction_frac']:.2f}")
    for name, m in rep["sources"].items():
        st = m["stats"]
        t.add_row(
            name,
            f"{m['discriminative_returns']:.3f}",
            f"{m['discriminative_all']:.3f}",
            *(f"{m['ks'][k]:.3f}" for k in ("log_return", "size", "dt")),
            f"{st['ret_excess_kurtosis']:.1f}",
            f"{st['max_abs_ret']:.4f}",
            f"{st['same_direction_frac']:.2f}",
        )
    console.print(t)
