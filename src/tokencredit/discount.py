"""Discounted reverse cumulative sum along the token axis, without a loop over tokens."""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK = 32  # 16–32 is fastest on a 2-core CPU at B=4096, T=1024 (64: 1.1–1.4× slower, 128: 2–2.5×)


def discounted_reverse_cumsum(x: Tensor, gamma: float, out: Tensor | None = None) -> Tensor:
    """`y_t = Σ_{k≥t} γ^{k−t} x_k` along the last axis of `x [B,T]`, contiguous; written into `out` (`[B,T]`,
    contiguous, not sharing memory with `x`) when given.

    The T axis is cut into chunks of C tokens: inside a chunk the sum is a product with a C×C discount matrix;
    the chunk-start values obey the same recursion with factor γ^C and are solved by one more (T/C)×(T/C)
    product. Cost O(B·T·C), no loop, no γ^{-t} overflow, and a single [B,T] output buffer (γ = 1 included: a
    flipped cumsum would allocate three).
    """
    b, t = x.shape
    if out is not None and x.numel() and out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        raise ValueError("out: must not share memory with x (the chunk products read x while writing out)")
    c = min(_CHUNK, max(t, 1))
    n = -(-t // c)
    xp = (x if n * c == t else torch.nn.functional.pad(x, (0, n * c - t))).reshape(b, n, c)
    into = out.view(b, n, c) if out is not None and n * c == t else None
    within = torch.matmul(xp, _discount_matrix(c, gamma, x).T, out=into)  # [B,n,C]: sums that stop at chunk end
    starts = within[:, :, 0] @ _discount_matrix(n, gamma**c, x).T  # full sums at each chunk start
    after = torch.nn.functional.pad(starts[:, 1:], (0, 1))  # value entering each chunk from the right
    pos = torch.arange(c, device=x.device, dtype=x.dtype)
    y = within.addcmul_(after[:, :, None], gamma ** (c - pos)).view(b, n * c)[:, :t]
    if out is None:
        return y.contiguous()  # a copy only when T is not a whole number of chunks
    return out if into is not None else out.copy_(y)


def _discount_matrix(n: int, gamma: float, like: Tensor) -> Tensor:
    """`D[t,k] = γ^{k−t}` for k ≥ t, else 0."""
    idx = torch.arange(n, device=like.device)
    gap = (idx[None, :] - idx[:, None]).to(like.dtype)
    return torch.where(gap >= 0, torch.as_tensor(gamma, dtype=like.dtype, device=like.device) ** gap.clamp(min=0), 0.0)
