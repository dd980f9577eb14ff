"""The error types every command shares; ``apeagent.cli.run_cli`` turns them into one line, exit 2."""

from __future__ import annotations

from apeagent.config import ConfigError

__all__ = ["ConfigError", "UserError"]


class UserError(Exception):
    """Bad input from the user (a file, a key, a flag). The message names it."""
