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


# The tests that take longest, run first: under `make test` (pytest-xdist, one file per worker
# at a time, in this order) the end-to-end pipeline then runs on one worker beside the rest of
# the suite on the other, instead of after it.
FIRST = ("tests/test_pipeline_e2e.py",)


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in FIRST)  # stable: order kept
