"""Masked reductions over `[B,T]` tensors.

Some CPU idioms are slow at `[B,T]` size (measured with `benchmarks/credit_speed.py`'s batch, torch 2.13):
`x * mask` with a bool mask and `masked_fill_` are 1.5–3× slower than `torch.where(mask, x, 0)`; counting a bool
mask with `mask.sum(-1)` is 7–27× slower, and finding its last true entry with a `[B,T]` `where` 3–4× slower,
than reading the mask 8 bytes at a time as `token_count` and `last_index` do. Every fresh `[B,T]`
temporary also costs page faults (glibc returns large blocks to the OS on free; 16 MB cost 1.5–3 ms here),
so the helpers avoid them where they can.

Two more, measured the same way (torch 2.13, 1 thread): broadcasting one value per row over a bool mask with
`torch.where(mask, column, 0)` costs 2.5–8 ms (a scalar loop, bimodal between processes), while widening the mask
bytes to integers and multiplying by the value's bits (`zero_outside`'s column path) costs 1.0–1.5 ms; and
`mask.float()` is 2–3× slower than `mask.view(torch.uint8).float()` (`as_float`), the same values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def zero_outside(x: Tensor, mask: Tensor, out: Tensor | None = None) -> Tensor:
    """`x` where `mask`, 0 elsewhere (also where `x` is NaN or inf outside the mask). `x` may broadcast against
    `mask` (e.g. a `[B,1]` column); `out=x` masks in place."""
    if out is None and _is_row_column(x, mask):
        return _column_on_mask(x, mask)
    zero = torch.zeros((), dtype=torch.result_type(x, 0.0), device=x.device)  # integer inputs become float
    return torch.where(mask, x, zero, out=out)


_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # an integer dtype of each float width


def _is_row_column(x: Tensor, mask: Tensor) -> bool:
    return (x.device.type == "cpu" and mask.device.type == "cpu" and x.is_floating_point() and not x.requires_grad
            and x.element_size() in _BITS and mask.dtype == torch.bool and mask.dim() >= 1
            and x.shape == (*mask.shape[:-1], 1))


def _column_on_mask(column: Tensor, mask: Tensor) -> Tensor:
    """`torch.where(mask, column, 0)` for a column `[..., 1]`, bit for bit (NaN payloads and −0.0 inside the mask
    kept, +0.0 outside): the mask bytes (0 or 1) widened to integers of the value's width, times the value's bits.
    One vectorised cast and one in-place integer multiply instead of `where`'s scalar loop."""
    bits = _BITS[column.element_size()]
    return mask.view(torch.uint8).to(bits).mul_(column.view(bits)).view(column.dtype)


def rows_kept(mask: Tensor, keep: Tensor) -> Tensor:
    """`mask & keep[:, None]` for a bool `mask [B,T]` and `keep [B]`, through uint8 views: the bool `&` with a
    broadcast column is a scalar loop (3–5 ms at [4096, 1024]), the uint8 one vectorised (0.1–0.2 ms)."""
    if mask.dtype != torch.bool or keep.dtype != torch.bool:
        return mask & keep[:, None]
    return (mask.view(torch.uint8) & keep.view(torch.uint8)[:, None]).view(torch.bool)


def as_float(mask: Tensor) -> Tensor:
    """`mask.float()` for a bool mask, read through a uint8 view (2–3× faster on CPU, the same values)."""
    return mask.view(torch.uint8).float() if mask.dtype == torch.bool else mask.float()


