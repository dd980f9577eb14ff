#!/usr/bin/env python
"""`ape-gan bench` as a script: training steps/s and windows/s per device, cdist vs native.

.venv/bin/python benchmarks/bench_gan_devices.py --devices cpu,mps,cuda --steps 30
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    from gan_torch.cli import app

    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", str(ROOT / "runs/bench/gan_devices.json")]
    sys.argv = ["ape-gan", "bench", *args]
    from apeagent.cli import run_cli

    run_cli(app)
