#!/usr/bin/env python
"""The end-to-end pipeline (the main job of `make demo`). Logic: apeagent/pipeline.py.

    python scripts/pipeline.py --preset tiny                      # simulated swaps (offline default)
    python scripts/pipeline.py --swaps ../shared/data/base_eth_usdc_v4_swaps.csv
    APE_RPC_URLS=https://... python scripts/pipeline.py --preset mac --from-block N --to-block M
"""

from pathlib import Path

import typer

from apeagent import pipeline
from apeagent.cli import RPC_URLS_ENV, run_cli

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    preset: str = typer.Option("tiny", "--preset", "-p", help="tiny | mac | path/to/config.yaml"),
    swaps: Path | None = typer.Option(None, help="real swaps CSV (collector schema)"),
    store: Path | None = typer.Option(None, help="an existing event store (swaps.db)"),
    rpc_url: list[str] | None = typer.Option(
        None, envvar=RPC_URLS_ENV, help="collect from these Base RPC endpoint(s) [or $APE_RPC_URLS]"
    ),
    from_block: int | None = typer.Option(None, help="with --rpc-url"),
    to_block: int | None = typer.Option(None, help="with --rpc-url"),
    run_dir: Path | None = typer.Option(None, help="default: the preset's run.run_dir"),
    force: list[str] | None = typer.Option(None, help="re-run this stage (and all after it); 'all'"),
    until: str | None = typer.Option(None, help="stop after this stage"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a config key: gan.steps=200"),
) -> None:
    """Run or resume the pipeline; finished stages with unchanged inputs are skipped."""
    pipeline.cli(preset, swaps, store, rpc_url, from_block, to_block, run_dir, force, until, set_)


if __name__ == "__main__":
    run_cli(app)
