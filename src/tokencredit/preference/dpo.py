"""Sequence-level preference losses: DPO (sigmoid) and IPO, the reference point of every token-level variant."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.needs import Needs
from tokencredit.pairs import Pairs
from tokencredit.preference.common import (
    Count,
    check_positive,
    log_ratios,
    mean_over_pairs,
    nll_sigmoid,
    pair_stats,
    sequence_mean,
    weighted_rewards,
)
from tokencredit.registry import register

REF = Needs(inputs={"ref_logprob"})


@register("preference", "dpo", needs=REF)
def dpo(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    num_pairs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO (sigmoid): `ℓ_i = −log σ(z_i)`, `z_i = β Σ_t Δ_t(y_w) − β Σ_t Δ_t(y_l)`, with the per-token log-ratio
    `Δ_t(y) = log π_θ(y^t|s_t) − log π_ref(y^t|s_t)`; `L = Σ_i ℓ_i / num_pairs`.

    `label_smoothing = ε ∈ [0, 0.5)` gives the conservative form `−(1−ε) log σ(z) − ε log σ(−z)` (TRL's
    `label_smoothing`; cDPO's released config uses 0). Needs `Pairs.<side>_ref_logprob`.
    Source: "Direct Preference Optimization: Your Language Model is Secretly a Reward Model" (Rafailov et al.,
    2023). Identical chosen and rejected responses (or two empty ones) give `log 2`.
    """
    check_positive("beta", beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing: expected ε in [0, 0.5), got {label_smoothing!r}")
    delta_c, delta_r = log_ratios(pairs, chosen_logprob, rejected_logprob, "preference 'dpo'")
    chosen, rejected = weighted_rewards(delta_c, delta_r, pairs, beta)
    logit = chosen - rejected
    per_pair = nll_sigmoid(logit)
    if label_smoothing:
        per_pair = (1.0 - label_smoothing) * per_pair + label_smoothing * nll_sigmoid(-logit)
    return mean_over_pairs(per_pair, pairs, num_pairs), pair_stats(chosen, rejected)


@register("preference", "ipo", needs=REF)
def ipo(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.1,
    length_normalise: bool = False,
    num_pairs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """IPO: `ℓ_i = (h_i − 1/(2β))²`, `h_i = Σ_t Δ_t(y_w) − Σ_t Δ_t(y_l)` (β is the paper's τ);
    `L = Σ_i ℓ_i / num_pairs`.

    Source: "A General Theoretical Paradigm to Understand Learning from Human Preferences" (Azar et al., 2023).
    Choices: the paper's `h` sums the log-ratios over tokens (the default); `length_normalise=True` averages them
    over each response's tokens instead, as TRL's `loss_type="ipo"` does. Identical responses give `1/(4β²)`.
    Stats report the DPO-style implicit rewards `β Σ_t Δ_t`.
    """
    check_positive("beta", beta)
    delta_c, delta_r = log_ratios(pairs, chosen_logprob, rejected_logprob, "preference 'ipo'")
    sum_c, sum_r = weighted_rewards(delta_c, delta_r, pairs, 1.0)
    if length_normalise:
        h = sequence_mean(delta_c, pairs.chosen_mask) - sequence_mean(delta_r, pairs.rejected_mask)
    else:
        h = sum_c - sum_r
    per_pair = torch.square(h - 1.0 / (2.0 * beta))
    return mean_over_pairs(per_pair, pairs, num_pairs), pair_stats(beta * sum_c, beta * sum_r)
