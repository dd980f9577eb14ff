"""The ``distill`` config section (keys and defaults in apeagent/defaults.yaml) and its choices."""

from apeagent.config import defaults

DEFAULTS = defaults("distill")  # keys and defaults: apeagent/defaults.yaml (distill: + market:)

TEACHERS = ("rules", "mlx", "openai")
STYLES = ("cod", "cot")
FORMATS = ("chat", "completions")
REBALANCE = ("none", "downsample", "upsample")
