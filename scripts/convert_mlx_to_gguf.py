#!/usr/bin/env python
"""MLX model dir -> qwen2 GGUF + Ollama Modelfile: the same as
`ape-finetune export-gguf`. Logic: finetune_mlx/export_gguf.py.

    python scripts/convert_mlx_to_gguf.py --model runs/tiny/student/fused --out runs/tiny/gguf/model.gguf
"""

import sys

from apeagent.cli import run_cli
from finetune_mlx.cli import app

if __name__ == "__main__":
    run_cli(app, ["export-gguf", *sys.argv[1:]])
