"""Fast BLAS for MLX on Linux.

MLX's Linux CPU wheel links the reference BLAS it bundles (sgemm ~5 GFLOP/s on a 2-core
x86 box). Debian's OpenBLAS (``libopenblas0-pthread``) exports the same CBLAS symbols; when it
is preloaded, the dynamic linker resolves MLX's ``cblas_sgemm`` to it (~170 GFLOP/s). The
preload must be in place before the process starts, so :func:`ensure_fast_blas` re-executes
the current command once with ``LD_PRELOAD`` set. On macOS MLX uses Accelerate/Metal and
nothing is done.

``APE_BLAS`` controls it: ``auto`` (default), ``reference`` (never preload), or a path to a
BLAS shared library to preload.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ENV_CHOICE = "APE_BLAS"
_ENV_REEXEC = "_APE_BLAS_REEXEC"

_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
_CANDIDATES = (
    "openblas-pthread/libopenblas.so.0",
    "libopenblas.so.0",
    "openblas-openmp/libopenblas.so.0",
    "openblas-serial/libopenblas.so.0",
)


def find_openblas(machine: str | None = None, roots: tuple[str, ...] = ("/usr/lib",)) -> str | None:
    """Path of an installed OpenBLAS shared library, or None."""
    triplet = _MULTIARCH.get(machine or platform.machine())
    for root in roots:
        dirs = [Path(root) / triplet] if triplet else []
        dirs.append(Path(root))
        for d in dirs:
            for rel in _CANDIDATES:
                p = d / rel
                if p.is_file():
                    return str(p)
    return None


def plan(env: dict[str, str], system: str, machine: str, openblas: str | None) -> tuple[str, str | None]:
    """Decide what to do: ``("preload", lib)``, ``("active", lib)`` or ``("skip", reason)``.

    Pure function of its inputs so the selection logic is testable without re-executing.
    """
    if system != "Linux":
        return "skip", "Accelerate (macOS)" if system == "Darwin" else f"platform default ({system})"
    choice = env.get(ENV_CHOICE, "auto")
    if choice == "reference":
        return "skip", f"reference BLAS bundled with MLX ({ENV_CHOICE}=reference)"
    lib = openblas if choice == "auto" else choice
    if choice != "auto" and not Path(choice).is_file():
        return "skip", f"reference BLAS bundled with MLX ({ENV_CHOICE}={choice} does not exist)"
    if lib is None:
        return "skip", (
            "reference BLAS bundled with MLX (slow: install Debian's libopenblas0-pthread "
            "for ~30x faster matmul)"
        )
    if lib in env.get("LD_PRELOAD", "").split(":"):
        return "active", lib
    if env.get(_ENV_REEXEC):
        return "skip", f"reference BLAS bundled with MLX (preloading {lib} failed)"
    return "preload", lib


def ensure_fast_blas(announce: bool = True) -> str:
    """Make sure this process runs MLX on the fastest BLAS available; returns a description.

    Call it before ``import mlx``. It may replace the current process (``os.execve``).
    """
    env = dict(os.environ)
    action, detail = plan(env, platform.system(), platform.machine(), find_openblas())
    if action == "preload" and "mlx.core" not in sys.modules:
        env["LD_PRELOAD"] = ":".join(p for p in (detail, env.get("LD_PRELOAD", "")) if p)
        env[_ENV_REEXEC] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, list(sys.orig_argv), env)
    if action == "preload":
        text = "reference BLAS bundled with MLX (mlx was imported before the BLAS could be preloaded)"
    elif action == "active":
        text = f"OpenBLAS ({detail}, preloaded)"
    else:
        text = detail or "unknown"
    if announce:
        print(f"[apeagent] BLAS: {text}", file=sys.stderr)
    return text


def describe_loaded() -> str:
    """Which BLAS library is mapped into this process right now (Linux), for `doctor`."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return "Accelerate (macOS)" if platform.system() == "Darwin" else "unknown"
    libs = {line.split()[-1] for line in maps.read_text().splitlines() if "blas" in line.lower()}
    return ", ".join(sorted(libs)) or "none loaded"
