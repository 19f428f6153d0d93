"""T-REG: DPO plus a token-level reward regulariser, the token rewards from a pluggable source."""

from __future__ import annotations

import torch
from torch import Tensor

from tokencredit.masked import zero_outside
from tokencredit.needs import Needs
from tokencredit.pairs import Pairs
from tokencredit.preference.common import (
    Count,
    check_choice,
    check_logprob,
    check_nonnegative,
    check_positive,
    mean_over_pairs,
    nll_sigmoid,
    pair_stats,
    policy_logprobs,
    sequence_mean,
    sequence_sum,
    side_inputs,
    weighted_rewards,
)
from tokencredit.preference.token_rewards import ContrastivePromptRewards, CriticalTokenRewards, TokenRewardSource
from tokencredit.registry import register

WEIGHTINGS = ("dynamic", "static")
REG_REDUCTIONS = ("sum", "mean")
WHO = "preference 't_reg'"


# the sources a config names by string (a YAML config cannot hold an object)
SOURCES = {"critical": CriticalTokenRewards, "contrastive_prompt": ContrastivePromptRewards}


def resolved_source(source: TokenRewardSource | str | None) -> TokenRewardSource | None:
    """`source` itself, or the default source of a name in `SOURCES` (`"critical"`: `CriticalTokenRewards()`)."""
    if isinstance(source, str):
        check_choice("source", source, tuple(SOURCES))
        return SOURCES[source]()
    return source


def _needs(source: TokenRewardSource | str | None = None, **_) -> Needs:
    source = resolved_source(source)
    reads = {"token_reward"} if source is None else set(getattr(source, "inputs", ()))
    return Needs(inputs={"ref_logprob"} | reads)


@register("preference", "t_reg", needs=_needs)
def t_reg(
    pairs: Pairs,
    chosen_logprob: Tensor,
    rejected_logprob: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.25,
    source: TokenRewardSource | str | None = None,
    weighting: str = "dynamic",
    reg_reduction: str = "sum",
    num_pairs: Count = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """T-REG: `ℓ_i = ℓ^DPO_i + α w_i (R(y_w) + R(y_l))`, `L = Σ_i ℓ_i / num_pairs`, with

        R(y) = −Σ_t r̂_t β log π_θ(y^t|s_t)              (the token-level reward regulariser)
        w_i = sg(σ(r_θ(y_l) − r_θ(y_w))),  r_θ(y) = β Σ_t Δ_t(y)   (the DPO gradient scale of the pair)

    and ℓ^DPO the DPO loss (`preference 'dpo'`). R is the similarity between DPO's implicit token reward βΔ_t and
    the token reward r̂_t with the fixed reference dropped: r̂ > 0 pushes a token's probability up, r̂ < 0 down.

    Token rewards: `source=None` reads `Pairs.<side>_token_reward`; a `TokenRewardSource` computes them from the
    pairs (under no_grad): `ContrastivePromptRewards` (the paper's, σ(log π(·|x⁺) − log π(·|x⁻)) − ½ from two
    revision prompts) or `CriticalTokenRewards` (the character-level default's: −½ at the rollout-found
    critical token); a config names them `"contrastive_prompt"` and `"critical"`. Source: "Preference
    Optimization with Token-Level Reward Regularization" (Zhou et al.,
    ACL 2025); no code released, the spec follows the paper and paper notes.
    Choices: R sums over tokens (`reg_reduction="sum"`; the paper's normalisation is unverified, `"mean"` divides
    by the response length); `weighting="static"` sets w = 1 (the paper's ablation); α defaults to 0.25, the
    middle of the paper's {0.1, 0.25, 0.5}. Degenerate: α = 0, or r̂ ≡ 0, is DPO; r̂ ≡ c > 0 on y_w only with
    static w is "DPO + SFT on y_w" (`+ α c β · NLL(y_w)`).
    """
    check_positive("beta", beta)
    check_nonnegative("alpha", alpha)
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("reg_reduction", reg_reduction, REG_REDUCTIONS)
    logprob_c, logprob_r = policy_logprobs(pairs, chosen_logprob, rejected_logprob)
    ref_c, ref_r = side_inputs(pairs, "ref_logprob", WHO, logprob_c.dtype)
    chosen, rejected = weighted_rewards(logprob_c - ref_c, logprob_r - ref_r, pairs, beta)
    logit = chosen - rejected
    reward_c, reward_r = _token_rewards(pairs, resolved_source(source), logprob_c.dtype)
    reduce = sequence_sum if reg_reduction == "sum" else sequence_mean
    reg = (-beta * reduce(reward_c * logprob_c, pairs.chosen_mask)
           - beta * reduce(reward_r * logprob_r, pairs.rejected_mask))
    balance = torch.sigmoid(-logit).detach() if weighting == "dynamic" else torch.ones_like(logit)
    per_pair = nll_sigmoid(logit) + alpha * balance * reg
    stats = pair_stats(chosen, rejected, regulariser=reg, balance=balance)
    return mean_over_pairs(per_pair, pairs, num_pairs), stats


def _token_rewards(pairs: Pairs, source: TokenRewardSource | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    if source is None:
        return side_inputs(pairs, "token_reward", WHO, dtype)
    if not callable(source):
        raise ValueError(f"source: expected a TokenRewardSource (a callable pairs -> (chosen, rejected)), got "
                         f"{type(source).__name__}")
    with torch.no_grad():
        out = source(pairs)
    if not isinstance(out, tuple) or len(out) != 2:
        raise ValueError(f"source: expected (chosen [B,T_c], rejected [B,T_r]) token rewards from {source!r}, "
                         f"got {type(out).__name__}")
    for name, x, mask, text in zip(("chosen", "rejected"), out, (pairs.chosen_mask, pairs.rejected_mask),
                                   ("[B,T_c]", "[B,T_r]")):
        check_logprob(f"source: {name} token rewards of {source!r}", x, mask, text)
    return (zero_outside(out[0].detach().to(dtype), pairs.chosen_mask),
            zero_outside(out[1].detach().to(dtype), pairs.rejected_mask))
