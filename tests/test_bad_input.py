"""Validation at the public boundary: wrong shapes, dtypes, names and missing fields raise a `ValueError` that
names the culprit (and, for shapes, the expected shape; for names, the known names)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

import tokencredit as tc
from tokencredit import Rollouts
from tokencredit.objective import policy_loss
from tokencredit.objective.aggregate import aggregate, coefficients

B, T = 4, 5


def _fields(**overrides) -> dict:
    mask = torch.arange(T)[None, :] < torch.tensor([5, 3, 0, 1])[:, None]
    fields = {
        "group": torch.tensor([7, 3, 7, 3]),
        "mask": mask,
        "reward": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "tokens": torch.zeros(B, T, dtype=torch.int64),
        "logprob": -torch.rand(B, T),
        "ref_logprob": -torch.rand(B, T),
        "entropy": torch.rand(B, T),
        "value": torch.randn(B, T),
        "truncated": torch.zeros(B, dtype=torch.bool),
        "budget": T,
    }
    return fields | overrides


def _rollouts(**overrides) -> Rollouts:
    return Rollouts(**_fields(**overrides))


def test_valid_batch_builds() -> None:
    r = _rollouts()
    assert r.batch_size == B and r.length.tolist() == [5, 3, 0, 1]
    assert Rollouts(group=torch.zeros(3, dtype=torch.int64), mask=torch.zeros(3, 0, dtype=torch.bool),
                    reward=torch.zeros(3)).batch_size == 3  # T = 0 is a valid (empty) batch


# (field, bad value, expected shape text in the message)
BAD_FIELDS = [
    ("group", torch.tensor([7.0, 3.0, 7.0, 3.0]), "[B]"),  # float ids
    ("group", torch.tensor([True, False, True, False]), "[B]"),  # bool is not an integer id
    ("group", torch.tensor([7, 3, 7]), "[B]"),  # wrong B
    ("group", torch.tensor([[7], [3], [7], [3]]), "[B]"),
    ("group", [7, 3, 7, 3], "[B]"),  # not a tensor
    ("mask", torch.ones(B, T, dtype=torch.int64), "[B,T]"),  # int mask
    ("mask", torch.ones(B, T), "[B,T]"),  # float mask
    ("mask", torch.ones(B, dtype=torch.bool), "[B,T]"),  # 1-D
    ("mask", torch.ones(B, T, 1, dtype=torch.bool), "[B,T]"),  # 3-D
    ("mask", [[True] * T] * B, "[B,T]"),  # not a tensor
    ("reward", torch.zeros(B, T + 1), "[B,T]"),
    ("reward", torch.zeros(B + 1), "[B]"),
    ("reward", torch.zeros(B, T, 2), "[B]"),
    ("reward", torch.zeros(B, dtype=torch.int64), "[B]"),  # int rewards
    ("reward", torch.zeros(B, T, dtype=torch.bool), "[B,T]"),
    ("reward", 1.0, "[B]"),  # not a tensor
    ("tokens", torch.zeros(B, T), "[B,T]"),  # float tokens
    ("tokens", torch.zeros(B, T + 1, dtype=torch.int64), "[B,T]"),
    ("tokens", [[0] * T] * B, "[B,T]"),
    ("truncated", torch.zeros(B, 1, dtype=torch.bool), "[B]"),
    ("truncated", torch.zeros(B, dtype=torch.int64), "[B]"),
    ("truncated", [False] * B, "[B]"),
] + [
    (name, bad, "[B,T]")
    for name in ("logprob", "ref_logprob", "entropy", "value")
    for bad in (
        torch.zeros(B, T, dtype=torch.int64),  # int
        torch.zeros(B, T, dtype=torch.bool),
        torch.zeros(B, T - 1),  # wrong T
        torch.zeros(T, B),  # transposed
        torch.zeros(B),  # per-sequence
        torch.zeros(B, T).numpy(),  # not a torch tensor
    )
]


@pytest.mark.parametrize(("field", "bad", "shape_text"), BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_rollouts_rejects_bad_field(field: str, bad, shape_text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Rollouts.{field}")) as info:
        _rollouts(**{field: bad})
    assert shape_text in str(info.value), f"message should state the expected shape {shape_text}: {info.value}"


def test_registry_lookup_errors_list_known_names() -> None:
    with pytest.raises(ValueError, match="nope") as info:
        tc.get("advantage", "nope")
    for name in tc.names("advantage"):
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="nostage") as info:
        tc.get("nostage", "x")
    for stage in tc.STAGES:
        assert repr(stage) in str(info.value)
    with pytest.raises(ValueError, match="nostage"):
        tc.names("nostage")
    with pytest.raises(ValueError, match="already registered"):
        tc.register("advantage", "grpo")(lambda rollouts: rollouts.mask.float())


def test_recipe_errors() -> None:
    with pytest.raises(ValueError, match="nope") as info:
        tc.recipe("nope")
    for name in tc.methods()["presets"]:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="nope") as info:
        tc.Recipe(advantage="nope")
    for name in tc.names("advantage"):
        assert repr(name) in str(info.value)
    for stage in ("shape", "weight", "select", "objective", "kl"):
        with pytest.raises(ValueError, match="nope"):
            tc.Recipe(**{stage: "nope"})
    with pytest.raises(ValueError, match="nope") as info:
        tc.Recipe(agg="nope")
    for name in tc.names("aggregate"):
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="kl") as info:
        tc.Recipe(kl_coef=0.1)  # a KL coefficient without an estimator
    for name in tc.names("kl"):
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="kl_coef"):
        tc.Recipe(kl="k3", kl_coef=-1.0)
    with pytest.raises(ValueError, match="advantag"):
        tc.Recipe(advantag="grpo")  # a misspelt field is not silently ignored
    with pytest.raises(ValueError, match="nope"):
        tc.recipe("grpo", advantage="nope")  # overrides are validated too
    with pytest.raises(ValueError, match="nope"):
        tc.register_preset("broken", advantage="nope")
    assert "broken" not in tc.methods()["presets"]


def test_recipe_loss_errors() -> None:
    r = tc.recipe("grpo")
    rollouts = _rollouts()
    credit = r.credit(rollouts)
    with pytest.raises(ValueError, match=re.escape("logprob: expected shape [B,T]")):
        r.loss(torch.zeros(B, T + 1, requires_grad=True), rollouts, credit)
    with pytest.raises(ValueError, match=re.escape("logprob: expected shape [B,T]")):
        r.loss(torch.zeros(B, requires_grad=True), rollouts, credit)
    with pytest.raises(ValueError, match=re.escape("Rollouts.logprob")):
        r.loss(torch.zeros(B, T, requires_grad=True), _rollouts(logprob=None), credit)
    with pytest.raises(ValueError, match=re.escape("Rollouts.ref_logprob")):
        tc.recipe("grpo", kl="k3", kl_coef=0.1).loss(torch.zeros(B, T), _rollouts(ref_logprob=None), credit)
    with pytest.raises(ValueError, match="entropy"):
        tc.recipe("grpo", entropy_coef=0.01).loss(torch.zeros(B, T), rollouts, credit)


def test_stages_name_the_missing_field() -> None:
    with pytest.raises(ValueError, match=re.escape("Rollouts.value")):
        tc.get("advantage", "gae")(_rollouts(value=None))
    with pytest.raises(ValueError, match=re.escape("Rollouts.value")):
        tc.recipe("ppo").credit(_rollouts(value=None))
    rollouts = _rollouts(entropy=None)
    advantage = tc.get("advantage", "grpo")(rollouts)
    with pytest.raises(ValueError, match=re.escape("Rollouts.entropy")):
        tc.get("weight", "forking_tokens")(rollouts, advantage)
    with pytest.raises(ValueError, match=re.escape("Rollouts.entropy")):
        tc.recipe("forking").credit(rollouts)
    for top in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top"):
            tc.get("weight", "forking_tokens")(_rollouts(), advantage, top=top)


def test_aggregation_errors() -> None:
    mask = _fields()["mask"]
    loss = torch.zeros(B, T)
    with pytest.raises(ValueError, match="advantage"):
        aggregate("balanced", loss, mask)
    with pytest.raises(ValueError, match="advantage"):
        tc.get("aggregate", "balanced")(mask)
    with pytest.raises(ValueError, match="denominator"):
        coefficients("balanced", mask, advantage=loss, denominator="nope")
    with pytest.raises(ValueError, match="budget"):
        coefficients("seq_mean_token_sum_norm", mask)
    with pytest.raises(ValueError, match="nope") as info:
        coefficients("nope", mask)
    for name in tc.names("aggregate"):
        assert repr(name) in str(info.value)


def test_objective_parameter_errors() -> None:
    mask = _fields()["mask"]
    zeros = torch.zeros(B, T)
    with pytest.raises(ValueError, match="dual_clip"):
        tc.get("objective", "ppo_clip")(zeros, zeros, zeros, mask, dual_clip=1.0)
    with pytest.raises(ValueError, match="nope"):
        policy_loss("ppo_clip", zeros, zeros, zeros, mask, agg="nope")


def test_recipe_parameters_are_checked_when_the_recipe_is_made() -> None:
    with pytest.raises(ValueError, match=r"advantage_params: advantage 'grpo' has no parameter 'epsilon'"):
        tc.recipe("grpo", advantage_params={"epsilon": 1e-6})
    with pytest.raises(ValueError, match=r"objective_params: objective 'ppo_clip' has no parameter 'clip'"):
        tc.recipe("grpo", objective_params={"clip": 0.2})
    with pytest.raises(ValueError, match=r"weight_params: parameters given but no weight stage"):
        tc.recipe("grpo", weight_params={"top": 0.2})
    with pytest.raises(ValueError, match=r"weight_params.top: a schedule"):
        tc.recipe("forking", weight_params={"top": {"start": 0.1}})
    with pytest.raises(ValueError, match="progress"):
        tc.recipe("grpo").credit(_rollouts(), progress=1.5)


def test_a_missing_input_names_the_field_and_the_stage() -> None:
    rollouts = replace(_rollouts(), tokens=None)
    with pytest.raises(ValueError, match=r"Rollouts\.tokens: advantage 'tempo' \(recipe 'tempo'\) needs the response "
                                         r"token ids"):
        tc.recipe("tempo").credit(rollouts)
    with pytest.raises(ValueError, match=r"Rollouts\.budget: aggregate 'seq_mean_token_sum_norm'"):
        tc.recipe("dr_grpo").coefficients(_rollouts(budget=None), tc.recipe("dr_grpo").credit(_rollouts()))
    with pytest.raises(ValueError, match=r"Rollouts\.value: advantage 'spo_chain' .* from the 'monte_carlo' value"):
        tc.recipe("spo_chain").credit(replace(_rollouts(), value=None))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_reward_is_rejected_naming_the_rows(bad: float) -> None:
    reward = torch.tensor([1.0, 0.0, 1.0, 0.0])
    reward[[1, 3]] = bad
    with pytest.raises(ValueError, match=re.escape("Rollouts.reward: expected finite rewards, got NaN or ±inf in "
                                                   "rows [1, 3]")):
        _rollouts(reward=reward)
    token_reward = torch.zeros(B, T)
    token_reward[0, 2] = bad  # row 0 has 5 tokens: position 2 is a real token
    with pytest.raises(ValueError, match=re.escape("rows [0]")):
        _rollouts(reward=token_reward)


def test_a_non_finite_token_reward_in_the_padding_is_never_read() -> None:
    token_reward = torch.zeros(B, T)
    token_reward[1, 4] = float("nan")  # row 1 has 3 tokens: position 4 is padding
    credit = tc.recipe("dapo").credit(_rollouts(reward=token_reward))
    assert torch.isfinite(credit.folded()).all()


def test_the_reward_is_checked_once_per_batch_not_per_copy(monkeypatch) -> None:
    import tokencredit.rollouts as rollouts_module

    calls = []
    check = rollouts_module.check_finite_reward
    monkeypatch.setattr(rollouts_module, "check_finite_reward", lambda *a, **k: calls.append(1) or check(*a, **k))
    r = _rollouts()
    r.with_inputs(value=torch.zeros(B, T), hidden=torch.zeros(B, T, 2)).select(torch.tensor([0, 2])).narrow(3)
    r.to("cpu")
    tc.recipe("dapo").credit(r)
    assert len(calls) == 1


def test_recipe_parameter_values_are_checked_when_the_recipe_is_made() -> None:
    cases = [
        (dict(objective_params={"clip_low": -0.1}), r"objective_params: objective 'ppo_clip': clip_low, clip_high"),
        (dict(objective_params={"clip_high": {"start": 0.2, "end": -0.1}}),
         r"objective_params: objective 'ppo_clip' at progress 1: clip_low, clip_high"),
        (dict(objective_params={"dual_clip": 1.0}), r"objective_params: objective 'ppo_clip': dual_clip"),
        (dict(objective="gspo", objective_params={"clip_low": -1e-4}), r"objective 'gspo': clip_low"),
        (dict(objective="cispo", objective_params={"clip_high": -0.1}), r"objective 'cispo': clip_low"),
        (dict(shape="overlong", shape_params={"cache": 0.0}), r"shape_params: shape 'overlong': cache"),
        (dict(select="d3s_samples", select_params={"fraction": {"start": 0.5, "end": 1.5}}),
         r"select_params: select 'd3s_samples' at progress 1: fraction"),
        (dict(token_select="low_probability", token_select_params={"threshold": 1.5}),
         r"token_select_params: token_select 'low_probability': threshold"),
        (dict(agg="balanced", agg_params={"denominator": "rows"}), r"agg_params: aggregate 'balanced': denominator"),
        (dict(agg="seq_mean_token_sum_norm", agg_params={"budget": 0}), r"agg_params: .*budget: expected a positive"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            tc.recipe("grpo", **fields)
    with pytest.raises(ValueError, match=r"advantage_params: advantage 'spo_chain': interval, max_cuts"):
        tc.recipe("spo_chain", advantage_params={"interval": 0})
    with pytest.raises(ValueError, match=r"advantage_params: advantage 'spo_tree': mode"):
        tc.recipe("spo_tree", advantage_params={"branching": [2, 2], "mode": "mean"})
    assert tc.recipe("grpo", objective_params={"clip_low": 0.0, "clip_high": 0.3}).objective_params["clip_low"] == 0.0
