"""Generalised Advantage Estimation from a critic's values.

Source: "High-Dimensional Continuous Control Using Generalized Advantage Estimation" (Schulman et al., 2016);
PPO for LLMs as in verl's `compute_gae_advantage_return`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.discount import discounted_reverse_cumsum
from tokencredit.masked import masked_whiten, zero_outside
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.shape.outcome import add_outcome_


def gae_advantage_and_return(rollouts: Rollouts, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Unwhitened GAE advantages and value targets (returns), both `[B,T]` and 0 outside mask.

    `δ_t = r_t + γ·V_{t+1} − V_t` (V past the last real token is 0), `A_t = Σ_{k≥t} (γλ)^{k−t} δ_k`,
    `return_t = A_t + V_t`.
    """
    if rollouts.value is None:
        raise ValueError("Rollouts.value: advantage 'gae' needs critic values of shape [B,T]; got None")
    mask = rollouts.mask
    value = zero_outside(rollouts.value.float(), mask)
    delta = torch.zeros_like(value)  # built in place: this runs on [B,T]
    delta[:, :-1] = value[:, 1:]
    add_outcome_(delta.mul_(gamma).sub_(value), rollouts)
    zero = delta.new_zeros(())
    advantage = discounted_reverse_cumsum(torch.where(mask, delta, zero, out=delta), gamma * lam)
    advantage = torch.where(mask, advantage, zero, out=advantage)
    return advantage, advantage + value


@register("advantage", "gae")
def gae(rollouts: Rollouts, gamma: float = 1.0, lam: float = 0.95, whiten: bool = True) -> Tensor:
    """GAE advantages `A_t = Σ_{k≥t} (γλ)^{k−t} (r_k + γV_{k+1} − V_k)`, optionally whitened over the batch's
    response tokens (verl whitens by default). Reads `rollouts.value`."""
    advantage, _ = gae_advantage_and_return(rollouts, gamma, lam)
    return masked_whiten(advantage, rollouts.mask) if whiten else advantage
