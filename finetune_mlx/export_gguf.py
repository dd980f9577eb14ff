"""MLX model dir -> GGUF (llama.cpp, Ollama, LM Studio) plus an Ollama ``Modelfile``.

Does what llama.cpp's ``convert_hf_to_gguf.py`` does for a ``Qwen2ForCausalLM`` or a
``LlamaForCausalLM`` (SmolLM2 imported with ``import-gguf``), with the ``gguf`` package that
script is built on, reading the weights through mlx-lm so a quantized MLX model (which
llama.cpp's converter cannot read) is dequantized first:

- tensors get llama.cpp's names for the architecture from ``gguf.get_tensor_name_map``
  (``token_embd``, ``blk.N.attn_q``, ``blk.N.ffn_gate``, ``output_norm``, ``output`` only when
  the embeddings are not tied); matrices in the chosen float type, 1-D tensors (norms, biases)
  in f32 as llama.cpp does. qwen2 tensors are stored as they are (NEOX RoPE, the Hugging Face
  layout); llama's q/k projections are permuted as ``LlamaModel.permute`` does (llama.cpp's
  llama RoPE rotates adjacent pairs, Hugging Face's the two halves of each head);
- ``qwen2.*`` / ``llama.*`` hyper-parameters from ``config.json`` (llama: also the vocab size
  and the RoPE dimension count, the head size);
- the byte-level BPE vocabulary as ``tokenizer.ggml.model = "gpt2"``, the pre-tokenizer named
  the way ``convert_hf_to_gguf.py`` names it (the hash of the tokenizer's ids for its check
  text: ``smollm`` for SmolLM2, ``qwen2`` for Qwen2.5; a qwen2 model with a tokenizer of its
  own gets ``qwen2``): tokens (padded with ``[PADn]`` to the embedding rows), token types,
  merges, special ids from the tokenizer config, the tokenizer's own chat template.

Quantised files (``quant``): Q8_0, Q5_1, Q5_0, Q4_1 and Q4_0 are written by the ``gguf``
package itself (``gguf.quants.quantize``: every matrix in that type, as ``convert_hf_to_gguf.py
--outtype q8_0`` does); the K-quants (Q4_K_M, Ollama's default, and the others) by llama.cpp's
own quantizer (``llama_model_quantize`` from llama-cpp-python, the ``gguf`` extra) applied to a
float GGUF written first. llama.cpp picks a type per tensor and falls back to a legacy type
for a tensor whose rows are not a multiple of 256 (the K-quant block); ``export_info.json``
beside the file names the types it holds, each fallback, the size and bits per weight.

The ``Modelfile`` beside the ``.gguf`` (``ollama create NAME -f Modelfile``) carries the
ChatML template, the stop tokens and greedy decoding, the way the canary evaluation decodes.
"""

from __future__ import annotations

import ctypes
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from apeagent.errors import UserError
from apeagent.files import atomic_path, write_json, write_text
from distill.prompt import template_system
from finetune_mlx.export_hf import float_weights, read_config

# name -> (GGMLQuantizationType name, LlamaFileType name)
OUTTYPES = {
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "f32": ("F32", "ALL_F32"),
}
_ALIASES = {"float16": "f16", "fp16": "f16", "bfloat16": "bf16", "float32": "f32", "fp32": "f32"}

