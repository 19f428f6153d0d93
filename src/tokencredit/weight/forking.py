"""High-entropy "forking" tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


@register("weight", "forking_tokens")
def forking_tokens(rollouts: Rollouts, advantage: Tensor, top: float = 0.2) -> Tensor:
    """`m_{i,t} = 1[H_{i,t} ≥ τ_ρ]`, τ_ρ the (1−ρ)-quantile of token entropy over the whole batch's response
    tokens (ρ = `top`, paper value 0.2; ρ = 1 keeps every token). The loss normaliser is unchanged.

    Source: "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning"
    (Wang et al., 2025). Entropy is read from `rollouts.entropy` (the sampling policy's; it equals the
    current policy's at the first on-policy epoch). Ties at τ are all kept.
    """
    if rollouts.entropy is None:
        raise ValueError("Rollouts.entropy: weight 'forking_tokens' needs token entropies [B,T]; got None")
    if not 0.0 < top <= 1.0:
        raise ValueError(f"top: expected a fraction in (0, 1], got {top}")
    mask = rollouts.mask
    values = rollouts.entropy.float()[mask]
    if values.numel() == 0:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    k = max(1, round(top * values.numel()))
    threshold = torch.topk(values, k).values[-1]
    return ((rollouts.entropy.float() >= threshold) & mask).float()
