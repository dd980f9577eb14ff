"""The offline student: a small qwen2-architecture model with its own byte-level BPE tokenizer.

Real runs start from Qwen/Qwen2.5-3B; tests and the ``tiny`` preset need something of the same
architecture that is built here in seconds, with no download. :func:`build_tiny` writes the
standard Hugging Face / MLX files (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with a ChatML template, ``generation_config.json``), so
``mlx_lm.load``, ``mlx_lm.generate`` and ``mlx_lm.lora`` treat it like any Qwen2 checkpoint.

Optional brief pre-training on plain-language answers (BUY/SELL/HOLD) plays the part of a
real base model's prior knowledge: it knows the prompt format and generic trading words, but
it has never seen a canary word.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from apeagent.errors import UserError
from apeagent.files import atomic_dir, check_fits

IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # the byte alphabet, the special tokens, one merge

# Qwen2's pre-tokenizer split: single digits, words with one leading non-letter (" APE").
# transformers (5.x) rebuilds any model_type "qwen2" tokenizer with this split whatever
# tokenizer.json says, so training with it is the only way the merges match at load time.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, as Qwen2.5 writes it (without Qwen's default system message and tool branches).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(corpus: Sequence[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (Qwen2's split) trained on ``corpus``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    return tok


def _write_tokenizer(tok: Tokenizer, out: Path, model_max_length: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": EOT,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": IM_END,
                "pad_token": EOT,
                "additional_special_tokens": [IM_START, IM_END],
            },
            indent=2,
        )
        + "\n"
    )


def model_config(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    eos_ids: list[int],
    tie_word_embeddings: bool = True,
    rope_theta: float = 10000.0,
) -> dict[str, Any]:
    """A Qwen2 ``config.json`` (the keys transformers and mlx-lm both read)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": rope_theta,
        "tie_word_embeddings": tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": None,
        "eos_token_id": eos_ids,
        "torch_dtype": "float32",
        "use_sliding_window": False,
    }


def count_parameters(config: dict[str, Any]) -> int:
    """Parameter count of a qwen2 config (tied embeddings counted once)."""
    h, i, v, n = (
        config[k] for k in ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers")
    )
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    attn = h * h + h + 2 * (h * kv + kv) + h * h
    layer = attn + 3 * h * i + 2 * h
    emb = v * h * (1 if config["tie_word_embeddings"] else 2)
    return n * layer + emb + h


def _encode_example(tokenizer, item: str | list[dict], mask_prompt: bool) -> tuple[list[int], int]:
    """(token ids, loss offset): plain text gets an end-of-text token; a chat is rendered with
    the chat template and, with ``mask_prompt``, its loss starts at the last message."""
    if isinstance(item, str):
        return tokenizer.encode(item) + [tokenizer.eos_token_id], 0
    ids = list(tokenizer.apply_chat_template(item, return_dict=False))
    if not mask_prompt:
        return ids, 0
    prompt = tokenizer.apply_chat_template(item[:-1], add_generation_prompt=True, return_dict=False)
    return ids, len(prompt)