# --quant name -> (quantizer, LlamaFileType name). "gguf": every matrix in the GGML type of the
# same name, written here; "llama.cpp": llama.cpp's per-tensor mix for that file type.
QUANTS = {
    "q8_0": ("gguf", "MOSTLY_Q8_0"),
    "q5_1": ("gguf", "MOSTLY_Q5_1"),
    "q5_0": ("gguf", "MOSTLY_Q5_0"),
    "q4_1": ("gguf", "MOSTLY_Q4_1"),
    "q4_0": ("gguf", "MOSTLY_Q4_0"),
    "q6_k": ("llama.cpp", "MOSTLY_Q6_K"),
    "q5_k_m": ("llama.cpp", "MOSTLY_Q5_K_M"),
    "q5_k_s": ("llama.cpp", "MOSTLY_Q5_K_S"),
    "q4_k_m": ("llama.cpp", "MOSTLY_Q4_K_M"),
    "q4_k_s": ("llama.cpp", "MOSTLY_Q4_K_S"),
    "q3_k_l": ("llama.cpp", "MOSTLY_Q3_K_L"),
    "q3_k_m": ("llama.cpp", "MOSTLY_Q3_K_M"),
    "q3_k_s": ("llama.cpp", "MOSTLY_Q3_K_S"),
    "q2_k": ("llama.cpp", "MOSTLY_Q2_K"),
}
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")
INFO_FILE = "export_info.json"

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# config.json model_type -> gguf.MODEL_ARCH member name
ARCHS = {"qwen2": "QWEN2", "llama": "LLAMA"}

# convert_hf_to_gguf.py's get_vocab_base_pre: the BPE pre-tokenizer is recognised by the sha256
# of str(tokenizer.encode(CHKTXT)); the hashes are llama.cpp's (convert_hf_to_gguf_update.py).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
}
# the pre-tokenizer when the hash is not one of those (a tokenizer trained here: finetune_mlx.tiny)
DEFAULT_PRE = {"qwen2": "qwen2"}

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
        raise UserError(f"unknown GGUF type {outtype!r}: use one of {', '.join(OUTTYPES)} "
                        "(quantised files: --quant, e.g. q8_0 or q4_k_m)")
    return name


def canonical_quant(quant: str | None) -> str | None:
    if quant is None:
        return None
    name = str(quant).lower().replace("-", "_")
    if name not in QUANTS:
        raise UserError(f"unknown GGUF quant {quant!r}: use one of {', '.join(QUANTS)}")
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


def tokenizer_pre(model_dir: Path, model_type: str) -> str:
    """``tokenizer.ggml.pre``: llama.cpp's name for the tokenizer's pre-tokenizer."""
    from hashlib import sha256

    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        ids = Tokenizer.from_file(str(path)).encode(CHKTXT).ids
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception type
        raise UserError(f"{path}: the tokenizer cannot be loaded ({e})") from None
    digest = sha256(str(ids).encode()).hexdigest()
    pre = PRE_TOKENIZERS.get(digest) or DEFAULT_PRE.get(model_type)
    if pre is None:
        raise UserError(f"{path}: BPE pre-tokenizer not recognised (hash {digest[:16]}...): "
                        f"known for {model_type}: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}")
    return pre


def special_vocab(model_dir: Path, tokens: list[str], model_type: str = "qwen2"):
    """``gguf.SpecialVocab`` (merges, bos/eos/pad/unk ids and add_bos from the tokenizer config,
    the chat template), with Qwen's conventions where a qwen2 tokenizer names no such token."""
    import gguf

    sv = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if not sv.merges:
        raise UserError(f"{model_dir / 'tokenizer.json'}: no BPE merges")
    ids = {t: i for i, t in enumerate(tokens)}
    sv.add_special_token.setdefault("bos", False)
    if model_type == "qwen2":
        # Qwen2 has no BOS; its GGUFs name <|endoftext|> and never add it.
        if "bos" not in sv.special_token_ids and EOT in ids:
            sv.special_token_ids["bos"] = ids[EOT]
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
    if config["model_type"] == "llama":  # LlamaModel.set_gguf_parameters
        writer.add_vocab_size(config["vocab_size"])
        writer.add_rope_dimension_count(
            config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
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


def permute(w, n_head: int, n_head_kv: int | None):
    """convert_hf_to_gguf.py's ``LlamaModel.permute`` (on an ``mx.array``): within each head,
    the Hugging Face rotate-half order of q/k rows becomes the adjacent pairs of llama.cpp's RoPE."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _llama_layout(hf_name: str, w, config: dict[str, Any]):
    """``w`` as llama.cpp's llama architecture reads it: q/k projections permuted."""
    n_head = config["num_attention_heads"]
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return permute(w, n_head, n_head)
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return permute(w, n_head, config.get("num_key_value_heads", n_head))
    return w


def _tensor_plan(weights: dict[str, Any], config: dict[str, Any], outtype: str, qtype: str | None):
    """(gguf name, mx.array, GGML type name) per tensor, in llama.cpp's order, and the
    matrices whose rows do not fit ``qtype``'s blocks (kept in ``outtype`` instead)."""
    import gguf

    arch = config["model_type"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[ARCHS[arch]], config["num_hidden_layers"])
    plan, fallbacks = [], []
    for hf_name, w in weights.items():
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"tensor {hf_name!r} has no llama.cpp {arch} name")
        if arch == "llama":
            w = _llama_layout(hf_name, w, config)
        typ = "F32" if w.ndim <= 1 else OUTTYPES[outtype][0]
        if qtype is not None and w.ndim > 1:
            block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
            if w.shape[-1] % block == 0:
                typ = qtype
            else:
                fallbacks.append({"tensor": new, "ncols": int(w.shape[-1]), "block": block,
                                  "wanted": qtype, "used": typ})
        plan.append((new, w, typ))
    return plan, fallbacks


