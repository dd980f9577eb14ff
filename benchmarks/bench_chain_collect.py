"""Collector against the network floor: a logs-only collection of the whole range (timestamps
in the logs) vs raw ``eth_getLogs`` over the same range, same devnode (50 ms per request),
same run; plus the collection with block headers for timestamps, and the shared CSV's import /
process time.

    .venv/bin/python benchmarks/bench_chain_collect.py [--out runs/bench/chain_collect.json]

Target: collection / raw <= 4 (the ratio is printed).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table

from chain.collect import CollectSettings, collect
from chain.csvio import read_swaps_csv
from chain.devnode import start_devnode
from chain.features import process
from chain.ingest import import_csv
from chain.pool import POOL_MANAGER, SWAP_TOPIC
from chain.rpc import RpcSettings
from chain.simulate import simulate
from chain.store import Store

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared/data/base_eth_usdc_v4_swaps.csv"


def raw_get_logs(url: str, pool: str, lo: int, hi: int, chunk: int, inflight: int) -> tuple[float, int]:
    """Plain JSON-RPC eth_getLogs over [lo, hi]: ``chunk`` blocks a request, ``inflight`` at once."""
    local = threading.local()

    def one(a: int) -> int:
        sess = getattr(local, "s", None) or requests.Session()
        local.s = sess
        flt = {"fromBlock": hex(a), "toBlock": hex(min(hi, a + chunk - 1)),
               "address": POOL_MANAGER, "topics": [SWAP_TOPIC, pool]}
        r = sess.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [flt]})
        return len(r.json()["result"])

    t = time.perf_counter()
    with ThreadPoolExecutor(inflight) as ex:
        n = sum(ex.map(one, range(lo, hi + 1, chunk)))
    return time.perf_counter() - t, n


def collect_once(url: str, rows, chunk: int, inflight: int, timestamps: str) -> dict:
    lo, hi = rows[0]["block_number"], rows[-1]["block_number"]
    with tempfile.TemporaryDirectory() as d:
        s = CollectSettings(
            rpc=RpcSettings(rpc_urls=[url], rate_limit=None, concurrency=inflight, timeout_s=10.0),
            from_block=lo, to_block=hi, confirmations=2, chunk_size=chunk, max_chunk=chunk,
            concurrency=inflight, timestamps=timestamps, progress=False,
        )
        t = time.perf_counter()
        stats = collect(Path(d) / "s.db", s, log=lambda m: None)
        dt = time.perf_counter() - t
        with Store(Path(d) / "s.db") as st:
            got = [(r["block_number"], r["log_index"], r["timestamp"]) for r in st.swaps()]
    assert got == [(r["block_number"], r["log_index"], r["timestamp"]) for r in rows], "collector not exact"
    return {"seconds": dt, "requests": stats.rpc["requests"], "events": stats.events, "blocks": stats.blocks}


def bench_csv(path: Path) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        summary = import_csv(path, Path(d) / "s.db", pool_id=None)
        t_import = time.perf_counter() - t
        t = time.perf_counter()
        with Store(Path(d) / "s.db") as st:
            back = list(st.swaps())
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        bars = process(back, Path(d), 300)["bars"]
        t_proc = time.perf_counter() - t
    return {"swaps": len(back), "duplicates": len(summary["duplicates"]), "import_s": t_import,
            "store_read_s": t_load, "process_s": t_proc, "bars": bars}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs/bench/chain_collect.json")
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--chunk", type=int, default=10_000, help="blocks per eth_getLogs")
    p.add_argument("--inflight", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="best of N for each measurement")
    args = p.parse_args()
    console = Console()
    if REAL_CSV.is_file():
        rows, source = read_swaps_csv(REAL_CSV), "real CSV"
    else:
        rows, source = simulate(10_000, seed=0), "SIMULATED (shared CSV absent)"
    lo, hi = rows[0]["block_number"], rows[-1]["block_number"]
    res: dict[str, dict] = {}
    with start_devnode(rows, latency_s=args.latency, faults=dict(log_timestamps=True)) as node:
        pool = rows[0]["pool_id"]
        raws = [raw_get_logs(node.url, pool, lo, hi, args.chunk, args.inflight) for _ in range(args.repeat)]
        assert all(n == len(rows) for _, n in raws)
        res["raw eth_getLogs"] = {"seconds": min(t for t, _ in raws),
                                  "requests": -(-(hi - lo + 1) // args.chunk), "events": len(rows)}
        runs = [collect_once(node.url, rows, args.chunk, args.inflight, "auto") for _ in range(args.repeat)]
        res["collect (timestamps in logs)"] = min(runs, key=lambda r: r["seconds"])
        node.set_faults(log_timestamps=False)
        res["collect (block headers)"] = collect_once(node.url, rows, args.chunk, args.inflight, "headers")
    base = res["raw eth_getLogs"]["seconds"]
    table = Table(title=f"{hi - lo + 1:,} blocks, {len(rows):,} swaps ({source}), devnode "
                        f"{args.latency * 1000:.0f} ms/request, {args.chunk:,}-block ranges, {args.inflight} in flight")
    for col in ("what", "seconds", "requests", "x raw"):
        table.add_column(col, justify="right")
    for k, r in res.items():
        r["ratio"] = r["seconds"] / base
        table.add_row(k, f"{r['seconds']:.2f}", str(r["requests"]), f"{r['ratio']:.2f}x")
    console.print(table)
    ratio = res["collect (timestamps in logs)"]["ratio"]
    console.print(f"ratio collect/raw = {ratio:.2f} (target <= 4: {'met' if ratio <= 4 else 'NOT met'})")
    csv_res = bench_csv(REAL_CSV) if REAL_CSV.is_file() else None
    if csv_res:
        console.print(f"shared CSV: import {csv_res['import_s']:.2f}s ({csv_res['swaps']} swaps, "
                      f"{csv_res['duplicates']} duplicates kept once), process {csv_res['process_s']:.2f}s")
    result = {"benchmark": "chain_collect", "machine": f"{platform.machine()} {platform.system()}",
              "latency_s": args.latency, "chunk": args.chunk, "inflight": args.inflight, "data": source,
              "results": res, "ratio": ratio, "target_met": ratio <= 4, "csv": csv_res}
    from apeagent.files import write_json

    write_json(args.out, result)
    console.print(f"wrote {args.out}")
    print(json.dumps({"ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
