"""CISPO: clipped importance-sampling weight, gradient through every token."""

from __future__ import annotations

from torch import Tensor

from tokencredit.masked import masked_mean
from tokencredit.objective.reduce import log_ratio, ratio_stats, reduce_policy_loss
from tokencredit.registry import register


@register("objective", "cispo")
def cispo(
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 1.0,
    clip_high: float = 0.28,
    agg: str = "token_mean",
    weight: Tensor | None = None,
    group: Tensor | None = None,
    seq_weight: Tensor | None = None,
    **agg_params,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`ℓ_{i,t} = −sg(clip(r_{i,t}, 1−ε_low, 1+ε_high)) · A_{i,t} · log π_θ(o_{i,t})`.

    Unlike PPO no token is dropped by clipping; only the IS weight is bounded. Source: "MiniMax-M1: Scaling
    Test-Time Compute Efficiently with Lightning Attention" (MiniMax, 2025). The paper sets no lower bound
    (ε_low = 1 here) and tunes ε_high.
    """
    log_r = log_ratio(logprob, old_logprob)
    ratio = log_r.exp()
    is_weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    per_token = -is_weight * advantage * logprob
    stats = {"clip_frac": masked_mean((ratio > 1.0 + clip_high).float(), mask)} | ratio_stats(log_r, mask)
    return reduce_policy_loss(
        per_token, mask, advantage, agg=agg, weight=weight, group=group, seq_weight=seq_weight,
        agg_params=agg_params, stats=stats,
    )
