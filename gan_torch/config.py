"""Defaults of the ``gan:`` config section (plain data, like mlx-lm's ``CONFIG_DEFAULTS``)."""

from __future__ import annotations

DEFAULTS: dict = {
    # data
    "window": 12,  # bars per window (= distill.window_bars: one hour of 5-minute bars)
    "stride": 2,  # bars between window starts when training
    "min_active_frac": 0.5,  # drop windows (and their context) with fewer non-empty bars
    "holdout_frac": 0.2,  # last part of the bars (by time): test set of `validate`
    "val_frac": 0.1,  # the part before it: picks the best checkpoint
    # generator (transformer decoder)
    "d_model": 32,
    "num_heads": 8,
    "num_layers": 4,
    "ff_mult": 2,
    "noise_dim": 8,
    "cond_tokens": 4,
    # critic
    "critic_hidden": 32,
    "mb_kernels": 8,
    "mb_dim": 4,
    "minibatch_impl": "cdist",  # cdist (CPU fallback on MPS) | native (cdist-free)
    # optimisation
    "steps": 300,  # generator steps
    "batch_size": 32,
    "n_critic": 2,
    "lr_g": 2.0e-4,
    "lr_c": 2.0e-4,
    "beta1": 0.5,
    "beta2": 0.9,
    "gp_weight": 10.0,
    "fm_weight": 1.0,  # critic-feature matching
    "moment_weight": 1.0,  # batch moments / stylized facts matching
    "acf_abs_weight": 50.0,  # volatility clustering: ACF of |log return| (raw, decoded)
    # of each generated batch vs that of all real training windows, lags 1..acf_abs_lags
    # (0: off). Measured on the shared CSV (docs/gan_torch.md): test ACF(|r|) error
    # 0.035 -> 0.026 over 3 seeds, other scores within noise
    "acf_abs_lags": 10,  # the validation metric's lags (capped at window - 1)
    "div_weight": 0.1,  # mode-seeking diversity loss
    "instance_noise": 0.1,  # initial sigma (scaled-feature units), annealed to 0
    "noise_anneal_frac": 0.5,  # fraction of the steps over which it goes to 0
    "select_from_frac": 1.0,  # best.pt: best val fidelity among evaluations after this
    # fraction of the steps (1.0: the final generator). Measured on the shared CSV: the val
    # fidelity's minimum falls at steps 400-550, while the instance noise still widens the
    # returns, and loses to the final EMA generator on the held-out scores (docs/gan_torch.md)
    "ema_decay": 0.99,  # EMA of the generator's weights (0: off); generation uses the average
    "seed": 0,
    "device": "auto",  # auto | cpu | mps | cuda
    "threads": 1,  # torch CPU threads (0: torch default). 1 is fastest for these small
    # models: with 2 threads on a loaded 2-core box a step took 30x longer (spin-waiting).
    "checkpoint_every": 100,
    "eval_every": 50,
    "log_every": 10,
    "quick_test_steps": 1000,
    # generation / post-processing
    "n_generate": 64,
    "step_bound_quantile": 0.99,  # bound on |log return| per bar: this quantile of |r| over
    # active training bars (1.0: the max; on the shared CSV 0.029 vs the launch week's 0.23)
    "step_bound_mult": 1.0,  # max |log return| per bar = mult * that bound
    "bootstrap_block": 8,
}

# Keys that change tensor shapes: a checkpoint is only resumable under the same values.
ARCH_KEYS = (
    "window",
    "d_model",
    "num_heads",
    "num_layers",
    "ff_mult",
    "noise_dim",
    "cond_tokens",
    "critic_hidden",
    "mb_kernels",
    "mb_dim",
)