def _to_numpy(w, qtype: str):
    import mlx.core as mx
    import numpy as np

    if qtype == "F16":
        return np.array(w.astype(mx.float16))
    if qtype == "BF16":
        # the raw 16-bit patterns (MLX rounds to nearest even, as torch does)
        return np.array(w.astype(mx.bfloat16).view(mx.uint16))
    data = np.array(w.astype(mx.float32))
    if qtype == "F32":
        return data
    import gguf

    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype])


def _tensor_info(w, qtype: str):
    """(shape, numpy dtype, bytes) for ``GGUFWriter.add_tensor_info``."""
    import gguf
    import numpy as np

    if qtype in ("F32", "F16", "BF16"):
        dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[qtype]
        return tuple(w.shape), dtype, w.size * np.dtype(dtype).itemsize
    shape = gguf.quants.quant_shape_to_byte_shape(tuple(w.shape), gguf.GGMLQuantizationType[qtype])
    return shape, np.uint8, int(np.prod(shape))


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
    quant: str | None = None,
    name: str | None = None,
    system: str | None = None,
    num_ctx: int | None = None,
    threads: int = 0,
) -> Path:
    """Write the MLX qwen2 or llama model at ``model_dir`` as GGUF ``out_path``; returns its path.

    ``out_path`` is a ``.gguf`` file (or an existing directory: ``model.gguf`` inside it);
    ``Modelfile`` and ``export_info.json`` are written beside it. ``outtype``: ``f16``
    (default), ``bf16`` or ``f32``: the matrices' type, or with ``quant`` (a name of
    ``QUANTS``) the type of matrices that cannot be quantised (gguf quants) or of the float
    file llama.cpp quantises (K-quants; ``threads`` for its quantizer, 0: all cores).
    ``name`` goes in ``general.name`` (default: the model dir's name); ``system`` becomes the
    Modelfile's SYSTEM prompt (None: the one the chat template adds to messages without one,
    :func:`distill.prompt.template_system`; "": none); ``num_ctx`` its context (default: min(context_length, 4096)).
    Every file is written atomically; a failure leaves the old ones (or none).
    """
    outtype = canonical_outtype(outtype)
    quant = canonical_quant(quant)
    quantizer, ftype_name = QUANTS[quant] if quant else ("", OUTTYPES[outtype][1])
    if quantizer == "llama.cpp":
        _llama_cpp(quant)  # before any work: the extra may be missing
    model_dir, config = read_config(model_dir)
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / "model.gguf"
    if out_path.suffix != ".gguf":
        raise UserError(f"{out_path}: the GGUF output file must end in .gguf")
    n_vocab = config["vocab_size"]
    ctx = config.get("max_position_embeddings", 32768)
    if system is None:
        # Ollama renders its own template: without SYSTEM the model would read no system
        # message, where the tokenizer's template (training, MLX, llama.cpp) adds its default
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        system = template_system(load_tokenizer(model_dir))
    text = modelfile(out_path.name, system=system, num_ctx=num_ctx or min(ctx, 4096))
    if config["model_type"] not in ARCHS:
        raise UserError(f"{model_dir / 'config.json'}: model_type {config['model_type']!r} has no "
                        f"GGUF export (supported: {', '.join(ARCHS)})")
    tokens, types = gguf_vocab(model_dir, n_vocab)
    pre = tokenizer_pre(model_dir, config["model_type"])
    sv = special_vocab(model_dir, tokens, config["model_type"])
    weights, config = float_weights(model_dir)
    rows = weights["model.embed_tokens.weight"].shape[0]
    if rows != n_vocab:
        raise UserError(f"{model_dir}: embedding has {rows} rows but config vocab_size is {n_vocab}")
    qtype = ftype_name.removeprefix("MOSTLY_") if quantizer == "gguf" else None
    plan, fallbacks = _tensor_plan(weights, config, outtype, qtype)
    meta = (config, name or model_dir.name, tokens, types, sv, pre)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    if quantizer == "llama.cpp":
        with tempfile.TemporaryDirectory(prefix=".gguf-src-", dir=out_path.parent) as tmp_dir:
            src = Path(tmp_dir) / "float.gguf"
            _write_gguf(src, plan, meta, OUTTYPES[outtype][1])
            del plan, weights
            with atomic_path(out_path) as tmp:
                log = _llama_quantize(src, tmp, quant, threads)
    else:
        with atomic_path(out_path) as tmp:
            _write_gguf(tmp, plan, meta, ftype_name)
    described = describe_gguf(out_path)
    if quantizer == "llama.cpp":
        fallbacks = k_quant_fallbacks(log, described["tensors"])
    info = {
        "source": str(model_dir),
        "file": out_path.name,
        "outtype": outtype,
        "quant": quant,
        "quantizer": quantizer or None,
        "fallbacks": fallbacks,
        **described,
    }
    info["summary"] = summary(quant or outtype, info)
    write_text(out_path.parent / "Modelfile", text)
    write_json(out_path.parent / INFO_FILE, info)
    return out_path


