"""PPO clipped surrogate (with clip-higher and dual clip) and its negative-samples-only variant."""

from __future__ import annotations

from torch import Tensor

from tokencredit.objective.reduce import clipped_surrogate, log_ratio, ratio_stats, reduce_policy_loss
from tokencredit.registry import register


@register("objective", "ppo_clip")
def ppo_clip(
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token_mean",
    weight: Tensor | None = None,
    group: Tensor | None = None,
    seq_weight: Tensor | None = None,
    **agg_params,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`ℓ_{i,t} = max(−A r, −A clip(r, 1−ε_low, 1+ε_high))`, `r = exp(log π_θ − log π_old)`, aggregated by `agg`.

    Source: "Proximal Policy Optimization Algorithms" (Schulman et al., 2017); `clip_high > clip_low` is DAPO's
    clip-higher; `dual_clip=c` bounds the loss of negative-advantage tokens by −c·A. `weight [B,T]` multiplies
    the per-token loss (token-selection stages); `seq_weight [B]` are whole-batch aggregation coefficients
    for micro-batching; extra keyword arguments go to the aggregation (e.g. `num_tokens=`, `norm=`).
    """
    log_r = log_ratio(logprob, old_logprob)
    per_token, stats = clipped_surrogate(log_r.exp(), advantage, mask, clip_low, clip_high, dual_clip)
    stats |= ratio_stats(log_r, mask)
    return reduce_policy_loss(
        per_token, mask, advantage, agg=agg, weight=weight, group=group, seq_weight=seq_weight,
        agg_params=agg_params, stats=stats,
    )


@register("objective", "negative_only")
def negative_only(
    logprob: Tensor, old_logprob: Tensor, advantage: Tensor, mask: Tensor, **kwargs
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clip with `A^N = min(A, 0)`: only negative-advantage tokens carry gradient.

    Source: "The Debate on RLVR Reasoning Capability Boundary: Shrinkage, Expansion, or Both?" (Yao et al.,
    2025; GRPO-N), equivalently NSR in "The Surprising Effectiveness of Negative Reinforcement in LLM
    Reasoning" (Zhu et al., 2025). The card leaves the normaliser open: here every response token stays in
    the aggregation's denominator; add the `negative_samples` select stage to count negative responses only.
    """
    return ppo_clip(logprob, old_logprob, advantage.clamp(max=0.0), mask, **kwargs)
