"""Checkpoints: plain tensors and plain-data config only, loadable with weights_only=True.

A checkpoint is a dict::

    format        "ape-gan/1"
    config        the gan section used (str/int/float/bool only)
    generator     state_dict (generation uses it: the EMA average when ema_decay > 0)
    generator_train  state_dict of the raw training iterate (only with EMA; for resume)
    critic        state_dict
    opt_g, opt_c  optimizer state_dicts (resume)
    scaler        {"center": [4 floats], "scale": [4 floats]}   feature scaler
    cond_scaler   {"center": [3 floats], "scale": [3 floats]}   the ONE condition scaler
    cond_bank     (n, 3) raw training conditions (generation samples from it by default)
    start_prices  (n,) real closes before each training window (price anchors)
    data          {"step_bound", "liquidity", "bar_seconds", "last_close", "last_bar_start"}
    step, rng, best_fidelity, fidelity
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from apeagent.errors import UserError
from apeagent.files import atomic_path
from gan_torch.config import ARCH_KEYS, DEFAULTS

FORMAT = "ape-gan/1"


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def save(path: str | Path, ckpt: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(_cpu(ckpt), tmp)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"{path}: not a loadable ape-gan checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an ape-gan checkpoint (format {FORMAT!r} expected)")
    unknown = sorted(set(ckpt["config"]) - set(DEFAULTS))
    if unknown:
        raise UserError(
            f"{path}: config has unknown keys {', '.join(unknown)} (incompatible version)"
        )
    return ckpt


def check_compatible(ckpt_cfg: dict, cfg: dict, path: str | Path) -> None:
    """Refuse to resume under a config with different tensor shapes."""
    diff = [
        f"{k}: checkpoint {ckpt_cfg.get(k)!r} vs config {cfg[k]!r}"
        for k in ARCH_KEYS
        if ckpt_cfg.get(k) != cfg[k]
    ]
    if diff:
        raise UserError(f"{path}: checkpoint from an incompatible config ({'; '.join(diff)})")


def build_models(ckpt: dict, device: torch.device | str = "cpu"):
    """Generator and critic with the checkpoint's weights (config taken from the checkpoint)."""
    from gan_torch.models import Critic, Generator

    cfg = dict(DEFAULTS)
    cfg.update(ckpt["config"])
    g, c = Generator(cfg), Critic(cfg)
    try:
        g.load_state_dict(ckpt["generator"])
        c.load_state_dict(ckpt["critic"])
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not match its config: {e}") from None
    return g.to(device).eval(), c.to(device).eval(), cfg


def noise_for(ckpt: dict, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a checkpoint's generator is fed for n windows and a seed: (bank idx, z, zg), drawn
    in this order from one torch generator (the torch and MLX backends share it)."""
    cfg = ckpt["config"]
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(len(ckpt["cond_bank"]), (n,), generator=gen).numpy()
    z = torch.randn(n, cfg["window_bars"], cfg["noise_dim"], generator=gen).numpy()
    zg = torch.randn(n, cfg["noise_dim"], generator=gen).numpy()
    return idx, z, zg
