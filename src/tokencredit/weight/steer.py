"""Entropy-change reweighting: damp the tokens whose update would move the policy's entropy the most."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokencredit.masked import zero_outside
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts

MODES = ("exp", "linear")


def entropy_change(rollouts: Rollouts, advantage: Tensor) -> Tensor:
    """First-order entropy change a unit step on each token causes, `[B,T]`, 0 outside the mask:
    `Ω_{i,t} = (A_{i,t}/π_old)·π_θ·(1 − π_θ)·(log π_θ + H_{i,t})` at `π_θ = π_old = p` (the sampling policy's
    probability of the token, from `rollouts.logprob`), i.e. `A·(1 − p)·(log p + H)`."""
    for field in ("logprob", "entropy"):
        if getattr(rollouts, field) is None:
            raise ValueError(f"Rollouts.{field}: weight 'steer' needs the sampling policy's {field} [B,T]; got None")
    logp = rollouts.logprob.float()
    omega = advantage.float() * (1.0 - logp.exp()) * (logp + rollouts.entropy.float())
    return zero_outside(omega, rollouts.mask)


@register("weight", "steer")
def steer(
    rollouts: Rollouts,
    advantage: Tensor,
    w_min: float = 0.8,
    w_max: float = 1.0,
    mode: str = "exp",
    keep: Tensor | None = None,
) -> Tensor:
    """STEER token weights from the estimated entropy change `|Ω|` (see `entropy_change`), over the response
    tokens of the kept responses:

    * `exp` (the paper's): `λ = clamp(exp(−k·|Ω|), w_min, w_max)`, `k = −ln(w_min) / max(max|Ω|, 0.02)`, so the
      token with the largest |Ω| gets `w_min`;
    * `linear`: `λ = w_max − (|Ω| − min|Ω|)·(w_max − w_min)/(max|Ω| − min|Ω|)` (`w_max` when all |Ω| are equal).

    Source: "Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective" (Hao et al., 2025).
    Choices: π_θ is taken as the sampling policy (exact on the first on-policy minibatch); the paper's code
    takes min/max per micro-batch, here they are per batch (so micro-batching cannot change the weights).
    `w_min = w_max = 1` gives weight 1 everywhere.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not 0.0 < w_min <= w_max or (mode == "exp" and w_min > 1.0):
        raise ValueError(f"w_min, w_max: expected 0 < w_min ≤ w_max (and w_min ≤ 1 for mode 'exp'), got {w_min}, "
                         f"{w_max}")
    omega = entropy_change(rollouts, advantage).abs()
    omega = torch.nan_to_num(omega, nan=0.0, posinf=torch.finfo(omega.dtype).max)  # a token with p = 0: log p = −∞
    mask = rollouts.mask
    candidates = omega[mask if keep is None else mask & keep[:, None]]
    if candidates.numel() == 0:
        return mask.float()
    largest = candidates.max()
    if mode == "exp":
        rate = -math.log(w_min) / largest.clamp(min=0.02)
        weight = torch.exp(-rate * omega)
    else:
        smallest = candidates.min()
        spread = (largest - smallest).clamp(min=torch.finfo(omega.dtype).tiny)
        weight = w_max - (omega - smallest) * ((w_max - w_min) / spread)
    return zero_outside(weight.clamp(w_min, w_max), mask)
