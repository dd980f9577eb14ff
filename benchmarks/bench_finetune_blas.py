"""MLX on this CPU with and without the OpenBLAS preload: sgemm GFLOP/s and a tiny LoRA step.

Each variant runs in its own subprocess (the preload must be in place at process start):
``APE_BLAS=reference`` (MLX's bundled reference BLAS) vs the default (OpenBLAS if installed).

    .venv/bin/python benchmarks/bench_finetune_blas.py [--out runs/bench/finetune_blas.json]
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


def worker(steps: int) -> dict:
    from apeagent.blas import ensure_fast_blas

    blas = ensure_fast_blas(announce=False)
    import mlx.core as mx

    sys.path.insert(0, str(REPO / "tests"))
    from finetune_fixtures import make_dataset, train_cfg

    n = 1024
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    gflops = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9

    from distill.dataset import load_splits
    from finetune_mlx.tiny import build_tiny, corpus_from_dataset
    from finetune_mlx.train import train

    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "ds", 64, 16, 4)
        splits = load_splits(data, ("train", "valid"))
        corpus, _ = corpus_from_dataset(splits["train"])
        base = build_tiny(Path(tmp) / "base", corpus, hidden_size=96, num_layers=3, vocab_size=768)
        cfg = train_cfg(
            iters=steps,
            batch_size=8,
            steps_per_report=steps,
            steps_per_eval=10**6,
            val_batches=1,
            lora_rank=16,
        )
        report = train(base, data, Path(tmp) / "ad", cfg)
    last = report["train_log"][-1]
    return {
        "blas": blas,
        "sgemm_gflops": gflops,
        "train_seconds": report["seconds"],
        "step_seconds": report["seconds"] / steps,
        # tokens/s as the trainer counts them: loss tokens (the answers, prompt masked)
        "tokens_per_second": last["tokens_per_second"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs/bench/finetune_blas.json")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps)))
        return
    from rich.console import Console
    from rich.table import Table

    results = {}
    for name, choice in (("reference", "reference"), ("openblas", "auto")):
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_APE_BLAS_REEXEC")}
        env["APE_BLAS"] = choice
        out = subprocess.run(
            [sys.executable, __file__, "--worker", "--steps", str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    ref, fast = results["reference"], results["openblas"]
    ratios = {
        "sgemm_speedup": fast["sgemm_gflops"] / ref["sgemm_gflops"],
        "train_step_speedup": ref["step_seconds"] / fast["step_seconds"],
        "tokens_per_second_ratio": fast["tokens_per_second"] / ref["tokens_per_second"],
    }
    table = Table(title="MLX BLAS on this CPU (tiny LoRA: hidden 96, 3 layers, batch 8)")
    for col in ("variant", "BLAS", "sgemm GFLOP/s", "step s", "train tok/s"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(
            name,
            r["blas"][:40],
            f"{r['sgemm_gflops']:.1f}",
            f"{r['step_seconds']:.3f}",
            f"{r['tokens_per_second']:.0f}",
        )
    Console().print(table)
    Console().print({k: round(v, 2) for k, v in ratios.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"variants": results, "ratios": ratios, "cpus": os.cpu_count()}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
