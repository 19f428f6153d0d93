"""Loss aggregation: per-token loss `[B,T]` + mask → scalar.

Every mode is a weighted sum `L = Σ_i c_i Σ_t m_{i,t} ℓ_{i,t}` with one coefficient `c_i` per response, so a
batch split into micro-batches gives exactly the full batch's loss and gradient when each micro-batch uses
the coefficients of the whole batch: pass the whole batch's normaliser (`num_tokens=`, `num_seqs=`) or its
precomputed coefficients (`seq_weight=`, from `aggregation_weight`). Computing a token mean per micro-batch
(or per rank) instead is the bug this design rules out.

`advantage` and `group` are read by `balanced` only; the other modes accept and ignore them so that every
mode has one signature.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tokencredit.groups import group_index, group_sum
from tokencredit.masked import masked_sum, token_count
from tokencredit.registry import register

Count = int | float | Tensor | None


def _count(default: Tensor, given: Count) -> Tensor:
    value = default if given is None else torch.as_tensor(given, dtype=torch.float32, device=default.device)
    return value.float().clamp(min=1)


def _num_seqs(lengths: Tensor, num_seqs: Count) -> Tensor:
    """Responses that have at least one token (dropped or empty rows do not dilute the mean)."""
    return _count(lengths.gt(0).sum(), num_seqs)


def token_mean_weight(mask: Tensor, *, num_tokens: Count = None, **_unused) -> Tensor:
    """token_mean (DAPO): `L = Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|`, i.e. `c_i = 1/N_tokens`.

    Source: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (Yu et al., 2025)."""
    return _count(token_count(mask), num_tokens).expand(mask.shape[0]) ** -1


def seq_mean_token_mean_weight(mask: Tensor, *, num_seqs: Count = None, **_unused) -> Tensor:
    """seq_mean_token_mean (GRPO): `L = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}`, `c_i = 1/(N·|o_i|)`.

    Source: "DeepSeekMath" (Shao et al., 2024). N counts responses with at least one token."""
    lengths = token_count(mask, -1)
    return 1.0 / (_num_seqs(lengths, num_seqs) * lengths.clamp(min=1))


def seq_mean_token_sum_weight(mask: Tensor, *, num_seqs: Count = None, **_unused) -> Tensor:
    """seq_mean_token_sum: `L = (1/N) Σ_i Σ_t ℓ_{i,t}`, `c_i = 1/N` (verl's `seq-mean-token-sum`)."""
    return _num_seqs(token_count(mask, -1), num_seqs).expand(mask.shape[0]) ** -1


def seq_mean_token_sum_norm_weight(
    mask: Tensor, *, norm: float | None = None, num_seqs: Count = None, **_unused
) -> Tensor:
    """seq_mean_token_sum_norm (Dr.GRPO): `L = Σ_{i,t} ℓ_{i,t} / (N · L_const)`, `c_i = 1/(N·L_const)` with a
    constant length normaliser (default T, the padded length, i.e. the generation budget).

    Source: "Understanding R1-Zero-Like Training: A Critical Perspective" (Liu et al., 2025)."""
    if norm is not None and norm <= 0:
        raise ValueError(f"norm: expected a positive length normaliser, got {norm}")
    return seq_mean_token_sum_weight(mask, num_seqs=num_seqs) / float(norm or max(mask.shape[1], 1))


def balanced_weight(
    mask: Tensor,
    *,
    advantage: Tensor | None = None,
    group: Tensor | None = None,
    denominator: str = "signed",
    **_unused,
) -> Tensor:
    """Balanced Aggregation: per group, token means over the positive and the negative responses separately,
    combined with sequence-count weights, then averaged over groups:

        L_g = n⁺/(n⁺+n⁻) · Σ_{i∈P}Σ_t ℓ / Σ_{i∈P}|o_i|  +  n⁻/(n⁺+n⁻) · Σ_{i∈N}Σ_t ℓ / Σ_{i∈N}|o_i|,
        L = mean over groups with n⁺+n⁻ > 0 of L_g.

    A response's sign is the sign of its summed token advantage; zero-advantage responses get weight 0.
    `denominator="group"` uses the group size G instead of n⁺+n⁻ (the card leaves this open). `group=None`
    treats the batch as one group. Source: "Balanced Aggregation: Understanding and Fixing Aggregation Bias
    in GRPO" (Zeng et al., 2026); exact weights are the card's reconstruction.
    """
    if advantage is None:
        raise ValueError("advantage: aggregation 'balanced' needs advantage=[B,T] (or seq_weight=[B])")
    if denominator not in ("signed", "group"):
        raise ValueError(f"denominator: expected 'signed' or 'group', got {denominator!r}")
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


_WEIGHTS: dict[str, Callable[..., Tensor]] = {
    "token_mean": token_mean_weight,
    "seq_mean_token_mean": seq_mean_token_mean_weight,
    "seq_mean_token_sum": seq_mean_token_sum_weight,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm_weight,
    "balanced": balanced_weight,
}


def aggregation_weight(name: str, mask: Tensor, **params) -> Tensor:
    """Per-response coefficients `c [B]` of aggregation `name` over a whole batch; slice them to micro-batches
    and pass them as `seq_weight=` to get the whole batch's loss exactly."""
    if name not in _WEIGHTS:
        raise ValueError(f"agg: unknown aggregation {name!r}; expected one of {sorted(_WEIGHTS)}")
    return _WEIGHTS[name](mask, **params)


def weighted_token_sum(loss: Tensor, mask: Tensor, seq_weight: Tensor) -> Tensor:
    """`Σ_i c_i Σ_t m_{i,t} ℓ_{i,t}` — the one reduction every aggregation is."""
    return (masked_sum(loss, mask, -1) * seq_weight).sum()


def _register(name: str, weight_fn: Callable[..., Tensor]) -> None:
    def aggregate(loss: Tensor, mask: Tensor, *, seq_weight: Tensor | None = None, **params) -> Tensor:
        if seq_weight is None:
            seq_weight = weight_fn(mask, **params)
        return weighted_token_sum(loss, mask, seq_weight)

    aggregate.__name__ = aggregate.__qualname__ = name
    aggregate.__doc__ = weight_fn.__doc__
    register("aggregate", name)(aggregate)


for _name, _fn in _WEIGHTS.items():
    _register(_name, _fn)
