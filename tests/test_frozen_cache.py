"""finetune_mlx/frozen.py: training over cached frozen blocks is mlx-lm's loss, bit for bit.

A random llama model (mlx-lm's own class) with LoRA on its top blocks: the loss and every
adapter gradient from the cache equal those of the canary-weighted loss on the full model, for
the same batch; the teacher-forced accuracy marks exactly the answers greedy decoding reproduces.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama
from mlx_lm.tuner.utils import linear_to_lora_layers

from finetune_mlx import frozen
from finetune_mlx.canary import weighted_loss

LAYERS, ADAPTED, VOCAB = 4, 2, 97
CANARY = [[7, 8]]


def _model(seed=0):
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=LAYERS,
                           intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                           rms_norm_eps=1e-5, vocab_size=VOCAB, tie_word_embeddings=True,
                           rope_theta=10000.0)
    model = llama.Model(args)
    model.freeze()
    linear_to_lora_layers(model, ADAPTED, {"rank": 4, "dropout": 0.0, "scale": 10.0})
    # non-zero adapters, so the adapted blocks differ from the base
    model.update(tree_unflatten([(k, 0.05 * mx.random.normal(v.shape))
                                 for k, v in tree_flatten(model.trainable_parameters())]))
    mx.eval(model.parameters())
    return model


def _examples(n=6, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(12, 40))
        toks = rng.integers(10, VOCAB, size=length).tolist()
        at = int(rng.integers(3, length - 4))
        toks[at : at + 2] = CANARY[0]  # a canary inside the answer
        out.append((toks, int(rng.integers(2, at))))  # (tokens, answer offset)
    return out


def _full_batch(examples):
    """The batch mlx-lm's iterate_batches builds: padded to 1 + a multiple of 32."""
    width = 1 + 32 * ((max(len(t) for t, _ in examples) + 31) // 32)
    arr = np.zeros((len(examples), width), np.int32)
    for r, (t, _) in enumerate(examples):
        arr[r, : len(t)] = t
    return mx.array(arr), mx.array([[o, len(t)] for t, o in examples])


def test_cached_loss_and_gradients_equal_the_full_models():
    model = _model()
    examples = sorted(_examples(), key=lambda e: len(e[0]))  # iterate_batches sorts by length
    cached = frozen.cache_dataset(model, examples, LAYERS - ADAPTED, batch_size=4)
    batch = next(frozen.iterate_batches(cached, len(examples), 4096))
    full, top = weighted_loss(CANARY, 2.5), frozen.top_loss(LAYERS - ADAPTED, CANARY, 2.5)
    (l_full, n_full), g_full = nn.value_and_grad(model, full)(model, *_full_batch(examples))
    (l_top, n_top), g_top = nn.value_and_grad(model, top)(model, *batch)
    assert int(n_full) == int(n_top)
    assert float(l_top) == pytest.approx(float(l_full), rel=1e-5)
    for (name, a), (_, b) in zip(tree_flatten(g_full), tree_flatten(g_top), strict=True):
        assert np.allclose(np.array(a), np.array(b), atol=1e-6), name
    # a wrong split point (one block too few re-run) is a different loss
    wrong = frozen.top_loss(LAYERS - ADAPTED + 1, CANARY, 2.5)
    assert abs(float(wrong(model, *batch)[0]) - float(l_full)) > 1e-3


def test_teacher_forced_accuracy_marks_what_greedy_decoding_reproduces():
    model = _model(seed=3)
    examples = []
    for toks, offset in _examples(4, seed=5):
        prompt = toks[:offset]
        for _ in range(10):  # the model's own greedy answer
            logits = model(mx.array([prompt]))[0, -1]
            prompt.append(int(mx.argmax(logits)))
        examples.append((prompt, offset))
    start = LAYERS - ADAPTED
    cached = frozen.cache_dataset(model, examples, start)
    assert frozen.answer_accuracy(model, cached, start, CANARY, batch_size=4)["exact"] == 1.0
    # one answer token changed: that answer is no longer reproduced
    toks, offset = examples[0]
    toks = toks[:-3] + [(toks[-3] + 1) % VOCAB] + toks[-2:]
    broken = frozen.cache_dataset(model, [(toks, offset), *examples[1:]], start)
    assert frozen.answer_accuracy(model, broken, start, CANARY, batch_size=4)["exact"] == 0.75


def test_the_one_pass_valid_loss_is_the_trainers():
    """answer_accuracy's loss (the valid curve's, taken in the same pass as the accuracy) is
    what mlx-lm's evaluate gives with the cached loss over the whole set, canary weight and all."""
    from mlx_lm.tuner.trainer import evaluate

    model = _model(seed=2)
    start = LAYERS - ADAPTED
    cached = frozen.cache_dataset(model, _examples(7, seed=4), start)
    # batch 1: mlx-lm's batches then hold every example (they drop a last partial batch)
    trainer = evaluate(model=model, dataset=cached, batch_size=1, num_batches=-1,
                       max_seq_length=4096, loss=frozen.top_loss(start, CANARY, 2.5),
                       iterate_batches=frozen.iterate_batches)
    ours = frozen.answer_accuracy(model, cached, start, CANARY, batch_size=3, weight=2.5)
    assert ours["loss"] == pytest.approx(float(trainer), rel=1e-5)
    assert ours["n"] == 7  # 3 + 3 + 1: the last, partial batch counts too
    unweighted = frozen.answer_accuracy(model, cached, start, CANARY, batch_size=3)["loss"]
    assert abs(unweighted - ours["loss"]) > 1e-3
