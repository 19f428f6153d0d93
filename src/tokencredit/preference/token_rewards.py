"""Token-reward sources for T-REG's regulariser: `source(pairs) -> (chosen [B,T_c], rejected [B,T_r])`.

A source is any callable with an `inputs` attribute (the `Pairs` inputs it reads, as `Needs.inputs` names). It
must treat pairs independently (`source(pairs.select(rows))` is `source(pairs)` at `rows`), so micro-batches
get exactly the whole batch's rewards. T-REG calls it under `torch.no_grad()`: the rewards are constants.

* `ContrastivePromptRewards` — the paper's self-generated rewards, from two extra passes of the frozen reference
  model with a "better version" prompt x⁺ and a "worse version" prompt x⁻.
* `CriticalTokenRewards` — the character-level default's: a penalty on the rollout-found critical token
  (`tokencredit.analysis.critical_tokens`). A ≈1M-parameter character model trained from scratch on one
  procedural task does not follow revision instructions, so x⁺/x⁻ prompts carry no signal there; the critical
  token (the token after which no sampled continuation succeeds) is a token-level judgement that does exist
  there and is the one the procedural verifier supports.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from tokencredit.masked import zero_outside
from tokencredit.pairs import Pairs


@runtime_checkable
class TokenRewardSource(Protocol):
    """`source(pairs) -> (chosen [B,T_c], rejected [B,T_r])` token rewards (T-REG's lie in (−½, ½)), 0 outside the
    masks; `inputs`: the `Pairs` inputs it reads."""

    inputs: frozenset[str]

    def __call__(self, pairs: Pairs) -> tuple[Tensor, Tensor]: ...


def contrastive_prompt_reward(plus_logprob: Tensor, minus_logprob: Tensor, mask: Tensor) -> Tensor:
    """T-REG's self-generated token reward `r̂_t = σ(log π(y^t|x⁺,y^{<t}) − log π(y^t|x⁻,y^{<t})) − ½ ∈ (−½, ½)`,
    `[B,T]`, 0 outside `mask`: positive where the "better version" prompt x⁺ makes the token more likely than the
    "worse version" prompt x⁻. Source: "Preference Optimization with Token-Level Reward Regularization"
    (Zhou et al., ACL 2025)."""
    return zero_outside(torch.sigmoid(plus_logprob.float() - minus_logprob.float()) - 0.5, mask)


class ContrastivePromptRewards:
    """T-REG's own source: `contrastive_prompt_reward` of both sides, from
    `Pairs.extra["<side>_plus_logprob"]` and `["<side>_minus_logprob"]` (`[B,T]` log-probs of the response tokens
    under the frozen reference model after x⁺ and after x⁻; a provider computes the two passes)."""

    inputs = frozenset({"plus_logprob", "minus_logprob"})

    def __call__(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        who = "token-reward source ContrastivePromptRewards"
        plus = pairs.require("plus_logprob", who)
        minus = pairs.require("minus_logprob", who)
        masks = (pairs.chosen_mask, pairs.rejected_mask)
        chosen, rejected = (contrastive_prompt_reward(p, m, mask) for p, m, mask in zip(plus, minus, masks))
        return chosen, rejected

    def __repr__(self) -> str:
        return "ContrastivePromptRewards()"


class CriticalTokenRewards:
    """Token rewards from rollout-found critical tokens: `−penalty` at the critical token of a response, 0 at
    every other token. Reads `Pairs.extra["rejected_critical"]` (`[B]` int, the critical-token index of each
    rejected response, −1 for none) and, when present, `extra["chosen_critical"]` (a chosen response usually has
    none). An index outside the response (−1, or ≥ its length) gives no reward.

    With T-REG the regulariser is then `α w β · penalty · log π_θ(y_l^{t*})`: an unlikelihood push on the one token
    the rollout analysis blames, cDPO's observation turned into T-REG's token reward. `penalty ≤ ½` keeps the
    reward in T-REG's range (−½, ½] (the default ½ is its bound). Tokens before t* (still recoverable) and after
    it (the outcome is already decided) get 0: the search says nothing about them.
    """

    inputs = frozenset({"critical"})

    def __init__(self, penalty: float = 0.5) -> None:
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not 0.0 < penalty <= 0.5:
            raise ValueError(f"penalty: expected a number in (0, 0.5] (T-REG's rewards lie in (−½, ½)), "
                             f"got {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, pairs: Pairs) -> tuple[Tensor, Tensor]:
        (rejected_index,) = pairs.require("critical", "token-reward source CriticalTokenRewards", sides=("rejected",))
        chosen_index = pairs.side("critical")[0]
        return self._at(chosen_index, pairs.chosen_mask), self._at(rejected_index, pairs.rejected_mask)

    def _at(self, index: Tensor | None, mask: Tensor) -> Tensor:
        if index is None:
            return torch.zeros(mask.shape, device=mask.device)
        if index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(f"Pairs.extra[...critical]: expected an int tensor of shape [B], got dtype {index.dtype}, "
                             f"shape {list(index.shape)}")
        hit = torch.arange(mask.shape[1], device=mask.device)[None, :] == index[:, None]
        return zero_outside(torch.full(mask.shape, -self.penalty, device=mask.device), hit & mask)

    def __repr__(self) -> str:
        return f"CriticalTokenRewards(penalty={self.penalty})"
