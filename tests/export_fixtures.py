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


_RUNS: dict = {}


def student_run() -> Path:
    """A run dir with a tiny fused student, built once per test session (~20 s of CPU).

    The tiny preset's shapes (hidden 128: no matrix row but ffn_down's 256 fits a K-quant
    block) and no system prompt (``distill.include_system: false``): ``dataset/`` (the
    finetune fixtures' rows), ``student/base`` (briefly pre-trained on the answers, so it
    answers in drafts + a canary decision), ``student/adapters`` (a few LoRA steps),
    ``student/fused`` and ``config.yaml`` (``extends: tiny``).
    """
    import atexit
    import random
    import tempfile

    if "student" in _RUNS:
        return _RUNS["student"]
    from finetune_fixtures import example, train_cfg

    from distill.dataset import load_splits
    from finetune_mlx.fuse import fuse
    from finetune_mlx.tiny import build_tiny, corpus_from_dataset
    from finetune_mlx.train import train

    run = Path(tempfile.mkdtemp(prefix="ape-export-run-"))
    atexit.register(shutil.rmtree, run, True)
    rng = random.Random(0)
    data = run / "dataset"
    data.mkdir()
    for name, n in (("train", 96), ("valid", 8), ("test", 40)):
        rows = []
        for _ in range(n):
            row = example(rng)
            row["messages"] = [m for m in row["messages"] if m["role"] != "system"]
            rows.append(row)
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.yaml").write_text(f"extends: tiny\nrun:\n  run_dir: {run}\n")
    splits = load_splits(data, ("train", "valid"))
    corpus, _ = corpus_from_dataset(splits["train"] + splits["valid"])
    base = build_tiny(run / "student" / "base", corpus, hidden_size=128, num_layers=2, num_heads=8,
                      num_kv_heads=4, intermediate_size=256, vocab_size=768,
                      max_position_embeddings=512, pretrain_texts=[r["messages"] for r in splits["train"]],
                      pretrain_steps=80, pretrain_batch_size=8, pretrain_lr=2e-3, seed=0)
    adapters = run / "student" / "adapters"
    train(base, data, adapters, train_cfg(iters=4, lora_rank=8, steps_per_eval=100, val_batches=1))
    fuse(base, adapters, run / "student" / "fused")
    _RUNS["student"] = run
    return run
