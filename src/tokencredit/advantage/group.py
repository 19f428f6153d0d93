"""Group-relative outcome advantages: one scalar per response, broadcast to its tokens.

Conventions match verl (`compute_grpo_outcome_advantage`, `compute_rloo_outcome_advantage`): the sequence
score is the sum of token rewards; the std is the unbiased one; ε = 1e-6 is added to the std.
Deviation from verl: a single-response group gets advantage 0 (verl uses mean 0, std 1, i.e. the raw
score), because one sample carries no relative information and must not push the policy on its own.
"""

from __future__ import annotations

from torch import Tensor

from tokencredit.groups import group_stats
from tokencredit.masked import zero_outside
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


def broadcast(seq_advantage: Tensor, mask: Tensor) -> Tensor:
    """Per-response advantage `[B]` → `[B,T]`, 0 outside mask."""
    return zero_outside(seq_advantage[:, None], mask)


def grpo_sequence_advantage(rollouts: Rollouts, eps: float = 1e-6, scale_by_std: bool = True) -> Tensor:
    """Per-response GRPO advantage `[B]`: `(R_i − mean_g R) / (std_g R + ε)`, 0 for single-response groups."""
    reward = rollouts.sequence_reward()
    mean, std, count = group_stats(reward, rollouts.group)
    centred = reward - mean
    adv = centred / (std + eps) if scale_by_std else centred
    return adv * (count > 1)


@register("advantage", "grpo")
def grpo(rollouts: Rollouts, eps: float = 1e-6) -> Tensor:
    """GRPO: `Â_i = (R_i − mean_g R) / (std_g R + ε)` with the unbiased group std, broadcast to every token.

    Source: "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models" (Shao et al.,
    2024). Zero-variance groups give 0 (numerator is 0); single-response groups give 0.
    """
    return broadcast(grpo_sequence_advantage(rollouts, eps), rollouts.mask)


@register("advantage", "dr_grpo")
def dr_grpo(rollouts: Rollouts) -> Tensor:
    """Dr.GRPO: `Â_i = R_i − mean_g R` (no std normalisation, removing the difficulty bias).

    Source: "Understanding R1-Zero-Like Training: A Critical Perspective" (Liu et al., 2025). Pair it with
    the `seq_mean_token_sum_norm` aggregation (constant length normaliser) as the `dr_grpo` preset does.
    """
    return broadcast(grpo_sequence_advantage(rollouts, scale_by_std=False), rollouts.mask)


@register("advantage", "rloo")
def rloo(rollouts: Rollouts) -> Tensor:
    """RLOO: `Â_i = R_i − (1/(G−1)) Σ_{j≠i} R_j = G/(G−1) · (R_i − mean_g R)`.

    Source: "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
    LLMs" (Ahmadian et al., 2024). Single-response groups give 0.
    """
    reward = rollouts.sequence_reward()
    mean, _, count = group_stats(reward, rollouts.group)
    adv = (reward - mean) * count / (count - 1).clamp(min=1)
    return broadcast(adv * (count > 1), rollouts.mask)
