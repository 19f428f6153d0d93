"""Outcome reward placement."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.masked import last_index, zero_outside
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


@register("shape", "outcome")
def outcome(rollouts: Rollouts) -> Tensor:
    """Sequence reward placed on each response's last real token (its last masked position):
    `r_{i,t} = R_i · 1[t = max{s: mask_{i,s}}]`.

    Per-token rewards `[B,T]` pass through (masked). Empty responses carry no reward (nowhere to put it).
    This is the token-level reward tensor verl calls `token_level_rewards` (source: verl, DeepSeek-R1/GRPO).
    """
    if rollouts.reward.dim() == 2:
        return zero_outside(rollouts.reward.float(), rollouts.mask)
    return add_outcome_(torch.zeros(rollouts.mask.shape, device=rollouts.mask.device), rollouts)


def add_outcome_(out: Tensor, rollouts: Rollouts) -> Tensor:
    """`out += outcome(rollouts)` in place on `out [B,T]` float32, without a `[B,T]` temporary for [B] rewards."""
    if rollouts.reward.dim() == 2:
        return out.add_(outcome(rollouts))
    last = last_index(rollouts.mask)
    rows = (last >= 0).nonzero().squeeze(-1)
    return out.index_put_((rows, last[rows]), rollouts.reward.float()[rows], accumulate=True)
