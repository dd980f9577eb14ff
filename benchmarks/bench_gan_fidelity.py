#!/usr/bin/env python
"""GAN vs GBM vs block bootstrap vs real-vs-real on the shared real swaps (JSON + table).

Trains the GAN on the training period of the shared CSV (bars via `ape-chain process`),
then scores every source on the two held-out periods: `val` (the 10% of swaps before the
last 20%) and `test` (the last 20%: the calm period). Also reports how the split lands on
the data (launch week, GBM sigma raw vs MAD) and, with --launch-variant, a second GAN trained
with the launch-week windows kept (min_active_frac 0).

The held-out periods hold only ~55-60 windows each, so one run's discriminative score moves
by several hundredths with the seed alone. --seeds N repeats everything N times (seed s
trains the GAN, draws GBM and bootstrap samples, and seeds the classifier) and reports
mean +- sd over the runs; a GAN-vs-baseline verdict is "within noise" when the gap of the
means is smaller than the larger of the two sds.

    .venv/bin/python benchmarks/bench_gan_fidelity.py --seeds 3 --out runs/bench/gan_fidelity.json
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

    from apeagent.config import load, section
    from apeagent.files import write_json
    from gan_torch.cli import bars_from_swaps_csv
    from gan_torch.config import DEFAULTS
    from gan_torch.data import read_bars
    from gan_torch.train import train
    from gan_torch.validate import print_table, run_validation

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--csv", type=Path, default=ROOT.parent / "shared/data/base_eth_usdc_v4_swaps.csv"
    )
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="GAN steps [gan.quick_test_steps]")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=3, help="runs (seeds seed..seed+N-1)")
    p.add_argument(
        "--launch-variant", action="store_true", help="also train with launch-week windows kept"
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="gan config overrides, e.g. ema_decay=0 select_from_frac=0 (the old defaults)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench/gan_fidelity.json")
    args = p.parse_args()
    if not args.csv.is_file():
        sys.exit(f"shared data absent: {args.csv}")
    cfg = section(load(args.config), "gan", {"seed": args.seed})
    cfg["steps"] = args.steps or cfg["quick_test_steps"]
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in DEFAULTS:
            sys.exit(f"--set {kv}: unknown gan config key {key!r}")
        cfg[key] = type(DEFAULTS[key])(value)
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
            runs = []
            for k in range(max(1, args.seeds)):
                c = dict(cfg, **over, seed=args.seed + k)
                run_dir = tmp / f"{name}_{k}"
                t0 = time.perf_counter()
                summary = train(bars, c, run_dir, progress=True)
                train_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                val = run_validation(
                    bars_path,
                    args.out.parent / f"{args.out.stem}_plots" / name,
                    c,
                    checkpoint=run_dir / "best.pt",
                    plots=k == 0,
                )
                runs.append(
                    {
                        "seed": c["seed"],
                        "train": {**summary, "wall_s": train_s},
                        "validate_s": time.perf_counter() - t0,
                        "validation": val,
                    }
                )
            result["variants"][name] = {
                "overrides": over,
                "runs": runs,
                "summary": aggregate([r["validation"] for r in runs]),
                # the first run, as before (plots are drawn for it)
                "train": runs[0]["train"],
                "validation": runs[0]["validation"],
            }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(args.out, result)
    for name, v in result["variants"].items():
        ts = v["validation"]["time_split"]
        sps = [r["train"]["steps_per_s"] for r in v["runs"]]
        walls = [r["train"]["wall_s"] for r in v["runs"]]
        console.print(
            f"[bold]{name}[/]: {len(v['runs'])} runs of {v['train']['steps']} steps, "
            f"{min(walls):.0f}-{max(walls):.0f}s each ({min(sps):.1f}-{max(sps):.1f} steps/s); "
            f"GBM sigma MAD {ts['gbm_sigma']['mad_sigma']:.5f} vs raw {ts['gbm_sigma']['raw_sigma']:.5f}; "
            f"return std train {ts['train']['ret_std']:.5f} val {ts['val']['ret_std']:.5f} "
            f"test {ts['test']['ret_std']:.5f}"
        )
        print_table(v["validation"], console, f"{name}, seed {v['runs'][0]['seed']}")
        print_summary(v["summary"], console, f"{name}, mean ± sd over {len(v['runs'])} seeds")
    console.print(f"peak RSS {result['peak_rss_mb']:.0f} MB; wrote {args.out}")
    print(
        json.dumps(
            {n: v["summary"]["verdicts"] for n, v in result["variants"].items()}, indent=None
        )
    )


METRICS = ("discriminative_score", "mean_ks", "acf_abs_ret_error")


def aggregate(validations: list[dict]) -> dict:
    """mean, sd and values of the headline metrics per period and source, plus verdicts."""
    import numpy as np

    out: dict = {"periods": {}, "verdicts": {}}
    for period, rep in validations[0]["periods"].items():
        if "sources" not in rep:
            continue
        per = {}
        for src in rep["sources"]:
            per[src] = {}
            for m in METRICS:
                vals = [v["periods"][period]["sources"][src][m] for v in validations]
                per[src][m] = {
                    "mean": float(np.mean(vals)),
                    "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    "values": vals,
                }
        out["periods"][period] = per
        g = per["gan"]
        out["verdicts"][period] = {
            f"gan_vs_{b}": {m: _verdict(g[m], per[b][m]) for m in METRICS}
            for b in per
            if b != "gan"
        }
    return out


def _verdict(gan: dict, other: dict) -> str:
    gap = other["mean"] - gan["mean"]  # > 0: the GAN is better (lower)
    word = "better" if gap > 0 else "worse"
    return word if abs(gap) > max(gan["sd"], other["sd"]) else f"{word} (within noise)"


def print_summary(summary: dict, console, label: str) -> None:
    from rich.table import Table

    for period, per in summary["periods"].items():
        t = Table(title=f"{label}: held-out {period} period")
        t.add_column("source")
        for col in ("disc.", "mean KS", "ACF |r| err"):
            t.add_column(col)
        for src, ms in per.items():
            t.add_row(src, *(f"{ms[m]['mean']:.3f} ± {ms[m]['sd']:.3f}" for m in METRICS))
        console.print(t)
        for b, v in summary["verdicts"][period].items():
            console.print(f"  {period} {b}: " + ", ".join(f"{m} {w}" for m, w in v.items()))


if __name__ == "__main__":
    main()
