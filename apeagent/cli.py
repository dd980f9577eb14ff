"""What every command line shares: the ``--config`` / ``--run-dir`` options and the CLI boundary.

``run_cli(app)`` is the one place that turns a user error into one line on stderr and exit
code 2 (every console script's ``main`` calls it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from apeagent.config import ConfigError
from apeagent.errors import UserError

EXIT_USER_ERROR = 2

ConfigOpt = typer.Option(
    None,
    "--config",
    "-c",
    help="Preset name (tiny, mac) or YAML path [the run folder's config.yaml, else tiny].",
)
RunDirOpt = typer.Option(
    None,
    "--run-dir",
    "-r",
    help="Run folder: inputs and outputs default to its layout [run.run_dir of the config].",
)


def run_cli(app: Callable[[], object]) -> None:
    """Run a typer app; turn user errors into ``error: ...`` on stderr and exit code 2."""
    try:
        app()
    except (UserError, ConfigError, FileNotFoundError) as e:
        msg = str(e) if not isinstance(e, FileNotFoundError) or not e.filename else f"file not found: {e.filename}"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
