"""Quantized layers that run at sgemm speed on a CPU.

MLX's CPU ``quantized_matmul`` is a plain loop: on this x86 host it runs ~36x below the float
sgemm that OpenBLAS gives MLX (1.7 vs 61 GFLOP/s for 512 x 576 x 1536), so a QLoRA run (a
4-bit base) spends hours where the float one spends minutes. For an input of many rows
(prefill, a training batch, the frozen-block cache) dequantizing the weight first and calling
sgemm costs O(weights) extra against O(rows x weights) saved; for few rows (one decoded token)
the quantized kernel is kept. The weights stay quantized in memory: one layer's float copy
exists only while that layer runs. On Apple silicon (Metal) nothing changes: its quantized
kernels are fast, and :func:`use_sgemm` leaves the model alone unless the default device is
the CPU.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

MIN_ROWS = 8  # inputs with fewer rows keep the quantized kernel (decoding)


def _rows(x: mx.array) -> int:
    return x.size // x.shape[-1] if x.ndim else 0


def _weight(layer) -> mx.array:
    return mx.dequantize(layer["weight"], layer["scales"], layer.get("biases"),
                         group_size=layer.group_size, bits=layer.bits, mode=layer.mode)


class SgemmQuantizedLinear(nn.QuantizedLinear):
    """``nn.QuantizedLinear`` whose wide inputs go through dequantize + sgemm."""

    def __call__(self, x):
        if _rows(x) < MIN_ROWS:
            return super().__call__(x)
        y = x @ _weight(self).astype(x.dtype).T
        return y + self["bias"] if "bias" in self else y


class SgemmQuantizedEmbedding(nn.QuantizedEmbedding):
    """``nn.QuantizedEmbedding`` whose tied output projection (``as_linear``) does the same."""

    def as_linear(self, x):
        if _rows(x) < MIN_ROWS:
            return super().as_linear(x)
        return x @ _weight(self).astype(x.dtype).T


_SWAP = {nn.QuantizedLinear: SgemmQuantizedLinear, nn.QuantizedEmbedding: SgemmQuantizedEmbedding}


def use_sgemm(model: nn.Module, force: bool = False) -> int:
    """On the CPU (or with ``force``), switch the model's quantized Linear and Embedding layers
    to the classes above, in place (same parameters, still ``isinstance`` of mlx's classes, so
    mlx-lm's LoRA and fuse treat them as before). Returns how many layers were switched."""
    if not force and mx.default_device() != mx.cpu:
        return 0
    n = 0
    for _, module in model.named_modules():
        new = _SWAP.get(type(module))
        if new is not None:
            module.__class__ = new
            n += 1
    return n
