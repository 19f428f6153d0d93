"""REINFORCE++: return-to-go advantages whitened over the whole batch.

Source: "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models" (Hu, 2025).
Matches verl's `compute_reinforce_plus_plus_outcome_advantage` / `..._baseline_outcome_advantage`:
the whitening uses the unbiased variance over all response tokens of the batch, `(x − μ)/sqrt(σ² + 1e-8)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.discount import discounted_reverse_cumsum
from tokencredit.groups import group_stats
from tokencredit.masked import last_index, masked_whiten_, masked_whiten_rows
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.shape.outcome import outcome


@register("advantage", "reinforce_pp")
def reinforce_pp(rollouts: Rollouts, gamma: float = 1.0) -> Tensor:
    """`G_t = Σ_{k≥t} γ^{k−t} r_k` (token rewards from the `outcome` shape when rewards are per sequence),
    then `A = whiten_batch(G)` over the response tokens.

    A per-sequence reward R sits on the last token L, so there `G_t = γ^{L−t}·R` in closed form (no cumsum);
    with γ = 1 every token of a response has the return R, and the whitening statistics come from `[B]`."""
    mask = rollouts.mask
    if rollouts.reward.dim() == 2:
        returns = discounted_reverse_cumsum(outcome(rollouts), gamma)
    elif gamma == 1.0:
        return masked_whiten_rows(rollouts.reward.float(), mask)
    else:
        positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)
        steps = (last_index(mask).float()[:, None] - positions).clamp_(min=0)
        returns = torch.pow(gamma, steps, out=steps).mul_(rollouts.reward.float()[:, None])
    return masked_whiten_(returns, mask)


@register("advantage", "reinforce_pp_baseline")
def reinforce_pp_baseline(rollouts: Rollouts) -> Tensor:
    """`A = whiten_batch(R_i − mean_g R)`: the group mean is subtracted first, then the broadcast scores are
    whitened over the batch's response tokens. Single-response groups are centred to 0."""
    reward = rollouts.sequence_reward()
    mean, _, count = group_stats(reward, rollouts.group)
    centred = (reward - mean) * (count > 1)
    return masked_whiten_rows(centred, rollouts.mask)
