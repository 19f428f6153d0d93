"""PPO clipped surrogate (with clip-higher and dual clip) and its negative-samples-only variant."""

from __future__ import annotations

from torch import Tensor

from tokencredit.needs import Needs
from tokencredit.objective.surrogate import check_clip, clipped_surrogate, detached, log_ratio, ratio_stats
from tokencredit.registry import register

BEHAVIOUR_LOGPROB = Needs(inputs={"logprob"})


@register("objective", "ppo_clip", needs=BEHAVIOUR_LOGPROB, check=check_clip)
def ppo_clip(
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token loss `ℓ_{i,t} = max(−A r, −A clip(r, 1−ε_low, 1+ε_high))`, `r = exp(log π_θ − log π_old)`, 0
    outside `mask`, and stats (clip fractions, approx KL, max |r − 1|).

    Source: "Proximal Policy Optimization Algorithms" (Schulman et al., 2017); `clip_high > clip_low` is DAPO's
    clip-higher; `dual_clip=c` bounds the loss of negative-advantage tokens by −c·A. Aggregate the result with
    `tokencredit.objective.aggregate` (or call `tokencredit.objective.policy_loss` for one scalar).
    """
    check_clip(clip_low, clip_high, dual_clip)
    log_r = log_ratio(logprob, old_logprob)
    per_token, stats = clipped_surrogate(log_r.exp(), advantage, mask, clip_low, clip_high, dual_clip)
    return per_token, detached(stats | ratio_stats(log_r, mask))


@register("objective", "negative_only", needs=BEHAVIOUR_LOGPROB, check=check_clip)
def negative_only(
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clip with `A^N = min(A, 0)`: only negative-advantage tokens carry gradient.

    Source: "The Debate on RLVR Reasoning Capability Boundary: Shrinkage, Expansion, or Both?" (Yao et al.,
    2025; GRPO-N), equivalently NSR in "The Surprising Effectiveness of Negative Reinforcement in LLM
    Reasoning" (Zhu et al., 2025). The card leaves the normaliser open: here every response token stays in
    the aggregation's denominator; add the `negative_samples` select stage to count negative responses only.
    """
    return ppo_clip(logprob, old_logprob, advantage.clamp(max=0.0), mask, clip_low=clip_low, clip_high=clip_high,
                    dual_clip=dual_clip)
