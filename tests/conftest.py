"""Run the whole suite with the fast BLAS for MLX: pytest is re-executed once with OpenBLAS
preloaded (see finetune_mlx/blas.py). Output capture is paused around the re-exec so the new
process writes to the real terminal, not to pytest's capture files."""

from finetune_mlx.blas import ensure_fast_blas


def pytest_configure(config):
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    try:
        ensure_fast_blas()
    finally:
        if capman is not None:
            capman.resume_global_capture()
