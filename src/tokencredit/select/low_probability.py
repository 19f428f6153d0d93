"""Token selection by sampling probability: SPO's probability mask."""

from __future__ import annotations

import math

from torch import Tensor

from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


def low_probability_tokens(rollouts: Rollouts, threshold: float, who: str) -> Tensor:
    """`mask & (π_old(o_t) < threshold)` `[B,T]` bool, compared in log space (no `exp` pass); `who` names the
    caller in the error when the batch has no behaviour log-probs."""
    if rollouts.logprob is None:
        raise ValueError(f"Rollouts.logprob: {who} needs behaviour log-probs [B,T]; got None")
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
    return rollouts.mask & (rollouts.logprob < log_threshold)


def check_threshold(threshold: float) -> None:
    """A probability threshold is in [0, 1]."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold}")


@register("token_select", "low_probability", needs=Needs(inputs={"logprob"}), check=check_threshold)
def low_probability(rollouts: Rollouts, advantage: Tensor, threshold: float = 0.9) -> Tensor:
    """Keep the "decision" tokens: `keep_{i,t} = 1[π_old(o_{i,t}) < τ]` (τ = `threshold`); the others leave the
    loss *and its normaliser*, so the policy gradient is the mean over decision tokens only.

    Source: "Segment Policy Optimization" (Guo et al., NeurIPS 2025), the probability mask of its released
    trainer (`ppo_trainer.py`: tokens with old probability ≥ 0.9 are dropped from the loss). τ = 1 keeps every
    token with p < 1."""
    check_threshold(threshold)
    return low_probability_tokens(rollouts, threshold, "token_select 'low_probability'")
