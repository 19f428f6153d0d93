"""Objective stage: current log-probs + credit → per-token policy loss `[B,T]` and stats; `aggregate` turns a
per-token loss into a scalar with one coefficient per response, once.

`policy_loss` is the one call for callers that want a scalar (verl/TRL-style loss functions).
"""

from __future__ import annotations

from torch import Tensor

from tokencredit.objective import aggregate, cispo, gspo, kl, ppo  # noqa: F401  (registers)
from tokencredit.objective.aggregate import coefficients, weighted_token_sum
from tokencredit.registry import get


def policy_loss(
    objective: str,
    logprob: Tensor,
    old_logprob: Tensor,
    advantage: Tensor,
    mask: Tensor,
    *,
    agg: str = "token_mean",
    weight: Tensor | None = None,
    coef: Tensor | None = None,
    agg_params: dict | None = None,
    **objective_params,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss `Σ_i c_i Σ_t m_{i,t} w_{i,t} ℓ_{i,t}` of objective `objective` under aggregation `agg` (token
    weights `weight [B,T]` multiply the loss, not the normaliser), and the objective's stats. `coef [B]`: the
    whole batch's aggregation coefficients when this call sees a micro-batch (or rank) of it; `agg_params` go
    to the aggregation (e.g. `{"budget": 1024}`, `{"group": group}` for `balanced`)."""
    per_token, stats = get("objective", objective)(logprob, old_logprob, advantage, mask, **objective_params)
    if weight is not None:
        per_token = per_token * weight
    if coef is None:
        coef = coefficients(agg, mask, **{"advantage": advantage, **(agg_params or {})})
    return weighted_token_sum(per_token, mask, coef), stats
