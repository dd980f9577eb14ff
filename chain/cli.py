"""`ape-chain` / `python -m chain`: collect, import, export, process, simulate, snapshot.

The trading agent's commands (backtest, trade) are `ape-agent`'s (agent/cli.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

from apeagent.cli import RPC_URLS_ENV, ConfigOpt, RunDirOpt, given, run_cli
from apeagent.errors import UserError
from apeagent.layout import RunLayout

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Uniswap V4 ETH-USDC swaps on Base: collect, store, simulate, process, snapshot.",
)
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _group() -> None:
    """Keep typer in multi-command mode."""


def _settings(ctx: typer.Context, config: str | None, run_dir: Path | None) -> tuple[dict, RunLayout]:
    """The chain section: defaults < config < the options given (each named for its key)."""
    from apeagent.config import stage_settings
    from chain.pool import norm_hex32

    values, flags = given(ctx, "chain")
    c, run = stage_settings(config, run_dir, "chain", values, flags)
    try:
        c["pool_id"] = norm_hex32(c["pool_id"])
    except ValueError:
        where = flags.get("pool_id", "chain.pool_id")
        shown = c["pool_id"] if len(c["pool_id"]) <= 80 else f"{c['pool_id'][:80]}… ({len(c['pool_id'])} characters)"
        raise UserError(f"{where}: a pool id is 32 bytes of hex (64 hex digits), got {shown!r}") from None
    return c, run


@app.command()
def collect(
    ctx: typer.Context,
    db: Path = typer.Option(None, "--db", help="SQLite event store to fill [RUN/chain/swaps.db]."),
    rpc_urls: list[str] = typer.Option(
        None, "--rpc-url", envvar=RPC_URLS_ENV, help="Base JSON-RPC URL; repeat for several."
    ),
    from_block: int = typer.Option(None, "--from-block"),
    to_block: str = typer.Option(
        None, "--to-block", help="Block number or 'latest' (minus --confirmations)."
    ),
    confirmations: int = typer.Option(None, "--confirmations"),
    pool_id: str = typer.Option(None, "--pool-id"),
    concurrency: int = typer.Option(None, "--concurrency", help="eth_getLogs requests in flight."),
    rate_limit: float = typer.Option(
        None, "--rate-limit", help="Ceiling of requests/s per endpoint (0: none; AIMD below it)."
    ),
    chunk_size: int = typer.Option(None, "--chunk-size", help="First block range per request."),
    timeout_s: float = typer.Option(None, "--timeout", help="Seconds per HTTP request."),
    give_up_s: float = typer.Option(
        None, "--give-up", help="Stop after this many seconds without any answer."
    ),
    timestamps: str = typer.Option(
        None, "--timestamps", help="auto (log blockTimestamp, else headers) | headers | derive."
    ),
    verify_empty: bool = typer.Option(
        False, "--verify-empty", help="Cross-check empty answers on a second endpoint."
    ),
    with_tx: bool = typer.Option(
        False, "--with-tx", help="Also fetch tx sender, tx target, sender is contract."
    ),
    follow: bool = typer.Option(False, "--follow", help="Keep tailing new blocks."),
    allow_chain_id: int = typer.Option(
        None, "--allow-chain-id", help="Accept this chain id besides 8453."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """eth_getLogs of the pool's Swap events into the SQLite store (resumable, exact)."""
    from apeagent.files import check_output
    from chain.collect import CollectError, CollectSettings
    from chain.collect import collect as run_collect
    from chain.rpc import RpcSettings, check_rpc_urls

    c, run = _settings(ctx, config, run_dir)
    if not c["rpc_urls"]:
        raise UserError("no RPC endpoint: pass --rpc-url URL (or set chain.rpc_urls in the config)")
    check_rpc_urls(c["rpc_urls"])
    db = db or run.swaps_db
    check_output(db, what="--db")  # a folder, or under a file: before any connection
    s = CollectSettings(
        rpc=RpcSettings(
            rpc_urls=list(c["rpc_urls"]),
            timeout_s=c["timeout_s"],
            rate_limit=c["rate_limit"] or None,
            concurrency=c["concurrency"],
            give_up_s=c["give_up_s"],
        ),
        from_block=int(c["from_block"]),
        to_block=c["to_block"] if c["to_block"] is not None else "latest",
        confirmations=c["confirmations"],
        pool_id=c["pool_id"],
        chunk_size=c["chunk_size"],
        max_chunk=c["max_chunk"],
        concurrency=c["concurrency"],
        batch_size=c["batch_size"],
        timestamps=c["timestamps"],
        verify_empty=verify_empty,
        with_tx=with_tx,
        follow=follow,
        poll_s=c["poll_s"],
        allow_chain_id=allow_chain_id,
        reorg_depth=c["reorg_depth"],
        progress=not quiet,
    )
    try:
        stats = run_collect(db, s, log=lambda m: console.print(m))
    except KeyboardInterrupt:
        console.print("interrupted: the store holds every committed chunk; run again to resume")
        raise typer.Exit(130) from None
    except CollectError as e:
        console.print(
            f"error: {e} (the store holds every validated chunk committed; run again to resume)",
            markup=False,
        )
        raise typer.Exit(1) from None
    d = stats.as_dict()
    console.print(
        f"{db}: {d['events']} new events in {d['blocks']} blocks, {d['seconds']:.1f}s "
        f"({d['blocks_per_s']:,.0f} blocks/s), {d['requests']} requests, {d['retries']} retries, "
        f"{d['rate_cuts']} rate cuts, {d['splits']} splits"
    )


