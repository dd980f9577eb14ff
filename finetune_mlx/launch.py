"""Data-parallel training on several processes (or Macs) through ``mlx.launch`` (ring backend).

``ape-finetune lora --num-processes N`` re-runs itself under ``mlx.launch``; each rank trains
with ``mx.distributed`` (see :mod:`finetune_mlx.train`). mlx.launch exits 0 even when a rank
fails, so each rank leaves a marker file when it finishes (:func:`mark_done`) and
:func:`relaunch` returns 0 only if every rank did.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from apeagent.errors import UserError

ENV_STATUS = "APE_LAUNCH_STATUS"


def is_rank() -> bool:
    """True inside a process that mlx.launch started."""
    return "MLX_RANK" in os.environ


def free_port(n: int) -> int:
    """A port p with p .. p+n-1 free on 127.0.0.1 (the ring backend listens on each)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + n > 65535:
            continue
        socks = []
        try:
            for k in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port + k))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise UserError("no free ports for mlx.launch")


def relaunch(num_processes: int, hostfile: Path | None, argv: list[str], log=print) -> int:
    """Re-run ``python -m finetune_mlx *argv`` under mlx.launch; returns an exit code."""
    launcher = Path(sys.executable).parent / "mlx.launch"
    launcher = str(launcher) if launcher.exists() else shutil.which("mlx.launch")
    if launcher is None:
        raise UserError("mlx.launch not found (it comes with the mlx package)")
    cmd = [launcher, "--backend", "ring"]
    if hostfile is not None:
        if not hostfile.is_file():
            raise UserError(f"hostfile not found: {hostfile}")
        cmd += ["--hostfile", str(hostfile)]
    else:
        # Local ranks share the cores: one BLAS thread each avoids oversubscription.
        port = free_port(num_processes)
        cmd += ["-n", str(num_processes), "-p", str(port), "--env", "OPENBLAS_NUM_THREADS=1"]
    with tempfile.TemporaryDirectory(prefix="ape-launch-") as status:
        cmd += ["--env", f"{ENV_STATUS}={status}", "--", sys.executable, "-m", "finetune_mlx", *argv]
        log(f"launching {num_processes} processes with mlx.launch (ring backend)")
        code = subprocess.call(cmd)
        done = len(list(Path(status).glob("rank*.ok")))
    if code == 0 and done < num_processes:
        log(f"{num_processes - done} of {num_processes} processes failed")
        code = 1
    return code


def mark_done(rank: int) -> None:
    """Tell the launching process that this rank finished (no-op outside mlx.launch)."""
    if os.environ.get(ENV_STATUS):
        Path(os.environ[ENV_STATUS], f"rank{rank}.ok").touch()
