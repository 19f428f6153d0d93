"""What the weight stages read from `Rollouts` beyond the mask."""

from __future__ import annotations

from torch import Tensor

from tokencredit.rollouts import Rollouts


def token_field(rollouts: Rollouts, field: str, weight: str) -> Tensor:
    """`rollouts.<field>` `[B,T]` as float32; a clear error naming the field when the batch lacks it."""
    value = getattr(rollouts, field)
    if value is None:
        raise ValueError(f"Rollouts.{field}: weight {weight!r} needs the sampling policy's {field} [B,T]; got None")
    return value.float()
