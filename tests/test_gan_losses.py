"""Every generator loss term reaches and moves the generator; instance noise is train-only."""

from __future__ import annotations

import pytest
import torch
from gan_fixtures import tiny_cfg

from gan_torch import losses
from gan_torch.models import Critic, Generator


def _setup():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    g, c = Generator(cfg), Critic(cfg)
    b = 8
    z = torch.randn(b, cfg["window_bars"], cfg["noise_dim"])
    zg = torch.randn(b, cfg["noise_dim"])
    cond = torch.randn(b, 3)
    real = torch.randn(b, cfg["window_bars"], 4)
    return cfg, g, c, z, zg, cond, real


_SCALER = {"center": [0.0, 0.0, 5.0, 0.0], "scale": [0.01, 1.0, 1.0, 1.0]}


def _term(name, g, c, z, zg, cond, real):
    fake = g(z, cond, zg)
    if name == "adv":
        return losses.generator_wasserstein(c(fake, cond)[0])
    if name == "fm":
        with torch.no_grad():
            _, f_real = c(real, cond)
        return losses.feature_matching(f_real, c(fake, cond)[1])
    if name == "moment":
        return losses.moment_matching(real, fake)
    if name == "acf_abs":
        # returns of ~1% per bar, every bar active, a target far from the init's ACF
        r = losses.decoded_returns(fake, _SCALER, bound=1.0)
        return losses.abs_return_acf_loss(r, torch.full((5,), 0.3))
    if name == "div":
        h = len(z) // 2
        za = torch.cat([z[:h].flatten(1), zg[:h]], 1)
        zb = torch.cat([z[h:].flatten(1), zg[h:]], 1)
        return losses.diversity_loss(fake[:h], fake[h:], za, zb)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["adv", "fm", "moment", "acf_abs", "div"])
def test_each_loss_term_moves_the_generator(name):
    cfg, g, c, z, zg, cond, real = _setup()
    loss = _term(name, g, c, z, zg, cond, real)
    loss.backward()
    grads = [p.grad for p in g.parameters() if p.grad is not None]
    assert grads and sum(float(gr.abs().sum()) for gr in grads) > 0, (
        f"{name}: no gradient reached G"
    )
    before = loss.item()
    opt = torch.optim.SGD(g.parameters(), lr=1e-3)
    for _ in range(3):
        opt.step()
        opt.zero_grad()
        loss = _term(name, g, c, z, zg, cond, real)
        loss.backward()
    assert loss.item() < before, (
        f"{name}: a descent step did not lower it ({before} -> {loss.item()})"
    )


def test_feature_matching_keeps_the_fake_graph():
    cfg, g, c, z, zg, cond, real = _setup()
    fake = g(z, cond, zg)
    f_fake = c(fake, cond)[1]
    assert losses.feature_matching(c(real, cond)[1], f_fake).requires_grad


def test_instance_noise_anneals_to_zero_and_is_skipped_at_zero():
    s = [losses.instance_noise_sigma(t, 100, 0.2, 0.5) for t in (0, 25, 50, 99)]
    assert s[0] == pytest.approx(0.2) and s[1] == pytest.approx(0.1) and s[2] == 0.0 and s[3] == 0.0
    x = torch.randn(2, 3, 4)
    assert losses.add_instance_noise(x, 0.0) is x
    assert not torch.equal(losses.add_instance_noise(x, 0.1), x)


def test_generation_adds_no_noise():
    # the same z/condition give the same output: nothing random is added at generation
    cfg, g, c, z, zg, cond, real = _setup()
    g.eval()
    with torch.no_grad():
        assert torch.equal(g(z, cond, zg), g(z, cond, zg))


def test_critic_wasserstein_and_gp_train_the_critic():
    cfg, g, c, z, zg, cond, real = _setup()
    with torch.no_grad():
        fake = g(z, cond, zg) + 1.0
    loss = losses.critic_wasserstein(
        c(real, cond)[0], c(fake, cond)[0]
    ) + 10 * losses.gradient_penalty(c, real, fake, cond)
    loss.backward()
    assert all(p.grad is not None for p in c.parameters())


def test_acf_term_is_the_validation_metric_on_decoded_returns():
    # the training term computes the ACF of |r| exactly as fidelity.acf does, on the returns
    # decode_features produces (scaling inverted, clipped, zero on empty bars)
    import numpy as np

    from gan_torch.fidelity import acf
    from gan_torch.generate import decode_features

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1.5, (20, 12, 4)).astype(np.float32)
    scaler = {"center": [0.0, 1.0, 0.5, 0.0], "scale": [0.004, 1.0, 1.0, 0.01]}
    ckpt_like = {
        "scaler": scaler,
        "config": {"step_bound_mult": 1.0},
        "data": {"step_bound": 0.02, "feature_max": [np.inf] * 4},
    }
    ref = decode_features(x, ckpt_like)[..., 0]
    assert (ref == 0).any() and (np.abs(ref) == 0.02).any()  # both the mask and the clip act
    r = losses.decoded_returns(torch.from_numpy(x).double(), scaler, 0.02)
    np.testing.assert_allclose(r.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(
        losses.window_acf(r.abs(), 10).numpy(), acf(np.abs(ref), 10), atol=1e-10
    )
    target = torch.from_numpy(acf(np.abs(ref), 10))
    assert losses.abs_return_acf_loss(r, target).item() == pytest.approx(0.0, abs=1e-20)
