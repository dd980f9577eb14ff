"""Backtest speed: decisions per second of the rule policies on the shared real swaps, of a
tiny MLX student (generation included) and, with --run-dir, of that run's fused student
(e.g. the small run's SmolLM2) without and with the prompt cache of the prompt's fixed head
(agent.prompt_cache), with the share of decisions that come out the same both ways.

    .venv/bin/python benchmarks/bench_agent_backtest.py
    .venv/bin/python benchmarks/bench_agent_backtest.py --run-dir runs/bench-small/real-synthetic --model-steps 40

Prints a rich table, writes JSON (--out)."""

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
    p.add_argument("--run-dir", help="a finished run: its fused student decides too, both ways")
    p.add_argument("--model-steps", type=int, default=40, help="decisions of the run's student")
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

        if args.run_dir:
            results += _run_student(Path(args.run_dir), rows, source, cfg, args.model_steps, Path(tmp))

    table = Table(title=f"backtest speed (swaps loaded in {load_s:.2f}s)")
    for c in ("case", "decisions", "seconds", "decisions/s", "same decisions"):
        table.add_column(c, justify="right")
    for r in results:
        same = f"{r['same_decisions']:.0%}" if "same_decisions" in r else ""
        table.add_row(r["case"], str(r["decisions"]), f"{r['seconds']:.2f}", f"{r['per_s']:.2f}", same)
    Console().print(table)
    write_json(args.out, {"load_s": load_s, "results": results})
    print(f"wrote {args.out}")


def _run_student(run_dir: Path, rows, source, cfg, steps: int, tmp: Path) -> list[dict]:
    """The run's fused student over the same held-out steps, prompt cache off and on."""
    import json

    from agent.backtest import run_backtest
    from agent.policies import ModelPolicy
    from apeagent import config as C
    from apeagent.errors import UserError
    from apeagent.layout import RunLayout

    run = RunLayout(run_dir)
    if not run.fused.is_dir():
        raise UserError(f"{run.fused}: no fused student (run the pipeline --until fuse)")
    loaded = C.load(run.config)
    agent, distill = C.section(loaded, "agent"), C.section(loaded, "distill")
    cfg = {**cfg, "max_steps": steps, "interval_minutes": agent["interval_minutes"]}
    out, decisions = [], {}
    for cached in (False, True):
        pol = ModelPolicy(str(run.fused), max_tokens=agent["max_tokens"], system=distill["include_system"],
                          context_tokens=agent["context_tokens"], prompt_cache=cached)
        name = "with" if cached else "without"
        t0 = time.perf_counter()
        rep = run_backtest(rows, {"student": pol}, {**cfg, "prompt_cache": cached}, tmp / name,
                           source=source, progress=False)
        dt = time.perf_counter() - t0
        log = [json.loads(line) for line in (tmp / name / "decisions.jsonl").read_text().splitlines()]
        decisions[cached] = [r["decision"] for r in log if r["policy"] == "student"]
        row = {"case": f"{run_dir.name} student, prompt cache {'on' if cached else 'off'}",
               "decisions": rep["steps"], "seconds": dt, "per_s": rep["steps"] / dt}
        if cached:
            row.update(prefix_tokens=len(pol.prefix.ids), prefix_hits=pol.prefix.hits,
                       same_decisions=sum(a == b for a, b in zip(decisions[False], decisions[True],
                                                                 strict=True)) / len(decisions[True]))
        out.append(row)
    return out


if __name__ == "__main__":
    from apeagent.cli import run_cli

    run_cli(main)  # bad input: one `error:` line, exit 2
