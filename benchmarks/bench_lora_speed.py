"""One LoRA iteration on SmolLM2-135M-Instruct: MLX (OpenBLAS) vs PyTorch CPU + peft, one run.

Every variant trains the same batch (``--batch-size`` chat examples: ``distill.prompt.messages``
+ the rules teacher's answer with ``drafts: restated``, tokenized once with mlx-lm's
``ChatDataset(mask_prompt=True)`` and padded as mlx-lm pads, to 1 + a multiple of 32), the same
adapted blocks (the top ``--num-layers``), rank, LoRA scale (mlx-lm ``scale`` 20 = peft
``lora_alpha / r``), target modules (the ones mlx-lm's ``linear_to_lora_layers`` picks when no
``keys`` are given, as ``ape-finetune lora`` and ``mlx_lm.lora`` run it: every Linear of a
block, q/k/v/o/gate/up/down for llama) and the same loss (cross-entropy on the answer tokens,
mlx-lm's mask), with Adam:

* ``mlx_stock``: mlx-lm's ``default_loss`` on the full model, ``nn.value_and_grad`` + Adam, the
  step under ``mx.compile`` as ``mlx_lm.lora``'s trainer runs it (``mlx_stock_eager``: without);
* ``mlx_frozen``: the project's frozen-block cache (``finetune_mlx/frozen.py``): the blocks
  below the adapted ones run once per example (timed apart, per example), each step runs only
  the adapted blocks and the LM head at the answer positions (``mlx_frozen_eager``: uncompiled);
* ``torch_peft``: ``AutoModelForCausalLM`` on the MLX dir's float32 safetensors, peft
  ``LoraConfig(r, lora_alpha=scale*r, layers_to_transform=top blocks)``, ``torch.optim.Adam``,
  ``torch.set_num_threads(cores)``. Its logits and first loss are checked against MLX's.

The optimizers are each framework's own ``Adam`` at the same learning rate: mlx's has no bias
correction by default (its first steps are ~3x larger), so the losses part after the first step;
the work per step is the same.

Each variant runs in its own subprocess (peak RSS is per variant; the PyTorch one without the
OpenBLAS preload, as a PyTorch user runs it) after ``--warmup`` steps, timed over ``--steps``
(``mx.eval`` of loss, parameters and optimizer state each step).

FLOPs (counted analytically, matmuls only; norms, activations and softmax left out), for a
batch of ``B`` rows padded to ``T`` positions, hidden ``d``, attention width ``a = heads *
head_dim``, ``P`` the weights of one block's Linears, ``V`` the vocabulary, rank ``r``:

    block forward      F_blk  = 2*B*T*P + 4*B*T*T*a          (Linears + QK^T and PV, full T x T)
    LoRA forward       F_lora = 2*B*T*r*sum(in + out)        (over one block's adapted Linears)
    head forward       F_head = 2*H*d*V                      (H = positions the head runs at:
                                                               B*T, or the answer span if cached)
    backward           the frozen weights get no gradient, so the adapted blocks' Linears and the
                       head cost 1x forward (the input gradient), attention 2x (dQ, dK, dV from
                       two matmuls each) and LoRA 2x (input and weight gradients); the blocks
                       below the adapted ones get no backward pass at all.
    iteration FLOPs    = n_fwd*F_blk + n_ad*(F_lora + [2*B*T*P + 8*B*T*T*a] + 2*F_lora) + 2*F_head
                       (n_fwd = blocks run forward: all, or only the adapted ones when cached)

Achieved GFLOP/s = iteration FLOPs / seconds per iteration, also as a fraction of the float32
sgemm peak (2048 x 2048 matmul) of the same framework, measured in the same process.

    .venv/bin/python benchmarks/bench_lora_speed.py [--model DIR] [--warmup 2 --steps 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("mlx_stock", "mlx_stock_eager", "mlx_frozen", "mlx_frozen_eager", "torch_peft")
PAD_TO = 32  # mlx-lm's iterate_batches pads every batch to 1 + a multiple of this


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_examples(model_dir: Path, n: int, seed: int) -> list[dict]:
    """``n`` chat examples (prompt + the rules teacher's restated answer) as mlx-lm tokenizes them."""
    import numpy as np
    from mlx_lm.tuner.datasets import ChatDataset
    from transformers import AutoTokenizer

    from apeagent.config import defaults
    from distill.prompt import MarketState, messages
    from distill.rules import answer

    rules = {**defaults("distill"), "drafts": "restated"}
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        price = float(rng.uniform(2000, 4000))
        change = float(rng.normal(0, 0.8))
        eth = float(rng.uniform(0, 2))
        state = MarketState(
            price=price,
            change_pct=change,
            change_ticks=int(round(change * 100)),
            volume_eth=float(rng.uniform(5, 500)),
            volume_usdc=float(rng.uniform(1e4, 1e6)),
            volatility_pct=float(rng.uniform(0.1, 2)),
            swap_count=int(rng.integers(10, 400)),
            eth_balance=eth,
            usdc_balance=float(rng.uniform(0, 2)) * price,
            window_minutes=60,
        )
        msgs = messages(state) + [{"role": "assistant", "content": answer(state, rules)}]
        rows.append({"messages": msgs})
    ds = ChatDataset(rows, AutoTokenizer.from_pretrained(str(model_dir)), mask_prompt=True)
    out = []
    for row in rows:
        tokens, offset = ds.process(row)
        out.append({"tokens": list(tokens), "offset": int(offset)})
    return out


def padded_batch(examples: list[dict]):
    """The batch and (offset, length) pairs exactly as mlx-lm's ``iterate_batches`` builds them."""
    import numpy as np

    lengths = [len(e["tokens"]) for e in examples]
    width = 1 + PAD_TO * ((max(lengths) + PAD_TO - 1) // PAD_TO)
    arr = np.zeros((len(examples), width), np.int32)
    for i, e in enumerate(examples):
        arr[i, : lengths[i]] = e["tokens"]
    return arr, np.array([[e["offset"], n] for e, n in zip(examples, lengths, strict=True)])


def iteration_flops(cfg: dict, shape: dict, num_layers: int, rank: int, cached: bool) -> dict:
    """The docstring's formula: forward and backward FLOPs of one training iteration."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    a, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    dims = [(d, a), (d, kv), (d, kv), (a, d), (d, f), (d, f), (f, d)]  # q k v o gate up down
    p_blk = sum(i * o for i, o in dims)
    bt, t = shape["batch"] * shape["positions"], shape["positions"]
    lin, attn = 2 * bt * p_blk, 4 * bt * t * a
    lora = 2 * bt * rank * sum(i + o for i, o in dims)
    head = 2 * shape["head_positions"] * d * v
    n_fwd = num_layers if cached else cfg["num_hidden_layers"]
    forward = n_fwd * (lin + attn) + num_layers * lora + head
    backward = num_layers * (lin + 2 * attn + 2 * lora) + head
    return {
        "forward": forward,
        "backward": backward,
        "total": forward + backward,
        "block_weights": p_blk,
    }


def mlx_sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    import mlx.core as mx

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    t0 = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def torch_sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def time_steps(step, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Run ``step()`` (returns the loss as a float) warmup + steps times; the timed seconds."""
    losses, times = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        losses.append(step())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return losses, times


def mlx_model(model_dir: str, num_layers: int, rank: int, scale: float):
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model, _ = load(model_dir)
    model.freeze()
    linear_to_lora_layers(model, num_layers, {"rank": rank, "scale": scale, "dropout": 0.0})
    adapted = sorted({k.rsplit(".", 2)[-2] for k, _ in _flat(model.trainable_parameters())})
    return model, adapted


def _flat(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def mlx_train(model, loss, batch: tuple, compiled: bool, args) -> tuple[list, list]:
    """mlx-lm's trainer step (value_and_grad + Adam update), compiled as it compiles it or not."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    opt = optim.Adam(learning_rate=args.learning_rate)
    value_and_grad = nn.value_and_grad(model, loss)
    state = [model.state, opt.state, mx.random.state]

    def update(*b):
        (lvalue, toks), grad = value_and_grad(model, *b)
        opt.update(model, grad)
        return lvalue, toks

    fn = partial(mx.compile, inputs=state, outputs=state)(update) if compiled else update

    def step():
        lvalue, toks = fn(*batch)
        mx.eval(state, lvalue, toks)
        return lvalue.item()

    return time_steps(step, args.warmup, args.steps)


def worker_mlx(args, variant: str, data: dict) -> dict:
    import mlx.core as mx
    import numpy as np
    from mlx_lm.tuner.trainer import default_loss, iterate_batches

    from finetune_mlx import frozen

    peak = mlx_sgemm_gflops()
    model, adapted = mlx_model(args.model, args.num_layers, args.rank, args.scale)
    examples = [(e["tokens"], e["offset"]) for e in data["examples"]]
    start = len(model.layers) - args.num_layers
    out = {
        "sgemm_gflops": peak,
        "adapted_modules": adapted,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", f"default ({os.cpu_count()})"),
    }
    if variant.startswith("mlx_stock"):
        batch, lengths = next(iterate_batches(examples, len(examples), 1 << 30))
        logits = model(batch[:, :-1])
        last = np.array(lengths)[:, 1] - 1
        np.save(args.logits, np.array(logits[mx.arange(len(last)), mx.array(last)]))
        out["shape"] = {
            "batch": batch.shape[0],
            "positions": batch.shape[1] - 1,
            "head_positions": batch.shape[0] * (batch.shape[1] - 1),
        }
        loss, batch_args, cached = default_loss, (batch, lengths), False
    else:
        t0 = time.perf_counter()
        cset = frozen.cache_dataset(model, examples, start, batch_size=len(examples))
        out["cache_seconds_per_example"] = (time.perf_counter() - t0) / len(examples)
        batch_args = next(frozen.iterate_batches(cset, len(examples), 1 << 30))
        hidden, pos = batch_args[0], batch_args[1]
        out["shape"] = {
            "batch": hidden.shape[0],
            "positions": hidden.shape[1],
            "head_positions": pos.shape[0] * pos.shape[1],
        }
        loss, cached = frozen.top_loss(start), True
    losses, times = mlx_train(model, loss, batch_args, not variant.endswith("_eager"), args)
    out.update(losses=losses, step_seconds=times, peak_rss_mib=peak_rss_mib(), cached=cached)
    return out


def torch_model(args, adapted: list[str]):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    n = model.config.num_hidden_layers
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.scale * args.rank,
        lora_dropout=0.0,
        target_modules=adapted,
        layers_to_transform=list(range(n - args.num_layers, n)),
    )
    return get_peft_model(model, lora)


def linear_names(model_dir: str) -> list[str]:
    """mlx-lm's default LoRA targets (every Linear of a block), when no MLX variant ran first."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    cfg.num_hidden_layers = 1
    with torch.device("meta"):
        block = AutoModelForCausalLM.from_config(cfg).model.layers[0]
    return sorted(
        {n.rsplit(".", 1)[-1] for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    )


def worker_torch(args, data: dict) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    peak = torch_sgemm_gflops()
    model = torch_model(args, data.get("adapted_modules") or linear_names(args.model))
    arr, lengths = padded_batch(data["examples"])
    batch = torch.from_numpy(arr.astype(np.int64))
    inputs, targets = batch[:, :-1], batch[:, 1:]
    steps = torch.arange(1, targets.shape[1] + 1)
    lens = torch.from_numpy(lengths)
    mask = ((steps >= lens[:, 0:1]) & (steps <= lens[:, 1:])).float()  # mlx-lm's default_loss mask
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
    np.save(args.logits, logits[torch.arange(len(lens)), lens[:, 1] - 1].numpy())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.learning_rate)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs).logits
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (ce * mask.flatten()).sum() / mask.sum()
        loss.backward()
        opt.step()
        return float(loss)

    model.train()
    losses, times = time_steps(step, args.warmup, args.steps)
    return {
        "sgemm_gflops": peak,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "mkl": torch.backends.mkl.is_available(),
        "trainable_parameters": sum(p.numel() for p in params),
        "shape": {
            "batch": inputs.shape[0],
            "positions": inputs.shape[1],
            "head_positions": inputs.numel(),
        },
        "losses": losses,
        "step_seconds": times,
        "peak_rss_mib": peak_rss_mib(),
        "cached": False,
    }


def run_variant(args, variant: str, data_path: Path, logits: Path) -> dict:
    env = dict(os.environ)
    if variant == "torch_peft":  # PyTorch as its users run it: its own BLAS, no MLX preload
        env.pop("LD_PRELOAD", None)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--data",
        str(data_path),
        "--logits",
        str(logits),
        "--model",
        str(args.model),
    ]
    for flag in ("warmup", "steps", "num_layers", "rank", "scale", "learning_rate"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        fail(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def summarise(name: str, r: dict, model_cfg: dict, args, tokens: int) -> dict:
    sec = sum(r["step_seconds"]) / len(r["step_seconds"])
    fl = iteration_flops(model_cfg, r["shape"], args.num_layers, args.rank, r["cached"])
    gflops = fl["total"] / sec / 1e9
    return {
        **r,
        "variant": name,
        "seconds_per_iteration": sec,
        "tokens_per_second": tokens / sec,
        "flops": fl,
        "gflops": gflops,
        "fraction_of_sgemm_peak": gflops / r["sgemm_gflops"],
    }


def logit_agreement(a_path: Path, b_path: Path) -> dict:
    import numpy as np

    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    corr = [float(np.corrcoef(x, y)[0, 1]) for x, y in zip(a, b, strict=True)]
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "min_correlation": min(corr),
        "same_top1": int((a.argmax(-1) == b.argmax(-1)).sum()),
        "rows": len(a),
    }


def worker_main(args) -> None:
    if args.worker != "torch_peft":
        from apeagent.blas import ensure_fast_blas

        blas = ensure_fast_blas(announce=False)
    data = json.loads(Path(args.data).read_text())
    if args.worker == "torch_peft":
        out = worker_torch(args, data)
    else:
        out = {**worker_mlx(args, args.worker, data), "blas": blas}
    print(json.dumps(out))


def prepare(args, tmp: Path) -> tuple[dict, int]:
    """The model dir (imported unless --model) and the tokenized examples, written to ``tmp``."""
    if args.model is None:
        from finetune_mlx.import_gguf import import_gguf, packaged_smollm2

        t0 = time.perf_counter()
        args.model = str(import_gguf(packaged_smollm2(), tmp / "smollm2"))
        print(f"imported SmolLM2 in {time.perf_counter() - t0:.0f} s")
    elif not (Path(args.model) / "config.json").is_file():
        fail(
            f"--model {args.model}: no config.json there (make one with "
            "ape-finetune import-gguf smollm2 DIR)"
        )
    args.model = str(Path(args.model).resolve())
    examples = make_examples(Path(args.model), args.batch_size, args.seed)
    model_cfg = json.loads((Path(args.model) / "config.json").read_text())
    return {"examples": examples, "model_config": model_cfg}, sum(
        len(e["tokens"]) for e in examples
    )


def table(results: dict, title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in (
        "variant",
        "s/iter",
        "tokens/s",
        "GFLOP/iter",
        "GFLOP/s",
        "sgemm peak",
        "of peak",
        "peak RSS MiB",
        "cache s/example",
    ):
        t.add_column(col, justify="right")
    for name, r in results.items():
        cache = r.get("cache_seconds_per_example")
        t.add_row(
            name,
            f"{r['seconds_per_iteration']:.2f}",
            f"{r['tokens_per_second']:.0f}",
            f"{r['flops']['total'] / 1e9:.0f}",
            f"{r['gflops']:.1f}",
            f"{r['sgemm_gflops']:.1f}",
            f"{r['fraction_of_sgemm_peak']:.0%}",
            f"{r['peak_rss_mib']:.0f}",
            "-" if cache is None else f"{cache:.2f}",
        )
    return t


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs/bench/lora_speed.json")
    p.add_argument(
        "--model", help="an MLX model dir of SmolLM2 (default: import the packaged GGUF)"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--scale", type=float, default=20.0)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--logits", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args)
        return
    from apeagent.blas import ensure_fast_blas

    blas = ensure_fast_blas()
    from rich.console import Console

    from apeagent.files import write_json

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        fail(f"--variants: unknown {', '.join(unknown) or '(none)'} (known: {', '.join(VARIANTS)})")
    if "torch_peft" in variants and importlib.util.find_spec("peft") is None:
        fail(
            "torch_peft needs peft: pip install peft (in the dev extras), or leave it out of --variants"
        )
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    load_before = os.getloadavg()
    results, raw = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, tokens = prepare(args, tmp)
        for v in variants:
            (tmp / "data.json").write_text(json.dumps(data))
            print(f"running {v} ...", flush=True)
            raw[v] = run_variant(args, v, tmp / "data.json", tmp / f"{v}.npy")
            if raw[v].get("adapted_modules"):
                data.setdefault("adapted_modules", raw[v]["adapted_modules"])
            results[v] = summarise(v, raw[v], data["model_config"], args, tokens)
        check = {}
        if "torch_peft" in raw and "mlx_stock" in raw:
            check = logit_agreement(tmp / "mlx_stock.npy", tmp / "torch_peft.npy")
            check["first_loss_mlx"] = raw["mlx_stock"]["losses"][0]
            check["first_loss_torch"] = raw["torch_peft"]["losses"][0]
    load_after = os.getloadavg()
    title = (
        f"one LoRA iteration, SmolLM2-135M, batch {args.batch_size}, top {args.num_layers} "
        f"blocks, rank {args.rank} ({os.cpu_count()} cores, load average "
        f"{load_before[0]:.1f} → {load_after[0]:.1f})"
    )
    Console(width=150).print(table(results, title))
    if "torch_peft" in results and "mlx_stock" in results:
        ratio = (
            results["torch_peft"]["seconds_per_iteration"]
            / results["mlx_stock"]["seconds_per_iteration"]
        )
        Console(width=150).print({"mlx_stock_speed_vs_torch": round(ratio, 2), "logits": check})
    write_json(
        args.out,
        {
            "title": title,
            "uptime": uptime,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "cpus": os.cpu_count(),
            "blas": blas,
            "model": str(args.model),
            "batch_size": args.batch_size,
            "tokens_per_batch": tokens,
            "answer_tokens": [len(e["tokens"]) - e["offset"] for e in data["examples"]],
            "num_layers": args.num_layers,
            "rank": args.rank,
            "scale": args.scale,
            "warmup": args.warmup,
            "steps": args.steps,
            "logit_check": check,
            "variants": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
