"""Masked reductions over `[B,T]` tensors.

Some CPU idioms are slow at `[B,T]` size (measured with `benchmarks/credit_speed.py`'s batch, torch 2.13):
`x * mask` with a bool mask, `masked_fill_` and counting a bool mask with `mask.sum()` (int64 accumulator) are
1.5–10× slower than `torch.where(mask, x, 0)` and an int32 count, so the library uses these helpers instead.
Every fresh `[B,T]` temporary also costs page faults (glibc returns large blocks to the OS on free), so the
helpers avoid them where they can.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def zero_outside(x: Tensor, mask: Tensor) -> Tensor:
    """`x` where `mask`, 0 elsewhere (also where `x` is NaN or inf outside the mask)."""
    return torch.where(mask, x, 0.0)


_COUNT_ROWS = 256  # rows counted at a time: counting casts the mask to int32, and a [B,T] cast is a fresh buffer


def token_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of true entries of `mask`: per row (`dim=-1`, int64 `mask.shape[:-1]`) or in all (`dim=None`)."""
    if dim is not None and dim not in (-1, mask.dim() - 1):
        raise ValueError(f"dim: token_count counts along the last dimension (-1) or everything (None), got {dim}")
    rows = mask.reshape(math.prod(mask.shape[:-1]), mask.shape[-1]) if mask.dim() else mask.reshape(1, 1)
    per_row = torch.cat([chunk.sum(-1, dtype=torch.int32) for chunk in rows.split(_COUNT_ROWS)])
    if dim is None:
        return per_row.sum(dtype=torch.int64)
    return per_row.long().reshape(mask.shape[:-1])


def last_index(mask: Tensor) -> Tensor:
    """Position of each row's last true entry of `mask [B,T]`, int64 `[B]`; −1 for an empty row."""
    if mask.shape[-1] == 0:
        return torch.full(mask.shape[:-1], -1, dtype=torch.int64, device=mask.device)
    pos = torch.arange(mask.shape[-1], dtype=torch.int32, device=mask.device)
    return torch.where(mask, pos, -1).amax(-1).long()


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over the masked entries (along `dim`, or all)."""
    kept = zero_outside(x, mask)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` over `mask`; 0 when the mask is empty."""
    return masked_sum(x, mask) / token_count(mask).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """`(x - mean) / sqrt(var + eps)` over the masked entries (unbiased variance, as verl's `masked_whiten`);
    0 outside the mask. Fewer than two masked entries give 0. In-place on one temporary: this runs on [B,T]."""
    n = token_count(mask)
    centred = zero_outside(x, mask)
    mean = centred.sum() / n.clamp(min=1)
    centred = torch.where(mask, centred.sub_(mean), centred.new_zeros(()), out=centred)
    flat = centred.view(-1)
    var = torch.dot(flat, flat) / (n - 1).clamp(min=1)  # no [B,T] temporary for the squares
    return centred.mul_(torch.rsqrt(var + eps) * (n > 1))
