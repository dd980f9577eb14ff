#!/usr/bin/env python
"""GAN vs GBM vs block bootstrap vs real-vs-real on the shared real swaps (JSON + table).

Trains the GAN on the training period of the shared CSV (bars via `ape-chain process`),
then scores every source on the two held-out periods: `val` (the 10% of swaps before the
last 20%) and `test` (the last 20%: the calm period). Also reports how the split lands on
the data (launch week, GBM sigma raw vs MAD) and, with --launch-variant, a second GAN trained
with the launch-week windows kept (min_active_frac 0).

    .venv/bin/python benchmarks/bench_gan_fidelity.py --steps 1000 --out runs/bench/gan_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from rich.console import Console

    from finetune_mlx.atomic import write_json
    from finetune_mlx.config import load, section
    from gan_torch.cli import bars_from_swaps_csv
    from gan_torch.config import DEFAULTS
    from gan_torch.data import read_bars
    from gan_torch.train import train
    from gan_torch.validation_run import print_table, run_validation

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--csv", type=Path, default=ROOT.parent / "shared/data/base_eth_usdc_v4_swaps.csv"
    )
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="GAN steps [gan.quick_test_steps]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--launch-variant", action="store_true", help="also train with launch-week windows kept"
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench/gan_fidelity.json")
    args = p.parse_args()
    if not args.csv.is_file():
        sys.exit(f"shared data absent: {args.csv}")
    cfg = section(load(args.config), "gan", DEFAULTS, {"seed": args.seed})
    cfg["steps"] = args.steps or cfg["quick_test_steps"]
    console = Console()
    result: dict = {"csv": str(args.csv), "config": cfg, "variants": {}}
    variants = {"default": {}}
    if args.launch_variant:
        variants["with_launch_week"] = {"min_active_frac": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bars_path = bars_from_swaps_csv(args.csv, tmp)
        bars = read_bars(bars_path)
        for name, over in variants.items():
            c = dict(cfg, **over)
            t0 = time.perf_counter()
            summary = train(bars, c, tmp / name, progress=True)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            val = run_validation(
                bars_path,
                ROOT / "runs/bench/gan_fidelity_plots" / name,
                c,
                checkpoint=tmp / name / "best.pt",
            )
            result["variants"][name] = {
                "overrides": over,
                "train": {**summary, "wall_s": train_s},
                "validate_s": time.perf_counter() - t0,
                "validation": val,
            }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(args.out, result)
    for name, v in result["variants"].items():
        ts = v["validation"]["time_split"]
        console.print(
            f"[bold]{name}[/]: {v['train']['steps']} steps in {v['train']['wall_s']:.0f}s "
            f"({v['train']['steps_per_s']:.1f} steps/s); GBM sigma MAD {ts['gbm_sigma']['mad_sigma']:.5f} "
            f"vs raw {ts['gbm_sigma']['raw_sigma']:.5f}; return std train {ts['train']['ret_std']:.5f} "
            f"val {ts['val']['ret_std']:.5f} test {ts['test']['ret_std']:.5f}"
        )
        print_table(v["validation"], console, name)
    console.print(f"peak RSS {result['peak_rss_mb']:.0f} MB; wrote {args.out}")
    print(json.dumps({n: v["validation"]["grade"] for n, v in result["variants"].items()}))


if __name__ == "__main__":
    main()
