"""GSPO: sequence-level (geometric-mean) importance ratio."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.masked import masked_sum, token_count
from tokencredit.objective.reduce import clipped_surrogate, log_ratio, ratio_stats, reduce_policy_loss
from tokencredit.registry import register


@register("objective", "gspo")
def gspo(
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg: str = "seq_mean_token_mean",
    weight: Tensor | None = None,
    group: Tensor | None = None,
    seq_weight: Tensor | None = None,
    **agg_params,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token: `s_{i,t} = sg[s_i] · π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]` with
    `s_i = exp((1/|o_i|) Σ_t log r_{i,t})`, and `ℓ = max(−A s, −A clip(s, 1−ε_low, 1+ε_high))`.

    Equals sequence-level GSPO when A is constant within a response, and admits token-level advantages.
    Source: "Group Sequence Policy Optimization" (Zheng et al., 2025); defaults ε = 3e-4 / 4e-4 (paper §5.1).
    """
    log_r = log_ratio(logprob, old_logprob)
    seq_log_r = masked_sum(log_r, mask, -1) / token_count(mask, -1).clamp(min=1)
    log_s = seq_log_r.detach()[:, None] + logprob - logprob.detach()
    per_token, stats = clipped_surrogate(
        torch.exp(log_s.clamp(max=20.0)), advantage, mask, clip_low, clip_high, None
    )
    stats |= ratio_stats(log_r, mask)
    return reduce_policy_loss(
        per_token, mask, advantage, agg=agg, weight=weight, group=group, seq_weight=seq_weight,
        agg_params=agg_params, stats=stats,
    )
