"""Trivial baselines of the canary eval: majority class and the best single-feature rule."""

from __future__ import annotations

import random

import numpy as np
import pytest
from finetune_fixtures import example

from finetune_mlx.baselines import apply_intervals, baselines, fit_intervals, prompt_features


def _share_rows(n: int, seed: int, flip: bool = False) -> list[dict]:
    """Examples whose teacher answer depends on the ETH share only (< 30 in, > 70 out)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = example(rng)
        share = prompt_features(row["messages"][:-1])["ETH share"]
        d = "APE IN" if share < 30 else "APE OUT" if share > 70 else "APE NEUTRAL"
        if flip:
            d = {"APE IN": "APE OUT", "APE OUT": "APE IN", "APE NEUTRAL": "APE NEUTRAL"}[d]
        row["messages"][-1]["content"] = f"ETH share {share:.0f}%\n#### {d}"
        rows.append(row)
    return rows


def test_prompt_features_reads_each_labelled_number():
    row = example(random.Random(1))
    f = prompt_features(row["messages"])
    assert {"price", "volume", "volatility", "swaps", "tick move", "holding", "change", "ETH share"} <= set(f)
    assert f["ETH share"] == round(f["ETH share"]) and -2 < f["change"] < 2


def test_fit_intervals_finds_two_thresholds():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, 400).astype(float)
    y = np.where(x < 30, 0, np.where(x > 70, 1, 2))
    cuts, classes, acc = fit_intervals(x, y, 3)
    assert acc == 1.0 and cuts == [30.0, 71.0] and classes == [0, 2, 1]
    assert list(apply_intervals(np.array([5.0, 50.0, 90.0]), cuts, classes)) == [0, 2, 1]


def test_share_rule_is_found_and_scored_on_test_only():
    train, test = _share_rows(300, 0), _share_rows(100, 1)
    rep = baselines(train, test)
    best = rep["best_single_feature"]
    assert best["feature"] == "ETH share" and best["train_agreement"] == 1.0
    assert best["agreement"] >= 0.97  # a test share between two train values may fall either side
    labels = [r["messages"][-1]["content"].split("#### ")[1] for r in test]
    maj = rep["majority"]
    assert maj["agreement"] == pytest.approx(labels.count(maj["decision"]) / len(labels))
    assert rep["best_trivial_agreement"] == best["agreement"] > maj["agreement"]
    # Fit on train, not on test: against a test split with IN and OUT swapped, the rule agrees
    # only on the NEUTRAL band (the labels the swap left alone).
    flipped = baselines(train, _share_rows(100, 1, flip=True))
    assert flipped["best_single_feature"]["rule"] == best["rule"]
    neutral = labels.count("APE NEUTRAL") / len(labels)
    assert flipped["best_single_feature"]["agreement"] == pytest.approx(neutral, abs=0.03)
    assert neutral < 0.9
