"""The ``finetune`` config section (keys and defaults in apeagent/defaults.yaml; the defaults are
the real-model settings, Qwen2.5-3B on an 18 GB Mac; ``presets/tiny.yaml`` overrides them for
the offline tiny student; docs/finetune_mlx.md has the memory sums)."""

from __future__ import annotations

from apeagent.config import defaults

DEFAULTS = defaults("finetune")  # keys and defaults: apeagent/defaults.yaml (finetune: + market:)
