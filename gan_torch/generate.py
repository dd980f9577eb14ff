"""Sampling, decoding to market windows, and financial post-processing.

Post-processing does not smooth or replace anything the generator made; it only enforces
invariants: the log return per bar is clipped to a high quantile (``step_bound_quantile``;
1.0: the max) of the |returns| seen in the training data (times ``step_bound_mult``),
counts and volumes are non-negative, an empty bar (swap_count 0) carries the price forward
with zero volume, and the price path is ``start_price * exp(cumsum(r))`` anchored at a
real close. Ticks come from the exact
TickMath of ``chain.amm`` applied to the sqrtPriceX96 of each close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from apeagent.errors import UserError
from gan_torch import checkpoint as ckio
from gan_torch import data as gdata

CONDITION_PRESETS = {
    # name -> quantile of each condition (log_prev_vol, prev_trend, prev_log_volume)
    "typical": (0.5, 0.5, 0.5),
    "calm": (0.1, 0.5, 0.3),
    "volatile": (0.9, 0.5, 0.8),
    "up": (0.5, 0.9, 0.5),
    "down": (0.5, 0.1, 0.5),
}
COND_ALIASES = {"vol": 0, "trend": 1, "volume": 2}


def parse_condition(text: str | None, cond_bank: np.ndarray) -> np.ndarray | None:
    """``None`` (sample real conditions), a preset name, or ``vol=..,trend=..,volume=..``.

    Raw values are in the units of the condition features: vol is ln(std of the previous
    window's log returns), trend the sum of its log returns, volume the mean log1p(ETH volume).
    Unspecified keys take the training median.
    """
    if text is None:
        return None
    if text in CONDITION_PRESETS:
        return np.array(
            [np.quantile(cond_bank[:, i], q) for i, q in enumerate(CONDITION_PRESETS[text])]
        )
    values = np.median(cond_bank, axis=0)
    for part in text.split(","):
        key, _, raw = part.partition("=")
        if key.strip() not in COND_ALIASES:
            raise UserError(
                f"--condition {text!r}: expected a preset ({', '.join(CONDITION_PRESETS)}) "
                f"or key=value with keys {', '.join(COND_ALIASES)}"
            )
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"--condition {text!r}: {raw!r} is not a number") from None
        if not np.isfinite(value) or abs(value) > 1e6:
            raise UserError(f"--condition {text!r}: {key.strip()} must be a finite number (|x| <= 1e6), got {raw!r}")
        values[COND_ALIASES[key.strip()]] = value
    return values


def sample_scaled(
    generator,
    ckpt: dict,
    n: int,
    cond_raw: np.ndarray | None = None,
    seed: int = 0,
    autoregressive: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate n windows in scaled feature space. Returns (scaled, raw conditions, bank idx)."""
    bank = ckpt["cond_bank"].double().numpy()
    idx, z, zg = ckio.noise_for(ckpt, n, seed)
    if cond_raw is None:
        cond_raw = bank[idx]
    cond_raw = np.broadcast_to(np.asarray(cond_raw, dtype=np.float64), (n, bank.shape[1])).copy()
    cond = torch.from_numpy(gdata.scale_condition(cond_raw, ckpt["cond_scaler"])).to(device)
    z, zg = torch.from_numpy(z).to(device), torch.from_numpy(zg).to(device)
    generator.eval()
    with torch.no_grad():
        out = (
            generator.sample_autoregressive(z, cond, zg)
            if autoregressive
            else generator(z, cond, zg)
        )
    return out.float().cpu().numpy(), cond_raw, idx


def sample_continuous(
    generator,
    ckpt: dict,
    n: int,
    cond_raw: np.ndarray | None = None,
    seed: int = 0,
    autoregressive: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n windows that form one path: window j+1 is conditioned on window j as decoded (its
    volatility, trend and volume: ``data.condition_of``, the training condition), so regimes
    carry over; the first window takes ``cond_raw`` (None: a real training condition).
    Returns (scaled, raw conditions, bank idx of the first window); anchor the prices with
    :func:`chained_anchors`."""
    out, conds = [], []
    scaled, cond, idx = sample_scaled(generator, ckpt, 1, cond_raw, seed, autoregressive, device)
    for j in range(n):
        if j:
            scaled, cond, _ = sample_scaled(
                generator, ckpt, 1, cond, seed + j, autoregressive, device
            )
        out.append(scaled[0])
        conds.append(cond[0])
        cond = gdata.condition_of(decode_features(scaled, ckpt)[0])
    return np.stack(out), np.stack(conds), idx


def chained_anchors(raw: np.ndarray, start_price: float) -> np.ndarray:
    """Start prices that chain windows into one path: each window opens at the previous close."""
    per_window = raw[..., 0].sum(axis=1)
    return float(start_price) * np.exp(np.concatenate([[0.0], np.cumsum(per_window)[:-1]]))


def decode_features(scaled: np.ndarray, ckpt: dict) -> np.ndarray:
    """Scaled model output -> raw features with the invariants enforced (n, T, 4)."""
    raw = gdata.unscale(scaled.astype(np.float64), ckpt["scaler"])
    bound = float(ckpt["data"]["step_bound"]) * float(ckpt["config"]["step_bound_mult"])
    r = np.clip(raw[..., 0], -bound, bound)
    # the other features are bounded by twice the largest value seen in the real data
    fmax = np.asarray(ckpt["data"].get("feature_max", [np.inf] * 4), dtype=np.float64) * 2.0
    count = np.minimum(
        np.maximum(np.rint(np.expm1(np.minimum(raw[..., 2], 20.0))), 0.0),
        np.rint(np.expm1(fmax[2])),
    )
    vol = np.minimum(np.maximum(np.expm1(np.minimum(raw[..., 1], 20.0)), 0.0), np.expm1(fmax[1]))
    rv = np.clip(raw[..., 3], 0.0, fmax[3])
    empty = count == 0
    r[empty], vol[empty], rv[empty] = 0.0, 0.0, 0.0
    return np.stack([r, np.log1p(vol), np.log1p(count), rv], axis=-1)


def to_windows(
    raw: np.ndarray, start_prices: np.ndarray, source: str = "synthetic"
) -> dict[str, np.ndarray]:
    """Raw features -> windows.parquet columns, prices anchored at real closes."""
    from chain.amm import sqrt_price_x96_from_price, tick_from_sqrt_price_x96

    n, t, _ = raw.shape
    r = raw[..., 0]
    close = np.asarray(start_prices, dtype=np.float64)[:, None] * np.exp(np.cumsum(r, axis=1))
    if not np.all(np.isfinite(close)) or np.any(close <= 0):
        raise RuntimeError("post-processing produced a non-finite or non-positive price")
    vol_eth = np.expm1(raw[..., 1])
    ticks = np.array(
        [tick_from_sqrt_price_x96(sqrt_price_x96_from_price(float(p))) for p in close.ravel()]
    )
    return {
        "window_id": np.repeat(np.arange(n, dtype=np.int64), t),
        "step": np.tile(np.arange(t, dtype=np.int64), n),
        "source": np.array([source] * (n * t)),
        "close": close.ravel(),
        "log_return": r.ravel(),
        "volume_eth": vol_eth.ravel(),
        "volume_usdc": (vol_eth * close).ravel(),
        "swap_count": np.rint(np.expm1(raw[..., 2])).astype(np.int64).ravel(),
        "realized_vol": raw[..., 3].ravel(),
        "tick": ticks.astype(np.int64),
    }


def generate_windows(
    checkpoint,
    out,
    cfg: dict,
    condition: str | None = None,
    start_price: float | None = None,
    autoregressive: bool = False,
    backend: str = "torch",
    continuous: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """`ape-gan generate`: ``cfg["n_generate"]`` windows from a checkpoint (``backend`` mlx: also
    a directory written by scripts/convert_gan_to_mlx.py), written to ``out`` as
    windows.parquet. ``continuous``: the windows form one price path (:func:`sample_continuous`,
    each window opening at the previous close). Returns (the windows' columns, the checkpoint)."""
    checkpoint = Path(checkpoint)
    if backend not in ("torch", "mlx"):
        raise UserError(f"--backend must be torch or mlx, got {backend!r}")
    if start_price is not None and not start_price > 0:
        raise UserError(f"--start-price must be positive, got {start_price}")
    count = int(cfg["n_generate"])
    if count < 1:
        raise UserError(f"--n must be >= 1, got {count}")
    if continuous and backend == "mlx":
        raise UserError("--continuous samples window by window: use --backend torch")
    if backend == "mlx":
        from apeagent.blas import ensure_fast_blas

        ensure_fast_blas()  # before mlx is imported (may re-exec with OpenBLAS preloaded)
        from gan_torch.mlx_generator import load_converted, sample_scaled_mlx

        model = None
        if checkpoint.is_dir():
            model, ckpt = load_converted(checkpoint)
        else:
            ckpt = ckio.load(checkpoint)
        cond = parse_condition(condition, ckpt["cond_bank"].double().numpy())
        scaled, _, idx = sample_scaled_mlx(
            ckpt, count, cond_raw=cond, seed=cfg["seed"], model=model
        )
    else:
        from gan_torch.models import resolve_device

        ckpt = ckio.load(checkpoint)
        cond = parse_condition(condition, ckpt["cond_bank"].double().numpy())
        gnet, _, _ = ckio.build_models(ckpt, resolve_device(cfg["device"]))
        sample = sample_continuous if continuous else sample_scaled
        scaled, _, idx = sample(
            gnet, ckpt, count, cond, cfg["seed"], autoregressive, next(gnet.parameters()).device
        )
    raw = decode_features(scaled, ckpt)
    anchors = np.full(count, start_price) if start_price else ckpt["start_prices"].numpy()[idx]
    if continuous:
        anchors = chained_anchors(raw, float(anchors[0]))
    cols = to_windows(raw, anchors)
    gdata.write_windows(out, cols)
    return cols, ckpt
