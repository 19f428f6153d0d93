"""The tensor contract: one batch of sampled responses (`Rollouts`) and the credit a recipe gives it (`Credit`).

A batch holds B responses right-padded to T tokens. `mask [B,T]` marks real response tokens, `group [B]`
names each response's prompt (groups need not be contiguous or equal-sized). Every per-token output of a
stage is `[B,T]` float32 and is 0 outside `mask`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from tokencredit.masked import masked_sum, rows_kept, token_count

_OPTIONAL_TOKEN_FIELDS = ("tokens", "logprob", "ref_logprob", "entropy", "value")
_DERIVED: ContextVar[bool] = ContextVar("tokencredit_rollouts_derived", default=False)  # set while copying


def check_finite_reward(reward: Tensor, mask: Tensor, owner: str = "Rollouts") -> None:
    """A `ValueError` naming the rows whose reward is NaN or ±inf (for per-token rewards `[B,T]`: at a token of
    `mask`; the padding is never read). One reduction and one host sync, so call it once per batch."""
    finite = torch.isfinite(reward)
    if bool(finite.all()):  # the common case: one pass, no mask needed
        return
    if reward.dim() == 2:
        finite = finite | ~mask
        if bool(finite.all()):
            return
    bad = (~finite if finite.dim() == 1 else ~finite.all(-1)).nonzero().flatten().tolist()
    row = bad[0]
    value = reward[row] if reward.dim() == 1 else reward[row][~finite[row]][0]
    shown = ", ".join(map(str, bad[:10])) + (f", … ({len(bad)} rows)" if len(bad) > 10 else "")
    raise ValueError(f"{owner}.reward: expected finite rewards, got NaN or ±inf in rows [{shown}] (row {row}: "
                     f"{value.item()}); a non-finite reward is not valid input (score it 0, or drop the row)")


def _check(name: str, x: object, shape: tuple[int, ...], kind: str, shape_text: str, owner: str = "Rollouts") -> None:
    """A `ValueError` naming `owner.name`, the expected shape and what was given, unless `x` is a `kind` tensor of
    `shape` (shared by `Rollouts` and `Pairs`)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{owner}.{name}: expected a torch.Tensor of shape {shape_text}, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{owner}.{name}: expected shape {shape_text} = {list(shape)}, got {list(x.shape)}")
    ok = {
        "bool": x.dtype == torch.bool,
        "int": not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool,
        "float": x.is_floating_point(),
    }[kind]
    if not ok:
        raise ValueError(f"{owner}.{name}: expected a {kind} tensor of shape {shape_text}, got dtype {x.dtype}")


