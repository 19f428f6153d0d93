"""`Pairs`: construction, validation (the `Rollouts` rules and error style), sub-batches and named inputs."""

from __future__ import annotations

import re

import pytest
import torch

import tokencredit as tc
from tokencredit import Pairs

B, TC, TR = 3, 4, 2


def _fields(**overrides) -> dict:
    fields = {
        "chosen_mask": torch.arange(TC)[None, :] < torch.tensor([4, 0, 2])[:, None],
        "rejected_mask": torch.arange(TR)[None, :] < torch.tensor([1, 2, 0])[:, None],
        "chosen_tokens": torch.zeros(B, TC, dtype=torch.int64),
        "rejected_tokens": torch.ones(B, TR, dtype=torch.int32),
        "chosen_ref_logprob": -torch.rand(B, TC),
        "rejected_ref_logprob": -torch.rand(B, TR, dtype=torch.float64),
        "chosen_weight": torch.rand(B, TC),
        "rejected_weight": torch.rand(B, TR),
        "chosen_token_reward": torch.rand(B, TC),
        "rejected_token_reward": torch.rand(B, TR, dtype=torch.bfloat16),
        "extra": {"chosen_hidden": torch.randn(B, TC, 2, 5), "rejected_hidden": torch.randn(B, TR, 5),
                  "rejected_critical": torch.tensor([0, -1, 3]), "prompt_id": torch.arange(B)},
    }
    return fields | overrides


def test_valid_pairs_build_and_read() -> None:
    p = Pairs(**_fields())
    assert tc.Pairs is Pairs and p.num_pairs == B
    assert p.chosen_length.tolist() == [4, 0, 2] and p.rejected_length.tolist() == [1, 2, 0]
    assert p.side("weight") == (p.chosen_weight, p.rejected_weight)
    assert p.side("hidden") == (p.extra["chosen_hidden"], p.extra["rejected_hidden"])
    assert p.side("critical") == (None, p.extra["rejected_critical"])
    empty = Pairs(torch.zeros(0, 0, dtype=torch.bool), torch.zeros(0, 3, dtype=torch.bool))
    assert empty.num_pairs == 0 and Pairs(torch.zeros(2, 0, dtype=torch.bool),
                                          torch.zeros(2, 0, dtype=torch.bool)).num_pairs == 2


def test_select_narrow_and_with_inputs() -> None:
    p = Pairs(**_fields())
    rows = torch.tensor([2, 0])
    s = p.select(rows)
    assert s.num_pairs == 2 and torch.equal(s.chosen_mask, p.chosen_mask[rows])
    assert torch.equal(s.extra["rejected_critical"], torch.tensor([3, 0]))
    assert torch.equal(s.extra["chosen_hidden"], p.extra["chosen_hidden"][rows])
    n = p.narrow(2, 1)
    assert n.chosen_mask.shape == (B, 2) and n.rejected_ref_logprob.shape == (B, 1)
    assert n.extra["chosen_hidden"].shape == (B, 2, 2, 5) and n.extra["rejected_hidden"].shape == (B, 1, 5)
    assert n.extra["rejected_critical"].shape == (B,) and n.extra["prompt_id"].shape == (B,)
    w = torch.ones(B, TC)
    q = p.with_inputs(chosen_weight=w, rejected_plus_logprob=torch.zeros(B, TR))
    assert q.chosen_weight is w and q.side("plus_logprob")[1].shape == (B, TR)
    with pytest.raises(ValueError, match=re.escape("Pairs.extra['chosen_mask']")):
        Pairs(**_fields(extra={"chosen_mask": torch.ones(B, TC, dtype=torch.bool)}))


def test_require_names_the_missing_field_and_who() -> None:
    p = Pairs(**_fields(chosen_ref_logprob=None))
    with pytest.raises(ValueError, match=re.escape("Pairs.chosen_ref_logprob: preference 'x' needs the reference "
                                                   "policy's log-probs of the response tokens [B,T_c]; got None")):
        p.require("ref_logprob", "preference 'x'")
    assert p.require("ref_logprob", "who", sides=("rejected",))[0] is p.rejected_ref_logprob
    with pytest.raises(ValueError, match=re.escape("Pairs.extra['chosen_critical']: w needs the critical-token "
                                                   "index of each response (int, −1: none) [B]")):
        p.require("critical", "w")


# (field, bad value, expected shape text in the message)
BAD_FIELDS = [
    ("chosen_mask", torch.ones(B, TC, dtype=torch.int64), "[B,T_c]"),
    ("chosen_mask", torch.ones(B, dtype=torch.bool), "[B,T_c]"),
    ("chosen_mask", [[True] * TC] * B, "[B,T_c]"),
    ("rejected_mask", torch.ones(B + 1, TR, dtype=torch.bool), "[B,T_r]"),  # B differs from the chosen side's
    ("rejected_mask", torch.ones(B, TR, 1, dtype=torch.bool), "[B,T_r]"),
    ("rejected_mask", torch.ones(B, TR), "[B,T_r]"),
    ("chosen_tokens", torch.zeros(B, TC), "[B,T_c]"),  # float ids
    ("chosen_tokens", torch.zeros(B, TR, dtype=torch.int64), "[B,T_c]"),  # the other side's width
    ("rejected_tokens", torch.zeros(B, TR, dtype=torch.bool), "[B,T_r]"),
    ("rejected_tokens", [[0] * TR] * B, "[B,T_r]"),
] + [
    (f"{side}_{stem}", bad, text)
    for side, t, other, text in (("chosen", TC, TR, "[B,T_c]"), ("rejected", TR, TC, "[B,T_r]"))
    for stem in ("ref_logprob", "weight", "token_reward")
    for bad in (
        torch.zeros(B, t, dtype=torch.int64),
        torch.zeros(B, other),  # the other side's width
        torch.zeros(B),  # per pair
        torch.zeros(t, B),
        torch.zeros(B, t).numpy(),
    )
]


@pytest.mark.parametrize(("field", "bad", "shape_text"), BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_pairs_rejects_bad_field(field: str, bad, shape_text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Pairs.{field}")) as info:
        Pairs(**_fields(**{field: bad}))
    assert shape_text in str(info.value), f"message should state the expected shape {shape_text}: {info.value}"


@pytest.mark.parametrize(("name", "bad", "text"), [
    ("chosen_hidden", torch.zeros(B, TR, 4), f"[{B}, {TC}, ...]"),  # per token of the wrong side's width
    ("rejected_hidden", torch.zeros(B + 1, TR, 4), f"[{B}, {TR}, ...]"),
    ("prompt_id", torch.zeros(B + 1), f"[{B}, ...]"),
    ("prompt_id", torch.tensor(1.0), f"[{B}, ...]"),  # 0-d
    ("prompt_id", [1, 2, 3], f"[{B}, ...]"),
])
def test_pairs_rejects_bad_extra(name: str, bad, text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Pairs.extra[{name!r}]")) as info:
        Pairs(**_fields(extra={name: bad}))
    assert text in str(info.value)
