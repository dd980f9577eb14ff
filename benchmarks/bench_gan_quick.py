#!/usr/bin/env python
"""The GAN quick test as the README quotes it: `ape-gan train --quick-test` on the shared real
CSV (tiny preset's GAN, quick_test_steps steps), its wall time, training time, steps/s and
the peak resident memory of the process (and of the `ape-chain process` it starts).

    .venv/bin/python benchmarks/bench_gan_quick.py [--steps N] [--out runs/bench/gan_quick.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="default: gan.quick_test_steps")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench/gan_quick.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "gan_torch", "train", "--quick-test", "--quiet",
               "--out-dir", str(Path(tmp) / "gan")]
        shown = ["ape-gan", "train", "--quick-test"]
        if args.steps is not None:
            cmd += ["--steps", str(args.steps)]
            shown += ["--steps", str(args.steps)]
        t0 = time.perf_counter()
        # the CLI prints its JSON summary on the console (stderr): read both streams
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        stdout, _ = child.communicate()
        wall = time.perf_counter() - t0
    if child.returncode:
        print(stdout[-2000:])
        return child.returncode
    # the largest peak RSS of the waited-for children (the trainer, and the `ape-chain
    # process` it waits for): kilobytes on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak_mb = peak / 1024 if sys.platform != "darwin" else peak / 2**20
    summary = json.loads([x for x in stdout.splitlines() if x.startswith('{"steps"')][-1])
    out = {
        "command": " ".join(shown),
        "steps": summary["steps"],
        "wall_s": round(wall, 1),
        "training_s": round(summary["elapsed_s"], 1),
        "steps_per_s": round(summary["steps_per_s"], 2),
        "peak_rss_mb": round(peak_mb),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
