"""DAPO dynamic sampling filter."""

from __future__ import annotations

from torch import Tensor

from tokencredit.groups import group_stats
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


@register("select", "dynamic_filter")
def dynamic_filter(rollouts: Rollouts, advantage: Tensor | None = None) -> Tensor:
    """Keep only responses of groups whose rewards are not all equal: `keep_i = 1[0 < std_g(R) ]`.

    Source: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (Yu et al., 2025), dynamic
    sampling (`0 < |{correct}| < G`). Single-response groups are dropped (their std is 0). The trainer may
    resample to refill the batch; this function only marks rows.
    """
    _, std, _ = group_stats(rollouts.sequence_reward(), rollouts.group)
    return std > 0
