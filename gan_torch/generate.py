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

import hashlib
import math
import random
from pathlib import Path

import numpy as np
import torch

from apeagent.errors import UserError
from chain.csvio import EXPORT_COLUMNS
from chain.pool import ETH_USDC_POOL_ID, SIMULATED
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
            values[COND_ALIASES[key.strip()]] = float(raw)
        except ValueError:
            raise UserError(f"--condition {text!r}: {raw!r} is not a number") from None
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
) -> tuple[dict[str, np.ndarray], dict]:
    """`ape-gan generate`: ``cfg["n_generate"]`` windows from a checkpoint (``backend`` mlx: also
    a directory written by scripts/convert_gan_to_mlx.py), written to ``out`` as
    windows.parquet. Returns (the windows' columns, the checkpoint)."""
    checkpoint = Path(checkpoint)
    if backend not in ("torch", "mlx"):
        raise UserError(f"--backend must be torch or mlx, got {backend!r}")
    if start_price is not None and not start_price > 0:
        raise UserError(f"--start-price must be positive, got {start_price}")
    count = int(cfg["n_generate"])
    if count < 1:
        raise UserError(f"--n must be >= 1, got {count}")
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
        scaled, _, idx = sample_scaled(
            gnet, ckpt, count, cond, cfg["seed"], autoregressive, next(gnet.parameters()).device
        )
    raw = decode_features(scaled, ckpt)
    anchors = np.full(count, start_price) if start_price else ckpt["start_prices"].numpy()[idx]
    cols = to_windows(raw, anchors)
    gdata.write_windows(out, cols)
    return cols, ckpt


# ----------------------------------------------------------------- swap events

# GAN swaps are labelled like the chain simulator's: never mistaken for real chain data.
SWAP_COLUMNS = EXPORT_COLUMNS


def _step_targets(rng: random.Random, d_total: float, variation: float, k: int) -> list[float]:
    """k moves (in 1/sqrtP units) summing to d_total with total variation ~= variation."""
    if k == 1:
        return [d_total]
    variation = max(variation, abs(d_total))
    up, down = (variation + d_total) / 2, (variation - d_total) / 2
    k_up = max(1, min(k - 1, round(k * up / variation))) if variation > 0 else k // 2
    w_up = [rng.random() + 1e-3 for _ in range(k_up)]
    w_dn = [rng.random() + 1e-3 for _ in range(k - k_up)]
    moves = [up * w / sum(w_up) for w in w_up] + [-down * w / sum(w_dn) for w in w_dn]
    rng.shuffle(moves)
    return moves


def windows_to_swaps(
    cols: dict[str, np.ndarray],
    liquidity: int,
    start_time: int,
    bar_seconds: int = 300,
    start_block: int = 26_013_675,
    fee_pips: int = 500,
    seed: int = 0,
    block_seconds: int = 2,
) -> list[dict]:
    """Swap events (collector CSV schema) that reproduce each window's bars exactly through
    the pool's math: each swap is ``chain.amm.swap_exact_input`` from the previous swap's
    sqrtPriceX96, with a price limit at its target, so tick, sqrtPriceX96, the signs of
    amount0/amount1 and the fee-inclusive amounts are exactly what the pool would emit.

    Within a bar the ``swap_count`` swaps go from the previous close to the bar's close with
    a total ETH turnover near the bar's ``volume_eth`` (turnover of a constant-liquidity pool
    is L * |delta(1/sqrtP)|, so the path's total variation in 1/sqrtP is set to match it).
    """
    from chain.amm import (
        Q96,
        get_amount0_delta,
        get_amount1_delta,
        sqrt_price_x96_from_price,
        swap_exact_input,
    )

    rng = random.Random(seed)
    ids = cols["window_id"]
    rows: list[dict] = []
    block = start_block
    for w in np.unique(ids):
        sel = np.flatnonzero(ids == w)
        sel = sel[np.argsort(cols["step"][sel], kind="stable")]
        close = cols["close"][sel]
        r = cols["log_return"][sel]
        prev_price = float(close[0] * math.exp(-r[0]))
        sp = sqrt_price_x96_from_price(prev_price)
        t_bar = start_time
        for j, i in enumerate(sel):
            k = int(cols["swap_count"][i])
            t_bar = start_time + j * bar_seconds
            if k <= 0:
                continue
            target = sqrt_price_x96_from_price(float(close[j]))
            inv = lambda s: Q96 / s  # noqa: E731  (1/sqrtP in Q96 units)
            turnover = float(cols["volume_eth"][i]) * 1e18 / liquidity  # in 1/sqrtP (Q96) units
            d_total = inv(target) - inv(sp)
            # cap the round-trip excursions at 10% of 1/sqrtP: a thin pool cannot absorb the
            # bar's volume without absurd intermediate prices, so it then trades less volume
            turnover = min(turnover, abs(d_total) + 0.1 * inv(sp))
            moves = _step_targets(rng, d_total, turnover, k)
            cum = inv(sp)
            block_base = block + (j * bar_seconds) // block_seconds
            for m_idx, move in enumerate(moves):
                cum += move
                is_last = m_idx == len(moves) - 1
                tgt = target if is_last else int(Q96 / max(cum, 1e-30))
                if tgt == sp:  # no price move: a minimal swap in a random direction
                    tgt = sp + (1 if rng.random() < 0.5 else -1)
                zfo = tgt < sp  # token0 (ETH) in pushes the price down
                need = (
                    get_amount0_delta(tgt, sp, liquidity, True)
                    if zfo
                    else get_amount1_delta(sp, tgt, liquidity, True)
                )
                amount_in = (need * 1_000_000) // (1_000_000 - fee_pips) + 2
                res = swap_exact_input(
                    sp, liquidity, amount_in, zfo, fee_pips, sqrt_price_limit_x96=tgt
                )
                # replay the consumed input as a plain exact-input swap: the event is then
                # exactly what the pool emits for that input (no hidden price limit)
                res = swap_exact_input(sp, liquidity, res.amount_in, zfo, fee_pips)
                sp = res.sqrt_price_x96
                ts = t_bar + int(bar_seconds * (m_idx + 0.5) / len(moves))
                blk = block_base + int((ts - t_bar) // block_seconds)
                h = hashlib.sha256(f"ape-gan:{seed}:{w}:{j}:{m_idx}".encode()).hexdigest()
                rows.append(
                    {
                        "block_number": blk,
                        "transaction_hash": h,
                        "pool_id": ETH_USDC_POOL_ID[2:],
                        "router_address": SIMULATED,
                        "original_sender": SIMULATED,
                        "is_contract_sender": False,
                        "amount0": res.amount0,
                        "amount1": res.amount1,
                        "sqrt_price_x96": res.sqrt_price_x96,
                        "liquidity": liquidity,
                        "tick": res.tick,
                        "fee": fee_pips,
                        "timestamp": ts,
                        "log_index": m_idx,
                    }
                )
        block += (len(sel) * bar_seconds) // block_seconds + 1
        start_time = t_bar + bar_seconds
    return rows


def write_swaps_csv(path, rows: list[dict]) -> None:
    import csv

    from apeagent.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(SWAP_COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: str(v) for k, v in row.items()})