def true_positions(mask: Tensor) -> Tensor:
    """Flat positions (int64, increasing) of the true entries of a bool `mask` of any shape, as
    `mask.reshape(-1).nonzero().squeeze(1)`. Finds the non-zero 8-byte words first, then the true bytes inside
    those: for a sparse mask of 4M entries that is 2 ms instead of `nonzero`'s 5–10 ms."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor, got {mask.dtype}")
    flat = mask.reshape(-1).contiguous()
    if flat.numel() % _WORD or flat.storage_offset() % _WORD:
        padded = flat.new_zeros(-(-flat.numel() // _WORD) * _WORD)
        padded[: flat.numel()] = flat
        flat = padded
    words = flat.view(torch.int64)
    hit = (words != 0).nonzero().squeeze(1)
    bytes_ = words.index_select(0, hit).view(torch.uint8) != 0  # [hits·8]: byte i of word w is position 8w + i
    positions = (hit[:, None] * _WORD + torch.arange(_WORD, device=mask.device)).reshape(-1)
    return torch.masked_select(positions, bytes_)  # (`x[bool]` and `x[long]` cost 1.3–4× these two)


_WORD = 8  # mask bytes per int64 word
_WORDS_PER_SUM = 255  # a byte lane of a word sum holds at most 255 before it carries into the next lane


def token_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of true entries of `mask`: per row (`dim=-1`, int64 `mask.shape[:-1]`) or in all (`dim=None`).

    Counts 8 mask bytes at a time: a bool is one byte holding 0 or 1, so the sum of a row's bytes read as int64
    words keeps each byte position's count in its own byte (no carries for up to 255 words), and the row's count
    is the sum of the 8 bytes of that word sum. One pass over an eighth as many elements as `mask.sum(-1)`."""
    if dim is not None and dim not in (-1, mask.dim() - 1):
        raise ValueError(f"dim: token_count counts along the last dimension (-1) or everything (None), got {dim}")
    words = _words(mask)
    per_row = torch.zeros(words.shape[0], dtype=torch.int64, device=mask.device)
    for chunk in words.split(_WORDS_PER_SUM, dim=1):
        per_row += chunk.sum(1).view(torch.uint8).reshape(-1, _WORD).sum(1)
    return per_row.sum() if dim is None else per_row.reshape(mask.shape[:-1])


def last_index(mask: Tensor) -> Tensor:
    """Position of each row's last true entry of `mask [..., T]`, int64 `mask.shape[:-1]`; −1 for an empty row.

    Finds the row's last non-zero 8-byte word, then the last non-zero byte inside it (read in memory order, so
    endianness does not matter): two small passes instead of one over `[B,T]` positions."""
    if not mask.numel():
        return torch.full(mask.shape[:-1], -1, dtype=torch.int64, device=mask.device)
    words = _words(mask)
    word_pos = torch.arange(words.shape[1], device=mask.device)
    last_word = torch.where(words != 0, word_pos, -1).amax(-1, keepdim=True)
    word = words.gather(1, last_word.clamp(min=0)).view(torch.uint8)  # [R, 8]
    last_byte = torch.where(word != 0, torch.arange(_WORD, device=mask.device), -1).amax(-1, keepdim=True)
    last = torch.where(last_word >= 0, last_word * _WORD + last_byte, -1)
    return last.reshape(mask.shape[:-1])


def front_positions(mask: Tensor) -> Tensor:
    """Where each entry of a bool `mask [B,T]` goes when every row's true entries are moved to its front, in
    order (`[B,T]` int64; T, one column past the end, for a false entry). `pack` and `unpack` use it."""
    return torch.where(mask, mask.long().cumsum(-1).sub_(1), mask.shape[-1])


def packing(mask: Tensor) -> Tensor | None:
    """`front_positions(mask)`, or None when no row has a hole, i.e. each row's true entries already come first
    (a right-padded batch): the common case then costs two cheap counts."""
    if bool((last_index(mask) + 1 == token_count(mask, -1)).all()):
        return None
    return front_positions(mask)


def pack(x: Tensor, where: Tensor) -> Tensor:
    """`x [B,T]` with each row's true-mask entries moved to its front (`where` from `front_positions`), 0 after
    them."""
    b, t = where.shape
    return x.new_zeros(b, t + 1).scatter_(1, where, x)[:, :t].contiguous()


