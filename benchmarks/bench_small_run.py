"""The small run on the shared real swaps: SmolLM2-135M-Instruct LoRA-tuned on the rules teacher,
timed end to end; the GAN ablation (the same run with the teacher on real windows only); QLoRA
(the same run with the student imported 4-bit).

    .venv/bin/python benchmarks/bench_small_run.py                 # all three variants
    .venv/bin/python benchmarks/bench_small_run.py --variants real+synthetic

Each variant is `scripts/pipeline.py --preset small --swaps <csv>` in its own run folder (the
real-only one adds `--set distill.synthetic_windows=false`, the QLoRA one
`--set finetune.base_q_bits=4`); the held-out test prompts are the
same real windows in both (the split's last windows are real). Prints one table, writes JSON
(--out): wall time and peak RSS of each run, the fused student's agreement with the teacher, the
best trivial baseline, canary compliance of the base and the fused student, the backtest's final
values, and the stage times from each run's manifest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared/data/base_eth_usdc_v4_swaps.csv"
VARIANTS = {
    "real+synthetic": [],
    "real only": ["--set", "distill.synthetic_windows=false"],
    # QLoRA: the student imported 4-bit (MLX affine, group 64), LoRA over the quantised blocks
    "qlora": ["--set", "finetune.base_q_bits=4"],
}


def run_variant(name: str, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(REPO / "scripts/pipeline.py"), "--preset", "small",
           "--swaps", str(REAL_CSV), "--run-dir", str(run_dir), "--force", "all", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=REPO)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row = {"variant": name, "command": " ".join(cmd[1:]), "exit": rc, "seconds": round(seconds, 1),
           # the largest child so far (a later variant reports its own only if it is larger)
           "peak_rss_mib": round(max(peak_kib, before) / 1024, 1)}
    if rc:
        return row
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    fused = ev["variants"]["fused"]
    base = ev["variants"].get("base") or {}
    bt = json.loads((run_dir / "backtest" / "backtest.json").read_text())
    train = json.loads((run_dir / "student" / "adapters" / "train_report.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    row.update(
        agreement=fused["decision_agreement"],
        canary=fused["canary_compliance"],
        base_canary=base.get("canary_compliance"),
        base_plain_agreement=base.get("plain_agreement"),
        best_trivial=ev["comparison"]["best_trivial_agreement"],
        margin_points=ev["comparison"].get("margin_points"),
        test_n=ev["n"],
        train_seconds=train["seconds"],
        valid_curve=[{k: v.get(k) for k in ("iteration", "val_loss", "valid_exact", "valid_decision")}
                     for v in train["val_log"]],
        backtest={p: {"return_pct": r.get("total_return_pct"), "trades": r.get("trades")}
                  for p, r in bt.get("policies", {}).items()},
        stages={k: v.get("seconds") for k, v in manifest.get("stages", {}).items()},
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/bench/small_run.json")
    p.add_argument("--run-root", default="runs/bench-small")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    from rich.console import Console
    from rich.table import Table

    from apeagent.files import write_json

    rows = []
    for name in args.variants:
        folder = Path(args.run_root) / name.replace(" ", "-").replace("+", "-")
        rows.append(run_variant(name, folder, VARIANTS[name]))
        write_json(args.out, {"csv": str(REAL_CSV), "runs": rows})

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    table = Table(title="small run (SmolLM2-135M-Instruct, real CSV)")
    for c in ("variant", "minutes", "peak RSS MiB", "fused agreement", "best trivial", "margin",
              "canary", "base canary", "base plain"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["variant"], f"{r['seconds'] / 60:.1f}", f"{r['peak_rss_mib']:.0f}",
                      pct(r.get("agreement")), pct(r.get("best_trivial")),
                      "-" if r.get("margin_points") is None else f"{r['margin_points']:+.1f}",
                      pct(r.get("canary")), pct(r.get("base_canary")),
                      pct(r.get("base_plain_agreement")))
    Console().print(table)
    for r in rows:
        if r.get("backtest"):
            Console().print(f"{r['variant']}: backtest final values {r['backtest']}")
    print(f"wrote {args.out}")
    if any(r["exit"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
