"""`ape-finetune doctor`: what this machine gives the toolchain."""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys
from pathlib import Path

from apeagent.blas import describe_loaded, ensure_fast_blas

SHARED_CSV = Path("../shared/data/base_eth_usdc_v4_swaps.csv")
PACKAGES = ("mlx", "mlx-lm", "torch", "numpy", "web3", "transformers", "tokenizers", "pyarrow")


def report() -> list[tuple[str, str]]:
    blas = ensure_fast_blas(announce=False)
    rows = [("python", sys.version.split()[0]), ("platform", f"{platform.system()} {platform.machine()}")]
    for name in PACKAGES:
        try:
            rows.append((name, md.version(name)))
        except md.PackageNotFoundError:
            rows.append((name, "not installed"))
    import mlx.core as mx

    rows.append(("mlx device", str(mx.default_device())))
    rows.append(("mlx metal", str(mx.metal.is_available())))
    rows.append(("BLAS (chosen)", blas))
    rows.append(("BLAS (mapped)", describe_loaded()))
    import torch

    torch_devices = ["cpu"]
    if torch.cuda.is_available():
        torch_devices.append(f"cuda ({torch.cuda.get_device_name(0)})")
    if torch.backends.mps.is_available():
        torch_devices.append("mps")
    rows.append(("torch devices", ", ".join(torch_devices)))
    rows.append(("shared real data", f"{SHARED_CSV} ({'present' if SHARED_CSV.is_file() else 'absent'})"))
    return rows
