"""Token masks that keep the top fraction of a per-token score: high-entropy "forking" tokens (score H) and
D³S token down-sampling (score |A|·H)."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.weight.inputs import token_field


def top_fraction_mask(score: Tensor, mask: Tensor, top: float, keep: Tensor | None = None) -> Tensor:
    """`1[score ≥ τ] · mask` as float32 `[B,T]`, τ the (1−`top`)-quantile of `score` over the tokens in the loss
    (`keep [B,T]`; None: every token of `mask`). The top `top_count(n, top)` of the n candidate scores, and every
    score tied with the last of them, pass (so a threshold of 0 passes every zero score). No candidate token
    gives all zeros; `top` = 1 gives the mask."""
    if not 0.0 < top <= 1.0:
        raise ValueError(f"top: expected a fraction in (0, 1], got {top}")
    if top == 1.0:
        return mask.float()
    candidates = mask if keep is None else mask & keep
    values = score[candidates]
    if values.numel() == 0:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    threshold = torch.topk(values, top_count(values.numel(), top)).values[-1]
    return ((score >= threshold) & mask).float()


def top_count(n: int, top: float) -> int:
    """How many of n tokens a top fraction keeps: round(top·n), at least one."""
    return max(1, round(top * n))


@register("weight", "forking_tokens", needs=Needs(inputs={"entropy"}))
def forking_tokens(rollouts: Rollouts, advantage: Tensor, top: float = 0.2, keep: Tensor | None = None) -> Tensor:
    """`m_{i,t} = 1[H_{i,t} ≥ τ_ρ]`, τ_ρ the (1−ρ)-quantile of token entropy over the response tokens of the
    batch's kept responses (ρ = `top`, paper value 0.2; ρ = 1 keeps every token). The loss normaliser is
    unchanged.

    Source: "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning"
    (Wang et al., 2025). Entropy is read from `rollouts.entropy` (the sampling policy's; it equals the
    current policy's at the first on-policy epoch). Ties at τ are all kept. `keep [B,T]` (passed by
    `Recipe.credit`: the tokens in the loss) leaves dropped responses and tokens out of the quantile, as the
    paper's DAPO batches hold only the groups that dynamic sampling kept.
    """
    return top_fraction_mask(token_field(rollouts, "entropy", "forking_tokens"), rollouts.mask, top, keep)


@register("weight", "d3s_tokens", needs=Needs(inputs={"entropy"}))
def d3s_tokens(rollouts: Rollouts, advantage: Tensor, top: float = 0.2, keep: Tensor | None = None) -> Tensor:
    """D³S token-level down-sampling: `m_{i,t} = 1[|A_{i,t}|·H_{i,t} ≥ τ_K]`, τ_K the (1−K)-quantile of the score
    over the tokens in the loss (`keep [B,T]`: those of the sample-selected responses), K = `top`. With a
    per-response advantage this ranks tokens by entropy within a response and by |A| across responses. K = 1 keeps
    every token.

    Source: "Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
    Optimization" (Wang et al., 2025). Pair it with the `d3s_samples` select stage (the `d3s` preset); K may
    follow a schedule over training progress. Ties at τ are all kept.
    """
    score = advantage.float().abs() * token_field(rollouts, "entropy", "d3s_tokens")
    return top_fraction_mask(score, rollouts.mask, top, keep)
