"""What every command line shares: the ``--config`` / ``--run-dir`` options and the CLI boundary.

``run_cli(app)`` is the one place that turns bad input into one line on stderr and exit code 2
(every console script's ``main`` calls it). Bad input is only what the project itself calls
so: a :class:`UserError` or :class:`ConfigError` (raised where the input is read, naming the
file, key or flag; :func:`apeagent.errors.reading` converts a library's error there) and
typer's / click's usage errors (a bad flag or value). Anything else is a bug: one line that
says so, exit code 1, and the traceback in a log file (the run folder's ``logs/`` when the
command names one that exists, else the temp folder; the line gives the path). ``--debug``
(anywhere on the command line) or ``APE_DEBUG=1`` shows the traceback instead. Every line is
redacted (apeagent/redact.py) and cut to one short line.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import typer

from apeagent.config import ConfigError
from apeagent.errors import UserError
from apeagent.redact import add_url_secrets, redact

EXIT_BUG = 1
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

# what run_cli turns into one `error:` line, exit 2 (anything else is a bug)
BAD_INPUT = (
    UserError,
    ConfigError,
    typer.TyperException,  # typer's usage errors (its click's ClickException): a bad flag or value
)


def given(ctx: typer.Context, section: str) -> tuple[dict[str, object], dict[str, str]]:
    """The options of the running command (``ctx``) that were given, on the command line or
    through their environment variable, and name a key of config ``section``; and their
    flags. That is the CLI layer of defaults < config file < flags: an option is declared
    once, its parameter named for its key (``timeout_s: float = typer.Option(None,
    "--timeout")``), the way mlx-lm's ``lora.py`` merges the parser's given arguments over
    ``CONFIG_DEFAULTS``."""
    from apeagent.config import defaults

    known = defaults(section)
    values, flags = {}, {}
    for param in ctx.command.params:
        name = param.name
        source = ctx.get_parameter_source(name) if name else None
        if name in known and source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            value = ctx.params[name]
            values[name] = list(value) if isinstance(value, tuple) else value
            flags[name] = max(param.opts, key=len) if param.opts else name
    return values, flags


def run_cli(app: Callable[..., object], args: Sequence[str] | None = None) -> None:
    """Run a typer app (or a callable); turn bad input into ``error: ...`` on stderr, exit code 2,
    and a bug into ``bug: ...``, exit code 1, with its traceback in a log file.

    ``args``: the command line without the program name [``sys.argv[1:]``].
    """
    argv = list(sys.argv[1:] if args is None else args)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut] or os.environ.get("APE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    for text in (*argv, *os.environ.get(RPC_URLS_ENV, "").split()):
        add_url_secrets(text)  # a key in a URL is masked wherever a library quotes it
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
    except Exception as e:  # a bug: say so, keep the traceback
        if debug:
            raise
        log = write_bug_log(e, argv)
        where = f"traceback in {log}" if log else "traceback: run again with --debug"
        what = one_line(f"{type(e).__name__}: {e}")
        print(one_line(f"bug: {what} (an internal error, not bad input; {where})"), file=sys.stderr)
        sys.exit(EXIT_BUG)


def describe(e: BaseException) -> str:
    """What is wrong, in words (the message of a UserError / ConfigError names the culprit)."""
    if isinstance(e, typer.TyperException) and hasattr(e, "format_message"):
        return e.format_message()
    return str(e) or type(e).__name__


def run_dir_of_argv(argv: Sequence[str]) -> Path | None:
    """The run folder a command line names (``--run-dir DIR`` / ``-r DIR``), if it is a folder."""
    for i, a in enumerate(argv):
        value = None
        if a in ("--run-dir", "-r") and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--run-dir="):
            value = a.split("=", 1)[1]
        if value:
            try:
                if Path(value).is_dir():
                    return Path(value)
            except OSError:
                return None
    return None


def write_bug_log(e: BaseException, argv: Sequence[str]) -> Path | None:
    """The redacted traceback in ``RUN/logs/bug-<time>-<pid>.log`` (else the temp folder)."""
    text = "".join(traceback.format_exception(e))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    run = run_dir_of_argv(argv)
    folders = ([run / "logs"] if run is not None else []) + [Path(tempfile.gettempdir())]
    body = redact(f"command: {' '.join(sys.argv[:1] + list(argv))}\n{text}")
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"apeagent-bug-{stamp}-{os.getpid()}.log"
            path.write_text(body)
            return path
        except OSError:
            continue
    return None


def one_line(text: str) -> str:
    """Redacted, on one line, cut to ``MAX_LINE`` characters."""
    text = " ".join(redact(text).split())
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"
