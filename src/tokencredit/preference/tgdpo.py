"""TGDPO: DPO whose per-token β is scaled by a token reward from a previously trained DPO policy."""

from __future__ import annotations

import math

from torch import Tensor

from tokencredit.masked import token_count
from tokencredit.needs import Needs
from tokencredit.pairs import Pairs
from tokencredit.preference.common import (
    Count,
    check_positive,
    log_ratios,
    mean_over_pairs,
    nll_sigmoid,
    pair_stats,
    side_inputs,
    weighted_rewards,
)
from tokencredit.registry import register

WHO = "preference 'tgdpo'"


@register("preference", "tgdpo", needs=Needs(inputs={"ref_logprob", "token_reward"}))
def tgdpo(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.5,
    num_pairs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """TGDPO: `ℓ_i = −log σ(Σ_t β f_w(r̂^w_t) Δ_t(y_w) − Σ_t β f_l(r̂^l_t) Δ_t(y_l))` with
    `f_w = 1 + α r̂`, `f_l = 1 − α r̂`; `L = Σ_i ℓ_i / num_pairs`.

    The token rewards `r̂_t` are given (`Pairs.<side>_token_reward`, constants): in the paper and code, the
    implicit reward of a previously DPO-trained policy π̂ against the same reference and with the same β,
    `r̂_t = β (log π̂(y^t|s_t) − log π_ref(y^t|s_t))` (`tokencredit.preference.implicit_token_reward`).
    The partition-function term δ of the derivation does not depend on π_θ and is dropped, as in the paper.

    Source: "Harnessing Token-Level Reward Guidance for Enhancing Direct Preference Optimization"
    (Zhu et al., ICML 2025); code `dvlab-research/TGDPO` (`tgdpo/trainer.py`, `dpo_loss`, sigmoid branch).
    Choices: the weights are not clipped (the code's); a weight `1 ± α r̂` below 0 (|α r̂| > 1) flips that token's
    sign, and its share of the tokens is reported as `stats["negative_weight"]`. The code's optional SFT term
    (`pref_ftx`) is not part of this loss. Degenerate: α = 0, or r̂ ≡ 0 (π̂ = π_ref), is DPO; r̂ ≡ c on y_w and
    ≡ −c on y_l is DPO with β(1 + αc).
    """
    check_positive("beta", beta)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(f"alpha: expected a finite number, got {alpha!r}")
    delta_c, delta_r = log_ratios(pairs, chosen_logprob, rejected_logprob, WHO)
    reward_c, reward_r = side_inputs(pairs, "token_reward", WHO, delta_c.dtype)
    weight_c, weight_r = 1.0 + alpha * reward_c, 1.0 - alpha * reward_r
    chosen, rejected = weighted_rewards(delta_c, delta_r, pairs, beta, weight_c, weight_r)
    per_pair = nll_sigmoid(chosen - rejected)
    negative = ((weight_c < 0) & pairs.chosen_mask).sum(-1) + ((weight_r < 0) & pairs.rejected_mask).sum(-1)
    tokens = (token_count(pairs.chosen_mask, -1) + token_count(pairs.rejected_mask, -1)).clamp(min=1)
    stats = pair_stats(chosen, rejected, negative_weight=negative / tokens)
    return mean_over_pairs(per_pair, pairs, num_pairs), stats
