"""Generalised Advantage Estimation from a critic's values.

Source: "High-Dimensional Continuous Control Using Generalized Advantage Estimation" (Schulman et al., 2016);
PPO for LLMs as in verl's `compute_gae_advantage_return`.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import Tensor

from tokencredit.discount import discounted_reverse_cumsum
from tokencredit.masked import masked_whiten_, pack, packing, token_count, unpack, zero_outside
from tokencredit.needs import Needs, Request
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.shape.outcome import add_outcome_


def gae_advantage_and_return(rollouts: Rollouts, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Unwhitened GAE advantages and value targets (returns), both `[B,T]` and 0 outside mask.

    `δ_t = r_t + γ·V_{t+1} − V_t` (V past the last real token is 0), `A_t = Σ_{k≥t} (γλ)^{k−t} δ_k`,
    `return_t = A_t + V_t`, over the response tokens: a mask hole (context between response tokens, e.g. tool
    output) is skipped as verl's `compute_gae_advantage_return` skips it, so `V_{t+1}` is the next response
    token's value and k − t counts response tokens.
    """
    packed, where = _packed(rollouts)
    delta, value = _td_errors(packed, gamma)
    advantage = discounted_reverse_cumsum(delta, gamma * lam)
    advantage = zero_outside(advantage, packed.mask, out=advantage)
    returns = value.add_(advantage)
    return (advantage, returns) if where is None else (unpack(advantage, where), unpack(returns, where))


def gae_returns(rollouts: Rollouts, gamma: float = 1.0, lam: float = 0.95) -> Tensor:
    """The value targets `A_t + V(s_t)` `[B,T]` of `gae_advantage_and_return` (the returns a critic fits)."""
    return gae_advantage_and_return(rollouts, gamma, lam)[1]


def _critic(gamma: float = 1.0, lam: float = 0.95, **_) -> Needs:
    """GAE needs V(s_t) from a learned critic; `returns` gives the critic its regression targets with the same
    γ and λ (applied to the shaped rollouts with the values filled in)."""
    return Needs(values=Request("critic", returns=partial(gae_returns, gamma=gamma, lam=lam)))


@register("advantage", "gae", needs=_critic)
def gae(rollouts: Rollouts, gamma: float = 1.0, lam: float = 0.95, whiten: bool = True) -> Tensor:
    """GAE advantages `A_t = Σ_{k≥t} (γλ)^{k−t} (r_k + γV_{k+1} − V_k)`, optionally whitened over the batch's
    response tokens (verl whitens by default); mask holes are skipped (`gae_advantage_and_return`). Reads
    `rollouts.value`."""
    packed, where = _packed(rollouts)
    delta, value = _td_errors(packed, gamma)
    advantage = discounted_reverse_cumsum(delta, gamma * lam, out=value)  # the values are not needed any more
    if where is not None:
        advantage = unpack(advantage, where)
    mask = rollouts.mask
    return masked_whiten_(advantage, mask) if whiten else zero_outside(advantage, mask, out=advantage)


def _packed(rollouts: Rollouts) -> tuple[Rollouts, Tensor | None]:
    """`rollouts` with each row's response tokens moved to its front (values and token rewards with them; a
    reward inside a hole is dropped, as verl ignores it) and `packing`'s positions to move them back, when the
    mask has holes; else `rollouts` itself and None."""
    mask = rollouts.mask
    where = packing(mask) if rollouts.value is not None else None
    if where is None:
        return rollouts, None
    front = torch.arange(mask.shape[-1], device=mask.device) < token_count(mask, -1)[:, None]
    reward = rollouts.reward if rollouts.reward.dim() == 1 else pack(rollouts.reward, where)
    return replace(rollouts, mask=front, value=pack(rollouts.value, where), reward=reward), where


def _td_errors(rollouts: Rollouts, gamma: float) -> tuple[Tensor, Tensor]:
    """`δ [B,T]` and the masked values `V [B,T]`, both fresh and 0 outside the mask. Built in place: this runs
    on [B,T]."""
    if rollouts.value is None:
        raise ValueError("Rollouts.value: advantage 'gae' needs critic values of shape [B,T]; got None")
    mask = rollouts.mask
    value = zero_outside(rollouts.value.float(), mask)
    delta = torch.empty_like(value)
    delta[:, -1:] = 0.0
    torch.mul(value[:, 1:], gamma, out=delta[:, :-1])
    add_outcome_(delta.sub_(value), rollouts)
    return zero_outside(delta, mask, out=delta), value
