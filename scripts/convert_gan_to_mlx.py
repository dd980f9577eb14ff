#!/usr/bin/env python
"""Convert a trained ape-gan torch checkpoint to an MLX generator directory.

    python scripts/convert_gan_to_mlx.py runs/tiny/gan/best.pt runs/tiny/gan_mlx
    ape-gan generate --backend mlx --checkpoint runs/tiny/gan_mlx --out windows.parquet

Writes generator.safetensors (weights) and config.json (config, scalers, anchors).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from apeagent.blas import ensure_fast_blas
    from apeagent.errors import UserError

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", type=Path, help="torch checkpoint (best.pt / last.pt)")
    p.add_argument("out_dir", type=Path, help="directory to write")
    args = p.parse_args()
    ensure_fast_blas()
    from gan_torch.mlx_generator import convert_checkpoint

    try:
        out = convert_checkpoint(args.checkpoint, args.out_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{out}: generator.safetensors + config.json")


if __name__ == "__main__":
    main()
