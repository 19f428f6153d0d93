"""Entropy-change reweighting: damp the tokens whose update would move the policy's entropy the most."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokencredit.masked import zero_outside
from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.weight.inputs import token_field

MODES = ("exp", "linear")
_P_FLOOR = 1e-8


def entropy_change(rollouts: Rollouts, advantage: Tensor) -> Tensor:
    """First-order entropy change a unit step on each token causes, `[B,T]`, 0 outside the mask:
    `Ω_{i,t} = (A_{i,t}/π_old)·π_θ·(1 − π_θ)·(log π_θ + H_{i,t})` at `π_θ = π_old = p` (the sampling policy's
    probability of the token, from `rollouts.logprob`), i.e. `A·(1 − p)·(log p + H)`, with p clamped to
    [1e-8, 1 − 1e-8] as the paper's code does (a token with p → 0 would otherwise set the batch's scale alone)."""
    p = token_field(rollouts, "logprob", "steer").exp().clamp(_P_FLOOR, 1.0 - _P_FLOOR)
    omega = advantage.float() * (1.0 - p) * (p.log() + token_field(rollouts, "entropy", "steer"))
    return zero_outside(omega, rollouts.mask)


@register("weight", "steer", needs=Needs(inputs={"logprob", "entropy"}))
def steer(
    rollouts: Rollouts,
    advantage: Tensor,
    w_min: float = 0.8,
    w_max: float = 1.0,
    mode: str = "exp",
    keep: Tensor | None = None,
) -> Tensor:
    """STEER token weights from the estimated entropy change `|Ω|` (see `entropy_change`), ranked over the tokens
    in the loss (`keep [B,T]`, passed by `Recipe.credit`; None: every token of the mask):

    * `exp` (the paper's): `λ = clamp(exp(−k·|Ω|), w_min, 1)`, `k = −ln(w_min) / max(max|Ω|, 0.02)`, so the
      token with the largest |Ω| gets `w_min` (`w_max` must be 1);
    * `linear`: `λ = w_max − (|Ω| − min|Ω|)·(w_max − w_min)/(max|Ω| − min|Ω|)`, (w_min + w_max)/2 when all |Ω|
      are equal (the paper's linear script: 0.8, 1.2).

    Source: "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective" (Hao et al., 2025).
    Choices: π_θ is taken as the sampling policy (exact on the first on-policy minibatch); the paper's code
    takes min/max per micro-batch, here they are per batch (so micro-batching cannot change the weights).
    `w_min = w_max = 1` gives weight 1 everywhere. No kept token gives the mask (weights of dropped responses
    are not used).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not 0.0 < w_min <= w_max:
        raise ValueError(f"w_min, w_max: expected 0 < w_min ≤ w_max, got {w_min}, {w_max}")
    if mode == "exp" and (w_min > 1.0 or w_max != 1.0):
        raise ValueError(f"w_min, w_max: mode 'exp' weighs in [w_min, 1] (w_min ≤ 1, w_max = 1), got {w_min}, {w_max}")
    omega = entropy_change(rollouts, advantage).abs()
    mask = rollouts.mask
    candidates = omega[mask if keep is None else mask & keep]
    if candidates.numel() == 0:
        return mask.float()
    largest = candidates.max()
    if mode == "exp":
        rate = -math.log(w_min) / largest.clamp(min=0.02)
        weight = torch.exp(-rate * omega)
    else:
        smallest = candidates.min()
        spread = largest - smallest
        ranked = w_max - (omega - smallest) * ((w_max - w_min) / spread.clamp(min=torch.finfo(omega.dtype).tiny))
        weight = torch.where(spread > 0, ranked, (w_min + w_max) / 2)  # nothing to rank: the middle, as the paper
    return zero_outside(weight.clamp(w_min, w_max), mask)