def _write_gguf(path: Path, plan, meta, ftype_name: str) -> None:
    import gguf

    config, name, tokens, types, sv, pre = meta
    arch = gguf.MODEL_ARCH[ARCHS[config["model_type"]]]
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch])
    _add_hparams(writer, config, name, int(gguf.LlamaFileType[ftype_name]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    sv.add_to_gguf(writer, quiet=True)
    for gname, w, qtype in plan:
        shape, dtype, nbytes = _tensor_info(w, qtype)
        writer.add_tensor_info(gname, shape, dtype, nbytes, raw_dtype=gguf.GGMLQuantizationType[qtype])
    try:
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # One tensor at a time: a 3B model is never held twice in memory.
        for _, w, qtype in plan:
            writer.write_tensor_data(_to_numpy(w, qtype))
    finally:
        writer.close()


# ------------------------------------------------------------------ llama.cpp's quantizer


def _llama_cpp(quant: str):
    try:
        import llama_cpp
    except ImportError:
        raise UserError(
            f"--quant {quant} needs llama.cpp's quantizer: pip install -e '.[gguf]' "
            "(llama-cpp-python; Q8_0/Q5_1/Q5_0/Q4_1/Q4_0 work without it)"
        ) from None
    return llama_cpp


def _llama_quantize(src: Path, dst: Path, quant: str, threads: int) -> str:
    """``llama_model_quantize(src -> dst)``; returns llama.cpp's log of the run."""
    import gguf

    llama_cpp = _llama_cpp(quant)
    from llama_cpp._logger import llama_log_callback as default_callback

    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        chunks.append(text.decode("utf-8", "replace"))

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType[QUANTS[quant][1]])
    params.nthread = threads
    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(default_callback, ctypes.c_void_p(0))
    log = "".join(chunks)
    if rc != 0:
        last = " ".join(line for line in log.splitlines() if "error" in line.lower())[-300:]
        raise UserError(f"llama.cpp could not quantize to {quant} (code {rc}){': ' + last if last else ''}")
    return log


# llama.cpp's tensor_type_fallback warning (src/llama-quant.cpp):
# "warning: NAME - ncols N not divisible by K (required for type T) [...] -> falling back to U"
_FALLBACK_RE = re.compile(
    r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by\s+(\d+) \(required for type\s+(\w+)\)"
    r"[^\n]*?-> falling back to\s+(\w+)"
)


def llama_cpp_fallbacks(log: str) -> list[dict[str, Any]]:
    """The tensors llama.cpp's quantizer gave another type than it wanted, from its log."""
    return [
        {"tensor": m[1], "ncols": int(m[2]), "block": int(m[3]), "wanted": m[4].upper(),
         "used": m[5].upper()}
        for m in _FALLBACK_RE.finditer(log)
    ]


# ------------------------------------------------------------------ what a GGUF file holds


def describe_gguf(path: str | Path) -> dict[str, Any]:
    """Size, file type and tensors (type, ggml shape: ``ne0`` = row length first) of a GGUF
    file, read back with ``gguf.GGUFReader``."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(path)
    ftype = int(reader.fields["general.file_type"].contents())
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if len(t.shape) > 1:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    params = sum(int(t.n_elements) for t in reader.tensors)
    data = sum(int(t.n_bytes) for t in reader.tensors)
    size = path.stat().st_size
    return {
        "bytes": size,
        "size_mib": round(size / 2**20, 3),
        "file_type": gguf.LlamaFileType(ftype).name,
        "parameters": params,
        "bits_per_weight": round(8 * data / params, 3),
        "matrix_types": dict(sorted(counts.items())),
        "tensors": {t.name: {"type": t.tensor_type.name, "shape": [int(n) for n in t.shape]}
                    for t in reader.tensors},
    }


def k_quant_fallbacks(log: str, tensors: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every matrix of a K-quant file that holds no K-quant because its rows are not a multiple
    of the 256-value block: the ones llama.cpp's log names (``wanted`` = the type it wanted)
    and the ones it typed without a warning (the output matrix: Q8_0; ``wanted`` None)."""
    import gguf

    block = gguf.QK_K
    falls = {f["tensor"]: f for f in llama_cpp_fallbacks(log)}
    for name, t in tensors.items():
        ncols = t["shape"][0]
        if len(t["shape"]) > 1 and ncols % block and name not in falls and t["type"] not in K_TYPES:
            falls[name] = {"tensor": name, "ncols": ncols, "block": block, "wanted": None,
                           "used": t["type"]}
    return [falls[n] for n in tensors if n in falls]


def summary(kind: str, info: dict[str, Any]) -> str:
    """One line: what the file holds for the asked type or quant, fallbacks named."""
    counts = info["matrix_types"]
    n = sum(counts.values())
    mix = ", ".join(f"{t} {c}" for t, c in counts.items())
    line = f"{kind.upper()}: {n} matrices ({mix}), {info['size_mib']:.2f} MiB, {info['bits_per_weight']:.2f} bits/weight"
    falls = info["fallbacks"]
    if kind in QUANTS and QUANTS[kind][0] == "llama.cpp":
        k = sum(c for t, c in counts.items() if t in K_TYPES)
        line += f"; K-quants on {k} of {n}"
    if falls:
        ncols = sorted({f["ncols"] for f in falls})
        used = sorted({f"{f['wanted']}->{f['used']}" if f["wanted"] else f["used"] for f in falls})
        line += (f"; {len(falls)} fell back ({', '.join(used)}): rows of {'/'.join(map(str, ncols))} "
                 f"columns are not a multiple of the {falls[0]['block']}-value block")
    return line
