"""Generator (transformer decoder) and critic (WGAN-GP, minibatch discrimination).

The generator maps per-step noise ``z`` (B, T, noise_dim), a per-window noise ``zg``
(B, noise_dim) and a scaled condition vector (B, n_cond) to scaled features (B, T, 4):
``[log_return, log_volume_eth, log_swap_count, realized_vol]``. The return head reads the
decoder state; the volume head reads the decoder state *and* ``|return|`` of the same step,
so the volume-price relation is modelled explicitly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

N_FEATURES = 4
N_COND = 3


def sinusoidal_encoding(length: int, dim: int, offset: int = 0) -> torch.Tensor:
    """Vaswani et al. positional encoding, (length, dim)."""
    pos = torch.arange(offset, offset + length, dtype=torch.float32)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float32)
    freq = torch.exp(-math.log(10000.0) * i / dim)
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


def causal_mask(length: int, device=None) -> torch.Tensor:
    """Additive mask: step t never sees t+1 and later."""
    return torch.full((length, length), float("-inf"), device=device).triu(1)


class Attention(nn.Module):
    def __init__(self, dims: int, num_heads: int):
        super().__init__()
        if dims % num_heads:
            raise ValueError(f"d_model {dims} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dims // num_heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.o_proj = nn.Linear(dims, dims)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, x, memory=None, mask=None, cache=None):
        """Self-attention when ``memory`` is None; ``cache`` (a dict) holds past keys/values."""
        src = x if memory is None else memory
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(src))
        v = self._heads(self.v_proj(src))
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if mask is not None:
            scores = scores + mask
        out = torch.softmax(scores, dim=-1) @ v
        b, h, t, dh = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, h * dh))


class DecoderLayer(nn.Module):
    """Pre-norm decoder block: causal self-attention, cross-attention to the memory, GELU MLP."""

    def __init__(self, dims: int, num_heads: int, ff_dims: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dims)
        self.self_attn = Attention(dims, num_heads)
        self.norm2 = nn.LayerNorm(dims)
        self.cross_attn = Attention(dims, num_heads)
        self.norm3 = nn.LayerNorm(dims)
        self.fc1 = nn.Linear(dims, ff_dims)
        self.fc2 = nn.Linear(ff_dims, dims)

    def forward(self, x, memory, mask=None, cache=None):
        x = x + self.self_attn(self.norm1(x), mask=mask, cache=cache)
        x = x + self.cross_attn(self.norm2(x), memory=memory)
        return x + self.fc2(F.gelu(self.fc1(self.norm3(x))))


class Generator(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, nz = cfg["d_model"], cfg["noise_dim"]
        self.d_model, self.noise_dim, self.cond_tokens = d, nz, cfg["cond_tokens"]
        self.in_proj = nn.Linear(nz, d)
        self.cond_proj = nn.Linear(N_COND + nz, d * self.cond_tokens)
        self.cond_embed = nn.Parameter(torch.zeros(self.cond_tokens, d))
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg["num_heads"], d * cfg["ff_mult"]) for _ in range(cfg["num_layers"])
        )
        self.norm = nn.LayerNorm(d)
        self.return_head = nn.Linear(d, 1)
        self.volume_fc1 = nn.Linear(d + 1, d)
        self.volume_fc2 = nn.Linear(d, N_FEATURES - 1)

    def memory(self, cond: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
        m = self.cond_proj(torch.cat([cond, zg], dim=-1))
        return m.view(cond.shape[0], self.cond_tokens, self.d_model) + self.cond_embed

    def heads(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        r = self.return_head(h)
        vol = self.volume_fc2(F.gelu(self.volume_fc1(torch.cat([h, r.abs()], dim=-1))))
        return torch.cat([r, vol], dim=-1)

    def forward(self, z: torch.Tensor, cond: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
        """The parallel causal pass over all steps."""
        t = z.shape[1]
        mem = self.memory(cond, zg)
        h = self.in_proj(z) + sinusoidal_encoding(t, self.d_model).to(z.device)
        mask = causal_mask(t, z.device)
        for layer in self.layers:
            h = layer(h, mem, mask=mask)
        return self.heads(h)

    @torch.no_grad()
    def sample_autoregressive(
        self, z: torch.Tensor, cond: torch.Tensor, zg: torch.Tensor
    ) -> torch.Tensor:
        """One step at a time with a key/value cache; step t sees only steps <= t."""
        mem = self.memory(cond, zg)
        caches = [{} for _ in self.layers]
        pe = sinusoidal_encoding(z.shape[1], self.d_model).to(z.device)
        out = []
        for t in range(z.shape[1]):
            h = self.in_proj(z[:, t : t + 1]) + pe[t]
            for layer, cache in zip(self.layers, caches, strict=True):
                h = layer(h, mem, cache=cache)
            out.append(self.heads(h))
        return torch.cat(out, dim=1)


def cdist_device(device: torch.device) -> torch.device:
    """Where ``torch.cdist`` runs: CPU when the tensors live on MPS, else where they live.

    ``aten::_cdist_backward`` is not implemented on MPS (pytorch#141287), so on MPS the
    distances are computed on CPU and moved back; ``.cpu()``/``.to()`` are recorded by
    autograd, so the backward pass also runs on CPU and returns its gradient to MPS. This does
    not depend on ``PYTORCH_ENABLE_MPS_FALLBACK``.
    """
    return torch.device("cpu") if device.type == "mps" else device


def pairwise_l1_cdist(m: torch.Tensor) -> torch.Tensor:
    """(K, B, C) -> (K, B, B) L1 distances with torch.cdist (CPU fallback on MPS)."""
    where = cdist_device(m.device)
    if where != m.device:
        return torch.cdist(m.to(where), m.to(where), p=1.0).to(m.device)
    return torch.cdist(m, m, p=1.0)


def pairwise_l1_native(m: torch.Tensor) -> torch.Tensor:
    """(K, B, C) -> (K, B, B) L1 distances by broadcasting: no cdist, any device, and twice
    differentiable (``_cdist_backward`` has no derivative, so a gradient penalty through the
    critic cannot use cdist on any device)."""
    return (m.unsqueeze(2) - m.unsqueeze(1)).abs().sum(-1)


PAIRWISE = {"cdist": pairwise_l1_cdist, "native": pairwise_l1_native}


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016: o_i,k = sum_j exp(-||M_i,k - M_j,k||_1), M = f T (learned)."""

    def __init__(self, in_dims: int, kernels: int, kernel_dims: int, impl: str = "cdist"):
        super().__init__()
        if impl not in PAIRWISE:
            raise ValueError(f"minibatch_impl must be one of {sorted(PAIRWISE)}, got {impl!r}")
        self.kernels, self.kernel_dims, self.impl = kernels, kernel_dims, impl
        self.T = nn.Parameter(torch.randn(in_dims, kernels * kernel_dims) * 0.1)

    def forward(self, f: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        m = (f @ self.T).view(f.shape[0], self.kernels, self.kernel_dims).transpose(0, 1)
        dist = PAIRWISE[impl or self.impl](m)  # (K, B, B)
        return torch.exp(-dist).sum(-1).transpose(0, 1) - 1.0  # drop the self term exp(0)


class Critic(nn.Module):
    """No batch norm (it would break the per-sample gradient penalty); LayerNorm instead."""

    def __init__(self, cfg: dict):
        super().__init__()
        h = cfg["critic_hidden"]
        self.step_in = nn.Linear(N_FEATURES + N_COND, h)
        self.conv1 = nn.Conv1d(h, h, 3, padding=1)
        self.conv2 = nn.Conv1d(h, h, 3, padding=2, dilation=2)
        self.norm = nn.LayerNorm(h)
        self.feat_dims = 2 * h + 4
        self.minibatch = MinibatchDiscrimination(
            self.feat_dims, cfg["mb_kernels"], cfg["mb_dim"], cfg["minibatch_impl"]
        )
        self.out1 = nn.Linear(self.feat_dims + cfg["mb_kernels"], h)
        self.out2 = nn.Linear(h, 1)

    def features(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = cond[:, None, :].expand(-1, x.shape[1], -1)
        h = F.gelu(self.step_in(torch.cat([x, c], dim=-1))).transpose(1, 2)
        h = h + F.gelu(self.conv1(h))
        h = h + F.gelu(self.conv2(h))
        h = self.norm(h.transpose(1, 2))
        r = x[..., 0]
        a = r.abs()
        a_c = a - a.mean(1, keepdim=True)
        # explicit stylized-fact features: volatility, clustering (lag-1 |r|), vol-volume link
        acf1 = (a_c[:, 1:] * a_c[:, :-1]).mean(1) / (a_c.pow(2).mean(1) + 1e-4)
        v_c = x[..., 1] - x[..., 1].mean(1, keepdim=True)
        vp = (a_c * v_c).mean(1) / (a_c.pow(2).mean(1).sqrt() * v_c.pow(2).mean(1).sqrt() + 1e-4)
        stats = torch.stack([r.std(1), a.mean(1), acf1, vp], dim=-1)
        return torch.cat([h.mean(1), h.std(1), stats], dim=-1)

    def forward(self, x, cond, impl: str | None = None):
        """Returns (score (B,), features (B, feat_dims))."""
        f = self.features(x, cond)
        mb = self.minibatch(f, impl=impl)
        return self.out2(F.gelu(self.out1(torch.cat([f, mb], dim=-1)))).squeeze(-1), f


def resolve_device(name: str) -> torch.device:
    from apeagent.errors import UserError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available on this machine")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device must be auto, cpu, mps or cuda, got {name!r}")
    return torch.device(name)
