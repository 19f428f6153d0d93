"""The preference counterpart of `Rollouts`: one batch of B (chosen, rejected) response pairs.

Chosen and rejected responses are right-padded separately, to `T_c` and `T_r` tokens: `chosen_mask [B,T_c]` and
`rejected_mask [B,T_r]` mark the real response tokens, and every per-token field of a side has that side's
shape. Row i of both sides is the same prompt. The losses of the `preference` stage
(`tc.get("preference", name)`, `tokencredit.preference`) read a `Pairs` and the current policy's per-token
log-probs of both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from tokencredit.masked import token_count
from tokencredit.rollouts import _check

SIDES = ("chosen", "rejected")
# the per-side per-token fields: `chosen_<stem>` [B,T_c] and `rejected_<stem>` [B,T_r]
_SIDE_STEMS = ("tokens", "ref_logprob", "weight", "token_reward")

# what each input of the preference stage is, for error messages (the `Needs.inputs` names a loss declares)
PAIR_INPUTS: dict[str, str] = {
    "tokens": "the response token ids",
    "ref_logprob": "the reference policy's log-probs of the response tokens",
    "weight": "per-token weights of the responses",
    "token_reward": "per-token rewards of the responses",
    # extras (`extra["chosen_<name>"]`, `extra["rejected_<name>"]`) that built-in losses and sources read
    "hidden": "the reference model's hidden states of the response tokens (one layer [...,d] or all [...,L,d])",
    "plus_logprob": "the reference policy's log-probs of the response tokens after the 'better version' prompt x⁺",
    "minus_logprob": "the reference policy's log-probs of the response tokens after the 'worse version' prompt x⁻",
    "critical": "the critical-token index of each response (int, −1: none)",
}
PER_PAIR_INPUTS = frozenset({"critical"})  # [B] per side rather than per token


@dataclass(frozen=True)
class Pairs:
    """One batch of B preference pairs; chosen responses right-padded to `T_c` tokens, rejected ones to `T_r`.

    Required: `chosen_mask [B,T_c]` and `rejected_mask [B,T_r]` bool. Optional, each per side
    (`chosen_<x> [B,T_c]`, `rejected_<x> [B,T_r]`): `tokens` int (response token ids), `ref_logprob` float (the
    reference policy's log-probs of the response tokens), `weight` float (per-token weights, e.g. cDPO's
    contrastive-estimation weights or TAB-PO's field weights), `token_reward` float (per-token rewards, e.g.
    TGDPO's guidance rewards or T-REG's token rewards). `extra`: any other input by name, each `[B,...]`; a name
    starting `chosen_` / `rejected_` with two or more dimensions is per token of that side, `[B,T_c,...]` /
    `[B,T_r,...]` (e.g. `chosen_hidden`, the reference model's hidden states; `rejected_critical [B]`, a
    per-pair critical-token index). Shapes and dtypes are checked at construction; a mismatch raises
    `ValueError` naming the field (`Pairs.<field>`) and the expected shape, as `Rollouts` does.
    """

    chosen_mask: Tensor
    rejected_mask: Tensor
    chosen_tokens: Tensor | None = None
    rejected_tokens: Tensor | None = None
    chosen_ref_logprob: Tensor | None = None
    rejected_ref_logprob: Tensor | None = None
    chosen_weight: Tensor | None = None
    rejected_weight: Tensor | None = None
    chosen_token_reward: Tensor | None = None
    rejected_token_reward: Tensor | None = None
    extra: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for side, letter in (("chosen", "c"), ("rejected", "r")):
            mask = getattr(self, f"{side}_mask")
            if not isinstance(mask, Tensor) or mask.dim() != 2:
                got = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"Pairs.{side}_mask: expected a bool tensor of shape [B,T_{letter}], got {got}")
        b, tc = self.chosen_mask.shape
        _check("chosen_mask", self.chosen_mask, (b, tc), "bool", "[B,T_c]", "Pairs")
        _check("rejected_mask", self.rejected_mask, (b, self.rejected_mask.shape[1]), "bool", "[B,T_r]", "Pairs")
        for side in SIDES:
            shape, text = self._side_shape(side)
            for stem in _SIDE_STEMS:
                x = getattr(self, f"{side}_{stem}")
                if x is not None:
                    _check(f"{side}_{stem}", x, shape, "int" if stem == "tokens" else "float", text, "Pairs")
        for name, x in self.extra.items():
            if name in _FIELDS:
                raise ValueError(f"Pairs.extra[{name!r}]: {name!r} is a field of Pairs; set it directly")
            side = next((s for s in SIDES if name.startswith(f"{s}_")), None)
            if side is not None and isinstance(x, Tensor) and x.dim() >= 2:
                (_, t), text = self._side_shape(side)
                if tuple(x.shape[:2]) != (b, t):
                    raise ValueError(f"Pairs.extra[{name!r}]: expected a tensor of shape [B] or {text[:-1]},...] = "
                                     f"[{b}, {t}, ...], got {list(x.shape)}")
            elif not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] != b:
                got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"Pairs.extra[{name!r}]: expected a tensor of shape [B,...] = [{b}, ...], got {got}")

    def _side_shape(self, side: str) -> tuple[tuple[int, int], str]:
        return tuple(getattr(self, f"{side}_mask").shape), "[B,T_c]" if side == "chosen" else "[B,T_r]"

    # ------------------------------------------------------------------------------------------ reading
    @property
    def num_pairs(self) -> int:
        """B, the number of pairs in this batch."""
        return self.chosen_mask.shape[0]

    @property
    def chosen_length(self) -> Tensor:
        """Number of real tokens per chosen response, `[B]` int64."""
        return token_count(self.chosen_mask, -1)

    @property
    def rejected_length(self) -> Tensor:
        """Number of real tokens per rejected response, `[B]` int64."""
        return token_count(self.rejected_mask, -1)

    def side(self, name: str) -> tuple[Tensor | None, Tensor | None]:
        """`(chosen, rejected)` of the per-side input `name`: the fields `chosen_<name>` / `rejected_<name>`, or
        `extra["chosen_<name>"]` / `extra["rejected_<name>"]`; None for a side that does not carry it."""
        if name in _SIDE_STEMS or name == "mask":
            return getattr(self, f"chosen_{name}"), getattr(self, f"rejected_{name}")
        return self.extra.get(f"chosen_{name}"), self.extra.get(f"rejected_{name}")

    def require(self, name: str, who: str, *, sides: tuple[str, ...] = SIDES) -> tuple[Tensor, ...]:
        """The per-side input `name` of each of `sides`; a `ValueError` naming the first missing field and `who`
        needs it otherwise, e.g. `Pairs.rejected_weight: preference 'cdpo' needs per-token weights of the
        responses [B,T_r]; got None`."""
        out = []
        for side, x in zip(SIDES, self.side(name)):
            if side not in sides:
                continue
            if x is None:
                where = f"{side}_{name}" if name in _SIDE_STEMS else f"extra[{side + '_' + name!r}]"
                what = PAIR_INPUTS.get(name, f"the per-token input {name!r}")
                shape = "[B]" if name in PER_PAIR_INPUTS else self._side_shape(side)[1]
                raise ValueError(f"Pairs.{where}: {who} needs {what} {shape}; got None")
            out.append(x)
        return tuple(out)

    # ------------------------------------------------------------------------------------------ building
    def with_inputs(self, **inputs: Any) -> Pairs:
        """A copy with the given inputs set: fields by name (`chosen_weight=...`), any other name into `extra`."""
        own = {k: v for k, v in inputs.items() if k in _FIELDS}
        extra = {k: v for k, v in inputs.items() if k not in _FIELDS}
        return replace(self, **own, extra={**self.extra, **extra}) if extra else replace(self, **own)

    def select(self, rows: Tensor) -> Pairs:
        """The sub-batch of the given pairs (an index or bool tensor over B)."""
        return self._map(lambda name, x: x[rows])

    def narrow(self, chosen_width: int, rejected_width: int) -> Pairs:
        """The first `chosen_width` chosen and `rejected_width` rejected token positions (drop trailing padding)."""
        widths = {"chosen": chosen_width, "rejected": rejected_width}

        def cut(name: str, x: Tensor) -> Tensor:
            side = next((s for s in SIDES if name.startswith(f"{s}_")), None)
            return x[:, : widths[side]] if side is not None and x.dim() >= 2 else x

        return self._map(cut)

    def to(self, device: torch.device | str) -> Pairs:
        return self._map(lambda name, x: x.to(device))

    def _map(self, fn) -> Pairs:
        """`fn(name, tensor)` applied to every tensor (fields and extras)."""
        changed = {f.name: fn(f.name, getattr(self, f.name)) for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **changed, extra={k: fn(k, v) for k, v in self.extra.items()})


_FIELDS = frozenset(f.name for f in fields(Pairs)) - {"extra"}
