"""`ape-finetune` / `python -m finetune_mlx`: the student's LoRA training, fusing, evaluation."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from finetune_mlx.errors import run_cli

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune the student with mlx-lm: LoRA, fuse, canary evaluation, tiny offline models.",
)


@app.callback()
def _group() -> None:
    """Keep typer in multi-command mode."""


@app.command()
def doctor() -> None:
    """Print versions, devices (torch, MLX), the BLAS in use and whether ../shared data is present."""
    from finetune_mlx.doctor import report

    table = Table(title="apeagent doctor")
    table.add_column("what")
    table.add_column("value")
    for key, value in report():
        table.add_row(key, value)
    Console().print(table)


def main() -> None:
    run_cli(app)
