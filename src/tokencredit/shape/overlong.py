"""DAPO's soft overlong punishment: a length penalty added to the outcome reward near the generation budget."""

from __future__ import annotations

from torch import Tensor

from tokencredit.masked import token_count
from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts
from tokencredit.shape.outcome import add_outcome_, outcome


def check_cache(cache: float) -> None:
    """The penalised window is a fraction of the budget in (0, 1]."""
    if not 0.0 < cache <= 1.0:
        raise ValueError(f"cache: expected the penalised fraction of the budget in (0, 1], got {cache}")


def overlong_penalty(length: Tensor, budget: int, cache: float) -> Tensor:
    """`R_len [B]` for response lengths `length [B]`, with `L_max = budget` and `L_cache = cache · budget`:

        R_len = 0                                   |y| ≤ L_max − L_cache
                ((L_max − L_cache) − |y|) / L_cache  L_max − L_cache < |y| ≤ L_max
                −1                                  |y| > L_max
    """
    check_cache(cache)
    window = cache * budget
    return ((budget - window - length.float()) / window).clamp(min=-1.0, max=0.0)


@register("shape", "overlong", needs=Needs(inputs={"budget"}), check=check_cache)
def overlong(rollouts: Rollouts, cache: float = 0.2) -> Tensor:
    """Outcome token rewards (`outcome`) plus DAPO's soft overlong punishment on each response's last token:
    `r_{i,t} = r^outcome_{i,t} + R_len(|o_i|) · 1[t = last]` with `R_len` of `overlong_penalty` (linear from 0 at
    `L_max − L_cache` to −1 at the budget `L_max`); per-token rewards keep their places.

    Source: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (Yu et al., 2025), soft overlong
    punishment (L_max = 20480, L_cache = 4096). Choice: `L_cache` is a fraction of the generation budget
    (`cache`, the paper's 4096/20480 = 0.2), so it scales with whatever budget a run has: an absolute 4096 against
    the embedded default's 48-token budget would penalise every response. |o_i| counts the response's tokens (EOS
    included, as verl counts them). Empty responses carry no reward (as in `outcome`).
    """
    if rollouts.budget is None:
        raise ValueError("Rollouts.budget: shape 'overlong' needs the generation budget (max new tokens); got None")
    penalty = overlong_penalty(token_count(rollouts.mask, -1), rollouts.budget, cache)
    return add_outcome_(outcome(rollouts), rollouts.with_inputs(reward=penalty))
