"""The error types every command shares; ``apeagent.cli.run_cli`` turns them into one line, exit 2.

Only these are bad input. A library error that means bad input at a known place (a file that
is missing, a directory, not UTF-8, a damaged SQLite store) is turned into a :class:`UserError`
where the file is read, naming it: :func:`reading` does it for a block of code that reads one
file. Every other exception is a bug, and the boundary says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ConfigError", "UserError", "os_error_text", "reading"]


class UserError(Exception):
    """Bad input from the user (a file, a key, a flag). The message names it."""


class ConfigError(UserError, ValueError):
    """A config problem; the message names the file and the key (``apeagent.config`` raises it)."""


def os_error_text(e: OSError) -> str:
    """What an ``OSError`` on a user's path means, in words (the path is named by the caller)."""
    if isinstance(e, FileNotFoundError):
        return "not found"
    if isinstance(e, IsADirectoryError):
        return "is a directory (a file is needed here)"
    if isinstance(e, NotADirectoryError):
        return "a file stands where a folder is needed (in the path or as the path)"
    if isinstance(e, FileExistsError) and e.filename is not None and os.path.isfile(str(e.filename)):
        return "a file stands where a folder is needed (in the path or as the path)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.ENAMETOOLONG:
        return "a file name is too long"
    return e.strerror or str(e)


@contextlib.contextmanager
def reading(path: str | Path | None, what: str = "", extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn what reading the user's file ``path`` can raise into one :class:`UserError` naming
    it (``what``: the flag or the kind of file, e.g. ``"--db"``): an ``OSError`` (missing,
    a directory, unreadable), text that is not UTF-8, a damaged SQLite file, and the library
    errors in ``extra`` (a parquet reader's ``ArrowInvalid``). Anything else passes: a bug."""
    label = f"{what} {path}" if what and path is not None else str(path if path is not None else what)
    try:
        yield
    except UserError:
        raise
    except OSError as e:
        where = e.filename if e.filename is not None and str(e.filename) != str(path) else None
        raise UserError(f"{label}: {f'{where}: ' if where else ''}{os_error_text(e)}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start}); a text file is needed") from None
    except sqlite3.DatabaseError as e:
        raise UserError(f"{label}: not a usable SQLite store (damaged, truncated or another kind of file: {e})") from None
    except extra as e:
        text = " ".join(str(e).split())[:200]
        raise UserError(f"{label}: cannot be read ({type(e).__name__}: {text})") from None
