"""Canary-weighted cross-entropy, a drop-in ``loss`` for ``mlx_lm.tuner.trainer.train``.

The decision in an answer is two or three tokens (``APE IN`` ...) among dozens of draft
tokens; weighing them ``w`` times makes the student learn the canary words first. mlx-lm's
YAML has no such option (a ``token_weighting`` section is silently ignored), so it is passed
to the trainer as its loss function.

    loss = sum_t(mask_t * w_t * ce_t) / sum_t(mask_t),   w_t = w on canary tokens, else 1

The normaliser is the unweighted token count, so with ``w = 1`` this is mlx-lm's
``default_loss`` bit for bit, and with ``w > 1`` the gradient through a canary token is exactly
``w`` times what it would be (the other tokens' gradients are unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn

CANARY_PHRASES = ("APE IN", "APE OUT", "APE NEUTRAL")


# Where canaries occur in answers; the token ids of a phrase can depend on its neighbours
# (a tokenizer may merge "#### APE" or "IN " into one token), so each context is tokenized.
_CONTEXTS = ("\n#### {} 0.25 ETH", "\n#### {}", "#### {}\n", " {} ", " {}", "{}")


def canary_token_sequences(tokenizer, phrases: Sequence[str] = CANARY_PHRASES) -> list[list[int]]:
    """Token id sequences that spell a canary phrase in the contexts answers use.

    Each sequence is the run of tokens overlapping the phrase's characters (found with the
    fast tokenizer's offsets). For Qwen2's tokenizer that is ``[" APE", " IN"]``.
    """
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    seqs: list[list[int]] = []
    for phrase in phrases:
        for ctx in _CONTEXTS:
            text = ctx.format(phrase)
            start = text.index(phrase)
            end = start + len(phrase)
            enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = [
                i
                for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
                if a < end and b > start
            ]
            if ids and ids not in seqs:
                seqs.append(ids)
    return seqs


def canary_mask(targets: mx.array, sequences: Sequence[Sequence[int]]) -> mx.array:
    """1 where a target token is part of an occurrence of one of ``sequences``, else 0.

    Shapes stay static (shifted comparisons), so it works inside ``mx.compile``.
    """
    b, t = targets.shape
    hit = mx.zeros((b, t), dtype=mx.bool_)
    for seq in sequences:
        n = len(seq)
        if n == 0 or n > t:
            continue
        padded = mx.concatenate([targets, mx.full((b, n), -1, dtype=targets.dtype)], axis=1)
        start = mx.ones((b, t), dtype=mx.bool_)
        for k, tok in enumerate(seq):
            start = mx.logical_and(start, padded[:, k : k + t] == tok)
        # Spread each match start over the n positions it covers.
        start_p = mx.concatenate([mx.zeros((b, n), dtype=mx.bool_), start], axis=1)
        for k in range(n):
            hit = mx.logical_or(hit, start_p[:, n - k : n - k + t])
    return hit


def weighted_loss(sequences: Sequence[Sequence[int]], weight: float = 2.5) -> Callable:
    """A trainer loss ``(model, batch, lengths) -> (loss, ntoks)`` weighting canary tokens."""
    sequences = [list(s) for s in sequences]

    def loss(model, batch, lengths):
        inputs = batch[:, :-1]
        targets = batch[:, 1:]
        logits = model(inputs)
        steps = mx.arange(1, targets.shape[1] + 1)
        mask = mx.logical_and(steps >= lengths[:, 0:1], steps <= lengths[:, 1:])
        ce = nn.losses.cross_entropy(logits, targets) * mask
        if weight != 1.0:
            w = mx.where(canary_mask(targets, sequences), weight, 1.0).astype(ce.dtype)
            ce = ce * w
        ntoks = mask.sum()
        ce = ce.astype(mx.float32).sum() / ntoks
        return ce, ntoks

    return loss


def make_loss(tokenizer, weight: float) -> Callable:
    """mlx-lm's default loss for ``weight == 1``, else the canary-weighted one."""
    if weight == 1.0:
        from mlx_lm.tuner.trainer import default_loss

        return default_loss
    return weighted_loss(canary_token_sequences(tokenizer), weight)
