"""MLX model dirs: checking, resolving, loading (with adapters), base-model identity, and the
one greedy answering function that evaluation, ``ape-finetune generate`` and the agent use.

An adapter remembers which base it was trained on (``base_fingerprint`` in its
``adapter_config.json``); applying it to another base is an error instead of garbage output.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from apeagent.errors import UserError, reading

_ARCH_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def check_model_dir(path: str | Path) -> Path:
    """A local model dir that mlx-lm can load, checked before loading: config.json (a JSON
    object) of an architecture mlx-lm supports, with the keys that architecture needs, and
    safetensors weights whose sizes match their headers (:func:`check_safetensors`)."""
    if not str(path):
        raise UserError("no model given")
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not an MLX model dir (no config.json)")
    weights = sorted(path.glob("model*.safetensors"))
    if not weights:
        raise UserError(f"{path}: not an MLX model dir (no model*.safetensors weights)")
    check_architecture(read_config(path), path / "config.json")
    for wf in weights:
        check_safetensors(wf)
    return path


def read_config(model_dir: str | Path) -> dict:
    """A model dir's config.json, a JSON object (a UserError names it otherwise)."""
    cfg_path = Path(model_dir) / "config.json"
    with reading(cfg_path, "model config"):
        text = cfg_path.read_text(encoding="utf-8")
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(config, dict):
        raise UserError(f"{cfg_path}: not a JSON object")
    return config


def check_architecture(config: dict, where: Path) -> None:
    """``model_type`` names an architecture mlx-lm has (its own remapping applied, as
    ``mlx_lm.utils._get_classes`` does), and config.json holds what its ``ModelArgs`` needs."""
    import importlib

    from mlx_lm.utils import MODEL_REMAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type.isidentifier():
        raise UserError(f"{where}: model_type {model_type!r} is not an architecture name")
    name = MODEL_REMAPPING.get(model_type, model_type)
    try:
        arch = importlib.import_module(f"mlx_lm.models.{name}")
    except ImportError:
        raise UserError(f"{where}: model_type {model_type!r}: an architecture mlx-lm does not support") from None
    try:
        arch.ModelArgs.from_dict(config)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{where}: not a valid {model_type} config for mlx-lm ({e})") from None


DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


