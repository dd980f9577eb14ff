"""Collector throughput against the local devnode (50 ms per request) by concurrency, and the
import / process time of the shared CSV.

    .venv/bin/python benchmarks/bench_chain_collect.py [--out runs/bench/chain_collect.json]

Target: at concurrency 4, at least 3x the blocks/s of concurrency 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from chain.collect import CollectSettings, collect
from chain.csvio import read_swaps_csv
from chain.devnode import start_devnode
from chain.features import process
from chain.simulate import simulate
from chain.store import Store

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared/data/base_eth_usdc_v4_swaps.csv"


def bench_collect(rows, levels, latency_s, blocks, chunk):
    hi = rows[-1]["block_number"]  # the newest (densest) stretch of the data
    lo = hi - blocks + 1
    n_events = sum(1 for r in rows if lo <= r["block_number"] <= hi)
    out = []
    with start_devnode(rows, latency_s=latency_s) as node:
        for c in levels:
            with tempfile.TemporaryDirectory() as d:
                s = CollectSettings(
                    rpc_urls=[node.url],
                    from_block=lo,
                    to_block=hi,
                    chunk_size=chunk,
                    max_chunk=chunk,
                    concurrency=c,
                    rate_limit=None,
                    progress=False,
                    timeout_s=10.0,
                )
                t = time.perf_counter()
                stats = collect(Path(d) / "s.db", s, log=lambda m: None)
                dt = time.perf_counter() - t
                with Store(Path(d) / "s.db") as st:
                    assert st.count() == n_events, "collector lost events"
            out.append(
                {
                    "concurrency": c,
                    "seconds": dt,
                    "blocks": stats.blocks,
                    "events": stats.events,
                    "requests": stats.requests,
                    "blocks_per_s": stats.blocks / dt,
                    "events_per_s": stats.events / dt,
                }
            )
    base = out[0]["blocks_per_s"]
    for r in out:
        r["speedup"] = r["blocks_per_s"] / base
    return out


def bench_csv(path: Path):
    t = time.perf_counter()
    rows = read_swaps_csv(path)
    t_read = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with Store(Path(d) / "s.db") as st:
            st.commit_chunk(
                rows[0]["block_number"], rows[-1]["block_number"], rows, mark_done=False
            )
        t_store = time.perf_counter() - t
        t = time.perf_counter()
        with Store(Path(d) / "s.db") as st:
            back = list(st.swaps())
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        summary = process(back, Path(d), 300)
        t_proc = time.perf_counter() - t
    return {
        "swaps": len(rows),
        "read_csv_s": t_read,
        "store_write_s": t_store,
        "store_read_s": t_load,
        "process_s": t_proc,
        "bars": summary["bars"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs/bench/chain_collect.json")
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--levels", default="1,2,4,8")
    p.add_argument("--blocks", type=int, default=100_000, help="block range collected per level")
    p.add_argument("--chunk", type=int, default=1000, help="fixed blocks per eth_getLogs")
    args = p.parse_args()
    console = Console()
    if REAL_CSV.is_file():
        rows, source = read_swaps_csv(REAL_CSV), "real CSV"
    else:
        rows, source = simulate(10_000, seed=0), "SIMULATED (shared CSV absent)"
    levels = [int(x) for x in args.levels.split(",")]
    collect_res = bench_collect(rows, levels, args.latency, args.blocks, args.chunk)
    csv_res = bench_csv(REAL_CSV) if REAL_CSV.is_file() else None

    table = Table(
        title=f"collect vs devnode ({args.latency * 1000:.0f} ms/request, {source}, chunk {args.chunk} blocks)"
    )
    for col in ("concurrency", "seconds", "blocks/s", "events/s", "requests", "speedup"):
        table.add_column(col, justify="right")
    for r in collect_res:
        table.add_row(
            str(r["concurrency"]),
            f"{r['seconds']:.2f}",
            f"{r['blocks_per_s']:,.0f}",
            f"{r['events_per_s']:,.1f}",
            str(r["requests"]),
            f"{r['speedup']:.2f}x",
        )
    console.print(table)
    if csv_res:
        t2 = Table(title=f"shared CSV ({csv_res['swaps']} swaps)")
        for k in ("read_csv_s", "store_write_s", "store_read_s", "process_s"):
            t2.add_column(k, justify="right")
        t2.add_row(
            *(
                f"{csv_res[k]:.3f}"
                for k in ("read_csv_s", "store_write_s", "store_read_s", "process_s")
            )
        )
        console.print(t2)
    by_c = {r["concurrency"]: r for r in collect_res}
    target = by_c[4]["speedup"] >= 3.0 if 4 in by_c and 1 in by_c else None
    console.print(
        f"target (concurrency 4 >= 3x concurrency 1): {'met' if target else 'NOT met' if target is not None else 'n/a'}"
    )
    result = {
        "benchmark": "chain_collect",
        "machine": f"{platform.machine()} {platform.system()}",
        "latency_s": args.latency,
        "blocks": args.blocks,
        "chunk": args.chunk,
        "data": source,
        "collect": collect_res,
        "csv": csv_res,
        "target_met": target,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from apeagent.files import write_json

    write_json(args.out, result)
    console.print(f"wrote {args.out}")
    print(json.dumps({"speedup_c4": by_c.get(4, {}).get("speedup")}))


if __name__ == "__main__":
    main()
