"""The ``chain`` config section (keys and defaults in apeagent/defaults.yaml)."""

from apeagent.config import defaults

DEFAULTS = defaults("chain")  # keys and defaults: apeagent/defaults.yaml (chain: + market:)