@app.command("import-csv")
def import_csv(
    ctx: typer.Context,
    csv_path: Path = typer.Argument(
        ..., help="Swaps CSV (format of ../shared/data/base_eth_usdc_v4_swaps.csv)."
    ),
    db: Path = typer.Option(None, "--db", help="SQLite event store [RUN/chain/swaps.db]."),
    pool_id: str = typer.Option(None, "--pool-id"),
    replace: bool = typer.Option(
        False, "--replace", help="Remove stored swaps in the CSV's block span that it does not list."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; write nothing."),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Upsert a swaps CSV into the store by event key (never deletes without --replace)."""
    from chain.ingest import import_csv as run_import

    c, run = _settings(ctx, config, run_dir)
    r = run_import(csv_path, db or run.swaps_db, c["pool_id"], replace=replace, dry_run=dry_run)
    if r["no_final_newline"]:
        console.print(f"warning: {csv_path}: the last line has no newline (a truncated file?)", markup=False)
    if r["duplicates"]:
        lines = ", ".join(map(str, r["duplicates"][:5])) + (", ..." if len(r["duplicates"]) > 5 else "")
        console.print(
            f"{csv_path}: {len(r['duplicates'])} exact duplicate rows kept once (lines {lines})",
            markup=False,
        )
    verb = "would import" if dry_run else "imported"
    label = " (SIMULATED data)" if r["source"] == "simulated" else ""
    console.print(
        f"{r['db']}: {verb} {r['rows']} swaps{label}: {r['new']} new, {r['updated']} updated, "
        f"{r['unchanged']} unchanged; "
        + (
            f"{r['removed']} stored swaps in blocks {r['from_block']}..{r['to_block']} not in the CSV "
            + ("would be " if dry_run else "")
            + "removed (--replace)"
            if replace
            else f"{r['kept']} stored swaps in blocks {r['from_block']}..{r['to_block']} not in the CSV kept"
        )
        + f"; store {'would hold' if dry_run else 'holds'} {r['store_total']}",
        markup=False,
    )


@app.command("check-csv")
def check_csv(
    ctx: typer.Context,
    csv_path: Path = typer.Argument(..., help="Swaps CSV to check."),
    rows: int = typer.Option(1000, "--rows", min=1, help="Rows to check after the header."),
    pool_id: str = typer.Option(None, "--pool-id"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Check a swaps CSV's header and first rows (what the pipeline does before its first stage)."""
    from chain.csvio import check_swaps_csv

    c, _ = _settings(ctx, config, run_dir)
    n = check_swaps_csv(csv_path, pool=c["pool_id"], rows=rows)
    console.print(f"{csv_path}: header and {n} rows ok", markup=False)


@app.command()
def export(
    ctx: typer.Context,
    db: Path = typer.Option(None, "--db", help="SQLite event store [RUN/chain/swaps.db]."),
    csv_out: Path = typer.Option(None, "--csv", help="Write the swaps CSV (+ log_index) here."),
    processed: Path = typer.Option(
        None, "--processed", help="Write swaps.parquet + bars.parquet in this dir."
    ),
    bar_seconds: int = typer.Option(None, "--bar-seconds"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Export the store as CSV (same columns + log_index) and/or the processed parquet files."""
    from apeagent.files import check_output
    from chain.csvio import write_swaps_csv

    c, run = _settings(ctx, config, run_dir)
    if csv_out is None and processed is None:
        raise UserError("nothing to export: pass --csv FILE and/or --processed DIR")
    if csv_out is not None:
        check_output(csv_out, what="--csv")
    if processed is not None:
        check_output(processed, folder=True, what="--processed")
    rows = _store_rows(db or run.swaps_db)
    if csv_out is not None:
        n = write_swaps_csv(csv_out, rows)
        console.print(f"{csv_out}: {n} swaps")
    if processed is not None:
        _process_rows(rows, processed, c["bar_seconds"], source=str(db))


def _store_rows(db: Path) -> list[dict]:
    from chain.store import Store

    if not db.is_file():
        raise UserError(f"store not found: {db}")
    with Store(db, readonly=True) as store:
        rows = list(store.swaps())
        source = store.get_meta("source")
    if not rows:
        raise UserError(f"{db}: store holds no swaps")
    if source == "simulated":
        console.print(f"{db}: [bold]SIMULATED[/bold] swaps (not real market data)")
    return rows


def _process_rows(rows: list[dict], out_dir: Path, bar_seconds: int, source: str) -> dict:
    from apeagent.files import write_json
    from chain.features import process as run_process

    simulated = any(r["sender"] == "simulated" for r in rows)
    t0 = time.perf_counter()
    summary = run_process(rows, out_dir, bar_seconds)
    summary.update(source=source, simulated=simulated, seconds=round(time.perf_counter() - t0, 3))
    write_json(out_dir / "process_report.json", summary)
    label = " [bold](SIMULATED data)[/bold]" if simulated else ""
    console.print(
        f"{out_dir}: swaps.parquet ({summary['swaps']} rows), bars.parquet ({summary['bars']} bars of "
        f"{bar_seconds}s, {summary['empty_bars']} empty){label}"
    )
    return summary


@app.command()
def process(
    ctx: typer.Context,
    db: Path = typer.Option(None, "--db", help="Read swaps from this SQLite store [RUN/chain/swaps.db]."),
    csv_path: Path = typer.Option(None, "--csv", help="Read swaps from this CSV instead."),
    out_dir: Path = typer.Option(
        None, "--out-dir", help="Where swaps.parquet and bars.parquet go [RUN/features]."
    ),
    bar_seconds: int = typer.Option(None, "--bar-seconds", help="Bar length in seconds [market.bar_seconds]."),
    pool_id: str = typer.Option(None, "--pool-id"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Swaps -> swaps.parquet (per swap) and bars.parquet (time bars), in chain order."""
    from apeagent.files import check_output
    from chain.csvio import read_swaps_csv

    c, run = _settings(ctx, config, run_dir)
    if db is not None and csv_path is not None:
        raise UserError("pass one input: --db STORE or --csv FILE")
    db = db or run.swaps_db
    out_dir = out_dir or run.features
    check_output(out_dir, folder=True, what="--out-dir")
    rows = read_swaps_csv(csv_path, pool=c["pool_id"]) if csv_path else _store_rows(db)
    _process_rows(rows, out_dir, c["bar_seconds"], source=str(csv_path or db))


@app.command()
def simulate(
    ctx: typer.Context,
    out: Path = typer.Option(None, "--out", help="Swaps CSV to write [RUN/chain/simulated_swaps.csv]."),
    sim_swaps: int = typer.Option(None, "--n-swaps"),
    sim_seed: int = typer.Option(None, "--seed"),
    sim_start_timestamp: int = typer.Option(None, "--start-timestamp"),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Write SIMULATED swaps (seeded; exact V4 swap math) in the swaps CSV schema."""
    from apeagent.files import check_output
    from chain.csvio import write_swaps_csv
    from chain.simulate import simulate as run_simulate

    c, run = _settings(ctx, config, run_dir)
    out = out or run.simulated_csv
    check_output(out, what="--out")
    rows = run_simulate(
        c["sim_swaps"], seed=c["sim_seed"], start_timestamp=c["sim_start_timestamp"]
    )
    write_swaps_csv(out, rows)
    console.print(
        f"{out}: {len(rows)} [bold]SIMULATED[/bold] swaps (seed {c['sim_seed']}; "
        "router_address/original_sender = 'simulated')"
    )


@app.command()
def snapshot(
    ctx: typer.Context,
    rpc_urls: list[str] = typer.Option(None, "--rpc-url", help="Base JSON-RPC URL."),
    minutes: int = typer.Option(None, "--minutes", help="Window of recent swaps [market.window_bars bars]."),
    pool_id: str = typer.Option(None, "--pool-id"),
    allow_chain_id: int = typer.Option(None, "--allow-chain-id"),
    out: Path = typer.Option(None, "--out", help="Write the JSON here (default: stdout)."),
    config: str = ConfigOpt,
    run_dir: Path = RunDirOpt,
) -> None:
    """Live pool state (StateView getSlot0 + getLiquidity) and last-N-minutes metrics as JSON."""
    from apeagent.config import window_minutes
    from apeagent.files import check_output, write_json
    from chain.rpc import check_rpc_urls
    from chain.snapshot import snapshot as run_snapshot

    c, _ = _settings(ctx, config, run_dir)
    if not c["rpc_urls"]:
        raise UserError("no RPC endpoint: pass --rpc-url URL")
    check_rpc_urls(c["rpc_urls"])
    if minutes is not None and minutes < 1:
        raise UserError(f"--minutes must be >= 1, got {minutes}")
    if out:
        check_output(out, what="--out")
    snap = run_snapshot(
        c["rpc_urls"],
        pool_id=c["pool_id"],
        minutes=minutes or window_minutes(c),
        allow_chain_id=allow_chain_id,
        timeout_s=c["timeout_s"],
        give_up_s=min(c["give_up_s"], 30.0),
    )
    if out:
        write_json(out, snap)
        console.print(f"{out}: pool snapshot at block {snap['block_number']}")
    else:
        print(json.dumps(snap, indent=2))


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
