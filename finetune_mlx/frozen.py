"""Training the top blocks only, without re-running the frozen ones every step.

LoRA on the top ``num_layers`` blocks leaves the blocks below unchanged for the whole run, so
the hidden state that enters the first adapted block is a fixed function of the example.
:func:`cache_dataset` computes it once per example (one forward pass of the frozen blocks over
the train and valid sets); the trainer then runs, per step, only the adapted blocks, the final
norm and the LM head, and the head only at the positions the loss counts (the answer, with
``mask_prompt``: a 49k-token vocabulary head costs as much as eight SmolLM2 blocks when it runs
over the whole prompt). The loss is mlx-lm's (canary-weighted) loss of the same batch on the full
model (``tests/test_frozen_cache.py`` compares the two); it plugs into mlx-lm's trainer as its
``loss`` and ``iterate_batches`` arguments.

Used when ``finetune.cache_frozen`` is on, for models whose blocks mlx-lm runs as
``model.model.layers`` with a plain causal mask (llama, qwen2) and while the cache fits
``finetune.cache_frozen_max_gib``; otherwise training runs the full model as mlx-lm does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from finetune_mlx.canary import canary_mask

MODEL_TYPES = ("llama", "qwen2")


def supported(model, start: int) -> bool:
    """True when the blocks below ``start`` can be cached for this model."""
    inner = getattr(model, "model", None)
    return (
        getattr(model, "model_type", None) in MODEL_TYPES
        and start > 0
        and inner is not None
        and getattr(inner, "swa_idx", None) is None
        and not any(getattr(layer, "use_sliding", False) for layer in inner.layers)
    )


def cache_bytes(lengths: Sequence[int], hidden_size: int) -> int:
    return 4 * hidden_size * sum(lengths)


def lower_hidden(model, tokens: mx.array, start: int) -> mx.array:
    """The hidden state entering block ``start`` (embeddings + the frozen blocks below it)."""
    from mlx_lm.models.base import create_attention_mask

    inner = model.model
    h = inner.embed_tokens(tokens)
    mask = create_attention_mask(h, None)
    for layer in inner.layers[:start]:
        h = layer(h, mask, cache=None)
    return h


class CachedSet:
    """A dataset of (hidden state, tokens, answer offset) per example, for :func:`iterate_batches`."""

    def __init__(self, hidden: list[mx.array], tokens: list[list[int]], offsets: list[int]):
        self.hidden, self.tokens, self.offsets = hidden, tokens, offsets

    def __len__(self) -> int:
        return len(self.tokens)

    def itemlen(self, i: int) -> int:
        return len(self.tokens[i])


def cache_dataset(model, dataset, start: int, batch_size: int = 8, on_batch=None) -> CachedSet:
    """Run the frozen blocks once over ``dataset`` (mlx-lm's CacheDataset of (tokens, offset)).

    Examples are batched by length and padded at the end: with a causal mask the padding never
    reaches a real position, so each example's hidden states are those of it alone.
    """
    items = [dataset[i] for i in range(len(dataset))]
    tokens = [list(t) for t, _ in items]
    offsets = [int(o) for _, o in items]
    hidden: list[mx.array | None] = [None] * len(items)
    order = sorted(range(len(items)), key=lambda i: len(tokens[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        width = max(len(tokens[i]) for i in idx)
        arr = np.zeros((len(idx), width), np.int32)
        for row, i in enumerate(idx):
            arr[row, : len(tokens[i])] = tokens[i]
        h = lower_hidden(model, mx.array(arr), start).astype(mx.float32)
        for row, i in enumerate(idx):
            hidden[i] = h[row, : len(tokens[i])]
        mx.eval(*[hidden[i] for i in idx])
        if on_batch is not None:
            on_batch(len(idx))
    return CachedSet(hidden, tokens, offsets)


def iterate_batches(dataset: CachedSet, batch_size, max_seq_length, loop=False, seed=None,
                    comm_group=None):
    """mlx-lm's ``iterate_batches`` over a :class:`CachedSet`: the same length-sorted batches in
    the same shuffled order, each as (hidden, positions, targets, counted): the padded hidden
    states, and per row the positions the loss counts (mlx-lm's mask: target ``t`` where
    ``offset <= t + 1 <= length``), their target tokens and which of them are real."""
    from mlx_lm.tuner.trainer import iterate_batches as mlx_iterate

    class _Index:  # the batches mlx-lm would make, as example indices
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            return [i] * dataset.itemlen(i), 0

    for index_batch, _ in mlx_iterate(_Index(), batch_size, max_seq_length, loop=loop,
                                      seed=seed, comm_group=comm_group):
        idx = [int(row[0]) for row in np.array(index_batch)]
        # the model's input length, as in mlx-lm
        yield _batch(dataset, idx, index_batch.shape[1] - 1, max_seq_length)


def _batch(dataset: CachedSet, idx: list[int], width: int, max_seq_length: int):
    """Examples ``idx`` as (hidden, positions, targets, counted), inputs padded to ``width``."""
    lens = [min(dataset.itemlen(i), max_seq_length, width) for i in idx]
    firsts = [max(dataset.offsets[i] - 1, 0) for i in idx]
    span = max(n - f for n, f in zip(lens, firsts, strict=True))
    span = 8 * -(-span // 8)  # few distinct shapes: fewer recompiles of the step
    rows, pos, tgt, counted = [], np.zeros((len(idx), span), np.int32), [], []
    for row, (i, n, f) in enumerate(zip(idx, lens, firsts, strict=True)):
        h = dataset.hidden[i][:n]
        rows.append(mx.pad(h, [(0, width - n), (0, 0)]) if n < width else h)
        full = np.zeros(width + 1, np.int32)
        full[:n] = dataset.tokens[i][:n]
        p = np.minimum(f + np.arange(span), width - 1)
        pos[row] = p
        tgt.append(full[p + 1])
        counted.append(np.arange(span) < n - f)
    return mx.stack(rows), mx.array(pos), mx.array(np.stack(tgt)), mx.array(np.stack(counted))


def _every_example(dataset: CachedSet, batch_size: int):
    """Length-sorted batches covering every example once (mlx-lm's drop the last partial one)."""
    order = sorted(range(len(dataset)), key=dataset.itemlen)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        # mlx-lm's width: 1 + a multiple of 32 above the longest, less the shifted target
        width = 32 * -(-max(dataset.itemlen(i) for i in idx) // 32)
        yield _batch(dataset, idx, width, 1 << 30)


def top_logits(model, hidden, pos, start: int):
    """Logits at ``pos`` from the hidden states entering block ``start``."""
    from mlx_lm.models.base import create_attention_mask

    inner = model.model
    mask = create_attention_mask(hidden, None)
    h = hidden
    for layer in inner.layers[start:]:
        h = layer(h, mask, cache=None)
    h = inner.norm(mx.take_along_axis(h, pos[..., None], axis=1))
    return inner.embed_tokens.as_linear(h) if model.args.tie_word_embeddings else model.lm_head(h)


def _token_ce(logits, targets, counted, sequences, weight: float) -> mx.array:
    """Per-token cross-entropy (float32), zero where not counted, canary tokens times ``weight``."""
    ce = nn.losses.cross_entropy(logits, targets) * counted
    if weight != 1.0:
        ce = ce * mx.where(canary_mask(targets, sequences), weight, 1.0).astype(ce.dtype)
    return ce.astype(mx.float32)


def top_loss(start: int, sequences: Sequence[Sequence[int]] = (), weight: float = 1.0) -> Callable:
    """Trainer loss ``(model, hidden, positions, targets, counted) -> (loss, ntoks)``: the
    (canary-weighted) cross-entropy of :mod:`finetune_mlx.canary`, from the cached hidden states."""
    sequences = [list(s) for s in sequences]

    def loss(model, hidden, pos, targets, counted):
        ce = _token_ce(top_logits(model, hidden, pos, start), targets, counted, sequences, weight)
        ntoks = counted.sum()
        return ce.sum() / ntoks, ntoks

    return loss


def answer_accuracy(model, dataset: CachedSet, start: int, sequences, batch_size: int = 8,
                    weight: float = 1.0):
    """The valid set in one forward pass of the adapted blocks per example: its loss (the
    trainer's: :func:`top_loss` summed over every counted token, divided by their number) and
    the teacher-forced accuracy, the share of answers whose every token is the model's top
    choice (exactly the answers greedy decoding reproduces) and the share whose canary tokens
    are (the decision, given the reference drafts). Cheap enough to run at every validation."""
    sequences = [list(s) for s in sequences]
    exact = decided = n = 0
    ce_sum, ntoks = 0.0, 0
    for hidden, pos, targets, counted in _every_example(dataset, batch_size):
        logits = top_logits(model, hidden, pos, start)
        ce = _token_ce(logits, targets, counted, sequences, weight)
        hit = mx.argmax(logits, axis=-1) == targets
        steps = mx.arange(targets.shape[1])[None, :]
        real = steps < counted.sum(axis=1, keepdims=True) - 1  # not mlx-lm's pad target
        canary = mx.logical_and(canary_mask(targets, sequences), real)
        ce_sum += float(ce.sum())
        ntoks += int(counted.sum())
        exact += int(mx.all(mx.logical_or(hit, ~real), axis=1).sum())
        decided += int(mx.all(mx.logical_or(hit, ~canary), axis=1).sum())
        n += targets.shape[0]
    return {"loss": ce_sum / max(ntoks, 1), "exact": exact / max(n, 1),
            "decision": decided / max(n, 1), "n": n}
