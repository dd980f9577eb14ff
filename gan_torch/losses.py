"""WGAN-GP losses, feature matching, diversity, annealed instance noise.

Every generator-side term keeps the generator's graph: the real-data side is constant, the
fake side is never detached (a published version stored detached features, so feature
matching never reached the generator; tests/test_gan_losses.py checks each term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def critic_wasserstein(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return d_fake.mean() - d_real.mean()


def generator_wasserstein(d_fake: torch.Tensor) -> torch.Tensor:
    return -d_fake.mean()


def gradient_penalty(critic, real, fake, cond, generator: torch.Generator | None = None):
    """(||grad_x D(x_hat)||_2 - 1)^2 on random interpolates (Gulrajani et al. 2017).

    Runs the minibatch layer through its cdist-free formulation: the penalty needs a second
    derivative and ``aten::_cdist_backward`` has none, on any device.
    """
    eps = torch.rand(real.shape[0], 1, 1, generator=generator).to(real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    score, _ = critic(x_hat, cond, impl="native")
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def stylized_moments(x: torch.Tensor, lags: int = 5) -> torch.Tensor:
    """Batch moments of a (B, T, F) batch: per-feature mean and std, ACF of returns and of
    |returns| at lags 1..lags, and the |return|-volume correlation. Differentiable."""
    r = x[..., 0]
    a = r.abs()
    parts = [x.mean((0, 1)), x.std((0, 1))]

    def acf(s):
        s = s - s.mean(1, keepdim=True)
        var = s.pow(2).mean() + 1e-6
        return torch.stack([(s[:, k:] * s[:, :-k]).mean() / var for k in range(1, lags + 1)])

    lags = min(lags, x.shape[1] - 1)
    a_c = a - a.mean()
    v_c = x[..., 1] - x[..., 1].mean()
    corr = (a_c * v_c).mean() / (a_c.pow(2).mean().sqrt() * v_c.pow(2).mean().sqrt() + 1e-6)
    return torch.cat([*parts, acf(r), acf(a), corr[None]])


def feature_matching(f_real: torch.Tensor, f_fake: torch.Tensor) -> torch.Tensor:
    """Match the batch mean of the critic's features (Salimans et al. 2016)."""
    return (f_real.detach().mean(0) - f_fake.mean(0)).pow(2).mean()


def moment_matching(x_real: torch.Tensor, x_fake: torch.Tensor) -> torch.Tensor:
    return (stylized_moments(x_real).detach() - stylized_moments(x_fake)).pow(2).mean()


def window_acf(s: torch.Tensor, lags: int) -> torch.Tensor:
    """ACF within windows (n, T), pooled over windows, lags 1..lags: the torch twin of
    ``gan_torch.fidelity.acf`` (each window demeaned by its own mean, one pooled variance)."""
    s = s - s.mean(1, keepdim=True)
    var = s.pow(2).sum() + 1e-30
    lags = min(int(lags), s.shape[1] - 1)
    return torch.stack([(s[:, k:] * s[:, :-k]).sum() / var for k in range(1, lags + 1)])


def decoded_returns(x: torch.Tensor, scaler: dict, bound: float) -> torch.Tensor:
    """Raw log returns of scaled windows (B, T, F), as ``generate.decode_features`` makes
    them: inverse robust/asinh scaling, clipped to the step bound, zero on empty bars.
    Differentiable in the returns channel (the empty-bar mask is a constant)."""
    c, s = float(scaler["center"][0]), float(scaler["scale"][0])
    r = (torch.sinh(x[..., 0]) * s + c).clamp(-bound, bound)
    count_raw = torch.sinh(x[..., 2]) * float(scaler["scale"][2]) + float(scaler["center"][2])
    active = (count_raw.detach() >= math.log1p(0.5)).to(r.dtype)  # rint(expm1(.)) >= 1
    return r * active


def abs_return_acf_loss(r_fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Volatility clustering: squared error between the ACF of |returns| of a generated batch
    (raw returns, (B, T)) and a fixed target, mean over lags 1..len(target). The target is
    the same statistic on all real training windows (``fidelity.acf``), so the batch-to-batch
    noise of a 32-window real batch never enters it."""
    est = window_acf(r_fake.abs(), len(target))
    return (est - target.to(est)).pow(2).mean()


def diversity_loss(x_a, x_b, z_a, z_b) -> torch.Tensor:
    """Mode seeking (Mao et al. 2019): penalise outputs that move less than their noise."""
    ratio = (x_a - x_b).abs().mean() / ((z_a - z_b).abs().mean() + 1e-8)
    return 1.0 / (ratio + 1e-5)


def instance_noise_sigma(step: int, total_steps: int, sigma0: float, anneal_frac: float) -> float:
    """Linear anneal from sigma0 to 0 over the first ``anneal_frac`` of training."""
    horizon = max(1.0, anneal_frac * total_steps)
    return float(max(0.0, sigma0 * (1.0 - step / horizon)))


def add_instance_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None):
    """Noise for the critic's inputs during training only; generation never calls this."""
    if sigma <= 0.0:
        return x
    return x + sigma * torch.randn(x.shape, generator=generator).to(x.device)


# ----------------------------------------------------------------- the two objectives


@dataclass
class Targets:
    """Fixed real-data quantities the generator terms compare against (from the training
    period): the feature scaler, the per-bar return bound and the ACF of |r| to match."""

    scaler: dict
    r_bound: float
    acf_abs: torch.Tensor


def critic_loss(critic, real, fake, cond, sigma: float, gp_weight: float, generator=None):
    """WGAN-GP critic objective on instance-noised inputs; returns (loss, logged terms)."""
    d_real, _ = critic(add_instance_noise(real, sigma, generator), cond)
    d_fake, _ = critic(add_instance_noise(fake, sigma, generator), cond)
    w = critic_wasserstein(d_real, d_fake)
    gp = gradient_penalty(critic, real, fake, cond, generator)
    return w + gp_weight * gp, {"wasserstein": -w, "gp": gp}


def generator_terms(
    critic, real, cond_real, fake, cond, noise, sigma: float, targets: Targets, generator=None
) -> dict[str, torch.Tensor]:
    """Every generator-side term, unweighted. ``fake`` holds two halves made from the same
    conditions with different ``noise`` (flattened per window) for the diversity term."""
    half = len(fake) // 2
    d_fake, f_fake = critic(add_instance_noise(fake, sigma, generator), cond)
    with torch.no_grad():
        _, f_real = critic(real, cond_real)
    return {  # built in this order: autograd sums the gradients into ``fake`` in it
        "adv": generator_wasserstein(d_fake),
        "fm": feature_matching(f_real, f_fake),
        "moment": moment_matching(real, fake),
        "acf_abs": abs_return_acf_loss(
            decoded_returns(fake, targets.scaler, targets.r_bound), targets.acf_abs.to(fake.device)
        ),
        "div": diversity_loss(fake[:half], fake[half:], noise[:half], noise[half:]),
    }
