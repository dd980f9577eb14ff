"""Tiny qwen2 models for the export tests: built in well under a second, then given random
weights everywhere (norm gains, biases too) so a swapped or dropped tensor changes the logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CORPUS = [
    "APE IN 0.25 ETH",
    "APE OUT 0.1 ETH",
    "APE NEUTRAL",
    "price 3120.55 USDC, volume 42.1 ETH, 17 swaps, realized vol 0.004",
    "The price of ETH rose 3% in the last hour while volume fell.",
] * 10 + [f"bar {i}: close {3000 + 7 * i}.{i % 10} tick {-195000 + i}" for i in range(40)]

TEXT = "APE IN 0.25 ETH: price 3120.55 USDC rose, volume fell"
MESSAGES = [
    {"role": "system", "content": "You are a trader."},
    {"role": "user", "content": "price 3120.55 USDC, 17 swaps"},
]


def build(out: Path, *, untie: bool = False, pad_vocab: int = 0, seed: int = 0) -> Path:
    """A tiny qwen2 MLX model dir with random weights.

    ``untie`` adds a separate ``lm_head``; ``pad_vocab`` adds embedding rows beyond the
    tokenizer (as Qwen2.5's 151936 rows for 151665 tokens).
    """
    import mlx.core as mx

    from finetune_mlx.tiny import build_tiny

    build_tiny(out, CORPUS, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
               intermediate_size=128, vocab_size=320, max_position_embeddings=512, seed=seed)
    mx.random.seed(seed + 1)
    path = out / "model.safetensors"
    weights = mx.load(str(path))
    config = json.loads((out / "config.json").read_text())
    new = {}
    for name, w in weights.items():
        if name.endswith("norm.weight"):
            new[name] = 1.0 + 0.2 * mx.random.normal(w.shape)
        elif name.endswith(".bias"):
            new[name] = 0.2 * mx.random.normal(w.shape)
        elif "embed_tokens" in name:
            new[name] = 0.5 * mx.random.normal((w.shape[0] + pad_vocab, w.shape[1]))
        else:
            new[name] = mx.random.normal(w.shape) / w.shape[1] ** 0.5
    if untie:
        rows, hidden = new["model.embed_tokens.weight"].shape
        new["lm_head.weight"] = 0.5 * mx.random.normal((rows, hidden))
        config["tie_word_embeddings"] = False
    config["vocab_size"] = new["model.embed_tokens.weight"].shape[0]
    mx.save_safetensors(str(path), new, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def quantize(src: Path, dst: Path, bits: int = 4, group_size: int = 32) -> Path:
    """``mlx_lm.convert -q`` of ``src`` (embedding and every linear layer quantized)."""
    from mlx_lm import convert

    shutil.rmtree(dst, ignore_errors=True)
    convert(str(src), str(dst), quantize=True, q_bits=bits, q_group_size=group_size)
    return dst


def with_model_type(src: Path, dst: Path, model_type: str) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["model_type"] = model_type
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def mlx_logits(model_dir: Path, ids: list[int]):
    """Logits (numpy, float32) of the MLX model on ``ids``, and its tokenizer."""
    import mlx.core as mx
    import mlx_lm
    import numpy as np

    model, tokenizer = mlx_lm.load(str(model_dir))
    return np.array(model(mx.array([ids]))[0].astype(mx.float32)), tokenizer


def mlx_weights(model_dir: Path) -> dict:
    """HF-named float32 numpy weights of an MLX model dir (quantized layers dequantized by
    ``mx.dequantize`` directly, independently of the exporter's path)."""
    import mlx.core as mx
    import numpy as np

    config = json.loads((model_dir / "config.json").read_text())
    raw = mx.load(str(model_dir / "model.safetensors"))
    q = config.get("quantization")
    out = {}
    for name, w in raw.items():
        if name.endswith((".scales", ".biases")):
            continue
        base = name.rsplit(".", 1)[0]
        if q and name.endswith(".weight") and f"{base}.scales" in raw:
            w = mx.dequantize(w, raw[f"{base}.scales"], raw[f"{base}.biases"],
                              q["group_size"], q["bits"])
        out[name] = np.array(w.astype(mx.float32))
    return out


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []
