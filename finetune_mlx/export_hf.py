"""MLX model dir -> Hugging Face transformers directory (PyTorch users, other toolchains).

An MLX qwen2 or llama checkpoint already uses the Hugging Face tensor names and layouts
(mlx-lm's ``qwen2.Model`` mirrors ``Qwen2ForCausalLM``, ``llama.Model`` ``LlamaForCausalLM``);
what differs is quantization (MLX affine groups that transformers cannot read) and the
``quantization`` keys in ``config.json``. So the export loads the model with mlx-lm,
dequantizes it (``mlx_lm.utils.dequantize_model``), casts to one float dtype and writes
``model.safetensors`` (sharded past 5 GB, with an index) beside a clean ``config.json``, the
tokenizer files and ``generation_config.json``. The result loads with
``transformers.AutoModelForCausalLM.from_pretrained`` and gives the same logits as MLX.

:func:`float_weights` is shared with the GGUF export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from apeagent.errors import UserError
from apeagent.files import atomic_dir
from finetune_mlx.model_dir import check_model_dir

# model_type -> the transformers architecture (mlx-lm's qwen2 and llama modules use the Hugging
# Face names and layouts of these, so the weights go over unchanged).
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)

# Canonical name -> accepted spellings.
DTYPES = {
    "float16": ("float16", "f16", "fp16"),
    "bfloat16": ("bfloat16", "bf16"),
    "float32": ("float32", "f32", "fp32"),
}

# Everything a tokenizer/generation setup may live in; copied when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)

# Shard size of the safetensors files (transformers' default for save_pretrained is 5 GB too):
# Qwen2.5-3B is 6.2 GB in float16, so real exports are sharded, with an index.
MAX_SHARD_BYTES = 5 << 30

# Keys of an MLX config.json that mean nothing (or something wrong) to transformers.
_MLX_ONLY_KEYS = ("quantization", "quantization_config")


def canonical_dtype(dtype: str) -> str:
    """``"f16"``/``"fp16"``/``"float16"`` -> ``"float16"`` etc.; UserError for anything else."""
    for name, spellings in DTYPES.items():
        if str(dtype).lower() in spellings:
            return name
    raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def read_config(model_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """Check ``model_dir`` is an MLX/HF model dir of a supported architecture; return its config."""
    model_dir = check_model_dir(model_dir)
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"{path}: model_type {model_type!r} is not supported for export "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return model_dir, config


def is_quantized(config: dict[str, Any]) -> bool:
    return any(k in config for k in _MLX_ONLY_KEYS)


def float_weights(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hugging Face-named float weights (``mx.array``) of an MLX model dir, and its config.

    Quantized layers are dequantized; arrays stay lazy until used, so a 3B model is not
    materialised twice.
    """
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model, load_model

    model_dir, config = read_config(model_dir)
    try:
        model, _ = load_model(model_dir, lazy=True)
    except ValueError as e:  # mlx-lm: missing / extra parameters, bad shapes
        raise UserError(f"{model_dir}: cannot load the weights ({e})") from None
    if is_quantized(config):
        model = dequantize_model(model)
    return dict(tree_flatten(model.parameters())), config


def hf_config(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """``config.json`` for transformers: no MLX quantization keys, the exported dtype."""
    out = {k: v for k, v in config.items() if k not in _MLX_ONLY_KEYS}
    out["architectures"] = [ARCHITECTURES[config["model_type"]]]
    # transformers >= 4.56 reads "dtype"; older versions and llama.cpp read "torch_dtype".
    out["dtype"] = out["torch_dtype"] = dtype
    out.pop("_name_or_path", None)
    return dict(sorted(out.items()))


def _generation_config(model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    path = model_dir / "generation_config.json"
    if path.is_file():
        return json.loads(path.read_text())
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
           if config.get(k) is not None}
    return gen


def _write_weights(out: Path, weights: dict[str, Any], dtype: str) -> int:
    """Write (sharded) safetensors in ``dtype``; returns the total bytes."""
    import mlx.core as mx

    mx_dtype = getattr(mx, dtype)
    cast = {k: v.astype(mx_dtype) for k, v in weights.items()}
    shards: list[dict] = []
    size = 0
    for k, v in cast.items():
        if not shards or size + v.nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    total = sum(v.nbytes for v in cast.values())
    if len(shards) == 1:
        mx.save_safetensors(str(out / "model.safetensors"), shards[0], metadata={"format": "pt"})
        return total
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(out / name), shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def export_hf(model_dir: str | Path, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Write the MLX model at ``model_dir`` as a transformers directory ``out_dir``; returns it.

    ``dtype`` is ``float16``, ``bfloat16`` or ``float32`` (``f16``/``bf16``/``f32`` too).
    ``out_dir`` is replaced atomically: it holds the old export or the new one, never half.
    """
    dtype = canonical_dtype(dtype)
    model_dir, _ = read_config(model_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise UserError(f"{out_dir}: the output directory must not be the model directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    copied = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if "tokenizer.json" not in copied and "vocab.json" not in copied:
        raise UserError(f"{model_dir}: no tokenizer (tokenizer.json or vocab.json) to export")
    weights, config = float_weights(model_dir)
    with atomic_dir(out_dir) as tmp:
        nbytes = _write_weights(tmp, weights, dtype)
        (tmp / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
        gen = _generation_config(model_dir, config)
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        for name in copied:
            shutil.copy2(model_dir / name, tmp / name)
        info = {
            "source": str(model_dir),
            "format": "huggingface",
            "dtype": dtype,
            "dequantized": is_quantized(config),
            "tensors": len(weights),
            "bytes": nbytes,
            "tokenizer_files": copied,
        }
        (tmp / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir
