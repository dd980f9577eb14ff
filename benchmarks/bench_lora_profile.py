"""Where one LoRA iteration's time goes on this CPU: MLX (OpenBLAS) vs PyTorch, piece by piece.

`bench_lora_speed.py` times whole iterations; this one times the pieces of one, on the same
shapes (SmolLM2-135M-Instruct, batch 4 x 256 positions, the top 8 blocks LoRA rank 8 on every
Linear) in each framework, and the elementwise kernels underneath them on one MLP activation
(4 x 256 x 1536 floats):

* the trunk (30 blocks, no LM head) forward; the LM head at every position; cross-entropy and
  logsumexp over those 1024 x 49,152 logits; head + cross-entropy forward and backward;
* one block forward (frozen, LoRA) and forward + backward; the attention kernel (causal SDPA)
  forward and forward + backward; the MLP forward and its SwiGLU activation (eager, and in MLX also under ``mx.compile``);
  one RMSNorm;
* one of the block's matmuls (1024 x 576 by 576 x 1536) and a 2048^3 sgemm;
* elementwise: add, exp, log, sigmoid, tanh.

Each framework runs in its own subprocess (PyTorch without the OpenBLAS preload, as its users
run it; ``torch.set_num_threads(cores)``), each piece once to warm up and then at least
``--reps`` times and for at least a second (``mx.eval`` of the result in MLX). Prints one table
(milliseconds and MLX / PyTorch) and writes JSON (``--out``).

    .venv/bin/python benchmarks/bench_lora_profile.py --model runs/small/student/base
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
B, T, HIDDEN, FFN, VOCAB = 4, 256, 576, 1536, 49152
NUM_LAYERS, RANK, SCALE = 8, 8, 20.0


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def timed(run, reps: int, min_seconds: float = 1.0) -> float:
    """Milliseconds per ``run()`` after one warm-up: at least ``reps`` runs and ``min_seconds``
    (the millisecond kernels repeat hundreds of times, so their means are stable)."""
    run()
    n, t0 = 0, time.perf_counter()
    while n < reps or time.perf_counter() - t0 < min_seconds:
        run()
        n += 1
    return (time.perf_counter() - t0) / n * 1000


def elementwise(ms, lib, g, u) -> dict[str, float]:
    """The elementwise kernels on ``g`` (and ``u``): ``lib`` is ``mlx.core`` or ``torch``, whose
    functions of these names do the same."""
    out = {"add": ms(lambda: g + u), "exp": ms(lambda: lib.exp(g))}
    out["log"] = ms(lambda: lib.log(lib.abs(g)))
    out["sigmoid"] = ms(lambda: lib.sigmoid(g))
    out["tanh"] = ms(lambda: lib.tanh(g))
    return out


def mlx_pieces(model_dir: str, reps: int) -> dict[str, float]:
    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas(announce=False)
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm import load
    from mlx_lm.models.base import create_attention_mask
    from mlx_lm.tuner.trainer import default_loss
    from mlx_lm.tuner.utils import linear_to_lora_layers

    def ms(f) -> float:
        return timed(lambda: mx.eval(f()), reps)

    mx.random.seed(0)
    model, _ = load(model_dir)
    model.freeze()
    linear_to_lora_layers(model, NUM_LAYERS, {"rank": RANK, "dropout": 0.0, "scale": SCALE})
    cfg = model.args
    heads, kv, hd = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        HIDDEN // cfg.num_attention_heads,
    )
    inner = model.model
    x = mx.array(np.random.default_rng(0).integers(0, VOCAB, size=(B, T)), mx.int32)
    out = {"trunk forward (30 blocks)": ms(lambda: inner(x))}
    h = inner(x)
    logits = inner.embed_tokens.as_linear(h)
    mx.eval(h, logits)
    out["LM head forward, 1024 positions"] = ms(lambda: inner.embed_tokens.as_linear(h))
    out["cross-entropy forward (1024 x 49,152)"] = ms(
        lambda: nn.losses.cross_entropy(logits, x).mean()
    )
    out["logsumexp (1024 x 49,152)"] = ms(lambda: mx.logsumexp(logits, axis=-1))

    def head_loss(h):
        return nn.losses.cross_entropy(inner.embed_tokens.as_linear(h), x).mean()

    out["head + cross-entropy forward + backward"] = ms(lambda: mx.grad(head_loss)(h))
    hh = mx.random.normal((B, T, HIDDEN))
    mx.eval(hh)
    mask = create_attention_mask(hh, None)
    low, top = inner.layers[0], inner.layers[-1]
    out["block forward (frozen)"] = ms(lambda: low(hh, mask, None))
    out["block forward (LoRA)"] = ms(lambda: top(hh, mask, None))
    block_grad = nn.value_and_grad(top, lambda m, hh: m(hh, mask, None).sum())
    out["block forward + backward (LoRA)"] = ms(lambda: block_grad(top, hh))
    q = mx.random.normal((B, heads, T, hd))
    k, v = mx.random.normal((B, kv, T, hd)), mx.random.normal((B, kv, T, hd))
    mx.eval(q, k, v)

    def sdpa(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=hd**-0.5, mask="causal")

    out["attention kernel forward"] = ms(lambda: sdpa(q, k, v))
    sdpa_grad = mx.grad(lambda q, k, v: sdpa(q, k, v).sum(), argnums=(0, 1, 2))
    out["attention kernel forward + backward"] = ms(lambda: sdpa_grad(q, k, v))
    out["MLP forward"] = ms(lambda: low.mlp(hh))
    g, u = mx.random.normal((B, T, FFN)), mx.random.normal((B, T, FFN))
    w = mx.random.normal((FFN, HIDDEN))
    a2, b2 = mx.random.normal((2048, 2048)), mx.random.normal((2048, 2048))
    mx.eval(g, u, w, a2, b2)
    out["SwiGLU silu(g) * u"] = ms(lambda: nn.silu(g) * u)
    swiglu = mx.compile(lambda g, u: nn.silu(g) * u)
    out["SwiGLU under mx.compile (PyTorch: eager)"] = ms(lambda: swiglu(g, u))
    out["RMSNorm"] = ms(lambda: low.input_layernorm(hh))
    out["matmul 1024x576 @ 576x1536"] = ms(lambda: hh.reshape(-1, HIDDEN) @ w.T)
    out["sgemm 2048^3"] = ms(lambda: a2 @ b2)
    out.update(elementwise(ms, mx, g, u))
    lengths = mx.array([[T // 2, T - 1]] * B)
    step = nn.value_and_grad(model, default_loss)
    out["whole step: loss forward + backward"] = ms(lambda: step(model, x, lengths))
    return out


def torch_pieces(model_dir: str, reps: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    def ms(f, grad=False) -> float:
        with torch.set_grad_enabled(grad):
            return timed(f, reps)

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    n = base.config.num_hidden_layers
    names = sorted(
        {
            m.rsplit(".", 1)[-1]
            for m, mod in base.model.layers[0].named_modules()
            if isinstance(mod, torch.nn.Linear)
        }
    )
    model = get_peft_model(
        base,
        LoraConfig(
            r=RANK,
            lora_alpha=SCALE * RANK,
            lora_dropout=0.0,
            target_modules=names,
            layers_to_transform=list(range(n - NUM_LAYERS, n)),
        ),
    )
    heads = base.config.num_attention_heads
    hd = HIDDEN // heads
    inner = base.model
    x = torch.randint(0, VOCAB, (B, T))
    out = {"trunk forward (30 blocks)": ms(lambda: inner(input_ids=x))}
    with torch.no_grad():
        h = inner(input_ids=x).last_hidden_state
        logits = base.lm_head(h)
    out["LM head forward, 1024 positions"] = ms(lambda: base.lm_head(h))
    out["cross-entropy forward (1024 x 49,152)"] = ms(
        lambda: F.cross_entropy(logits.flatten(0, 1), x.flatten())
    )
    out["logsumexp (1024 x 49,152)"] = ms(lambda: torch.logsumexp(logits, -1))

    def head_loss():
        hq = h.detach().requires_grad_()
        F.cross_entropy(base.lm_head(hq).flatten(0, 1), x.flatten()).backward()

    out["head + cross-entropy forward + backward"] = ms(head_loss, grad=True)
    hh = torch.randn(B, T, HIDDEN)
    rot = inner.rotary_emb(hh, torch.arange(T)[None].expand(B, T))
    causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
    low, top = inner.layers[0], inner.layers[-1]
    out["block forward (frozen)"] = ms(
        lambda: low(hh, attention_mask=causal, position_embeddings=rot)
    )
    out["block forward (LoRA)"] = ms(
        lambda: top(hh, attention_mask=causal, position_embeddings=rot)
    )

    def block_grad():
        y = top(hh.detach().requires_grad_(), attention_mask=causal, position_embeddings=rot)
        (y[0] if isinstance(y, tuple) else y).sum().backward()

    out["block forward + backward (LoRA)"] = ms(block_grad, grad=True)
    q, k, v = (torch.randn(B, heads, T, hd) for _ in range(3))  # HF repeats the KV heads
    out["attention kernel forward"] = ms(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    )

    def sdpa_grad():
        qq, kk, vv = (z.detach().requires_grad_() for z in (q, k, v))
        F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).sum().backward()

    out["attention kernel forward + backward"] = ms(sdpa_grad, grad=True)
    out["MLP forward"] = ms(lambda: low.mlp(hh))
    g, u = torch.randn(B, T, FFN), torch.randn(B, T, FFN)
    w = torch.randn(FFN, HIDDEN)
    a2, b2 = torch.randn(2048, 2048), torch.randn(2048, 2048)
    out["SwiGLU silu(g) * u"] = ms(lambda: F.silu(g) * u)
    out["SwiGLU under mx.compile (PyTorch: eager)"] = out["SwiGLU silu(g) * u"]
    out["RMSNorm"] = ms(lambda: low.input_layernorm(hh))
    out["matmul 1024x576 @ 576x1536"] = ms(lambda: hh.reshape(-1, HIDDEN) @ w.T)
    out["sgemm 2048^3"] = ms(lambda: a2 @ b2)
    out.update(elementwise(ms, torch, g, u))
    mask = torch.zeros(B, T - 1)
    mask[:, T // 2 - 1 :] = 1  # the answer span default_loss counts for lengths (T/2, T-1)
    model.train()

    def step():
        lg = model(input_ids=x[:, :-1]).logits
        ce = F.cross_entropy(lg.flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        ((ce * mask.flatten()).sum() / mask.sum()).backward()

    out["whole step: loss forward + backward"] = ms(step, grad=True)
    return out


def run_worker(framework: str, model_dir: str, reps: int) -> dict[str, float]:
    env = dict(os.environ)
    if framework == "torch":
        env.pop("LD_PRELOAD", None)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        framework,
        "--model",
        model_dir,
        "--reps",
        str(reps),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        fail(f"the {framework} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", help="an MLX model dir of SmolLM2 (default: import the packaged GGUF)"
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "runs/bench/lora_profile.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        pieces = mlx_pieces if args.worker == "mlx" else torch_pieces
        print(json.dumps(pieces(args.model, args.reps)))
        return
    from rich.console import Console
    from rich.table import Table

    from apeagent.blas import ensure_fast_blas
    from apeagent.files import write_json

    blas = ensure_fast_blas()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from finetune_mlx.import_gguf import import_gguf, packaged_smollm2

            args.model = str(import_gguf(packaged_smollm2(), Path(tmp) / "smollm2"))
        elif not (Path(args.model) / "config.json").is_file():
            fail(
                f"--model {args.model}: no config.json there "
                "(make one with ape-finetune import-gguf smollm2 DIR)"
            )
        load_before = os.getloadavg()
        model_dir = str(Path(args.model).resolve())
        mlx_ms = run_worker("mlx", model_dir, args.reps)
        torch_ms = run_worker("torch", model_dir, args.reps)
        load_after = os.getloadavg()
    title = (
        f"one LoRA iteration's pieces, SmolLM2-135M, batch {B} x {T} positions, top "
        f"{NUM_LAYERS} blocks rank {RANK}, ms ({os.cpu_count()} cores, load average "
        f"{load_before[0]:.1f} → {load_after[0]:.1f})"
    )
    table = Table(title=title)
    for col in ("piece", "MLX ms", "PyTorch ms", "MLX / PyTorch"):
        table.add_column(col, justify="right" if col != "piece" else "left")
    rows = []
    for name, m in mlx_ms.items():
        t = torch_ms[name]
        rows.append(
            {
                "piece": name,
                "mlx_ms": round(m, 2),
                "torch_ms": round(t, 2),
                "mlx_over_torch": round(m / t, 2),
            }
        )
        table.add_row(name, f"{m:.1f}", f"{t:.1f}", f"{m / t:.1f}×")
    Console(width=150).print(table)
    write_json(
        args.out,
        {
            "title": title,
            "model": args.model,
            "blas": blas,
            "reps": args.reps,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "pieces": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
