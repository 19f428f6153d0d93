"""D³S sample-level down-sampling: the subset of responses whose advantages have the largest variance."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.masked import masked_sum, token_count
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


def max_variance_subset(values: Tensor, size: int) -> Tensor:
    """`keep [B]` bool marking `size` entries of `values [B]` whose variance is the largest over all subsets of
    that size.

    Such a subset is always the k largest and the size−k smallest values for some k (moving a middle element
    outward never lowers the variance), so with the values sorted the variance of each of the size+1 candidates
    comes from prefix sums of the centred, rescaled values: one vectorised pass, float64. Ties between candidates
    go to the smallest k."""
    b = values.numel()
    if not 0 <= size <= b:
        raise ValueError(f"size: expected 0 ≤ size ≤ {b} (the number of values), got {size}")
    keep = torch.zeros(b, dtype=torch.bool, device=values.device)
    if size == 0:
        return keep
    order = values.double().argsort()
    s = values.double()[order]
    s = s - s.mean()  # the variance does not move with a shift or a positive scale; without them the prefix sums
    s = s / s.abs().max().clamp(min=torch.finfo(s.dtype).tiny)  # of x² lose small spreads or over/underflow
    zero = s.new_zeros(1)
    sum1, sum2 = torch.cat([zero, s.cumsum(0)]), torch.cat([zero, (s * s).cumsum(0)])
    top = torch.arange(size + 1, device=values.device)  # k: how many of the largest values the candidate takes
    bottom = size - top
    total = sum1[bottom] + sum1[b] - sum1[b - top]
    squares = sum2[bottom] + sum2[b] - sum2[b - top]
    k = int((squares / size - (total / size) ** 2).argmax())
    keep[order[: size - k]] = True
    keep[order[b - k :]] = True
    return keep


def _check_fraction(fraction: float = 0.5) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a fraction in (0, 1], got {fraction}")


@register("select", "d3s_samples", check=_check_fraction)
def d3s_samples(rollouts: Rollouts, advantage: Tensor, fraction: float = 0.5) -> Tensor:
    """D³S cross-group sample down-sampling: keep the N = round(`fraction`·B) responses (at least one) whose
    advantages `A_i` have the largest variance, pooled over the whole batch without re-normalisation.
    `A_i` is the response's mean token advantage (for GRPO, its sequence advantage; an empty response has 0).
    Responses of all-equal groups (A = 0) are the first to be dropped. `fraction` = 1 keeps every response.

    Source: "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
    Optimization" (Wang et al., 2025); the max-variance subset rule is PODS's ("Not All Rollouts are Useful:
    Down-Sampling Rollouts in LLM Reinforcement Learning", Xu et al., 2025). The within-group variant of the
    paper is not implemented. `fraction` may follow a schedule over training progress.
    """
    _check_fraction(fraction)
    b = rollouts.mask.shape[0]
    size = min(b, max(1, round(fraction * b))) if b else 0
    per_response = masked_sum(advantage.float(), rollouts.mask, -1) / token_count(rollouts.mask, -1).clamp(min=1)
    return max_variance_subset(per_response, size)
