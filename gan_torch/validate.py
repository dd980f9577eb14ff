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
    for period in PERIODS:
        real = ds[period]["raw"]
        if len(real) < 4:
            result["periods"][period] = {"skipped": f"{len(real)} windows in the {period} period"}
            continue
        n = max(4 * len(real), 64)
        fake = gan_windows(ckpt, n, seed, cond) if ckpt is not None else fake_all
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
