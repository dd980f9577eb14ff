"""GGUF exports of a fused student in llama.cpp: size and greedy canary-decision agreement with
the MLX model, per quant, on the run's held-out test prompts.

For each quant the fused model is exported (`export_gguf`: f16, Q8_0/Q5_0/Q4_0 by the gguf
package, K-quants by llama.cpp's quantizer), loaded in llama.cpp (llama-cpp-python) and asked
every test prompt greedily with the GGUF's chat template; decisions (and decision + amount,
and the whole text) are compared with MLX's greedy answers. Issue 17's targets: f16 agrees on
every decision, Q8_0 on >= 95%. The table also shows which types a K-quant really used (the
tiny student's rows of 128 do not fit the 256-value K blocks: llama.cpp falls back per tensor).

    .venv/bin/python benchmarks/bench_export_gguf.py [RUN_DIR]     # default runs/tiny (make demo)
    .venv/bin/python benchmarks/bench_export_gguf.py --fixture      # the tests' tiny student
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUANTS = ["f16", "q8_0", "q5_0", "q4_0", "q6_k", "q5_k_m", "q4_k_m"]
TARGETS = {"f16": 1.0, "q8_0": 0.95}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, nargs="?", default=REPO / "runs/tiny",
                    help="run with student/fused and dataset/test.jsonl (default: make demo's)")
    ap.add_argument("--fixture", action="store_true",
                    help="use the tests' tiny fused student (also when RUN_DIR has none)")
    ap.add_argument("--quants", default=",".join(QUANTS))
    ap.add_argument("--limit", type=int, default=200, help="test prompts (0: all)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--work", type=Path, default=REPO / "runs/bench/export_gguf")
    ap.add_argument("--out", type=Path, default=REPO / "runs/bench/export_gguf.json")
    args = ap.parse_args()

    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    from rich.console import Console
    from rich.table import Table

    from finetune_mlx.export_gguf import INFO_FILE, K_TYPES, export_gguf
    from finetune_mlx.gguf_check import agreement, held_out_prompts, llama_cpp_answers, mlx_answers

    run = args.run_dir
    if args.fixture or not (run / "student" / "fused" / "config.json").is_file():
        print(f"{run}: no fused student; using the tests' tiny student (tests/export_fixtures.py)")
        sys.path.insert(0, str(REPO / "tests"))
        from export_fixtures import student_run

        run = student_run()
    fused = run / "student" / "fused"
    prompts = held_out_prompts(run / "dataset" / "test.jsonl", args.limit)
    t0 = time.perf_counter()
    reference = mlx_answers(fused, prompts, args.max_tokens)
    mlx_s = time.perf_counter() - t0
    results = {}
    for quant in args.quants.split(","):
        out = args.work / quant / "model.gguf"
        t0 = time.perf_counter()
        if quant in ("f16", "bf16", "f32"):
            export_gguf(fused, out, quant)
        else:
            export_gguf(fused, out, quant=quant)
        export_s = time.perf_counter() - t0
        info = json.loads((out.parent / INFO_FILE).read_text())
        answers = llama_cpp_answers(out, prompts, args.max_tokens)
        results[quant] = {
            "file_type": info["file_type"],
            "bytes": info["bytes"],
            "bits_per_weight": info["bits_per_weight"],
            "matrix_types": info["matrix_types"],
            "fallbacks": len(info["fallbacks"]),
            "summary": info["summary"],
            "export_s": round(export_s, 2),
            "llama_cpp_tokens_per_second": round(answers["tokens_per_second"], 1),
            **agreement(reference, answers["texts"]),
        }
    ok = {q: results[q]["decision_agreement"] >= t for q, t in TARGETS.items() if q in results}

    table = Table(title=f"GGUF in llama.cpp vs MLX on {run}/dataset/test.jsonl "
                        f"(n={len(prompts)}, greedy, max {args.max_tokens} tokens)")
    for col in ("quant", "file type", "MiB", "bits/w", "matrix types", "decisions", "+amount",
                "text", "compliance", "tok/s"):
        table.add_column(col, justify="left" if col in ("quant", "file type", "matrix types") else "right")
    for q, r in results.items():
        kq = sum(c for t, c in r["matrix_types"].items() if t in K_TYPES)
        mix = " ".join(f"{t}:{c}" for t, c in r["matrix_types"].items())
        if r["fallbacks"]:
            mix += f" ({r['fallbacks']} fell back{f', {kq} K' if kq else ''})"
        table.add_row(q, r["file_type"], f"{r['bytes'] / 2**20:.2f}", f"{r['bits_per_weight']:.2f}",
                      mix, f"{r['decision_agreement']:.1%}", f"{r['action_agreement']:.1%}",
                      f"{r['text_agreement']:.1%}", f"{r['canary_compliance']:.1%}",
                      f"{r['llama_cpp_tokens_per_second']:.0f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"MLX reference: {mlx_s:.1f} s for {len(prompts)} answers; decisions "
                  f"{agreement(reference, reference)['decisions']}")
    for q, t in TARGETS.items():
        if q in results:
            console.print(f"target {q} decision agreement >= {t:.0%}: {'met' if ok[q] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(run), "n": len(prompts), "max_tokens": args.max_tokens,
                                    "results": results, "targets_met": ok}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