def unpack(packed: Tensor, where: Tensor) -> Tensor:
    """The inverse of `pack`: each row's front entries back at their true-mask positions, 0 elsewhere."""
    return torch.nn.functional.pad(packed, (0, 1)).gather(1, where)


def _words(mask: Tensor) -> Tensor:
    """`mask` as rows of int64 words `[R, ceil(T/8)]`, 8 mask bytes each (padded with false where needed)."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor, got {mask.dtype}")
    rows = mask.reshape(math.prod(mask.shape[:-1]), mask.shape[-1]) if mask.dim() else mask.reshape(1, 1)
    width = -(-rows.shape[1] // _WORD) * _WORD
    if not rows.numel():
        return torch.zeros(rows.shape[0], width // _WORD, dtype=torch.int64, device=mask.device)
    if width != rows.shape[1] or rows.stride() != (width, 1) or rows.storage_offset() % _WORD:
        padded = rows.new_zeros(rows.shape[0], width)
        padded[:, : rows.shape[1]] = rows
        rows = padded
    return rows.view(torch.int64)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over the masked entries (along `dim`, or all)."""
    kept = zero_outside(x, mask)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` over `mask`; 0 when the mask is empty."""
    return masked_sum(x, mask) / token_count(mask).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """`(x - mean) / sqrt(var + eps)` over the masked entries (unbiased variance, as verl's `masked_whiten`);
    0 outside the mask. Fewer than two masked entries give 0."""
    return _whiten_zeroed_(zero_outside(x, mask), mask, eps)


def masked_whiten_(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """`masked_whiten` in place on `x` (a float temporary of the caller's, contiguous, shaped like `mask`)."""
    return _whiten_zeroed_(zero_outside(x, mask, out=x), mask, eps)


def _whiten_zeroed_(x: Tensor, mask: Tensor, eps: float) -> Tensor:
    n = token_count(mask)
    # a float64 sum is exact for an all-equal batch, so its centred values are exact zeros, as masked_whiten_rows
    # gives (a float32 sum's rounding, divided by sqrt(eps), would not be)
    mean = _sum_float64(x) / n.clamp(min=1)
    centred = zero_outside(x.sub_(mean.to(x.dtype)), mask, out=x)
    flat = centred.reshape(-1)
    var = torch.dot(flat, flat) / (n - 1).clamp(min=1)  # no [B,T] temporary for the squares
    return centred.mul_(torch.rsqrt(var + eps) * (n > 1))


_CAST_CHUNK = 1 << 16  # elements cast to float64 at a time: 512 KiB, stays in cache


def _sum_float64(x: Tensor) -> Tensor:
    """`Σ x` accumulated in float64. On CPU a reduction that casts (`sum(dtype=float64)`, or `double()` of the
    whole tensor) is 30–40× slower than a float32 sum at [4096, 1024]; casting cache-sized chunks is 4×."""
    flat = x.reshape(-1)
    if flat.device.type != "cpu":
        return flat.sum(dtype=torch.float64)
    total = flat.new_zeros((), dtype=torch.float64)
    for chunk in flat.split(_CAST_CHUNK):
        total += chunk.double().sum()
    return total


def masked_whiten_rows(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """`masked_whiten(values[:, None], mask)` for a value per row `[B]`, with the statistics computed on `[B]`
    from the rows' token counts n_i: `μ = Σ n_i v_i / N`, `σ² = Σ n_i (v_i − μ)² / (N − 1)`, `N = Σ n_i`.
    The only `[B,T]` pass is the output."""
    count = token_count(mask, -1).double()
    n = count.sum()
    v = torch.where(count > 0, values.double(), 0.0)  # a row without tokens adds nothing, not even a NaN
    mean = (count * v).sum() / n.clamp(min=1)
    var = (count * (v - mean).square()).sum() / (n - 1).clamp(min=1)
    white = (v - mean) * torch.rsqrt(var + eps) * (n > 1)
    return zero_outside(white.to(values.dtype if values.is_floating_point() else torch.float32)[:, None], mask)
