"""Run the whole suite with the fast BLAS for MLX: pytest is re-executed once with OpenBLAS
preloaded (see finetune_mlx/blas.py). Output capture is stopped before that re-exec so the new
process writes to the real terminal, not to pytest's capture files."""

import os
import platform

from apeagent.blas import ensure_fast_blas, find_openblas, plan


def pytest_configure(config):
    action, _ = plan(dict(os.environ), platform.system(), platform.machine(), find_openblas())
    capman = config.pluginmanager.getplugin("capturemanager")
    if action == "preload" and capman is not None:
        capman.stop_global_capturing()
    ensure_fast_blas()
