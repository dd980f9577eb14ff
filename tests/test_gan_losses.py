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
    z = torch.randn(b, cfg["window"], cfg["noise_dim"])
    zg = torch.randn(b, cfg["noise_dim"])
    cond = torch.randn(b, 3)
    real = torch.randn(b, cfg["window"], 4)
    return cfg, g, c, z, zg, cond, real


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
    if name == "div":
        h = len(z) // 2
        za = torch.cat([z[:h].flatten(1), zg[:h]], 1)
        zb = torch.cat([z[h:].flatten(1), zg[h:]], 1)
        return losses.diversity_loss(fake[:h], fake[h:], za, zb)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["adv", "fm", "moment", "div"])
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
