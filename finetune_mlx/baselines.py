"""Trivial baselines for the canary eval: what agreement with the teacher costs nothing.

A student's agreement means little on its own: if one number of the prompt decides most
answers, a threshold rule on that number agrees as well. Two baselines, fit on the train split
and scored on the test split (never fit on test):

- ``majority``: always the train split's most common teacher decision;
- ``best_single_feature``: for each number of the prompt (the first number on each line of the
  user prompt: ``ETH share 38%`` -> ``ETH share``), the best rule with up to two thresholds
  (three intervals, one decision each; ``share < 30 -> APE IN, share > 70 -> APE OUT, else
  APE NEUTRAL`` is one), chosen by train agreement; the feature with the best train agreement
  is reported with its test agreement (``best_single_feature``, the one the margin is taken
  over), and so is the feature that happens to score best on test
  (``best_single_feature_in_hindsight``: chosen on test, an upper bound for such rules).

Reading features by line label keeps this independent of the prompt's exact wording
(``distill.prompt.format_prompt`` owns it): any "label number" line is a candidate feature.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from distill.dataset import split_prompt
from distill.parse import CANARIES, parse_answer

_LINE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z /]*?)\s+([+-]?\d+(?:\.\d+)?)")
_MAX_CUTS = 512  # candidate thresholds per feature: every train value, or this many quantiles


def prompt_features(messages: list[dict]) -> dict[str, float]:
    """``{line label: its first number}`` of the last user message."""
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    out: dict[str, float] = {}
    for line in user.splitlines():
        m = _LINE_RE.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = float(m.group(2))
    return out


def labelled(rows: list[dict]) -> tuple[list[dict[str, float]], list[str]]:
    """(features, teacher decision) of each example whose reference answer has one."""
    feats, labels = [], []
    for row in rows:
        msgs, ref = split_prompt(row)
        decision = parse_answer(ref).decision
        if decision in CANARIES:
            feats.append(prompt_features(msgs))
            labels.append(decision)
    return feats, labels


def fit_intervals(x: np.ndarray, y: np.ndarray, k: int) -> tuple[list[float], list[int], float]:
    """Best rule ``x < a -> c0, a <= x < b -> c1, x >= b -> c2`` (a <= b) on train data.

    ``y``: class indices in ``range(k)``. Returns (cuts [a, b], classes [c0, c1, c2], train
    agreement). Exhaustive over the candidate cuts with prefix counts: O(cuts^2 * k).
    """
    cand = np.unique(x)
    if len(cand) > _MAX_CUTS:
        cand = np.unique(np.quantile(x, np.linspace(0, 1, _MAX_CUTS + 1)))
    cand = np.concatenate([cand, [np.inf]])  # a cut at +inf: an empty upper interval
    onehot = np.eye(k, dtype=np.int64)[y]
    # below[i, c]: examples of class c with x < cand[i]
    order = np.argsort(x)
    xs, cum = x[order], np.vstack([np.zeros(k, np.int64), np.cumsum(onehot[order], axis=0)])
    below = cum[np.searchsorted(xs, cand, side="left")]
    best = (-1, 0, 0)
    for i in range(len(cand)):
        low = below[i].max()
        mid_hi = below[i:] - below[i]  # (j >= i): counts in [cand[i], cand[j])
        high = below[-1] - below[i:]  # ... and in [cand[j], inf)
        total = low + mid_hi.max(axis=1) + high.max(axis=1)
        j = int(total.argmax())
        if total[j] > best[0]:
            best = (int(total[j]), i, i + j)
    _, i, j = best
    counts = [below[i], below[j] - below[i], below[-1] - below[j]]
    # an interval without train examples takes its neighbour's decision (test values may fall in it)
    filled = [c if c.sum() else None for c in counts]
    filled[1] = filled[1] if filled[1] is not None else (filled[0] if filled[0] is not None else filled[2])
    filled[0] = filled[0] if filled[0] is not None else filled[1]
    filled[2] = filled[2] if filled[2] is not None else filled[1]
    classes = [int(c.argmax()) for c in filled]
    return [float(cand[i]), float(cand[j])], classes, best[0] / len(y)


def apply_intervals(x: np.ndarray, cuts: list[float], classes: list[int]) -> np.ndarray:
    return np.asarray(classes)[np.searchsorted(np.asarray(cuts), x, side="right")]


def baselines(train_rows: list[dict], test_rows: list[dict]) -> dict[str, Any]:
    """Majority class and best single-feature rule: fit on ``train_rows``, scored on ``test_rows``.

    Test agreement is over all test examples (an example whose reference has no decision
    counts as a miss, as it does for the models).
    """
    train_x, train_y = labelled(train_rows)
    test_x, test_y = labelled(test_rows)
    n_test = len(test_rows)
    if not train_y or not n_test:
        return {}
    index = {c: i for i, c in enumerate(CANARIES)}
    ytr = np.array([index[c] for c in train_y])
    yte = np.array([index[c] for c in test_y])
    majority = Counter(train_y).most_common(1)[0][0]
    out: dict[str, Any] = {
        "majority": {
            "decision": majority,
            "train_agreement": float(np.mean(ytr == index[majority])),
            "agreement": float(np.sum(yte == index[majority])) / n_test,
        },
        "features": {},
    }
    names = [f for f in train_x[0] if all(f in row for row in train_x + test_x)]
    for name in names:
        xtr = np.array([row[name] for row in train_x])
        xte = np.array([row[name] for row in test_x])
        cuts, classes, train_acc = fit_intervals(xtr, ytr, len(CANARIES))
        pred = apply_intervals(xte, cuts, classes)
        out["features"][name] = {
            "rule": _describe(name, cuts, classes),
            "cuts": [c if np.isfinite(c) else None for c in cuts],
            "decisions": [CANARIES[c] for c in classes],
            "train_agreement": train_acc,
            "agreement": float(np.sum(pred == yte)) / n_test,
        }
    if out["features"]:
        best = max(out["features"], key=lambda f: out["features"][f]["train_agreement"])
        out["best_single_feature"] = {"feature": best, **out["features"][best]}
        # chosen on test: a ceiling no honest baseline reaches, reported beside it
        hind = max(out["features"], key=lambda f: out["features"][f]["agreement"])
        out["best_single_feature_in_hindsight"] = {"feature": hind, **out["features"][hind]}
    trivial = [out["majority"]["agreement"]]
    if "best_single_feature" in out:
        trivial.append(out["best_single_feature"]["agreement"])
    out["best_trivial_agreement"] = max(trivial)
    return out


def _describe(name: str, cuts: list[float], classes: list[int]) -> str:
    a, b = cuts
    parts = []
    if np.isfinite(a):
        parts.append(f"{name} < {a:g}: {CANARIES[classes[0]]}")
    if b > a:
        upper = f" < {b:g}" if np.isfinite(b) else ""
        parts.append(f"{name} >= {a:g}{upper}: {CANARIES[classes[1]]}")
    if np.isfinite(b):
        parts.append(f"{name} >= {b:g}: {CANARIES[classes[2]]}")
    return "; ".join(parts)
