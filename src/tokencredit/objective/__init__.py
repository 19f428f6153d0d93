"""Objective stage: current log-probs + credit → per-token policy loss, aggregated to a scalar, plus stats.

`aggregate` and `kl` are stages of their own (their own registries) that the objectives and recipes use.
"""

from tokencredit.objective import aggregate, cispo, gspo, kl, ppo  # noqa: F401  (registers)
