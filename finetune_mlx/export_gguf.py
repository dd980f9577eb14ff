"""MLX model dir -> GGUF (llama.cpp, Ollama, LM Studio) plus an Ollama ``Modelfile``.

Does what llama.cpp's ``convert_hf_to_gguf.py`` does for a ``Qwen2ForCausalLM``, with the
``gguf`` package that script is built on, reading the weights through mlx-lm so a quantized
MLX model (which llama.cpp's converter cannot read) is dequantized first:

- tensors get llama.cpp's qwen2 names from ``gguf.get_tensor_name_map`` (``token_embd``,
  ``blk.N.attn_q``, ``blk.N.ffn_gate``, ``output_norm``, ``output`` only when the embeddings
  are not tied), stored unpermuted (qwen2 uses NEOX RoPE, unlike llama); matrices in the chosen
  float type, 1-D tensors (norms, biases) in f32 as llama.cpp does;
- ``qwen2.*`` hyper-parameters from ``config.json``;
- the byte-level BPE vocabulary as ``tokenizer.ggml.model = "gpt2"`` with ``pre = "qwen2"``:
  tokens (padded with ``[PADn]`` to the embedding rows), token types, merges, special ids, the
  chat template.

The ``Modelfile`` beside the ``.gguf`` (``ollama create NAME -f Modelfile``) carries the
ChatML template, the stop tokens and greedy decoding, the way the canary evaluation decodes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from apeagent.errors import UserError
from apeagent.files import atomic_path, write_text
from finetune_mlx.export_hf import float_weights, read_config

# name -> (GGMLQuantizationType name, LlamaFileType name)
OUTTYPES = {
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "f32": ("F32", "ALL_F32"),
}
_ALIASES = {"float16": "f16", "fp16": "f16", "bfloat16": "bf16", "float32": "f32", "fp32": "f32"}

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Ollama's Go template for ChatML: the same text the tokenizer's chat template renders
# (<|im_start|>role\ncontent<|im_end|>\n per message, then <|im_start|>assistant\n).
OLLAMA_CHATML = (
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}{{ if or (ne .Role \"assistant\") (not $last) }}<|im_end|>\n"
    "{{ end }}\n"
    "{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n"
    "{{ end }}\n"
    "{{- end }}"
)


def canonical_outtype(outtype: str) -> str:
    name = _ALIASES.get(str(outtype).lower(), str(outtype).lower())
    if name not in OUTTYPES:
        raise UserError(f"unknown GGUF type {outtype!r}: use one of {', '.join(OUTTYPES)}")
    return name


def _looks_special(token: str) -> bool:
    # llama.cpp's does_token_look_special: <|...|> tokens are control tokens even when the
    # tokenizer does not flag them (Qwen2.5's <|fim_*|>).
    return token.startswith("<|") and token.endswith("|>")


def gguf_vocab(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens and token types in id order, padded to ``n_vocab`` (the embedding rows)."""
    from gguf import TokenType

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: missing (GGUF export needs the fast tokenizer file)")
    try:
        tj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"{path}: tokenizer model {model.get('type')!r} is not byte-level BPE")
    by_id = {i: (tok, TokenType.NORMAL) for tok, i in model["vocab"].items()}
    for added in tj.get("added_tokens", []):
        content = added["content"]
        special = added.get("special") or _looks_special(content)
        by_id[added["id"]] = (content, TokenType.CONTROL if special else TokenType.USER_DEFINED)
    if by_id and max(by_id) >= n_vocab:
        raise UserError(f"{path}: token id {max(by_id)} does not fit the model's vocab_size {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):
        tok, typ = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(tok)
        types.append(int(typ))
    return tokens, types


def special_vocab(model_dir: Path, tokens: list[str]):
    """``gguf.SpecialVocab`` (merges, bos/eos/pad ids, chat template) with Qwen's conventions."""
    import gguf

    sv = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if not sv.merges:
        raise UserError(f"{model_dir / 'tokenizer.json'}: no BPE merges")
    ids = {t: i for i, t in enumerate(tokens)}
    # Qwen2 has no BOS; its GGUFs name <|endoftext|> and never add it.
    if "bos" not in sv.special_token_ids and EOT in ids:
        sv.special_token_ids["bos"] = ids[EOT]
    sv.add_special_token.setdefault("bos", False)
    if "eos" not in sv.special_token_ids and IM_END in ids:
        sv.special_token_ids["eos"] = ids[IM_END]
    if "pad" not in sv.special_token_ids and EOT in ids:
        sv.special_token_ids["pad"] = ids[EOT]
    if sv.chat_template is None:
        from finetune_mlx.tiny import CHAT_TEMPLATE

        sv.chat_template = CHAT_TEMPLATE
    return sv


def _add_hparams(writer, config: dict[str, Any], name: str, ftype: int) -> None:
    import gguf

    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 32768))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_rope_freq_base(float(config.get("rope_theta", 1000000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    scaling = config.get("rope_scaling")
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        elif kind != "default":
            raise UserError(f"config.json: rope_scaling type {kind!r} has no GGUF equivalent here")


def _tensor_plan(weights: dict[str, Any], n_layers: int, outtype: str):
    """(gguf name, mx.array, GGML type name) per tensor, in llama.cpp's order."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    plan = []
    for hf_name, w in weights.items():
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"tensor {hf_name!r} has no llama.cpp qwen2 name")
        qtype = "F32" if w.ndim <= 1 else OUTTYPES[outtype][0]
        plan.append((new, w, qtype))
    return plan


def _to_numpy(w, qtype: str):
    import mlx.core as mx
    import numpy as np

    if qtype == "F32":
        return np.array(w.astype(mx.float32))
    if qtype == "F16":
        return np.array(w.astype(mx.float16))
    # BF16: the raw 16-bit patterns (MLX rounds to nearest even, as torch does).
    return np.array(w.astype(mx.bfloat16).view(mx.uint16))


def dataset_system_prompt(path: str | Path) -> str | None:
    """The system message the model was trained with: the first row of ``train.jsonl``
    (``path`` is a dataset dir or a .jsonl file); None when the rows have no system message."""
    path = Path(path)
    if path.is_dir():
        path = path / "train.jsonl"
    if not path.is_file():
        raise UserError(f"dataset file not found: {path}")
    with open(path) as f:
        first = f.readline()
    try:
        messages = json.loads(first).get("messages") or []
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{path}:1: not a chat-format JSON row") from None
    if messages and messages[0].get("role") == "system":
        return messages[0].get("content")
    return None


def modelfile(gguf_name: str, *, system: str | None = None, num_ctx: int = 4096,
              temperature: float = 0.0, stops: tuple[str, ...] = (IM_END, IM_START, EOT)) -> str:
    """An Ollama Modelfile for ``gguf_name`` (a path relative to the Modelfile)."""
    lines = [
        "# Ollama Modelfile written by apeagent: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{OLLAMA_CHATML}"""',
    ]
    if system:
        if '"""' in system:
            raise UserError('the system prompt must not contain """ (Ollama string quotes)')
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER num_ctx {num_ctx}"]
    return "\n".join(lines) + "\n"


def export_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    outtype: str = "f16",
    *,
    name: str | None = None,
    system: str | None = None,
    num_ctx: int | None = None,
) -> Path:
    """Write the MLX qwen2 model at ``model_dir`` as GGUF ``out_path``; returns its path.

    ``out_path`` is a ``.gguf`` file (or an existing directory: ``model.gguf`` inside it);
    ``Modelfile`` is written beside it. ``outtype``: ``f16`` (default), ``bf16`` or ``f32``.
    ``name`` goes in ``general.name`` (default: the model dir's name); ``system`` becomes the
    Modelfile's SYSTEM prompt; ``num_ctx`` its context (default: min(context_length, 4096)).
    Both files are written atomically; a failure leaves the old ones (or none).
    """
    import gguf

    outtype = canonical_outtype(outtype)
    model_dir, config = read_config(model_dir)
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / "model.gguf"
    if out_path.suffix != ".gguf":
        raise UserError(f"{out_path}: the GGUF output file must end in .gguf")
    n_vocab = config["vocab_size"]
    ctx = config.get("max_position_embeddings", 32768)
    text = modelfile(out_path.name, system=system, num_ctx=num_ctx or min(ctx, 4096))
    tokens, types = gguf_vocab(model_dir, n_vocab)
    sv = special_vocab(model_dir, tokens)
    weights, config = float_weights(model_dir)
    rows = weights["model.embed_tokens.weight"].shape[0]
    if rows != n_vocab:
        raise UserError(f"{model_dir}: embedding has {rows} rows but config vocab_size is {n_vocab}")
    plan = _tensor_plan(weights, config["num_hidden_layers"], outtype)

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2])
    _add_hparams(writer, config, name or model_dir.name,
                 int(gguf.LlamaFileType[OUTTYPES[outtype][1]]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    sv.add_to_gguf(writer, quiet=True)
    for gname, w, qtype in plan:
        nbytes = w.size * (4 if qtype == "F32" else 2)
        writer.add_tensor_info(gname, tuple(w.shape), _np_dtype(qtype), nbytes,
                               raw_dtype=gguf.GGMLQuantizationType[qtype])
    with atomic_path(out_path) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            # One tensor at a time: a 3B model is never held twice in memory.
            for _, w, qtype in plan:
                writer.write_tensor_data(_to_numpy(w, qtype))
        finally:
            writer.close()
    write_text(out_path.parent / "Modelfile", text)
    return out_path


def _np_dtype(qtype: str):
    import numpy as np

    return {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[qtype]
