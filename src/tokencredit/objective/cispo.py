"""CISPO: clipped importance-sampling ratio as a constant factor, gradient through every token."""

from __future__ import annotations

from torch import Tensor

from tokencredit.masked import masked_mean, zero_outside
from tokencredit.objective.ppo import BEHAVIOUR_LOGPROB
from tokencredit.objective.surrogate import check_clip, detached, log_ratio, ratio_stats
from tokencredit.registry import register


@register("objective", "cispo", needs=BEHAVIOUR_LOGPROB, check=check_clip)
def cispo(
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 1.0,
    clip_high: float = 0.28,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token loss `ℓ_{i,t} = −sg(clip(r_{i,t}, 1−ε_low, 1+ε_high)) · A_{i,t} · log π_θ(o_{i,t})`.

    Unlike PPO no token is dropped by clipping; only the importance ratio is bounded. Source: "MiniMax-M1:
    Scaling Test-Time Compute Efficiently with Lightning Attention" (MiniMax, 2025). The paper sets no lower
    bound (ε_low = 1 here) and tunes ε_high.
    """
    check_clip(clip_low, clip_high)
    log_r = log_ratio(logprob, old_logprob)
    ratio = log_r.exp()
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    # log π_θ masked before the product too: a NaN or inf in the padding would reach its gradient as 0·NaN
    per_token = zero_outside(-clipped_ratio * advantage * zero_outside(logprob, mask), mask)
    stats = {"clip_frac": masked_mean((ratio > 1.0 + clip_high).float(), mask)} | ratio_stats(log_r, mask)
    return per_token, detached(stats)
