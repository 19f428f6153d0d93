"""GSPO: sequence-level (geometric-mean) importance ratio."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.masked import masked_sum, token_count
from tokencredit.objective.ppo import BEHAVIOUR_LOGPROB
from tokencredit.objective.surrogate import check_clip, clipped_surrogate, detached, log_ratio, ratio_stats
from tokencredit.registry import register


@register("objective", "gspo", needs=BEHAVIOUR_LOGPROB, check=check_clip)
def gspo(
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token per-token loss: `s_{i,t} = sg[s_i] · π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]` with
    `s_i = exp((1/|o_i|) Σ_t log r_{i,t})` over the tokens in `mask`, and `ℓ = max(−A s, −A clip(s, 1−ε_low,
    1+ε_high))`.

    Equals sequence-level GSPO when A is constant within a response, and admits token-level advantages.
    Source: "Group Sequence Policy Optimization" (Zheng et al., 2025); defaults ε = 3e-4 / 4e-4 (paper §5.1).
    """
    check_clip(clip_low, clip_high)
    log_r = log_ratio(logprob, old_logprob)
    seq_log_r = masked_sum(log_r, mask, -1) / token_count(mask, -1).clamp(min=1)
    log_s = seq_log_r.detach()[:, None] + logprob - logprob.detach()
    per_token, stats = clipped_surrogate(torch.exp(log_s.clamp(max=20.0)), advantage, mask, clip_low, clip_high,
                                         None)
    return per_token, detached(stats | ratio_stats(log_r, mask))
