"""The ``agent`` config section (keys and defaults in apeagent/defaults.yaml) and its choices.

The rules teacher's thresholds are not repeated there: the agent reads them from the ``distill``
section, so the teacher it compares against is the one that labelled the training data.
Private keys never live in a config: only the *name* of the environment variable (or the
path of an encrypted keystore) that holds one.
"""

from apeagent.config import defaults

DEFAULTS = defaults("agent")  # keys and defaults: apeagent/defaults.yaml (agent: + market:)

POLICIES = ("student", "rules", "teacher", "hold", "rebalance")
STYLES = ("cod", "cot")
