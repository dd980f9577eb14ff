"""The canary-weighted loss: mlx-lm's default loss at w = 1, w-times gradients on canaries."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
from finetune_fixtures import shared_tiny
from mlx_lm.tuner.trainer import default_loss

from finetune_mlx.canary import canary_mask, canary_token_sequences, make_loss, weighted_loss


def _batch(tok, texts):
    rows = [tok.encode(t) for t in texts]
    width = max(map(len, rows))
    arr = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    lengths = mx.array([[3, len(r)] for r in rows])  # offset 3 masks a "prompt"
    return mx.array(arr), lengths


def test_w1_equals_mlx_lm_default_loss_exactly():
    _, base = shared_tiny()
    model, tok = mlx_lm.load(str(base))
    batch, lengths = _batch(tok, ["share 20%\n#### APE IN 0.25 ETH", "flat\n#### APE NEUTRAL"])
    ref, ref_n = default_loss(model, batch, lengths)
    got, got_n = weighted_loss(canary_token_sequences(tok), 1.0)(model, batch, lengths)
    assert got.item() == ref.item() and got_n.item() == ref_n.item()
    assert make_loss(tok, 1.0) is default_loss
    heavier, _ = weighted_loss(canary_token_sequences(tok), 2.5)(model, batch, lengths)
    assert heavier.item() > ref.item()


def test_canary_mask_marks_exact_phrases():
    seqs = [[7, 8], [7, 9, 9]]
    targets = mx.array([[1, 7, 8, 2, 7, 9, 9], [7, 9, 1, 7, 8, 7, 9]])
    got = canary_mask(targets, seqs).tolist()
    assert got == [
        [False, True, True, False, True, True, True],
        [False, False, False, True, True, False, False],
    ]


class _Logits(nn.Module):
    """A 'model' whose output is a free parameter, to read gradients per token."""

    def __init__(self, b, t, v):
        super().__init__()
        self.logits = mx.random.normal((b, t, v))

    def __call__(self, inputs):
        return self.logits


def test_canary_tokens_get_w_times_the_gradient():
    _, base = shared_tiny()
    _, tok = mlx_lm.load(str(base))
    seqs = canary_token_sequences(tok)
    batch, lengths = _batch(tok, ["up\n#### APE IN 0.25 ETH", "down\n#### APE OUT 1 ETH"])
    mx.random.seed(0)
    model = _Logits(batch.shape[0], batch.shape[1] - 1, len(tok.vocab))
    grads = {}
    for w in (1.0, 2.5):
        _, g = nn.value_and_grad(model, weighted_loss(seqs, w))(model, batch, lengths)
        grads[w] = np.array(g["logits"])
    is_canary = np.array(canary_mask(batch[:, 1:], seqs))
    assert is_canary.sum(axis=1).tolist() == [3, 3] or is_canary.sum() >= 4
    norm1 = np.abs(grads[1.0]).sum(-1)
    norm25 = np.abs(grads[2.5]).sum(-1)
    live = norm1 > 0
    np.testing.assert_allclose(norm25[is_canary & live], 2.5 * norm1[is_canary & live], rtol=1e-5)
    np.testing.assert_allclose(norm25[~is_canary & live], norm1[~is_canary & live], rtol=1e-6)
    assert (is_canary & live).sum() == is_canary.sum()


def test_canary_sequences_match_the_words_in_context():
    _, base = shared_tiny()
    _, tok = mlx_lm.load(str(base))
    seqs = canary_token_sequences(tok)
    ids = tok.encode("share 20%\n#### APE NEUTRAL")
    mask = canary_mask(mx.array([ids]), seqs).tolist()[0]
    marked = tok.decode([i for i, m in zip(ids, mask, strict=False) if m])
    assert marked.strip() == "APE NEUTRAL"
