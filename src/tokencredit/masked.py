"""Masked reductions over `[B,T]` tensors.

Some CPU idioms are slow at `[B,T]` size (measured with `benchmarks/credit_speed.py`'s batch, torch 2.13):
`x * mask` with a bool mask, `masked_fill_` and counting a bool mask with `mask.sum()` (int64 accumulator) are
3–10× slower than `torch.where(mask, x, 0)` and an int32 count, so the library uses these helpers instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def zero_outside(x: Tensor, mask: Tensor) -> Tensor:
    """`x` where `mask`, 0 elsewhere (also where `x` is NaN or inf outside the mask)."""
    return torch.where(mask, x, 0.0)


def token_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of true entries of `mask`, over `dim` or all, int64 (counted per row in int32: rows are short)."""
    if dim is None:
        return mask.sum(-1, dtype=torch.int32).sum(dtype=torch.int64)
    return mask.sum(dim, dtype=torch.int32).long()


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
