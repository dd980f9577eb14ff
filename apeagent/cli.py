"""What every command line shares: the ``--config`` / ``--run-dir`` options and the CLI boundary.

``run_cli(app)`` is the one place that turns bad input into one line on stderr and exit code 2
(every console script's ``main`` calls it): a user error, a config error, a bad flag, a file
that is missing, a directory, under a file or unreadable, a damaged SQLite store, a binary file
where text was expected, a value that does not parse, a config nested or extended without end.
The line is redacted (apeagent/redact.py) and cut to one short line. ``--debug`` (anywhere on
the command line) or ``APE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence

import typer

from apeagent.config import ConfigError
from apeagent.errors import UserError
from apeagent.redact import redact

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
MAX_LINE = 400  # characters of the one error line

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

# RPC endpoints carry API keys: the pipeline hands them to `ape-chain collect` through this
# variable (whitespace-separated), never on a command line that `ps` or a manifest would show
RPC_URLS_ENV = "APE_RPC_URLS"

# what run_cli turns into one line (anything else is a bug: it keeps its traceback)
BAD_INPUT = (
    UserError,
    ConfigError,
    typer.TyperException,  # typer's usage errors: a bad flag or value
    OSError,
    sqlite3.DatabaseError,
    UnicodeError,
    ValueError,
    OverflowError,
    RecursionError,
)


def run_cli(app: Callable[..., object], args: Sequence[str] | None = None) -> None:
    """Run a typer app (or a callable); turn bad input into ``error: ...`` on stderr, exit code 2.

    ``args``: the command line without the program name [``sys.argv[1:]``].
    """
    argv = list(sys.argv[1:] if args is None else args)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut] or os.environ.get("APE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    try:
        if isinstance(app, typer.Typer):
            code = app(args=argv, standalone_mode=False)
            if isinstance(code, int) and not isinstance(code, bool):  # typer.Exit(n), --help
                sys.exit(code)
        else:
            sys.argv[1:] = argv
            app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BAD_INPUT as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command group: its help
            print(e.format_message(), file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        if debug:
            raise
        print(f"error: {one_line(describe(e))}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def describe(e: BaseException) -> str:
    """What is wrong, in words, naming the file or the value where the exception says which."""
    if isinstance(e, typer.TyperException):
        return e.format_message()
    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else ""
        if isinstance(e, FileNotFoundError) and where:
            return f"file not found: {where}"
        if isinstance(e, IsADirectoryError):
            return f"{where}: is a directory (a file is needed here)"
        if isinstance(e, NotADirectoryError) or (isinstance(e, FileExistsError) and os.path.isfile(str(where))):
            return f"{where}: a file stands where a folder is needed (in the path or as the path)"
        if isinstance(e, PermissionError):
            return f"{where}: permission denied"
        if e.errno == errno.ENOSPC:
            return f"{where}: no space left on the device"
        if e.errno == errno.ENAMETOOLONG:
            return "a file name is too long"
        return f"{where}: {e.strerror or e}" if where else str(e)
    if isinstance(e, sqlite3.DatabaseError):
        return f"not a usable SQLite store (damaged, truncated or another kind of file): {e}"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text ({e.reason} at byte {e.start}); a text file (CSV, JSON, YAML) is needed"
    if isinstance(e, RecursionError):
        return "input nested too deeply (a config that extends itself, or a deeply nested file)"
    if isinstance(e, OverflowError):
        return f"number out of range: {e}"
    return str(e) or type(e).__name__


def one_line(text: str) -> str:
    """Redacted, on one line, cut to ``MAX_LINE`` characters."""
    text = " ".join(redact(text).split())
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"
