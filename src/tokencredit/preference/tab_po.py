"""TAB-PO: length-normalised, token-weighted DPO plus a confidence-gated NLL barrier on the chosen tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencredit.masked import masked_sum, token_count, zero_outside
from tokencredit.needs import Needs
from tokencredit.pairs import Pairs
from tokencredit.preference.common import (
    Count,
    check_nonnegative,
    check_positive,
    mean_over_pairs,
    nll_sigmoid,
    pair_stats,
    policy_logprobs,
    sequence_mean,
    side_inputs,
)
from tokencredit.registry import register

WHO = "preference 'tab_po'"


def renormalised(weight: Tensor, mask: Tensor) -> Tensor:
    """Weights rescaled per response to mean 1 over its tokens, 0 outside `mask` (a response whose weights sum to
    0 keeps 0)."""
    total = masked_sum(weight, mask, -1)
    count = token_count(mask, -1).to(weight.dtype)
    scale = torch.where(total != 0, count / torch.where(total != 0, total, 1.0), 0.0)
    return zero_outside(weight * scale[:, None], mask)


@register("preference", "tab_po", needs=Needs(inputs={"ref_logprob"}))
def tab_po(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.5,
    tau: float = 0.66,
    barrier: float = 0.5,
    renormalise: bool = True,
    num_pairs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """TAB-PO: `ℓ_i = ℓ^pref_i + λ ℓ^bar_i`, `L = Σ_i ℓ_i / num_pairs`, with token weights w̃ (`Pairs.<side>_weight`,
    1 where absent, rescaled per response to mean 1 over its tokens), the weighted mean log-prob
    `ℓ̄(y) = (1/T_y) Σ_t w̃_t log π(y^t|s_t)` under the policy and the reference, and

        ℓ^pref = −log σ(β [(ℓ̄_θ(y_w) − ℓ̄_θ(y_l)) − (ℓ̄_ref(y_w) − ℓ̄_ref(y_l))])
        ℓ^bar  = Σ_t w̃_t g_t (−log π_θ(y_w^t|s_t)) / max(1, Σ_t w̃_t g_t),   g_t = 1[log π_θ(y_w^t|s_t) < log τ]

    The barrier is a gated NLL on the chosen tokens the policy is under-confident about (below τ): it restores
    under-confident correct schema tokens against likelihood squeezing ("token erosion").

    Source: "Preference Optimization with a Token-Level Adaptive Barrier for Token-Critical Structured
    Generation" (Fodeh et al., 2026); the loss follows the authors' training script (spec §7).
    Choices: defaults are the script's config dataclass (β = 0.5, τ = 0.66, λ = `barrier` = 0.5; its header
    echoes other values); the gate reads the policy's log-probs without gradient (an indicator);
    `renormalise=False` uses the weights as given. Token weights come from `tab_po_weights` (schema-field
    weights, position-aligned differing tokens). Degenerate: all weights 1 and λ = 0 is DPO on mean
    (length-normalised) log-probs; λ = 0 is weighted DPO; τ = 1 (gate on for every token of probability < 1) is
    DPO plus a weighted mean NLL of y_w (DPOP/RPO-like).
    """
    check_positive("beta", beta)
    check_nonnegative("barrier", barrier)
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0.0 < tau <= 1.0:
        raise ValueError(f"tau: expected a probability threshold in (0, 1], got {tau!r}")
    logprob_c, logprob_r = policy_logprobs(pairs, chosen_logprob, rejected_logprob)
    dtype, cmask, rmask = logprob_c.dtype, pairs.chosen_mask, pairs.rejected_mask
    ref_c, ref_r = side_inputs(pairs, "ref_logprob", WHO, dtype)
    weight_c, weight_r = side_inputs(pairs, "weight", WHO, dtype, default=1.0)
    if renormalise:
        weight_c, weight_r = renormalised(weight_c, cmask), renormalised(weight_r, rmask)
    policy = sequence_mean(weight_c * logprob_c, cmask) - sequence_mean(weight_r * logprob_r, rmask)
    reference = sequence_mean(weight_c * ref_c, cmask) - sequence_mean(weight_r * ref_r, rmask)
    logit = beta * (policy - reference)
    gated = weight_c * ((logprob_c.detach() < math.log(tau)) & cmask)
    nll = masked_sum(gated * -logprob_c, cmask, -1) / masked_sum(gated, cmask, -1).clamp(min=1.0)
    per_pair = nll_sigmoid(logit) + barrier * nll
    chosen = beta * (sequence_mean(weight_c * logprob_c, cmask) - sequence_mean(weight_c * ref_c, cmask))
    rejected = beta * (sequence_mean(weight_r * logprob_r, rmask) - sequence_mean(weight_r * ref_r, rmask))
    gate_share = token_count((gated > 0) & cmask, -1) / token_count(cmask, -1).clamp(min=1)
    stats = pair_stats(chosen, rejected, barrier=nll, gated=gate_share)
    return mean_over_pairs(per_pair, pairs, num_pairs), stats


def tab_po_weights(
    pairs: Pairs,
    *,
    chosen_field: Tensor | None = None,
    rejected_field: Tensor | None = None,
    w_diff: float = 1.2,
) -> tuple[Tensor, Tensor]:
    """TAB-PO's raw token weights `(chosen [B,T_c], rejected [B,T_r])` float32, 0 outside the masks (the loss
    rescales them to mean 1 per response):

    * start at 1 on every response token;
    * `<side>_field [B,T]` (optional): the schema-field weight of each token (the script's w_code = 1.1,
      w_sub = 1.2, w_span = 1.1 on tokens inside those JSON values, anything ≤ 1 elsewhere); a token takes
      `max(1, field)`;
    * tokens that differ position by position (chosen token t ≠ rejected token t, from `Pairs.<side>_tokens`)
      are multiplied by `w_diff` on both sides.

    Choices: a token with no counterpart (beyond the other response's end) counts as differing. Put the result on
    the pairs with `pairs.with_inputs(chosen_weight=c, rejected_weight=r)`.
    """
    check_positive("w_diff", w_diff)
    tokens_c, tokens_r = pairs.require("tokens", "tab_po_weights")
    cmask, rmask = pairs.chosen_mask, pairs.rejected_mask
    weights = []
    for field, mask, text, name in ((chosen_field, cmask, "[B,T_c]", "chosen_field"),
                                    (rejected_field, rmask, "[B,T_r]", "rejected_field")):
        w = torch.ones(mask.shape, device=mask.device)
        if field is not None:
            if not isinstance(field, Tensor) or not field.is_floating_point() or field.shape != mask.shape:
                got = list(field.shape) if isinstance(field, Tensor) else type(field).__name__
                raise ValueError(f"{name}: expected a float tensor of shape {text} = {list(mask.shape)}, got {got}")
            w = torch.maximum(w, field.float())
        weights.append(w)
    width = max(cmask.shape[1], rmask.shape[1])

    def pad(x: Tensor) -> Tensor:
        return F.pad(x, (0, width - x.shape[1]))

    same = pad(cmask) & pad(rmask) & (pad(tokens_c) == pad(tokens_r))
    differ_c, differ_r = cmask & ~same[:, : cmask.shape[1]], rmask & ~same[:, : rmask.shape[1]]
    return (zero_outside(torch.where(differ_c, weights[0] * w_diff, weights[0]), cmask),
            zero_outside(torch.where(differ_r, weights[1] * w_diff, weights[1]), rmask))
