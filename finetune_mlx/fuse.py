"""Fuse adapters into the base weights: an ordinary MLX model dir (what ``mlx_lm.fuse`` does).

The result loads with ``mlx_lm.load`` and runs with ``mlx_lm.generate`` with no adapter.
``dequantize`` turns a QLoRA student (4-bit base) back into float weights, e.g. for export.
"""

from __future__ import annotations

import json
from pathlib import Path

from apeagent.files import atomic_dir
from finetune_mlx.model_dir import check_adapter, check_model_dir, fingerprint


def fuse(
    model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, dequantize: bool = False
) -> Path:
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, load, save

    model_dir = check_model_dir(model_dir)
    adapter_dir = check_adapter(adapter_dir, model_dir)
    out_dir = Path(out_dir)
    model, tokenizer, config = load(
        str(model_dir), adapter_path=str(adapter_dir), return_config=True
    )
    fused = [
        (n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    with atomic_dir(out_dir) as tmp:
        save(tmp, str(model_dir), model, tokenizer, config, donate_model=False)
        info = {
            "base_model": str(model_dir),
            "base_fingerprint": fingerprint(model_dir),
            "adapter_path": str(adapter_dir),
            "fused_layers": len(fused),
            "dequantized": dequantize,
        }
        (tmp / "fuse_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir
