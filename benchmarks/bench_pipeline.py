#!/usr/bin/env python
"""The whole tiny pipeline, timed: wall time, seconds per stage (from the run's manifest) and
the eval numbers the report's targets check, once per seed (gan, distill and finetune seeds
set together), with their spread.

    .venv/bin/python benchmarks/bench_pipeline.py [--seeds 0,1,2] [--demo] [--keep DIR]
        [--out runs/bench/pipeline.json]

Default: the shared real CSV (``--swaps ../shared/data/base_eth_usdc_v4_swaps.csv``, the
test suite's end-to-end run); ``--demo``: exactly ``make demo`` (the offline simulated
market). One run takes minutes: about as long as ``make demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_CSV = ROOT.parent / "shared" / "data" / "base_eth_usdc_v4_swaps.csv"
SEEDED = ("gan.seed", "distill.seed", "finetune.seed")


def run_once(seed: int, demo: bool, run_dir: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "pipeline.py"), "--preset", "tiny",
           "--run-dir", str(run_dir)]
    if not demo:
        cmd += ["--swaps", str(REAL_CSV)]
    for key in SEEDED:
        cmd += ["--set", f"{key}={seed}"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"pipeline failed (seed {seed}):\n{done.stderr[-3000:]}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    fused = report["eval"]["variants"]["fused"]
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "stage_seconds": {k: v.get("seconds") for k, v in manifest["stages"].items()},
        "fused_canary_compliance": fused["canary_compliance"],
        "fused_decision_agreement": fused["decision_agreement"],
        "best_trivial_agreement": report["eval"]["baselines"]["best_trivial_agreement"],
        "margin_points": report["eval"]["comparison"]["margin_points"],
        "targets_met": {k: v["met"] for k, v in report["targets"].items()},
    }


def spread(runs: list[dict], key: str) -> dict:
    xs = [r[key] for r in runs]
    return {"min": min(xs), "max": max(xs), "mean": statistics.fmean(xs),
            "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, one run each")
    ap.add_argument("--demo", action="store_true", help="the simulated market, as `make demo`")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench/pipeline.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep each run here: KEEP/seed<N>")
    args = ap.parse_args()
    if not args.demo and not REAL_CSV.is_file():
        raise SystemExit(f"error: shared real data absent: {REAL_CSV} (or use --demo)")
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        if args.keep is not None:
            runs.append(run_once(seed, args.demo, args.keep / f"seed{seed}"))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run_once(seed, args.demo, Path(tmp) / "run"))
        print(json.dumps(runs[-1]), flush=True)
    out = {
        "data": "simulated (make demo)" if args.demo else str(REAL_CSV.name),
        "runs": runs,
        "spread": {k: spread(runs, k) for k in ("wall_s", "fused_decision_agreement",
                                                "best_trivial_agreement", "margin_points")},
        "load_average_1min": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out["spread"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
