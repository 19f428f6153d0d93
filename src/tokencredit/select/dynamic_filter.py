"""DAPO dynamic sampling filter."""

from __future__ import annotations

from torch import Tensor

from tokencredit.groups import group_stats
from tokencredit.needs import Needs
from tokencredit.registry import register
from tokencredit.rollouts import Rollouts


def _needs(drop_truncated: bool = False, **_) -> Needs:
    return Needs(inputs={"truncated"} if drop_truncated else ())


@register("select", "dynamic_filter", needs=_needs)
def dynamic_filter(rollouts: Rollouts, advantage: Tensor | None = None, drop_truncated: bool = False) -> Tensor:
    """Keep only responses of groups whose rewards are not all equal: `keep_i = 1[0 < std_g(R)]`; with
    `drop_truncated`, also drop the responses that hit the generation budget (`Rollouts.truncated`).

    Source: "DAPO: An Open-Source LLM Reinforcement Learning System at Scale" (Yu et al., 2025), dynamic
    sampling (`0 < |{correct}| < G`) and overlong filtering (truncated samples leave the loss, so a cut-off answer
    is not punished as wrong). Single-response groups are dropped (their std is 0). The group statistics (and so
    the advantages) still count truncated responses; only the loss leaves them out. The trainer may resample to
    refill the batch; this function only marks rows.
    """
    _, std, _ = group_stats(rollouts.sequence_reward(), rollouts.group)
    keep = std > 0
    if drop_truncated:
        if rollouts.truncated is None:
            raise ValueError("Rollouts.truncated: select 'dynamic_filter' with drop_truncated needs which responses "
                             "hit the budget [B]; got None")
        keep = keep & ~rollouts.truncated
    return keep
