"""Masked reductions over `[B,T]` tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` over `mask`; 0 when the mask is empty."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """`(x - mean) / sqrt(var + eps)` over the masked entries (unbiased variance, as verl's `masked_whiten`);
    0 outside the mask. Fewer than two masked entries give 0. In-place on one temporary: this runs on [B,T]."""
    m = mask.to(x.dtype)
    n = m.sum()
    centred = x * m
    mean = centred.sum() / n.clamp(min=1)
    centred = centred.sub_(mean).mul_(m)
    var = centred.square().sum() / (n - 1).clamp(min=1)
    return centred.mul_(torch.rsqrt(var + eps) * (n > 1))
