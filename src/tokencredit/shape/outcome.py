"""Outcome reward placement."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


@register("shape", "outcome")
def outcome(rollouts: Rollouts) -> Tensor:
    """Sequence reward placed on each response's last real token: `r_{i,t} = R_i · 1[t = |o_i| − 1]`.

    Per-token rewards `[B,T]` pass through (masked). Empty responses carry no reward (nowhere to put it).
    This is the token-level reward tensor verl calls `token_level_rewards` (source: verl, DeepSeek-R1/GRPO).
    """
    mask = rollouts.mask
    if rollouts.reward.dim() == 2:
        return rollouts.reward.float() * mask
    last = (rollouts.length - 1).clamp(min=0)
    at_last = torch.arange(mask.shape[1], device=mask.device)[None, :] == last[:, None]
    return torch.where(at_last & mask, rollouts.reward.float()[:, None], 0.0)
