"""Masked reductions over `[B,T]` tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` over `mask`; 0 when the mask is empty."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """`(x - mean) / sqrt(var + eps)` over the masked entries (unbiased variance, as verl's `masked_whiten`);
    0 outside the mask. Fewer than two masked entries give 0."""
    n = mask.sum()
    mean = masked_mean(x, mask)
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(mask & (n > 1), out, torch.zeros_like(out))
