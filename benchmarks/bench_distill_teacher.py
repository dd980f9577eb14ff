"""Teacher throughput and Chain-of-Draft savings.

1. Output tokens/s of the ``mlx`` teacher backend (mlx-lm batch generation, the code path
   QwQ-32B-4bit runs through) for batch sizes 1, 4, 8, 16, on a tiny qwen2 teacher of
   >= 20M parameters (random weights: answers run to ``--max-tokens`` unless they sample
   the end token). Target: batch 8 at least 3x batch 1. Float32 by default (OpenBLAS
   matmuls); ``--bits 4`` quantises it like QwQ-32B-4bit, but MLX's CPU quantised matmul is
   far slower than BLAS and gains little from batching (Metal on a Mac is another story).
2. Output tokens of Chain of Draft vs chain of thought: the rules teacher (counted with a
   tokenizer) and a small model trained on both styles, prompted with each system prompt.

    python benchmarks/bench_distill_teacher.py [--out runs/bench/distill_teacher.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from apeagent.blas import ensure_fast_blas  # noqa: E402


def throughput(model_dir: Path, batch_sizes: list[int], n_prompts: int, max_tokens: int) -> list[dict]:
    from distill_fixtures import rules_conversations

    from distill.config import DEFAULTS
    from distill.teachers import MlxTeacher, Request

    convs = rules_conversations(n_prompts, seed=11)
    reqs = [Request(str(i), c[:2], None) for i, c in enumerate(convs)]
    rows = []
    for bs in batch_sizes:
        cfg = dict(DEFAULTS, teacher="mlx", model=str(model_dir), batch_size=bs, max_tokens=max_tokens,
                   temperature=1.0, top_p=1.0)
        teacher = MlxTeacher(cfg)
        teacher.check()
        list(teacher.generate(reqs[:bs]))  # warm-up (kernels, caches)
        teacher.stats.clear()
        t0 = time.perf_counter()
        tokens = sum(g.output_tokens for _, g in teacher.generate(reqs))
        dt = time.perf_counter() - t0
        gen_tps = sum(s["generation_tokens"] for s in teacher.stats) / sum(
            s["generation_tokens"] / s["generation_tps"] for s in teacher.stats if s["generation_tps"])
        rows.append({"batch_size": bs, "prompts": n_prompts, "output_tokens": tokens, "seconds": dt,
                     "tokens_per_s": tokens / dt, "mlx_generation_tps": gen_tps})
        teacher.close()
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup_vs_batch1"] = r["tokens_per_s"] / base
    return rows


def cod_vs_cot_rules(tokenizer_dir: Path, n: int) -> dict:
    import tempfile as _tf

    from distill_fixtures import write_windows

    from distill.config import DEFAULTS
    from distill.teach import teach

    out = {}
    with _tf.TemporaryDirectory() as d:
        w = write_windows(Path(d) / "w.parquet", n, seed=21)
        for style in ("cod", "cot"):
            rep = teach(dict(DEFAULTS, style=style, tokenizer=str(tokenizer_dir)), [w], Path(d) / style)
            out[style] = rep["output_tokens"]["mean_accepted"]
    out["cot_over_cod"] = out["cot"] / out["cod"]
    return out


def cod_vs_cot_model(model_dir: Path, n: int, max_tokens: int) -> dict:
    from distill_fixtures import rules_conversations

    from distill.config import DEFAULTS
    from distill.prompt import system_prompt
    from distill.teachers import MlxTeacher, Request

    convs = rules_conversations(n, seed=31)
    out = {}
    teacher = MlxTeacher(dict(DEFAULTS, teacher="mlx", model=str(model_dir), batch_size=8,
                              max_tokens=max_tokens, temperature=0.0))
    teacher.check()
    for style in ("cod", "cot"):
        reqs = [Request(str(i), [{"role": "system", "content": system_prompt(style)}, c[1]], None)
                for i, c in enumerate(convs)]
        tokens = [g.output_tokens for _, g in teacher.generate(reqs)]
        out[style] = sum(tokens) / len(tokens)
    out["cot_over_cod"] = out["cot"] / out["cod"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs/bench/distill_teacher.json"))
    p.add_argument("--batch-sizes", default="1,4,8,16")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--bits", type=int, default=0, help="quantise the throughput teacher (0: float32)")
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--style-steps", type=int, default=300, help="training steps of the two-style model")
    args = p.parse_args()
    blas = ensure_fast_blas()

    import json

    from distill_fixtures import build_tiny_teacher
    from rich.console import Console
    from rich.table import Table

    from apeagent.files import write_json
    from finetune_mlx.tiny import count_parameters

    console = Console()
    with tempfile.TemporaryDirectory() as d:
        console.print("building a >= 20M-parameter teacher ...")
        big = build_tiny_teacher(Path(d) / "big", hidden_size=args.hidden_size, num_layers=args.layers,
                                 pretrain_steps=0, vocab_size=1024, n_examples=32, think=False,
                                 q_bits=args.bits or None)
        params = count_parameters(json.loads((Path(d) / "big/float/config.json").read_text()))
        rows = throughput(big, [int(b) for b in args.batch_sizes.split(",")], args.prompts, args.max_tokens)
        console.print(f"training a small two-style teacher ({args.style_steps} steps) ...")
        small = build_tiny_teacher(Path(d) / "small", hidden_size=64, num_layers=2,
                                   pretrain_steps=args.style_steps, n_examples=64, cot_examples=64,
                                   think=False, q_bits=None)
        rules_tokens = cod_vs_cot_rules(small, 200)
        model_tokens = cod_vs_cot_model(small, 16, 256)

    kind = f"{args.bits}-bit" if args.bits else "float32"
    t = Table(title=f"mlx teacher throughput ({params / 1e6:.1f}M params, {kind}, <= {args.max_tokens} tokens/answer)")
    for col in ("batch", "output tokens", "seconds", "tokens/s", "speedup", "mlx gen tps"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["batch_size"]), str(r["output_tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.0f}",
                  f"{r['speedup_vs_batch1']:.2f}x", f"{r['mlx_generation_tps']:.0f}")
    console.print(t)
    t2 = Table(title="mean output tokens per answer: Chain of Draft vs chain of thought")
    for col in ("teacher", "CoD", "CoT", "CoT / CoD"):
        t2.add_column(col, justify="right")
    for name, v in (("rules (tiny tokenizer)", rules_tokens), ("small model (greedy)", model_tokens)):
        t2.add_row(name, f"{v['cod']:.1f}", f"{v['cot']:.1f}", f"{v['cot_over_cod']:.2f}x")
    console.print(t2)
    by_bs = {r["batch_size"]: r for r in rows}
    result = {
        "blas": blas,
        "teacher_parameters": params,
        "teacher_bits": args.bits or 32,
        "max_tokens": args.max_tokens,
        "throughput": rows,
        "batch8_over_batch1": by_bs[8]["speedup_vs_batch1"] if 8 in by_bs and 1 in by_bs else None,
        "target_batch8_over_batch1": 3.0,
        "output_tokens_rules": rules_tokens,
        "output_tokens_small_model": model_tokens,
    }
    write_json(args.out, result)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
