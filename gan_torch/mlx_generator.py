"""The trained generator in MLX (mlx.nn), and the torch -> MLX checkpoint conversion.

Same modules, same parameter names and shapes as :class:`gan_torch.models.Generator`, so a
torch ``state_dict`` maps one to one onto the MLX tree. ``convert_checkpoint`` writes
``generator.safetensors`` (the weights) and ``config.json`` (the gan config, the feature and
condition scalers, the condition bank, the price anchors, the post-processing bounds): all a
Mac needs to generate windows without torch. Import this module only after
``apeagent.blas.ensure_fast_blas()`` in CLI code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

FORMAT = "ape-gan-mlx/1"
N_FEATURES, N_COND = 4, 3


def sinusoidal_encoding(length: int, dim: int) -> mx.array:
    pos = np.arange(length, dtype=np.float32)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float32) / dim)
    pe = np.zeros((length, dim), dtype=np.float32)
    pe[:, 0::2] = np.sin(pos * freq)
    pe[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return mx.array(pe)


class Attention(nn.Module):
    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dims // num_heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.o_proj = nn.Linear(dims, dims)

    def _heads(self, x):
        b, t, d = x.shape
        return x.reshape(b, t, self.num_heads, d // self.num_heads).transpose(0, 2, 1, 3)

    def __call__(self, x, memory=None, mask=None):
        src = x if memory is None else memory
        q, k, v = (
            self._heads(self.q_proj(x)),
            self._heads(self.k_proj(src)),
            self._heads(self.v_proj(src)),
        )
        scores = (q @ k.transpose(0, 1, 3, 2)) * self.scale
        if mask is not None:
            scores = scores + mask
        out = mx.softmax(scores, axis=-1) @ v
        b, h, t, dh = out.shape
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, t, h * dh))


class DecoderLayer(nn.Module):
    def __init__(self, dims: int, num_heads: int, ff_dims: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dims)
        self.self_attn = Attention(dims, num_heads)
        self.norm2 = nn.LayerNorm(dims)
        self.cross_attn = Attention(dims, num_heads)
        self.norm3 = nn.LayerNorm(dims)
        self.fc1 = nn.Linear(dims, ff_dims)
        self.fc2 = nn.Linear(ff_dims, dims)

    def __call__(self, x, memory, mask=None):
        x = x + self.self_attn(self.norm1(x), mask=mask)
        x = x + self.cross_attn(self.norm2(x), memory=memory)
        return x + self.fc2(nn.gelu(self.fc1(self.norm3(x))))


class Generator(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, nz = cfg["d_model"], cfg["noise_dim"]
        self.d_model, self.cond_tokens = d, cfg["cond_tokens"]
        self.in_proj = nn.Linear(nz, d)
        self.cond_proj = nn.Linear(N_COND + nz, d * self.cond_tokens)
        self.cond_embed = mx.zeros((self.cond_tokens, d))
        self.layers = [
            DecoderLayer(d, cfg["num_heads"], d * cfg["ff_mult"]) for _ in range(cfg["num_layers"])
        ]
        self.norm = nn.LayerNorm(d)
        self.return_head = nn.Linear(d, 1)
        self.volume_fc1 = nn.Linear(d + 1, d)
        self.volume_fc2 = nn.Linear(d, N_FEATURES - 1)

    def __call__(self, z, cond, zg):
        t = z.shape[1]
        mem = self.cond_proj(mx.concatenate([cond, zg], axis=-1)).reshape(
            cond.shape[0], self.cond_tokens, self.d_model
        )
        mem = mem + self.cond_embed
        h = self.in_proj(z) + sinusoidal_encoding(t, self.d_model)
        mask = nn.MultiHeadAttention.create_additive_causal_mask(t)
        for layer in self.layers:
            h = layer(h, mem, mask=mask)
        h = self.norm(h)
        r = self.return_head(h)
        vol = self.volume_fc2(nn.gelu(self.volume_fc1(mx.concatenate([h, mx.abs(r)], axis=-1))))
        return mx.concatenate([r, vol], axis=-1)


def _tree(flat: dict[str, np.ndarray]) -> dict:
    """Flat torch names (``layers.0.fc1.weight``) -> the nested tree mlx ``update`` takes."""
    from mlx.utils import tree_unflatten

    return tree_unflatten([(k, mx.array(v)) for k, v in flat.items()])


def from_torch_state(cfg: dict, state: dict) -> Generator:
    model = Generator(cfg)
    model.update(_tree({k: v.detach().cpu().float().numpy() for k, v in state.items()}))
    mx.eval(model.parameters())
    return model


def convert_checkpoint(torch_ckpt: str | Path, out_dir: str | Path) -> Path:
    """Torch checkpoint -> ``out_dir/generator.safetensors`` + ``out_dir/config.json``."""
    from apeagent.files import atomic_dir
    from gan_torch import checkpoint as ckio

    ck = ckio.load(torch_ckpt)
    cfg = dict(ck["config"])
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        weights = {
            k: mx.array(v.detach().cpu().float().numpy()) for k, v in ck["generator"].items()
        }
        mx.save_safetensors(str(tmp / "generator.safetensors"), weights)
        meta = {
            "format": FORMAT,
            "source": str(torch_ckpt),
            "config": cfg,
            "scaler": ck["scaler"],
            "cond_scaler": ck["cond_scaler"],
            "cond_bank": ck["cond_bank"].double().tolist(),
            "start_prices": ck["start_prices"].double().tolist(),
            "data": ck["data"],
            "step": int(ck["step"]),
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def load_converted(model_dir: str | Path) -> tuple[Generator, dict]:
    """A converted directory -> (MLX generator, checkpoint-like metadata with torch tensors)."""
    import torch

    from apeagent.errors import UserError

    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{model_dir}: no config.json (not a converted ape-gan MLX generator)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{cfg_path}: format {FORMAT!r} expected")
    model = Generator(meta["config"])
    model.load_weights(str(model_dir / "generator.safetensors"))
    mx.eval(model.parameters())
    meta["cond_bank"] = torch.tensor(meta["cond_bank"], dtype=torch.float64)
    meta["start_prices"] = torch.tensor(meta["start_prices"], dtype=torch.float64)
    return model, meta


def sample_scaled_mlx(
    ckpt: dict, n: int, cond_raw=None, seed: int = 0, model: Generator | None = None
):
    """Same noise as :func:`gan_torch.generate.sample_scaled` for the seed, run in MLX."""
    from gan_torch.checkpoint import noise_for
    from gan_torch.data import scale_condition

    model = model or from_torch_state(ckpt["config"], ckpt["generator"])
    idx, z, zg = noise_for(ckpt, n, seed)
    bank = ckpt["cond_bank"].double().numpy()
    if cond_raw is None:
        cond_raw = bank[idx]
    cond_raw = np.broadcast_to(np.asarray(cond_raw, dtype=np.float64), (n, bank.shape[1])).copy()
    cond = scale_condition(cond_raw, ckpt["cond_scaler"])
    out = model(mx.array(z), mx.array(cond), mx.array(zg))
    mx.eval(out)
    return np.array(out, dtype=np.float32), cond_raw, idx
