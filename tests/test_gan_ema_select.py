"""Step bound from a quantile, EMA generator weights, best.pt selection window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gan_fixtures import synthetic_bars, tiny_cfg

from apeagent.errors import UserError
from gan_torch import checkpoint as ckio
from gan_torch import data as D
from gan_torch.train import ema_update, train


@pytest.fixture(scope="module")
def bars():
    return synthetic_bars(300, seed=3)


def test_step_bound_is_a_quantile_of_active_training_returns(bars):
    b = {k: v.copy() for k, v in bars.items()}
    b["log_return"][5] = 0.3  # one launch-week-like jump early in the training period
    b["swap_count"][5] = max(1, b["swap_count"][5])
    q_max = D.build_dataset(b, tiny_cfg(step_bound_quantile=1.0))["step_bound"]
    q99 = D.build_dataset(b, tiny_cfg(step_bound_quantile=0.99))["step_bound"]
    assert q_max == pytest.approx(0.3)
    lo, hi = D.split_bounds(b["swap_count"], 0.2, 0.1)["train"]
    r = np.abs(b["log_return"][lo:hi][b["swap_count"][lo:hi] > 0])
    assert q99 == pytest.approx(np.quantile(r, 0.99)) and q99 < 0.3
    with pytest.raises(UserError, match="step_bound_quantile"):
        D.build_dataset(b, tiny_cfg(step_bound_quantile=0.0))


def test_ema_update_warms_up_then_uses_the_decay():
    net = torch.nn.Linear(2, 1)
    ema = torch.nn.Linear(2, 1)
    with torch.no_grad():
        ema.weight.zero_()
        ema.bias.zero_()
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    ema_update(ema, net, 0.99, step=0)  # warm-up decay (1+0)/(10+0) = 0.1
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.9))
    ema_update(ema, net, 0.5, step=10_000)  # the configured decay once warm
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.95))
    assert net.weight.requires_grad  # the trained net is untouched


def test_ema_checkpoints_resume_exactly_and_generate_from_the_average(bars, tmp_path):
    cfg = tiny_cfg(steps=6, checkpoint_every=4, eval_every=3, ema_decay=0.9)
    train(bars, cfg, tmp_path / "full", progress=False)
    train(bars, cfg, tmp_path / "cut", progress=False, stop_at=4)
    train(bars, cfg, tmp_path / "cut", progress=False, resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for key in ("generator", "generator_train"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    # generation weights are the average, not the last training iterate
    assert any(not torch.equal(a["generator"][k], a["generator_train"][k]) for k in a["generator"])
    gnet, _, _ = ckio.build_models(ckio.load(tmp_path / "full" / "last.pt"))
    for k, v in gnet.state_dict().items():
        assert torch.equal(v, a["generator"][k]), k
    # without EMA there is no separate training copy
    train(
        bars,
        tiny_cfg(steps=2, checkpoint_every=2, ema_decay=0.0),
        tmp_path / "plain",
        progress=False,
    )
    assert "generator_train" not in torch.load(tmp_path / "plain" / "last.pt", weights_only=True)


@pytest.mark.parametrize(("frac", "earliest"), [(0.5, 4), (1.0, 8)])
def test_best_is_selected_only_after_select_from_frac(bars, tmp_path, frac, earliest):
    cfg = tiny_cfg(steps=8, eval_every=1, checkpoint_every=8, select_from_frac=frac)
    train(bars, cfg, tmp_path, progress=False)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["step"] > earliest or best["step"] == 8