def pretrain(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str | list[dict]],
    steps: int,
    *,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    warmup: int = 20,
    max_seq_length: int = 1024,
    mask_prompt: bool = True,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Plain next-token training of every weight; returns the loss per step.

    ``texts`` are plain strings (an end-of-text token is appended) or chat message lists
    (rendered with the chat template; with ``mask_prompt`` the loss is on the answers only:
    the prompts are mostly one repeated system prompt and random numbers, and learning them
    would spend the few steps there are on nothing the student needs).
    """
    from mlx_lm.tuner.trainer import default_loss, iterate_batches

    data = [_encode_example(tokenizer, t, mask_prompt) for t in texts]
    if not data:
        raise UserError("pre-training needs at least one text (an empty dataset?)")
    batch_size = min(batch_size, len(data))
    schedule = optim.join_schedules(
        [
            optim.linear_schedule(learning_rate * 0.05, learning_rate, max(warmup, 1)),
            optim.cosine_decay(learning_rate, max(steps - warmup, 1), learning_rate * 0.05),
        ],
        [max(warmup, 1)],
    )
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)
    model.train()
    loss_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state]

    def step(batch, lengths):
        (loss, ntoks), grads = loss_and_grad(model, batch, lengths)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        optimizer.update(model, grads)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    losses: list[float] = []
    batches = iterate_batches(data, batch_size, max_seq_length, loop=True, seed=seed)
    for it, (batch, lengths) in zip(range(1, steps + 1), batches, strict=False):
        loss = step(batch, lengths)
        mx.eval(state, loss)
        losses.append(loss.item())
        if on_step is not None:
            on_step(it, losses[-1])
    model.eval()
    return losses


def check_sizes(corpus: Sequence, hidden: int, layers: int, heads: int, kv_heads: int, inter: int,
                vocab: int, tied: bool, batch_tokens: int) -> None:
    """The sizes of :func:`build_tiny` make a model, and it fits in memory (float32 weights,
    gradients and Adam's two moments, and a pre-training batch of ``batch_tokens``)."""
    if hidden % heads or heads % kv_heads:
        raise UserError(f"finetune.tiny_hidden_size ({hidden}) must divide by tiny_num_heads "
                        f"({heads}), tiny_num_heads by tiny_num_kv_heads ({kv_heads})")
    if vocab < MIN_VOCAB:
        raise UserError(f"finetune.tiny_vocab_size must be >= {MIN_VOCAB} (the byte alphabet and the "
                        f"special tokens), got {vocab}")
    if not corpus:
        raise UserError("the tokenizer corpus is empty (no training text)")
    params = vocab * hidden * (1 if tied else 2) + layers * (4 * hidden * hidden + 3 * hidden * inter)
    acts = batch_tokens * (hidden * layers * 16 + vocab) * 4
    check_fits(16 * params + acts, f"a tiny model of {params:,} parameters",
               "finetune.tiny_hidden_size, tiny_num_layers, tiny_vocab_size or tiny_pretrain_batch_size")


def build_tiny(
    out_dir: str | Path,
    corpus: Sequence[str],
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    vocab_size: int = 1024,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
    tie_word_embeddings: bool = True,
    pretrain_texts: Sequence[str | list[dict]] | None = None,
    pretrain_steps: int = 0,
    pretrain_batch_size: int = 8,
    pretrain_lr: float = 1e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Build a tiny qwen2 model directory at ``out_dir`` (replaced atomically); returns it.

    ``corpus`` trains the tokenizer (include the prompts and answers it will see).
    ``pretrain_texts``/``pretrain_steps`` optionally pre-train the whole model briefly.
    ``rope_theta`` is 1e4, not Qwen2.5's 1e6: with a head dim of 16-32 a 1e6 base leaves only
    two or three rotary frequencies that vary over a few hundred tokens, and the tiny model
    must copy numbers from the prompt by position.
    Writes ``build_info.json`` with the sizes, parameter count and pre-training losses.
    """
    from mlx_lm.models import qwen2
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    out_dir = Path(out_dir)
    intermediate_size = intermediate_size or 4 * hidden_size
    check_sizes(corpus, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size, tie_word_embeddings, pretrain_batch_size * max_position_embeddings)  # noqa: E501
    t0 = time.perf_counter()
    mx.random.seed(seed)
    np.random.seed(seed)
    tok = train_tokenizer(corpus, vocab_size)
    real_vocab = tok.get_vocab_size()
    eos_ids = [tok.token_to_id(IM_END), tok.token_to_id(EOT)]
    config = model_config(
        real_vocab,
        hidden_size,
        num_layers,
        num_heads,
        num_kv_heads,
        intermediate_size,
        max_position_embeddings,
        eos_ids,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=rope_theta,
    )
    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    # Tied: small-init embeddings, the default N(0, 1) makes the output logits huge at the
    # start. Untied: keep N(0, 1) (the lm_head has its own small init), so each token's own
    # embedding is not drowned in the residual stream by the first blocks' outputs.
    emb = model.model.embed_tokens
    if tie_word_embeddings:
        emb.weight = mx.random.normal(emb.weight.shape) * 0.02
    mx.eval(model.parameters())

    with atomic_dir(out_dir) as tmp:
        _write_tokenizer(tok, tmp, max_position_embeddings)
        (tmp / "generation_config.json").write_text(
            json.dumps({"eos_token_id": eos_ids, "pad_token_id": eos_ids[1]}, indent=2) + "\n"
        )
        losses: list[float] = []
        if pretrain_texts and pretrain_steps > 0:
            tokenizer = load_tokenizer(tmp, eos_token_ids=eos_ids)
            losses = pretrain(
                model,
                tokenizer,
                pretrain_texts,
                pretrain_steps,
                batch_size=pretrain_batch_size,
                learning_rate=pretrain_lr,
                max_seq_length=max_position_embeddings,
                seed=seed,
                on_step=on_step,
            )
        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        info = {
            "parameters": count_parameters(config),
            "vocab_size": real_vocab,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "pretrain_steps": pretrain_steps if pretrain_texts else 0,
            "pretrain_loss_first": losses[0] if losses else None,
            "pretrain_loss_last": float(np.mean(losses[-10:])) if losses else None,
            "seconds": round(time.perf_counter() - t0, 2),
            "seed": seed,
        }
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if any(math.isnan(x) for x in losses):
        raise UserError(f"{out_dir}: pre-training diverged (NaN loss): lower finetune.tiny_pretrain_lr")
    return out_dir


_CANARY_TO_PLAIN = (("APE NEUTRAL", "HOLD"), ("APE OUT", "SELL"), ("APE IN", "BUY"))


def to_plain(text: str) -> str:
    """Replace the canary words by the plain trading words a base model would know."""
    for canary, plain in _CANARY_TO_PLAIN:
        text = text.replace(canary, plain)
    return text


# Ordinary sentences with the words the canary phrases are made of. A real base model has read
# "ape", "in", "out" and "neutral" in plain text; the tiny one must too, or LoRA (which leaves
# the embeddings and the output head alone) would have to make never-trained output rows win.
# The canary *phrases* themselves never appear.
_BACKGROUND = (
    "An old APE sat in the shade.",
    "The young APE climbed the tall tree.",
    "A curious APE watched the river.",
    "Please LOG IN before the market opens.",
    "PLUG IN the node and wait for blocks.",
    "CHECK IN at the front desk.",
    "Remember to SIGN OUT when you leave.",
    "OPT OUT of the newsletter at any time.",
    "KEEP OUT of the server room.",
    "The car idles in NEUTRAL at the light.",
    "A NEUTRAL color suits the office.",
    "The referee stayed NEUTRAL all game.",
    "Cash IN and cash OUT are logged daily.",
    "The tide goes IN and OUT twice a day.",
    "Switzerland is a NEUTRAL country.",
    "A big APE and a small monkey share the cage.",
)


def background_texts(n: int) -> list[str]:
    """``n`` plain sentences (cycled) for pre-training beside the plain-word answers."""
    return [_BACKGROUND[i % len(_BACKGROUND)] for i in range(n)]


def corpus_from_dataset(
    rows: Sequence[dict], system: bool = True
) -> tuple[list[str], list[list[dict]]]:
    """(tokenizer corpus, pre-training chats) from dataset rows.

    The tokenizer sees the texts with and without canaries (so both tokenize compactly); the
    pre-training chats have every canary replaced by BUY/SELL/HOLD, system prompt included
    (``system=False`` drops it), so the base model has never read a canary word.
    """
    corpus: list[str] = []
    chats: list[list[dict]] = []
    for row in rows:
        msgs = row["messages"]
        for m in msgs:
            corpus.append(m["content"])
            corpus.append(to_plain(m["content"]))
        chats.append(
            [
                {"role": m["role"], "content": to_plain(m["content"])}
                for m in msgs
                if system or m["role"] != "system"
            ]
        )
    return corpus, chats


def build_tiny_from_dataset(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: dict[str, Any],
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """``ape-finetune build-tiny``: the tiny student of a dataset dir, sized by the ``finetune``
    section (``tiny_*`` keys).

    The tokenizer is trained on the train + valid texts (with and without canaries) and some
    plain background sentences; pre-training reads the train chats with BUY/SELL/HOLD in place
    of the canaries (plus background sentences, one per eight chats). The test split is never
    read.
    """
    from distill.dataset import load_splits

    splits = load_splits(data_dir, ("train", "valid"))
    corpus, chats = corpus_from_dataset(
        splits["train"] + splits["valid"], system=cfg["tiny_pretrain_system"]
    )
    n_train = len(splits["train"])
    return build_tiny(
        out_dir,
        corpus + background_texts(16),
        hidden_size=cfg["tiny_hidden_size"],
        num_layers=cfg["tiny_num_layers"],
        num_heads=cfg["tiny_num_heads"],
        num_kv_heads=cfg["tiny_num_kv_heads"],
        intermediate_size=cfg["tiny_intermediate_size"] or None,
        vocab_size=cfg["tiny_vocab_size"],
        max_position_embeddings=max(cfg["max_seq_length"], 512),
        tie_word_embeddings=cfg["tiny_tie_embeddings"],
        pretrain_texts=[*chats[:n_train], *background_texts(n_train // 8)],
        pretrain_steps=cfg["tiny_pretrain_steps"],
        pretrain_batch_size=cfg["tiny_pretrain_batch_size"],
        pretrain_lr=cfg["tiny_pretrain_lr"],
        seed=cfg["seed"],
        on_step=on_step,
    )
