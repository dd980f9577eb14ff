"""finetune_mlx/quant_cpu.py: a quantized model on the CPU gives the same numbers through
dequantize + sgemm as through MLX's quantized kernel, gradients included, and mlx-lm's LoRA
and fuse still see mlx's quantized classes."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tuner.utils import linear_to_lora_layers

from finetune_mlx.quant_cpu import SgemmQuantizedEmbedding, SgemmQuantizedLinear, use_sgemm


def _qmodel():
    mx.random.seed(0)
    args = llama.ModelArgs(model_type="llama", hidden_size=128, num_hidden_layers=2,
                           intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                           rms_norm_eps=1e-5, vocab_size=320, tie_word_embeddings=True,
                           rope_theta=10000.0)
    model = llama.Model(args)
    nn.quantize(model, group_size=64, bits=4)
    model.freeze()
    linear_to_lora_layers(model, 1, {"rank": 4, "dropout": 0.0, "scale": 10.0})
    mx.eval(model.parameters())
    return model


def _loss(model, x):
    return model(x).astype(mx.float32).square().mean()


def test_sgemm_path_gives_the_quantized_kernels_numbers_and_gradients():
    model = _qmodel()
    wide = mx.array(np.random.default_rng(1).integers(0, 320, size=(2, 24)), mx.int32)
    one = wide[:1, :1]  # one row: the quantized kernel is kept
    want, want_one = model(wide), model(one)
    want_loss, want_grad = nn.value_and_grad(model, _loss)(model, wide)
    mx.eval(want, want_one, want_loss, want_grad)
    switched = use_sgemm(model)
    assert switched == 2 * 7 + 1  # every Linear of both blocks, and the tied embedding
    kinds = {type(m) for _, m in model.named_modules()}
    assert SgemmQuantizedLinear in kinds and SgemmQuantizedEmbedding in kinds
    assert nn.QuantizedLinear not in kinds  # none left behind
    got, got_one = model(wide), model(one)
    loss, grad = nn.value_and_grad(model, _loss)(model, wide)
    assert np.allclose(np.array(got), np.array(want), atol=1e-4)
    assert np.allclose(np.array(got_one), np.array(want_one), atol=1e-6)
    assert abs(float(loss) - float(want_loss)) < 1e-5 * max(1.0, abs(float(want_loss)))
    for (name, a), (_, b) in zip(tree_flatten(want_grad), tree_flatten(grad), strict=True):
        assert np.allclose(np.array(a), np.array(b), atol=1e-5), name
    # mlx-lm still sees quantized layers: its fuse re-quantizes the adapted ones
    lora = model.layers[1].self_attn.q_proj
    assert isinstance(lora.linear, nn.QuantizedLinear)
    assert isinstance(lora.fuse(), nn.QuantizedLinear)
