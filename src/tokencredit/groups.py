"""Per-group statistics over a batch whose prompt groups are arbitrary integer ids (not necessarily
contiguous or equal-sized). Everything is a scatter-add: no loop over groups."""

from __future__ import annotations

import torch
from torch import Tensor


def group_index(group: Tensor) -> tuple[Tensor, int]:
    """Dense ids `[B]` in `0..G-1` for arbitrary group ids, and the number of groups G."""
    uniq, inverse = torch.unique(group, return_inverse=True)
    return inverse, uniq.numel()


def group_sum(x: Tensor, index: Tensor, num_groups: int) -> Tensor:
    """Sum of `x [B]` within each group: `[G]`."""
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, index, x)


def group_stats(x: Tensor, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Group mean, unbiased group std and group size of `x [B]`, each broadcast back to `[B]`.

    The std of a single-response group is defined as 0 (not NaN).
    """
    index, g = group_index(group)
    x = x.to(torch.float64)  # the two-pass variance below stays exact for rewards of any magnitude
    count = group_sum(torch.ones_like(x), index, g)
    mean = group_sum(x, index, g) / count
    dev = x - mean[index]
    var = group_sum(dev * dev, index, g) / (count - 1).clamp(min=1)
    return mean[index].float(), var.sqrt()[index].float(), count[index].float()
