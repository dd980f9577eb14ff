#!/usr/bin/env python
"""Swap-level fidelity of the GAN's decoded swap events (issue 18), before/after, over seeds.

Per seed: trains the tiny-preset GAN on the training period of the shared CSV (bars and
swaps via `ape-chain process`), generates the windows validate scores (conditions drawn
from the training bank, as `generate` does), decodes them to swap events with the `uniform`
decoder (before) and the `bootstrap` decoder (after),
and scores each against the held-out real swaps (the last 20%), next to per-swap GBM, a
block bootstrap of real training swaps and the real training swaps (floor): the
discriminative score of a classifier on windows of 24 consecutive swaps (returns-only
statistics, as in the issue, and all statistics: returns, sizes, gaps), KS of per-swap
returns / sizes / gaps, excess kurtosis and max |r|. Also: window joins, i.e. price jumps of
more than 2% between consecutive windows (independent windows, each anchored at a random
training close, vs `generate --continuous`), and the bar-level scores of the independent and
the continuous windows (discriminative, mean KS, ACF(|r|) error): validate's windows, the
same drawn through the sampler `generate` uses (the two rows must agree), and one
continuous path started at the first test condition. Two diagnostic rows: the GAN
conditioned on the held-out period's own context (as `generate --condition` with that regime;
not a fair score, it sees the test period) and the real swaps the bootstrap draws from (the
bars of the training windows), scored like a source.

    .venv/bin/python benchmarks/bench_gan_swaps.py --seeds 5 --out runs/bench/gan_swaps.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JUMP = 0.02


def joins(raw: np.ndarray, anchors: np.ndarray) -> dict:
    """Log price jumps between the last close of window j and the open of window j+1."""
    close = anchors[:, None] * np.exp(np.cumsum(raw[..., 0], axis=1))
    jump = np.abs(np.log(anchors[1:] / close[:-1, -1]))
    return {"joins": int(len(jump)), "over_2pct": int(np.sum(jump > JUMP)), "max": float(jump.max())}


def one_seed(bars_path: Path, swaps_path: Path, cfg: dict, work: Path, plots: Path | None) -> dict:
    import torch

    from gan_torch import checkpoint as ckio
    from gan_torch import fidelity as V
    from gan_torch import generate as G
    from gan_torch.data import build_dataset, read_bars
    from gan_torch.train import train
    from gan_torch.validate import run_validation, swap_validation

    t0 = time.perf_counter()
    summary = train(read_bars(bars_path), cfg, work, progress=False)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = run_validation(
        bars_path, plots or work / "val", dict(cfg, swap_decoder="bootstrap"),
        checkpoint=work / "best.pt", plots=plots is not None, swaps=swaps_path,
    )
    ckpt = ckio.load(work / "best.pt")
    ds = build_dataset(read_bars(bars_path), cfg)
    seed = int(cfg["seed"])
    from gan_torch.validate import gan_windows

    n = max(4 * len(ds["test"]["raw"]), 64)
    fake = gan_windows(ckpt, n, seed)  # the windows validate scores: training conditions
    before = swap_validation(swaps_path, ds, cfg, fake, work, seed, ckpt, plots=False,
                             decoder="uniform")
    # diagnostics: the GAN conditioned on the held-out period's own context (what
    # `generate --condition` with that regime gives), and the real swaps the bootstrap draws
    # from (the training windows' bars) scored like a source
    fake_heldout = gan_windows(ckpt, n, seed, ds["test"]["cond_raw"])
    heldout = swap_validation(swaps_path, ds, cfg, fake_heldout, work, seed, ckpt, plots=False,
                              decoder="bootstrap")
    bank = bank_report(swaps_path, ds, cfg, seed)
    validate_s = time.perf_counter() - t0
    # window joins: independent windows (anchors: random real training closes, as generate
    # does) vs one continuous path from the first test condition
    gnet, _, _ = ckio.build_models(ckpt)
    scaled, _, idx = G.sample_scaled(gnet, ckpt, n, None, seed)
    raw_ind = G.decode_features(scaled, ckpt)
    anchors = ckpt["start_prices"].numpy()[idx]
    t1 = time.perf_counter()
    scaled_c, _, _ = G.sample_continuous(gnet, ckpt, n, ds["test"]["cond_raw"][0], seed)
    continuous_s = time.perf_counter() - t1
    raw_c = G.decode_features(scaled_c, ckpt)
    anchors_c = G.chained_anchors(raw_c, float(ds["test"]["start_price"][0]))
    real, real_train = ds["test"]["raw"], ds["train"]["raw"]
    bar_c = V.compare(real, raw_c, real_train, seed=seed)
    bar_ind = V.compare(real, raw_ind, real_train, seed=seed)
    torch.set_num_threads(1)
    bar = val["periods"]["test"]["sources"]["gan"]
    pick = ("discriminative_score", "mean_ks", "acf_abs_ret_error")
    return {
        "seed": seed,
        "train_s": train_s,
        "validate_s": validate_s,
        "continuous_sample_s": continuous_s,
        "train": summary,
        "after": val["swaps"],
        "before": before,
        "heldout_context": heldout,
        "bank": bank,
        "joins": {"independent": joins(raw_ind, anchors), "continuous": joins(raw_c, anchors_c)},
        "bar_level": {
            "validate (training conditions)": {k: bar[k] for k in pick},
            "generate (training conditions)": {k: bar_ind[k] for k in pick},
            "continuous (generate --continuous)": {k: bar_c[k] for k in pick},
        },
    }


def bank_report(swaps_path: Path, ds: dict, cfg: dict, seed: int) -> dict:
    """The bootstrap bank's real swaps (bars of the training windows) against the held-out
    swaps, one sequence per run of consecutive bars."""
    from gan_torch import fidelity as V
    from gan_torch import swaps as S

    sw = S.read_swaps(swaps_path)
    bar_seconds = int(ds["bar_seconds"])
    b = S.bar_of(sw, bar_seconds)
    bank = S.swap_bank(sw, bar_seconds, ds["bounds"]["train"][1], cfg)
    bank_bar = (bank["bar_start"] - bank["bar_start"][0]) // bar_seconds
    per_swap_bar = np.repeat(bank_bar, bank["count"])
    seq = np.concatenate([[0], np.cumsum(np.diff(per_swap_bar) > 1)])
    dt = np.concatenate([[0.0], np.diff(bank["timestamp"]).astype(np.float64)])
    keep = np.concatenate([[False], seq[1:] == seq[:-1]])
    series = {"log_return": bank["r"][keep], "size": bank["size"][keep], "dt": dt[keep],
              "sequence": seq[keep]}
    real = S.series(sw, b >= ds["bounds"]["test"][0])
    return {"sources": {"bank": V.swap_compare(real, series, seed)}}


AFTER = "GAN-decoded swaps, after (bootstrap)"
HELDOUT = "after, conditioned on the held-out context (diagnostic)"
BANK = "real training-window swaps (the bootstrap bank)"
ROWS = (
    ("GAN-decoded swaps, before (uniform)", "before", "gan"),
    (AFTER, "after", "gan"),
    (HELDOUT, "heldout_context", "gan"),
    (BANK, "bank", "bank"),
    ("GBM (robust sigma)", "after", "gbm"),
    ("block bootstrap of real swaps", "after", "bootstrap"),
    ("real training swaps (floor)", "after", "real_train"),
)
COLS = (
    ("disc. returns", lambda m: m["discriminative_returns"]),
    ("disc. all", lambda m: m["discriminative_all"]),
    ("KS r", lambda m: m["ks"]["log_return"]),
    ("KS size", lambda m: m["ks"]["size"]),
    ("KS gap", lambda m: m["ks"]["dt"]),
    ("kurtosis", lambda m: m["stats"]["ret_excess_kurtosis"]),
    ("max |r|", lambda m: m["stats"]["max_abs_ret"]),
)


def aggregate(runs: list[dict]) -> dict:
    def ms(vals):
        return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1
                else 0.0, "values": [float(v) for v in vals]}

    table = {
        label: {c: ms([f(r[which]["sources"][src]) for r in runs]) for c, f in COLS}
        for label, which, src in ROWS
    }
    real_k = ms([r["after"]["real_test_stats"]["ret_excess_kurtosis"] for r in runs])
    out = {
        "table": table,
        "real_test_kurtosis": real_k,
        "real_test_max_abs_ret": runs[0]["after"]["real_test_stats"]["max_abs_ret"],
        "joins": {
            k: {m: ms([r["joins"][k][m] for r in runs]) for m in ("joins", "over_2pct", "max")}
            for k in ("independent", "continuous")
        },
        "bar_level": {
            k: {m: ms([r["bar_level"][k][m] for r in runs]) for m in runs[0]["bar_level"][k]}
            for k in runs[0]["bar_level"]
        },
    }
    after = table[AFTER]
    boot = table["block bootstrap of real swaps"]
    out["done_when"] = {
        "disc_beats_block_bootstrap": after["disc. returns"]["mean"] < boot["disc. returns"]["mean"],
        "kurtosis_within_2x": 0.5 <= after["kurtosis"]["mean"] / real_k["mean"] <= 2.0,
        "continuous_no_join_jump": out["joins"]["continuous"]["over_2pct"]["mean"] == 0,
        "kurtosis_ratio": {
            label: table[label]["kurtosis"]["mean"] / real_k["mean"]
            for label in (AFTER, HELDOUT, BANK)
        },
    }
    return out


def print_tables(agg: dict, console, n: int) -> None:
    from rich.table import Table

    t = Table(title=f"swap level vs held-out real swaps, mean ± sd over {n} seeds")
    t.add_column("per-swap series")
    for c, _ in COLS:
        t.add_column(c)
    for label, cols in agg["table"].items():
        t.add_row(label, *(f"{v['mean']:.3f} ± {v['sd']:.3f}" if k not in ("kurtosis",)
                           else f"{v['mean']:.1f} ± {v['sd']:.1f}" for k, v in cols.items()))
    console.print(t)
    console.print(
        f"held-out real: excess kurtosis {agg['real_test_kurtosis']['mean']:.1f}, "
        f"max |r| {agg['real_test_max_abs_ret']:.4f}"
    )
    for k, v in agg["joins"].items():
        console.print(
            f"window joins ({k}): {v['over_2pct']['mean']:.1f} of {v['joins']['mean']:.0f} jump "
            f"> 2%, max {v['max']['mean']:.4f}"
        )
    t = Table(title="bar level vs the held-out test period: GAN windows by conditioning")
    for c in ("windows", "disc.", "mean KS", "ACF |r| err"):
        t.add_column(c)
    for k, v in agg["bar_level"].items():
        t.add_row(k, *(f"{x['mean']:.3f} ± {x['sd']:.3f}" for x in v.values()))
    console.print(t)
    console.print(f"done when: {json.dumps(agg['done_when'])}")


def main() -> None:
    from rich.console import Console

    from apeagent.config import load, section
    from apeagent.files import write_json
    from gan_torch.cli import bars_from_swaps_csv
    from gan_torch.config import DEFAULTS

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--csv", type=Path, default=ROOT.parent / "shared/data/base_eth_usdc_v4_swaps.csv"
    )
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=None, help="GAN steps [gan.quick_test_steps]")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=5, help="runs (seeds seed..seed+N-1)")
    p.add_argument("--out", type=Path, default=ROOT / "runs/bench/gan_swaps.json")
    args = p.parse_args()
    if not args.csv.is_file():
        sys.exit(f"shared data absent: {args.csv}")
    cfg = section(load(args.config), "gan", {"seed": args.seed})
    cfg["steps"] = args.steps or cfg["quick_test_steps"]
    assert set(DEFAULTS) <= set(cfg)
    console = Console(width=180)
    t_all = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bars_path = bars_from_swaps_csv(args.csv, tmp)
        for k in range(max(1, args.seeds)):
            c = dict(cfg, seed=args.seed + k)
            plots = args.out.parent / f"{args.out.stem}_plots" if k == 0 else None
            runs.append(one_seed(bars_path, tmp / "swaps.parquet", c, tmp / f"s{k}", plots))
            r = runs[-1]
            console.print(
                f"seed {c['seed']}: train {r['train_s']:.0f}s, validate {r['validate_s']:.0f}s; "
                f"disc. returns before {r['before']['sources']['gan']['discriminative_returns']:.3f} "
                f"after {r['after']['sources']['gan']['discriminative_returns']:.3f}"
            )
    agg = aggregate(runs)
    result = {"csv": str(args.csv), "config": cfg, "runs": runs, "summary": agg,
              "wall_s": time.perf_counter() - t_all}
    write_json(args.out, result)
    print_tables(agg, console, len(runs))
    console.print(f"{result['wall_s']:.0f}s in all; wrote {args.out}")


if __name__ == "__main__":
    main()
