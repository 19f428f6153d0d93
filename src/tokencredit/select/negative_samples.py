"""Keep negative-advantage responses only."""

from __future__ import annotations

from torch import Tensor

from tokencredit.masked import masked_sum
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


@register("select", "negative_samples")
def negative_samples(rollouts: Rollouts, advantage: Tensor) -> Tensor:
    """`keep_i = 1[Σ_t A_{i,t} < 0]`. With the `negative_only` objective this makes the loss normaliser count
    negative responses only (the alternative the GRPO-N card asks to expose); see `negative_only`."""
    return masked_sum(advantage, rollouts.mask, -1) < 0
