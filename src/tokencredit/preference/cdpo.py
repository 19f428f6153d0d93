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
WEIGHTS = ("given", "critical")
WHO = "preference 'cdpo'"


def critical_token_weights(index: Tensor, mask: Tensor, *, window: int = 0, floor: float = 0.0) -> Tensor:
    """cDPO's rejected-side weights `b_t` `[B,T]` from rollout-found critical tokens (`tokencredit critical`,
    `analysis.critical_tokens`) instead of the contrastive estimate `1 − s_t`:

        b_t = 1       |t − t*| ≤ window  (the critical token and its neighbourhood)  or  t = T_i − 1 (the last token)
        b_t = floor   elsewhere on the response;       b ≡ 1 on a response without a critical token

    `index [B]` int is t* per response (−1, or an index outside the response: none). The card's weights put ≈1 on
    the tokens the positive model disfavours (the critical candidates) and ≈0 where the two models agree, and the
    released code gives the final (EOS) position weight 1; the rollout search marks the critical token directly,
    so it gets the 1 and the tokens it says nothing about get `floor` (0: only t*, its neighbours and the EOS are
    pushed down). A response without t* keeps DPO's uniform weight. 0 outside `mask`.

    Source: "Critical Tokens Matter" (Lin et al., ICML 2025): §3 (rollout critical tokens) and the cDPO weights.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window: expected a non-negative int (tokens on each side of t*), got {window!r}")
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor: expected a weight in [0, 1], got {floor!r}")
    if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool \
            or index.shape[0] != mask.shape[0]:
        got = f"dtype {index.dtype}, shape {list(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"Pairs.extra['rejected_critical']: expected an int tensor of shape [B] = "
                         f"[{mask.shape[0]}], got {got}")
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    length = token_count(mask, -1)[:, None]
    index = index.to(mask.device)[:, None]
    found = (index >= 0) & (index < length)
    near = (positions - index).abs() <= window
    weight = torch.where(near | (positions == length - 1), 1.0, float(floor))
    return torch.where(found & mask, weight, mask.float())


def _needs(weights: str = "given", **_) -> Needs:
    return Needs(inputs={"ref_logprob", "critical" if weights == "critical" else "weight"})


@register("preference", "cdpo", needs=_needs)
def cdpo(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.1,
    reduction: str = "sequence",
    positions: int | None = None,
    weights: str = "given",
    window: int = 0,
    floor: float = 0.0,
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
    `only_neg=True`). `weights="critical"` instead derives `b` from the rollout-found critical token of each
    rejected response (`Pairs.extra["rejected_critical"]`, `critical_token_weights` with `window` and `floor`),
    with `a ≡ 1`. Responses are aligned by their first response token (the prompt is shared). Without
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
    check_choice("weights", weights, WEIGHTS)
    if weights == "critical":
        (index,) = pairs.require("critical", WHO, sides=("rejected",))
        pairs = pairs.with_inputs(chosen_weight=None, rejected_weight=critical_token_weights(
            index, pairs.rejected_mask, window=window, floor=floor))
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
