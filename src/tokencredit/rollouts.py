"""The tensor contract: one batch of sampled responses (`Rollouts`) and the credit a recipe gives it (`Credit`).

A batch holds B responses right-padded to T tokens. `mask [B,T]` marks real response tokens, `group [B]`
names each response's prompt (groups need not be contiguous or equal-sized). Every per-token output of a
stage is `[B,T]` float32 and is 0 outside `mask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from tokencredit.masked import masked_sum, token_count

_OPTIONAL_TOKEN_FIELDS = ("tokens", "logprob", "ref_logprob", "entropy", "value")


def _check(name: str, x: object, shape: tuple[int, ...], kind: str, shape_text: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"Rollouts.{name}: expected a torch.Tensor of shape {shape_text}, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"Rollouts.{name}: expected shape {shape_text} = {list(shape)}, got {list(x.shape)}")
    ok = {
        "bool": x.dtype == torch.bool,
        "int": not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool,
        "float": x.is_floating_point(),
    }[kind]
    if not ok:
        raise ValueError(f"Rollouts.{name}: expected a {kind} tensor of shape {shape_text}, got dtype {x.dtype}")


@dataclass(frozen=True)
class Rollouts:
    """One batch of B responses, right-padded to T tokens.

    Required: `group [B]` integer prompt ids, `mask [B,T]` bool, `reward [B]` (per sequence) or `[B,T]`
    (per token) float. Optional: `tokens [B,T]` int, `logprob [B,T]` (behaviour policy), `ref_logprob [B,T]`,
    `entropy [B,T]` (sampling distribution), `value [B,T]` (critic), `truncated [B]` bool.
    Shapes and dtypes are checked at construction; a mismatch raises `ValueError` naming the field.
    """

    group: Tensor
    mask: Tensor
    reward: Tensor
    tokens: Tensor | None = None
    logprob: Tensor | None = None
    ref_logprob: Tensor | None = None
    entropy: Tensor | None = None
    value: Tensor | None = None
    truncated: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mask, Tensor) or self.mask.dim() != 2:
            got = list(self.mask.shape) if isinstance(self.mask, Tensor) else type(self.mask).__name__
            raise ValueError(f"Rollouts.mask: expected a bool tensor of shape [B,T], got {got}")
        b, t = self.mask.shape
        _check("mask", self.mask, (b, t), "bool", "[B,T]")
        _check("group", self.group, (b,), "int", "[B]")
        if isinstance(self.reward, Tensor) and self.reward.dim() == 2:
            _check("reward", self.reward, (b, t), "float", "[B,T]")
        else:
            _check("reward", self.reward, (b,), "float", "[B] or [B,T]")
        for name in _OPTIONAL_TOKEN_FIELDS:
            x = getattr(self, name)
            if x is not None:
                _check(name, x, (b, t), "int" if name == "tokens" else "float", "[B,T]")
        if self.truncated is not None:
            _check("truncated", self.truncated, (b,), "bool", "[B]")

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> Tensor:
        """Number of real tokens per response, `[B]` int64."""
        return token_count(self.mask, -1)

    def sequence_reward(self) -> Tensor:
        """Reward per response `[B]` float32: the reward itself, or the sum of per-token rewards over `mask`."""
        if self.reward.dim() == 1:
            return self.reward.float()
        return masked_sum(self.reward.float(), self.mask, -1)

    def select(self, rows: Tensor) -> Rollouts:
        """The sub-batch of the given rows (an index or bool tensor over B)."""
        return replace(self, **{f.name: _take(getattr(self, f.name), rows) for f in fields(self)})

    def narrow(self, width: int) -> Rollouts:
        """The first `width` token positions (drop trailing padding)."""
        return replace(self, **{f.name: _cut(getattr(self, f.name), width, self.mask.dim()) for f in fields(self)})

    def to(self, device: torch.device | str) -> Rollouts:
        return replace(self, **{f.name: _move(getattr(self, f.name), device) for f in fields(self)})


def _take(x: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if x is None else x[rows]


def _cut(x: Tensor | None, width: int, ndim: int) -> Tensor | None:
    return x[:, :width] if x is not None and x.dim() == ndim else x


def _move(x: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if x is None else x.to(device)


@dataclass(frozen=True)
class Credit:
    """What a recipe's credit stages produce: `advantage [B,T]`, `weight [B,T]` (0 outside mask) and
    `keep [B]` (responses that enter the loss). `advantage * weight` is the effective per-token advantage
    for engines that only accept one tensor."""

    advantage: Tensor
    weight: Tensor
    keep: Tensor

    def select(self, rows: Tensor) -> Credit:
        return Credit(advantage=self.advantage[rows], weight=self.weight[rows], keep=self.keep[rows])

    def narrow(self, width: int) -> Credit:
        return Credit(advantage=self.advantage[:, :width], weight=self.weight[:, :width], keep=self.keep)

    def folded(self) -> Tensor:
        """`advantage * weight * keep`: the single tensor to hand to an engine without weight support."""
        return self.advantage * self.weight * self.keep[:, None]


def group_ids(names: Sequence[str] | Sequence[int]) -> Tensor:
    """Integer group ids `[B]` int64 from any hashable ids (verl passes `uid` strings)."""
    index: dict[object, int] = {}
    return torch.tensor([index.setdefault(n, len(index)) for n in names], dtype=torch.int64)


def pad_right(seqs: Sequence[Sequence[int]] | Sequence[Tensor], pad: float = 0, dtype=None) -> tuple[Tensor, Tensor]:
    """Right-pad ragged sequences to `[B, T_max]`; returns `(padded, mask)`. Empty sequences are allowed."""
    rows = [torch.as_tensor(s, dtype=dtype) for s in seqs]
    width = max((len(r) for r in rows), default=0)
    dtype = dtype or (rows[0].dtype if rows else torch.int64)
    out = torch.full((len(rows), width), pad, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask
