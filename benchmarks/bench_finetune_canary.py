"""The tiny student end to end on a distilled dataset: build-tiny, lora, fuse, eval.

Measures what issue 6 targets on the held-out test split: canary compliance of the base model
(~0%) and of the fused student (>= 95%), decision agreement with the teacher (>= 85%), and
each stage's wall time against the `make demo` budget (build-tiny ~4.5 min: 3000 pre-training
steps, the digit lookups form after ~1500; lora ~1.5 min; eval ~60 s on a 2-core CPU).

    .venv/bin/python benchmarks/bench_finetune_canary.py runs/tiny/dataset [--config tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"base_compliance_max": 0.05, "fused_compliance_min": 0.95, "agreement_min": 0.85}
BUDGET_S = {"build-tiny": 300, "lora": 90, "fuse": 30, "eval": 60}


def stage(name: str, *args) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "finetune_mlx", name, *map(str, args)], cwd=REPO, check=True
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, nargs="?", default=REPO / "runs/tiny/dataset",
                    help="dir with train/valid/test.jsonl (default: the `make demo` run's)")
    ap.add_argument("--config", "-c", default="tiny")
    ap.add_argument("--work", type=Path, default=REPO / "runs/bench/finetune_canary")
    ap.add_argument("--out", type=Path, default=REPO / "runs/bench/finetune_canary.json")
    args = ap.parse_args()
    if not (args.dataset / "train.jsonl").is_file():
        raise SystemExit(f"error: no dataset at {args.dataset}: run `make demo` first or pass a dataset dir")
    from rich.console import Console
    from rich.table import Table

    w = args.work
    base, ad, fused, ev = w / "base", w / "adapters", w / "fused", w / "eval.json"
    c = ["--config", args.config]
    times = {
        "build-tiny": stage("build-tiny", "--data", args.dataset, "--out", base, *c),
        "lora": stage("lora", "--model", base, "--data", args.dataset, "--adapter-path", ad, *c),
        "fuse": stage("fuse", "--model", base, "--adapter-path", ad, "--out", fused, *c),
        "eval": stage(
            "eval", "--model", base, "--fused", fused, "--data", args.dataset, "--out", ev, *c
        ),
    }
    report = json.loads(ev.read_text())
    v = report["variants"]
    got = {
        "base_compliance": v["base"]["canary_compliance"],
        "fused_compliance": v["fused"]["canary_compliance"],
        "fused_agreement": v["fused"]["decision_agreement"],
        "fused_format_validity": v["fused"]["format_validity"],
        "base_plain_agreement": v["base"]["plain_agreement"],
    }
    ok = {
        "base_compliance": got["base_compliance"] <= TARGETS["base_compliance_max"],
        "fused_compliance": got["fused_compliance"] >= TARGETS["fused_compliance_min"],
        "fused_agreement": got["fused_agreement"] >= TARGETS["agreement_min"],
    }
    table = Table(title=f"tiny student on {args.dataset} (test n={report['n']})")
    for col in ("metric", "value", "target", "met"):
        table.add_column(col)
    table.add_row(
        "base canary compliance", f"{got['base_compliance']:.1%}", "~0%", str(ok["base_compliance"])
    )
    table.add_row(
        "fused canary compliance",
        f"{got['fused_compliance']:.1%}",
        ">= 95%",
        str(ok["fused_compliance"]),
    )
    table.add_row(
        "fused decision agreement",
        f"{got['fused_agreement']:.1%}",
        ">= 85%",
        str(ok["fused_agreement"]),
    )
    for name, s in times.items():
        table.add_row(
            f"{name} wall time", f"{s:.1f} s", f"<= {BUDGET_S[name]} s", str(s <= BUDGET_S[name])
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "dataset": str(args.dataset),
                "config": args.config,
                "metrics": got,
                "targets_met": ok,
                "seconds": times,
                "eval": v,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
