"""Loss aggregation: one coefficient per response, one reduction.

Every mode is `L = Σ_i c_i Σ_t m_{i,t} ℓ_{i,t}` with one coefficient `c_i` per response, so the registered
`aggregate` stage functions return the coefficients `c [B]` of a whole batch, and `weighted_token_sum` is the
one reduction. A batch split into micro-batches (or ranks) gives exactly the full batch's loss and gradient
when each part uses its slice of the whole batch's coefficients (`coef=`); computing a token mean per
micro-batch instead is the bug this design rules out. The normalisers can also be given whole
(`num_tokens=`, `num_seqs=`).

    fn(mask [B,T], *, <context it reads>, **params) -> c [B]

The context a recipe offers is `advantage` [B,T], `group` [B] and `budget` (the generation budget); each mode
names in its signature what it reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.groups import group_index, group_sum
from tokencredit.masked import masked_sum, token_count
from tokencredit.needs import Needs
from tokencredit.registry import accepted, get, register

Count = int | float | Tensor | None


def _count(default: Tensor, given: Count) -> Tensor:
    value = default if given is None else torch.as_tensor(given, dtype=torch.float32, device=default.device)
    return value.float().clamp(min=1)


def _num_seqs(lengths: Tensor, num_seqs: Count) -> Tensor:
    """Responses that have at least one token (dropped or empty rows do not dilute the mean)."""
    return _count(lengths.gt(0).sum(), num_seqs)


@register("aggregate", "token_mean")
def token_mean(mask: Tensor, *, num_tokens: Count = None) -> Tensor:
    """token_mean (DAPO): `L = Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|`, i.e. `c_i = 1/N_tokens`.

    Source: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (Yu et al., 2025)."""
    return _count(token_count(mask), num_tokens).expand(mask.shape[0]) ** -1


@register("aggregate", "seq_mean_token_mean")
def seq_mean_token_mean(mask: Tensor, *, num_seqs: Count = None) -> Tensor:
    """seq_mean_token_mean (GRPO): `L = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}`, `c_i = 1/(N·|o_i|)`.

    Source: "DeepSeekMath" (Shao et al., 2024). N counts responses with at least one token."""
    lengths = token_count(mask, -1)
    return 1.0 / (_num_seqs(lengths, num_seqs) * lengths.clamp(min=1))


@register("aggregate", "seq_mean_token_sum")
def seq_mean_token_sum(mask: Tensor, *, num_seqs: Count = None) -> Tensor:
    """seq_mean_token_sum: `L = (1/N) Σ_i Σ_t ℓ_{i,t}`, `c_i = 1/N` (verl's `seq-mean-token-sum`)."""
    return _num_seqs(token_count(mask, -1), num_seqs).expand(mask.shape[0]) ** -1


def _needs_budget(budget: int | None = None, **_) -> Needs:
    return Needs(inputs={"budget"}) if budget is None else Needs()


def _check_budget(budget: int | float | None = None) -> None:
    if budget is not None and not budget > 0:
        raise ValueError(f"budget: expected a positive length normaliser, got {budget}")


@register("aggregate", "seq_mean_token_sum_norm", needs=_needs_budget, check=_check_budget)
def seq_mean_token_sum_norm(mask: Tensor, *, budget: int | float | None = None, num_seqs: Count = None) -> Tensor:
    """seq_mean_token_sum_norm (Dr.GRPO): `L = Σ_{i,t} ℓ_{i,t} / (N · L_max)`, `c_i = 1/(N·L_max)` with the
    generation budget L_max (the most tokens a response may have: the trainer's `max_new_tokens`, TRL's
    `max_completion_length`, verl's response length) as the constant length normaliser.

    The constant must not depend on the batch: a batch padded wider (to its longest response) has the same loss.
    A recipe passes `Rollouts.budget`; set `agg_params={"budget": L}` for another constant.
    Source: "Understanding R1-Zero-Like Training: A Critical Perspective" (Liu et al., 2025)."""
    if budget is None:
        raise ValueError("budget: aggregation 'seq_mean_token_sum_norm' needs the generation budget (the most tokens "
                         "a response may have) as its constant normaliser; got None")
    _check_budget(budget)
    return seq_mean_token_sum(mask, num_seqs=num_seqs) / float(budget)


def _check_denominator(denominator: str = "signed") -> None:
    if denominator not in ("signed", "group"):
        raise ValueError(f"denominator: expected 'signed' or 'group', got {denominator!r}")


@register("aggregate", "balanced", check=_check_denominator)
def balanced(
    mask: Tensor,
    *,
    advantage: Tensor | None = None,
    group: Tensor | None = None,
    denominator: str = "signed",
) -> Tensor:
    """Balanced Aggregation: per group, token means over the positive and the negative responses separately,
    combined with sequence-count weights, then averaged over groups:

        L_g = n⁺/(n⁺+n⁻) · Σ_{i∈P}Σ_t ℓ / Σ_{i∈P}|o_i|  +  n⁻/(n⁺+n⁻) · Σ_{i∈N}Σ_t ℓ / Σ_{i∈N}|o_i|,
        L = mean over groups with n⁺+n⁻ > 0 of L_g.

    A response's sign is the sign of its summed token advantage; zero-advantage responses get coefficient 0.
    `denominator="group"` uses the group size G instead of n⁺+n⁻ (the card leaves this open). `group=None`
    treats the batch as one group. Source: "Balanced Aggregation: Understanding and Fixing Aggregation Bias
    in GRPO" (Zeng et al., 2026); exact coefficients are the card's reconstruction.
    """
    if advantage is None:
        raise ValueError("advantage: aggregation 'balanced' needs advantage=[B,T] (or coef=[B])")
    _check_denominator(denominator)
    sign = torch.sign(masked_sum(advantage, mask, -1))
    if group is None:
        group = torch.zeros_like(sign, dtype=torch.int64)
    index, g = group_index(group)
    length = token_count(mask, -1).float()
    pos, neg = (sign > 0).float(), (sign < 0).float()
    n_pos, n_neg = group_sum(pos, index, g), group_sum(neg, index, g)
    tok_pos, tok_neg = group_sum(pos * length, index, g), group_sum(neg * length, index, g)
    n_total = n_pos + n_neg if denominator == "signed" else group_sum(torch.ones_like(pos), index, g)
    active = (n_pos + n_neg > 0).float()
    num_groups = active.sum().clamp(min=1)
    coef_pos = n_pos / (n_total.clamp(min=1) * tok_pos.clamp(min=1) * num_groups)
    coef_neg = n_neg / (n_total.clamp(min=1) * tok_neg.clamp(min=1) * num_groups)
    return pos * coef_pos[index] + neg * coef_neg[index]


def coefficients(name: str, mask: Tensor, **context_and_params) -> Tensor:
    """The coefficients `c [B]` of the registered aggregation `name` over a whole batch. Context entries the mode
    does not read (`advantage`, `group`, `budget`) are dropped; anything else is the mode's parameter."""
    fn = get("aggregate", name)
    context = {k: context_and_params.pop(k) for k in ("advantage", "group", "budget") if k in context_and_params}
    return fn(mask, **accepted(fn, context), **context_and_params)


def weighted_token_sum(loss: Tensor, mask: Tensor, coef: Tensor) -> Tensor:
    """`Σ_i c_i Σ_t m_{i,t} ℓ_{i,t}` — the one reduction every aggregation is."""
    return (masked_sum(loss, mask, -1) * coef).sum()


def aggregate(name: str, loss: Tensor, mask: Tensor, *, coef: Tensor | None = None, **context_and_params) -> Tensor:
    """The scalar `Σ_i c_i Σ_t m ℓ` of aggregation `name`; `coef` (the whole batch's, sliced) skips computing them."""
    if coef is None:
        coef = coefficients(name, mask, **context_and_params)
    return weighted_token_sum(loss, mask, coef)
