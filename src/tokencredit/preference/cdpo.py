"""cDPO: DPO with per-token weights from contrastive estimation (critical tokens get the weight)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencredit.masked import token_count
from tokencredit.needs import Needs
from tokencredit.pairs import Pairs
from tokencredit.preference.common import (
    Count,
    check_choice,
    check_positive,
    log_ratios,
    mean_over_pairs,
    nll_sigmoid,
    pair_stats,
    side_inputs,
    weighted_rewards,
)
from tokencredit.registry import register

REDUCTIONS = ("sequence", "position_aligned")
WHO = "preference 'cdpo'"


@register("preference", "cdpo", needs=Needs(inputs={"ref_logprob", "weight"}))
def cdpo(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.1,
    reduction: str = "sequence",
    positions: int | None = None,
    num_pairs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """cDPO, token-weighted DPO with given weights `a_t` (chosen, `Pairs.chosen_weight`) and `b_t` (rejected,
    `Pairs.rejected_weight`), both constants:

    * `reduction="sequence"` (the paper's): `ℓ_i = −log σ(β [Σ_t a_t Δ_t(y_w) − Σ_t b_t Δ_t(y_l)])`;
    * `reduction="position_aligned"` (the released trainer's): chosen token t against rejected token t,
      `ℓ_{i,t} = −log σ(β (a_t Δ_t(y_w) − b_t Δ_t(y_l)))` at every position t where either response has a token
      (a side without a token there contributes 0 to the difference), averaged over the pair's positions:
      `ℓ_i = Σ_t ℓ_{i,t} / |U_i|`, U_i the positions of either response. `positions=L` instead averages over a
      constant L positions, the ones outside both responses adding `log 2` each (no gradient), which is
      exactly the released code's mean over the padded prompt+response width L.

    `L = Σ_i ℓ_i / num_pairs`. The weights come from contrastive estimation, `s_t = softmax((1+γ) z^p − γ z^q)[y^t]`
    of a positive and a negative fine-tuned model, `b_t = 1 − s_t` on the rejected response (1 at the final
    position in the code) and `a_t = s_t`, or `a ≡ 1` in the released default (`only_neg=True`).

    Source: "Critical Tokens Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning Capability"
    (Lin et al., ICML 2025); code `chenzhiling9954/Critical-Tokens-Matter` (`src/train/train_cdpo.py`).
    Choices: `Pairs.rejected_weight` is required; a missing `Pairs.chosen_weight` means `a ≡ 1` (the released
    `only_neg=True`). Responses are aligned by their first response token (the prompt is shared). Without
    `positions`, a pair with no tokens at all contributes 0. Degenerate: `a ≡ b ≡ 1` with `reduction="sequence"`
    is DPO.
    """
    check_positive("beta", beta)
    check_choice("reduction", reduction, REDUCTIONS)
    if positions is not None and (isinstance(positions, bool) or not isinstance(positions, int) or positions < 1):
        raise ValueError(f"positions: expected a positive int (the padded width the released code averages over), "
                         f"got {positions!r}")
    if positions is not None and reduction != "position_aligned":
        raise ValueError("positions: only reduction='position_aligned' averages over positions")
    pairs.require("weight", WHO, sides=("rejected",))
    delta_c, delta_r = log_ratios(pairs, chosen_logprob, rejected_logprob, WHO)
    a, b = side_inputs(pairs, "weight", WHO, delta_c.dtype, default=1.0)
    chosen, rejected = weighted_rewards(delta_c, delta_r, pairs, beta, a, b)
    if reduction == "sequence":
        per_pair = nll_sigmoid(chosen - rejected)
    else:
        per_pair = _position_aligned(beta * a * delta_c, beta * b * delta_r, pairs, positions)
    return mean_over_pairs(per_pair, pairs, num_pairs), pair_stats(chosen, rejected)


def _position_aligned(chosen: Tensor, rejected: Tensor, pairs: Pairs, positions: int | None) -> Tensor:
    """`[B]`: the mean over positions of `−log σ(chosen_t − rejected_t)` (each 0 outside its own mask)."""
    width = max(chosen.shape[1], rejected.shape[1])

    def pad(x: Tensor) -> Tensor:
        return F.pad(x, (0, width - x.shape[1]))

    union = pad(pairs.chosen_mask) | pad(pairs.rejected_mask)
    per_position = torch.where(union, nll_sigmoid(pad(chosen) - pad(rejected)), 0.0)
    count = token_count(union, -1).to(per_position.dtype)
    if positions is None:
        return per_position.sum(-1) / count.clamp(min=1)
    longest = int(count.max().item()) if count.numel() else 0
    if positions < longest:
        raise ValueError(f"positions: expected at least the most response positions of a pair ({longest}), "
                         f"got {positions}")
    return (per_position.sum(-1) + (positions - count) * math.log(2.0)) / positions