@dataclass(frozen=True)
class Rollouts:
    """One batch of B responses, right-padded to T tokens.

    Required: `group [B]` integer prompt ids, `mask [B,T]` bool, `reward [B]` (per sequence) or `[B,T]`
    (per token) float. Optional: `tokens [B,T]` int, `logprob [B,T]` (behaviour policy), `ref_logprob [B,T]`,
    `entropy [B,T]` (sampling distribution), `value [B,T]` (V of the state before each token), `truncated [B]`
    bool, `budget` (the generation budget: the most tokens a response may have; an int, unchanged by padding),
    and `extra`, any other per-token inputs by name, each `[B,T,...]` (see `tokencredit.needs`).
    Shapes and dtypes are checked at construction; a mismatch raises `ValueError` naming the field. So is the
    reward: a NaN or ±inf reward (at a token of `mask`, for per-token rewards) raises `ValueError` naming the rows.
    That check runs once, where a batch is built from outside data; the copies `select`, `narrow`, `to` and
    `with_inputs` derive from a checked batch and do not repeat it (no host sync per micro-batch).
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
    budget: int | None = None
    extra: Mapping[str, Tensor] = field(default_factory=dict)

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
        if not _DERIVED.get():
            check_finite_reward(self.reward, self.mask)
        if self.truncated is not None:
            _check("truncated", self.truncated, (b,), "bool", "[B]")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                        or self.budget < 1):
            raise ValueError(f"Rollouts.budget: expected a positive int (max new tokens), got {self.budget!r}")
        for name, x in self.extra.items():
            if name in _FIELDS:
                raise ValueError(f"Rollouts.extra[{name!r}]: {name!r} is a field of Rollouts; set it directly")
            if not isinstance(x, Tensor) or x.dim() < 2 or tuple(x.shape[:2]) != (b, t):
                got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"Rollouts.extra[{name!r}]: expected a tensor of shape [B,T,...] = [{b}, {t}, ...], "
                                 f"got {got}")

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

    def input(self, name: str) -> Any:
        """The input `name` (a field, or an entry of `extra`), or None when the batch does not carry it."""
        return getattr(self, name) if name in _FIELDS else self.extra.get(name)

    def with_inputs(self, **inputs: Any) -> Rollouts:
        """A copy with the given inputs set: fields by name, any other name into `extra`."""
        own = {k: v for k, v in inputs.items() if k in _FIELDS}
        extra = {k: v for k, v in inputs.items() if k not in _FIELDS}
        return self._derive(**own, extra={**self.extra, **extra}) if extra else self._derive(**own)

    def select(self, rows: Tensor) -> Rollouts:
        """The sub-batch of the given rows (an index or bool tensor over B)."""
        return self._map(lambda x: x[rows])

    def narrow(self, width: int) -> Rollouts:
        """The first `width` token positions (drop trailing padding); `budget` is unchanged."""
        return self._map(lambda x: x[:, :width] if x.dim() >= 2 else x)

    def to(self, device: torch.device | str) -> Rollouts:
        return self._map(lambda x: x.to(device))

    def _map(self, fn) -> Rollouts:
        """`fn` applied to every tensor (fields and extras)."""
        changed = {f.name: fn(getattr(self, f.name)) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return self._derive(**changed, extra={k: fn(v) for k, v in self.extra.items()})

    def _derive(self, **changes: Any) -> Rollouts:
        """A copy with `changes` (shapes and dtypes checked; the reward's finiteness, checked when this batch was
        built, is not checked again)."""
        token = _DERIVED.set(True)
        try:
            return replace(self, **changes)
        finally:
            _DERIVED.reset(token)


_FIELDS = frozenset(f.name for f in fields(Rollouts)) - {"extra"}


@dataclass(frozen=True)
class Credit:
    """What a recipe's credit stages produce:

    * `advantage [B,T]` and `weight [B,T]` (0 outside mask): token t of response i enters the loss as
      `weight · ℓ(advantage)`; a zero weight removes the token's gradient but keeps it in the normaliser;
    * `keep [B]`: the responses that enter the loss (the select stage's);
    * `token_keep [B,T]` bool: the tokens that enter the loss *and its normaliser* (the token-select stage's;
      None: every token of the mask);
    * `progress`: the training progress the credit was computed at (the loss resolves its schedules there).

    Engines without a weight hook get `folded()` (one advantage tensor) and `loss_mask(mask)` (the tokens their
    loss should average over)."""

    advantage: Tensor
    weight: Tensor
    keep: Tensor
    token_keep: Tensor | None = None
    progress: float = 0.0

    def select(self, rows: Tensor) -> Credit:
        return replace(self, advantage=self.advantage[rows], weight=self.weight[rows], keep=self.keep[rows],
                       token_keep=None if self.token_keep is None else self.token_keep[rows])

    def narrow(self, width: int) -> Credit:
        return replace(self, advantage=self.advantage[:, :width], weight=self.weight[:, :width],
                       token_keep=None if self.token_keep is None else self.token_keep[:, :width])

    def loss_mask(self, mask: Tensor) -> Tensor:
        """`[B,T]` bool: the tokens of `mask` that enter the loss and its normaliser (kept responses, kept tokens)."""
        kept = rows_kept(mask, self.keep)
        return kept if self.token_keep is None else kept & self.token_keep

    def folded(self) -> Tensor:
        """`advantage · weight`, 0 for dropped responses and tokens: the single tensor to hand to an engine without
        weight support (together with `loss_mask`)."""
        keep = self.keep[:, None] if self.token_keep is None else rows_kept(self.token_keep, self.keep)
        return self.advantage * self.weight * keep


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
