"""Backtest speed: decisions per second of the rule policies on the shared real swaps, and of
a tiny MLX student (generation included). Prints a rich table, writes JSON (--out)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared/data/base_eth_usdc_v4_swaps.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/bench/agent_backtest.json")
    p.add_argument("--student-steps", type=int, default=20)
    args = p.parse_args()

    from apeagent.blas import ensure_fast_blas

    ensure_fast_blas()
    sys.path.insert(0, str(REPO / "tests"))
    from agent_fixtures import RULES, build_student
    from rich.console import Console
    from rich.table import Table

    from agent.backtest import load_rows, run_backtest
    from agent.config import DEFAULTS
    from agent.policies import HoldPolicy, ModelPolicy, RebalancePolicy, RulesPolicy
    from apeagent.files import write_json
    from chain.simulate import simulate

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if REAL_CSV.is_file():
            rows, source = load_rows(REAL_CSV)
        else:
            rows, source = simulate(10_000, seed=0), "simulated"
        load_s = time.perf_counter() - t0
        cfg = {**DEFAULTS, "interval_minutes": 5, "holdout_frac": 0.5}
        pols = {
            "rules": RulesPolicy(RULES),
            "hold": HoldPolicy(),
            "rebalance": RebalancePolicy(5.0),
        }
        t0 = time.perf_counter()
        rep = run_backtest(rows, pols, cfg, Path(tmp) / "rules", source=source, progress=False)
        dt = time.perf_counter() - t0
        n = rep["steps"] * len(pols)
        results.append(
            {
                "case": f"rules+hold+rebalance ({source})",
                "decisions": n,
                "seconds": dt,
                "per_s": n / dt,
            }
        )
        model = build_student(Path(tmp) / "student")
        cfg = {**cfg, "max_steps": args.student_steps, "max_tokens": 32}
        pol = {"student": ModelPolicy(str(model), max_tokens=32)}
        t0 = time.perf_counter()
        rep = run_backtest(rows, pol, cfg, Path(tmp) / "student", source=source, progress=False)
        dt = time.perf_counter() - t0
        n = rep["steps"]
        results.append(
            {
                "case": "tiny student (32 new tokens max)",
                "decisions": n,
                "seconds": dt,
                "per_s": n / dt,
            }
        )

    table = Table(title=f"backtest speed (swaps loaded in {load_s:.2f}s)")
    for c in ("case", "decisions", "seconds", "decisions/s"):
        table.add_column(c, justify="right")
    for r in results:
        table.add_row(r["case"], str(r["decisions"]), f"{r['seconds']:.2f}", f"{r['per_s']:.1f}")
    Console().print(table)
    write_json(args.out, {"load_s": load_s, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