def check_safetensors(path: str | Path, what: str = "weights") -> Path:
    """A safetensors file whose header is valid and whose tensors' sizes match the file (a
    truncated download or copy fails here, naming the file, not inside MLX's loader)."""
    path = Path(path)
    with reading(path, what), open(path, "rb") as f:
        size = path.stat().st_size
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise UserError(f"{what} {path}: not a safetensors file (no header; truncated?)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise UserError(f"{what} {path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise UserError(f"{what} {path}: not a safetensors file (its header is not an object)")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = (int(x) for x in t["data_offsets"])
            count = 1
            for d in t["shape"]:
                count *= int(d)
            width = DTYPE_BYTES.get(t["dtype"])
        except (TypeError, KeyError, ValueError):
            raise UserError(f"{what} {path}: tensor {name!r} has a malformed header entry") from None
        if (width is not None and hi - lo != count * width) or not 0 <= lo <= hi:
            raise UserError(f"{what} {path}: tensor {name!r}: its data size does not match its shape")
        end = max(end, hi)
    if 8 + n + end != size:
        raise UserError(f"{what} {path}: {size} bytes, its header says {8 + n + end} (truncated or damaged)")
    return path


# what a hub download may fetch: configs, tokenizer files, safetensors weights; never code
# (``*.py``: a repo's modelling code would run with trust_remote_code) nor pickles
HUB_FILES = ["*.json", "model*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


def resolve_model(name_or_path: str | Path) -> Path:
    """A local model dir, or a Hugging Face repo id fetched into the HF cache (as mlx_lm.load
    does). ``org/name@revision`` pins the download to that commit (or tag); the preset says
    which. Only :data:`HUB_FILES` are fetched."""
    p = Path(name_or_path)
    text = str(name_or_path)
    if not text:
        raise UserError("no model given")
    # "org/name" that is not a local path is a hub id; anything else is a local dir.
    if p.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        return check_model_dir(p)
    repo, _, revision = text.partition("@")
    if "@" in text and not revision:
        raise UserError(f"model {text!r}: empty revision after '@'")
    try:
        from huggingface_hub import snapshot_download

        return check_model_dir(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - any hub failure is "not available"
        raise UserError(
            f"model {text!r}: not a local dir and not downloadable ({e})"
        ) from None


def fingerprint(model_dir: str | Path) -> str:
    """Identity of a base model: architecture keys, weight names/shapes and a weight sample.

    Reads the safetensors headers and the first 64 KiB of tensor data, so it is cheap even for
    a 6 GB checkpoint, and tells apart two models of the same architecture.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    h = hashlib.sha256(json.dumps({k: config.get(k) for k in _ARCH_KEYS}, sort_keys=True).encode())
    for wf in sorted(model_dir.glob("model*.safetensors")):
        with open(wf, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            h.update(json.dumps(header, sort_keys=True).encode())
            h.update(f.read(1 << 16))
    return h.hexdigest()[:16]


def arch_of(model_dir: str | Path) -> dict:
    config = read_config(model_dir)
    return {k: config.get(k) for k in _ARCH_KEYS}


def check_adapter(adapter_dir: str | Path, model_dir: str | Path) -> Path:
    """The adapter dir exists, is complete and was trained on ``model_dir``'s base."""
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise UserError(f"adapter directory not found: {adapter_dir}")
    for f in (cfg_path, adapter_dir / "adapters.safetensors"):
        if not f.is_file():
            raise UserError(f"{f}: missing (not an mlx-lm adapter directory)")
    check_safetensors(adapter_dir / "adapters.safetensors", "adapters")
    try:
        with reading(cfg_path, "adapter config"):
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path}: not a JSON object")
    base_arch = arch_of(model_dir)
    if cfg.get("base_arch") and cfg["base_arch"] != base_arch:
        diff = {
            k: (cfg["base_arch"].get(k), base_arch.get(k))
            for k in base_arch
            if cfg["base_arch"].get(k) != base_arch.get(k)
        }
        raise UserError(
            f"{cfg_path}: adapter was trained on another base model than {model_dir} "
            f"(adapter vs model: {diff})"
        )
    want = cfg.get("base_fingerprint")
    if want and want != fingerprint(model_dir):
        raise UserError(
            f"{cfg_path}: adapter was trained on another base model than {model_dir} "
            f"(base fingerprint {want}, this model {fingerprint(model_dir)})"
        )
    return adapter_dir


def load(model_dir: str | Path, adapter_dir: str | Path | None = None):
    """``mlx_lm.load`` with clear errors; returns (model, tokenizer)."""
    import mlx_lm

    model_dir = check_model_dir(model_dir)
    if adapter_dir is not None:
        check_adapter(adapter_dir, model_dir)
    from finetune_mlx.quant_cpu import use_sgemm

    try:
        model, tokenizer = mlx_lm.load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
    except ValueError as e:
        where = adapter_dir if adapter_dir is not None else model_dir
        raise UserError(f"{where}: {e}") from None
    use_sgemm(model)  # a quantized model on the CPU: prefill at sgemm speed
    return model, tokenizer


def common_prefix(seqs: list[list[int]]) -> list[int]:
    """The longest run of token ids every sequence starts with."""
    first = list(seqs[0]) if seqs else []
    n = min((len(s) for s in seqs), default=0)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs):
            return first[:i]
    return first[:n]


class PrefixCache:
    """mlx-lm's prompt cache holding the keys and values of a fixed prompt prefix (the system
    prompt and the fixed head of the user prompt): a prompt that starts with those token ids
    prefills only its rest, and after the answer the cache is trimmed back to the prefix. A
    prompt that does not start with them is answered without it (the ids are compared, never
    assumed). Prefilling in two parts can flip a near-tie token, rarely; bench_agent_backtest
    counts the decisions that differ."""

    def __init__(self, model, prefix: list[int]):
        import mlx.core as mx
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache

        self.cache = make_prompt_cache(model)
        self.ids = list(prefix) if can_trim_prompt_cache(self.cache) else []
        self.hits = self.misses = 0
        if self.ids:
            model(mx.array([self.ids]), cache=self.cache)
            mx.eval([c.state for c in self.cache])

    def split(self, ids: list[int]) -> tuple[list[int], list | None]:
        """(the ids left to prefill, the cache to prefill them into, or None: no cache)."""
        n = len(self.ids)
        if n and len(ids) > n and list(ids[:n]) == self.ids:
            self.hits += 1
            return list(ids[n:]), self.cache
        self.misses += 1
        return list(ids), None

    def rewind(self) -> None:
        from mlx_lm.models.cache import trim_prompt_cache

        trim_prompt_cache(self.cache, self.cache[0].offset - len(self.ids))


def answer(
    model, tokenizer, prompt: list[dict] | list[int], max_tokens: int, sampler=None,
    prefix: PrefixCache | None = None,
) -> dict[str, Any]:
    """One answer (greedy unless ``sampler``) to chat messages or prompt token ids, with its
    token count, tokens/s, latency and finish reason; ``prefix``: the cached prefix's keys and
    values are reused when the prompt starts with it."""
    from mlx_lm import stream_generate

    if prompt and isinstance(prompt[0], dict):
        prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
    rest, cache = prefix.split(prompt) if prefix is not None else (prompt, None)
    text, last = "", None
    t0 = time.perf_counter()
    try:
        for last in stream_generate(model, tokenizer, rest, max_tokens=max_tokens, sampler=sampler,
                                    prompt_cache=cache):
            text += last.text
    finally:
        if cache is not None:
            prefix.rewind()
    return {
        "text": text,
        "tokens": last.generation_tokens if last else 0,
        "tokens_per_second": last.generation_tps if last else 0.0,
        "latency_s": time.perf_counter() - t0,
        "finish_reason": last.finish_reason if last else None,
    }


def answers(
    model, tokenizer, prompts: list[list[dict]], max_tokens: int, batch_size: int = 1, on_done=None
) -> list[dict[str, Any]]:
    """Greedy answers to many chat prompts, as :func:`answer`'s dicts, in order.

    ``batch_size`` 1 answers one at a time; more goes through mlx-lm's batch generation
    (``batch_generate``: a CPU decodes many sequences in the time of a few, since one token of
    one sequence reads every weight). Padding can flip a near-tie token, rarely.
    """
    if batch_size <= 1:
        out = []
        for msgs in prompts:
            out.append(answer(model, tokenizer, msgs, max_tokens))
            if on_done:
                on_done(1)
        return out
    from mlx_lm.generate import batch_generate

    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = [tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=False)
                 for m in prompts[i : i + batch_size]]
        t0 = time.perf_counter()
        resp = batch_generate(model, tokenizer, chunk, max_tokens=max_tokens,
                              completion_batch_size=batch_size, prefill_batch_size=batch_size,
                              return_token_ids=True)
        dt = time.perf_counter() - t0
        for text, ids in zip(resp.texts, resp.token_ids, strict=True):
            out.append({
                "text": text,
                "tokens": len(ids),
                "tokens_per_second": resp.stats.generation_tps,
                "latency_s": dt / len(chunk),
                "finish_reason": "length" if len(ids) >= max_tokens else "stop",
            })
        if on_done:
            on_done(len(chunk))
    return out
