"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apeagent.errors import UserError, os_error_text

# write errors that say something about the place, not about the program
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG)


def check_output(path: str | Path, folder: bool = False, what: str = "") -> None:
    """Fail now, naming the path (and ``what``: the flag), where an output cannot go: a folder
    where a file goes (or the reverse), a file on the way to it, or something that is not a
    regular file (a device such as /dev/full, a FIFO, a socket: never renamed over). A command
    calls it for every output before its work starts."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        if folder and path.exists() and not path.is_dir():
            raise UserError(f"{label}: is a file, not a folder")
        if not folder and path.is_dir():
            raise UserError(f"{label}: is a directory (a file is needed here)")
        if not folder and (path.exists() or path.is_symlink()) and not path.is_file():
            raise UserError(f"{label}: exists and is not a regular file (a device, FIFO or socket); "
                            "refusing to replace it")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"{label}: {parent} is a file, not a folder")
                break
    except OSError as e:  # a name too long, a path the user may not look into
        raise UserError(f"{label}: {os_error_text(e)}") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds.

    Never over something that is not a regular file (checked again right before the rename);
    a write error of the place (no space, read-only, permission) is a UserError naming ``path``."""
    path = Path(path)
    check_output(path)  # name the path, not the temp file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"{path}: cannot write here: {os_error_text(e)}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            check_output(path)  # not replaced by a device while the block ran
            os.replace(tmp_path, path)
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:
                raise
            raise UserError(f"{path}: cannot write: {os_error_text(e)}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; it replaces ``path`` (a directory) if the block succeeds."""
    path = Path(path)
    check_output(path, folder=True)  # never replace a file with a folder
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def memory_bytes() -> int:
    """Physical memory of this machine (the bound of what a command may try to allocate)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB
        return 16 * 2**30


def check_fits(need: int, what: str, lower: str) -> None:
    """``need`` bytes for ``what`` fit in half this machine's memory; else a UserError that
    says the bound and which settings to ``lower``."""
    half = memory_bytes() // 2
    if need > half:
        raise UserError(f"{what} needs about {need / 2**30:.1f} GiB, more than half this machine's memory "
                        f"({half / 2**30:.1f} GiB, the bound): lower {lower}")

