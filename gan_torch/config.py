"""The ``gan`` config section (keys and defaults in apeagent/defaults.yaml) and the keys that
fix a checkpoint's tensor shapes."""

from __future__ import annotations

from apeagent.config import defaults

DEFAULTS = defaults("gan")  # keys and defaults: apeagent/defaults.yaml (gan: + market:)

# Keys that change tensor shapes: a checkpoint is only resumable under the same values.
ARCH_KEYS = (
    "window_bars",
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
