"""Generator causality / autoregressive parity, minibatch discrimination cdist vs native."""

from __future__ import annotations

import torch
from gan_fixtures import tiny_cfg

from gan_torch import losses
from gan_torch.config import DEFAULTS
from gan_torch.models import (
    Critic,
    Generator,
    MinibatchDiscrimination,
    cdist_device,
    pairwise_l1_cdist,
    pairwise_l1_native,
)


def _gen(cfg=None):
    torch.manual_seed(0)
    cfg = cfg or tiny_cfg()
    return Generator(cfg).eval(), cfg


def _inputs(cfg, b=3, t=None):
    g = torch.Generator().manual_seed(1)
    t = t or cfg["window_bars"]
    return (
        torch.randn(b, t, cfg["noise_dim"], generator=g),
        torch.randn(b, 3, generator=g),
        torch.randn(b, cfg["noise_dim"], generator=g),
    )


def test_architecture_matches_the_spec():
    assert DEFAULTS["num_heads"] == 8 and DEFAULTS["num_layers"] == 4
    g, _ = _gen(dict(DEFAULTS))
    assert len(g.layers) == 4
    assert g.layers[0].self_attn.num_heads == 8
    c = Critic(dict(DEFAULTS))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in c.modules())


def test_causal_step_t_never_sees_the_future():
    g, cfg = _gen()
    z, c, zg = _inputs(cfg)
    out = g(z, c, zg)
    t = 4
    z2 = z.clone()
    z2[:, t + 1 :] += 5.0
    out2 = g(z2, c, zg)
    assert torch.allclose(out[:, : t + 1], out2[:, : t + 1], atol=1e-6)
    assert not torch.allclose(out[:, t + 1 :], out2[:, t + 1 :])


def test_condition_reaches_every_step_through_cross_attention():
    g, cfg = _gen()
    z, c, zg = _inputs(cfg)
    out, out2 = g(z, c, zg), g(z, c + 1.0, zg)
    assert (out - out2).abs().amax(dim=(0, 2)).min() > 1e-5


def test_autoregressive_sampling_matches_the_parallel_pass():
    g, cfg = _gen()
    z, c, zg = _inputs(cfg)
    with torch.no_grad():
        par = g(z, c, zg)
    ar = g.sample_autoregressive(z, c, zg)
    assert torch.allclose(par, ar, atol=1e-5), (par - ar).abs().max()


def test_volume_head_is_conditioned_on_abs_return():
    g, cfg = _gen()
    h = torch.randn(2, 5, cfg["d_model"])
    base = g.heads(h)
    with torch.no_grad():
        g.return_head.bias += 3.0  # change |r| only; the volume head must react
    moved = g.heads(h)
    assert not torch.allclose(base[..., 1:], moved[..., 1:])


def test_cdist_and_native_give_same_values_and_gradients():
    torch.manual_seed(0)
    m = torch.randn(4, 6, 3, dtype=torch.float64)
    a = m.clone().requires_grad_(True)
    b = m.clone().requires_grad_(True)
    da, db = pairwise_l1_cdist(a), pairwise_l1_native(b)
    assert torch.allclose(da, db, atol=1e-12)
    w = torch.randn_like(da)
    (ga,) = torch.autograd.grad((torch.exp(-da) * w).sum(), a)
    (gb,) = torch.autograd.grad((torch.exp(-db) * w).sum(), b)
    assert torch.allclose(ga, gb, atol=1e-10)


def test_minibatch_layer_same_through_both_formulations():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(7, 4, 3, impl="cdist").double()
    f = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    oc = layer(f)
    (gc_f, gc_t) = torch.autograd.grad(oc.square().sum(), (f, layer.T))
    on = layer(f, impl="native")
    (gn_f, gn_t) = torch.autograd.grad(on.square().sum(), (f, layer.T))
    assert torch.allclose(oc, on) and torch.allclose(gc_f, gn_f) and torch.allclose(gc_t, gn_t)


def test_cpu_fallback_is_chosen_exactly_on_mps():
    assert cdist_device(torch.device("mps")) == torch.device("cpu")
    assert cdist_device(torch.device("mps", 0)) == torch.device("cpu")
    for d in ("cpu", "cuda", "cuda:1", "meta"):
        assert cdist_device(torch.device(d)) == torch.device(d)


def test_gradient_penalty_runs_with_a_cdist_critic():
    # _cdist_backward has no derivative: the penalty's double backward must avoid cdist.
    cfg = tiny_cfg(minibatch_impl="cdist")
    torch.manual_seed(0)
    critic = Critic(cfg)
    real, fake = torch.randn(6, cfg["window_bars"], 4), torch.randn(6, cfg["window_bars"], 4)
    cond = torch.randn(6, 3)
    gp = losses.gradient_penalty(critic, real, fake, cond)
    gp.backward()
    assert torch.isfinite(gp) and critic.minibatch.T.grad.abs().sum() > 0
