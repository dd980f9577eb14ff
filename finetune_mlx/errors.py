"""One error convention for every CLI: a clear line naming what is wrong, exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from finetune_mlx.config import ConfigError


class UserError(Exception):
    """Bad input from the user (a file, a key, a flag). The message names it."""


EXIT_USER_ERROR = 2


def run_cli(app: Callable[[], object]) -> None:
    """Run a typer app; turn user errors into ``error: ...`` on stderr and exit code 2."""
    try:
        app()
    except (UserError, ConfigError, FileNotFoundError) as e:
        msg = str(e) if not isinstance(e, FileNotFoundError) or not e.filename else f"file not found: {e.filename}"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
