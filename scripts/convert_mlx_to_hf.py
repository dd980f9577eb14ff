#!/usr/bin/env python
"""MLX model dir -> Hugging Face transformers dir (PyTorch): the same as
`ape-finetune export-hf`. Logic: finetune_mlx/export_hf.py.

    python scripts/convert_mlx_to_hf.py --model runs/tiny/student/fused --out runs/tiny/hf
"""

import sys

from apeagent.cli import run_cli
from finetune_mlx.cli import app

if __name__ == "__main__":
    run_cli(app, ["export-hf", *sys.argv[1:]])
