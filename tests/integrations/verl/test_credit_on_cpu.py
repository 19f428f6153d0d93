"""The tc_<name> estimators: loaded by a bare `import verl`, and through verl's own `compute_advantage` they give the
recipe's credit for every supported preset (registry-driven), with the inputs the recipe declares."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl_batches import BUDGET, algorithm_config, make_batch, rollouts_of

import tokencredit as tc
from tokencredit.integrations.verl import CREDIT_FIELDS
from tokencredit.integrations.verl.credit import SOURCE, Source

# presets that verl cannot feed, and why (docs/verl.md lists the same); `ppo` runs with verl's critic
REFUSED = {
    "spo_chain": "values from 'monte_carlo'",
    "spo_tree": "rollouts sampled as 'segment_tree'",
}
SUPPORTED = sorted(set(tc.PRESETS) - set(REFUSED))

CHECK = """
import sys, verl
from verl.trainer.ppo import core_algos
import tokencredit as tc
missing = [f"tc_{n}" for n in tc.names("advantage") if f"tc_{n}" not in core_algos.ADV_ESTIMATOR_REGISTRY]
print("missing", missing, "plugin", "tokencredit.integrations.verl" in sys.modules)
"""


@pytest.mark.parametrize(("policy", "loaded"), [("auto", True), ("tokencredit", True), ("none", False)])
def test_a_bare_import_verl_registers_every_tokencredit_advantage(policy, loaded):
    """The `verl.plugins` entry point in pyproject.toml: verl imports the plug-in itself (unless told not to)."""
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": policy}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    if loaded:
        assert line == "missing [] plugin True", line
    else:
        assert line.endswith("plugin False") and "tc_tempo" in line, line


def test_every_advantage_is_registered_here_too():
    assert {f"tc_{n}" for n in tc.names("advantage")} <= set(core_algos.ADV_ESTIMATOR_REGISTRY)


def _credit(name: str, data=None, **settings):
    rcp = tc.recipe(name)
    data = make_batch() if data is None else data
    out = compute_advantage(data, adv_estimator=f"tc_{rcp.advantage}", config=algorithm_config(
        f"tc_{rcp.advantage}", recipe=name, **settings))
    return rcp, out


@pytest.mark.parametrize("name", SUPPORTED)
def test_compute_advantage_gives_the_recipe_credit(name):
    """Registry-driven: for every preset verl can feed, verl's `compute_advantage` on a legacy `DataProto` gives, as
    `advantages`, the folded credit of `Recipe.credit` on the same batch built independently (token ids from
    `responses`, behaviour log-probs, entropies, critic values, truncation at the budget), and writes the
    unfolded credit (advantage, weight, loss mask, groups) for the plug-in's loss."""
    rcp, out = _credit(name)
    rollouts = rollouts_of(out)
    expected = rcp.credit(rollouts)
    batch = out.batch
    torch.testing.assert_close(batch["advantages"], expected.folded(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batch["tc_advantage"], expected.advantage, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(batch["tc_weight"], expected.weight)
    assert torch.equal(batch["tc_loss_mask"].bool(), expected.loss_mask(rollouts.mask))
    assert torch.equal(batch["tc_group"], rollouts.group)
    assert set(CREDIT_FIELDS) <= set(batch.keys())
    if rcp.needs().values is not None:  # ppo: verl's critic trains on the recipe's returns (GAE: A + V)
        target = rcp.needs().values.params["returns"](rcp.shaped(rollouts))
        torch.testing.assert_close(batch["returns"], target * rollouts.mask, atol=1e-6, rtol=1e-5)


def test_the_batch_tests_token_level_credit():
    """The shared batch is not degenerate: TEMPO differs from GRPO, forking weights and DAPO's filters drop
    something."""
    _, tempo = _credit("tempo")
    _, grpo = _credit("grpo")
    assert not torch.allclose(tempo.batch["advantages"], grpo.batch["advantages"])
    _, forking = _credit("forking")
    mask = forking.batch["response_mask"].bool()
    assert (forking.batch["tc_weight"][mask] == 0).any() and (forking.batch["tc_weight"][mask] == 1).any()
    assert not forking.batch["tc_loss_mask"].bool()[mask].all()


def test_tc_grpo_equals_verl_grpo():
    ours = compute_advantage(make_batch(), adv_estimator="tc_grpo", config=algorithm_config("tc_grpo"))
    theirs = compute_advantage(make_batch(), adv_estimator="grpo", norm_adv_by_std_in_grpo=True,
                               config=algorithm_config("grpo"))
    torch.testing.assert_close(ours.batch["advantages"], theirs.batch["advantages"])
    assert ours.batch["advantages"].abs().sum() > 0


def test_recipe_settings_come_from_algorithm_tokencredit():
    """Any Recipe field under `algorithm.tokencredit`; a `*_params` mapping merges into the preset's."""
    _, out = _credit("forking", weight_params={"top": 0.5}, objective_params={"clip_high": 0.3})
    from tokencredit.integrations.verl import read_settings

    s = read_settings(algorithm_config("tc_grpo", recipe="forking", weight_params={"top": 0.5},
                                  objective_params={"clip_high": 0.3}))
    assert s.recipe.weight_params == {"top": 0.5}
    assert s.recipe.objective_params == {"clip_low": 0.2, "clip_high": 0.3}
    assert s.budget == BUDGET
    expected = tc.recipe("forking", weight_params={"top": 0.5}).credit(rollouts_of(out))
    torch.testing.assert_close(out.batch["advantages"], expected.folded())


def test_the_trainer_gives_progress_and_budget():
    """Inside a trainer (the wrapped legacy `fit` or V1 `_compute_advantage` publish it), schedules follow
    (global_steps − 1) / total_training_steps and the budget is the rollout's response_length."""
    from omegaconf import OmegaConf

    class Trainer:
        global_steps, total_training_steps = 6, 10
        config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"response_length": BUDGET}}})

    token = SOURCE.set(Source(trainer=Trainer()))
    try:
        out = compute_advantage(make_batch(), adv_estimator="tc_grpo",
                                config=OmegaConf.create({"adv_estimator": "tc_grpo", "tokencredit": {"recipe": "d3s"}}))
    finally:
        SOURCE.reset(token)
    expected = tc.recipe("d3s").credit(rollouts_of(out), progress=0.5)
    torch.testing.assert_close(out.batch["advantages"], expected.folded())
    assert float(out.batch["tc_progress"][0]) == 0.5
    assert not torch.equal(expected.loss_mask(out.batch["response_mask"].bool()),
                           tc.recipe("d3s").credit(rollouts_of(out)).loss_mask(out.batch["response_mask"].bool()))


def test_a_missing_input_names_the_verl_field():
    data = make_batch()
    data.batch.pop("responses")
    with pytest.raises(ValueError, match=r"tc_tempo .*response token ids.*'responses'"):
        compute_advantage(data, adv_estimator="tc_tempo", config=algorithm_config("tc_tempo"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_reward_is_refused_naming_its_rows(bad):
    """A NaN or ±inf in verl's token_level_rewards at a response token (e.g. a reward function that failed) is
    refused, naming the batch rows, before any credit is computed; outside the response mask it is never read."""
    data = make_batch()
    data.batch["token_level_rewards"][5, 0] = bad
    data.batch["token_level_rewards"][9, 0] = bad
    message = (r"tokencredit \(verl\) tc_grpo: verl's batch \(token_level_rewards is Rollouts.reward.*\): "
               r"Rollouts.reward: expected finite rewards, got NaN or ±inf in rows \[5, 9\]")
    with pytest.raises(ValueError, match=message):
        compute_advantage(data, adv_estimator="tc_grpo", config=algorithm_config("tc_grpo"))
    padded = make_batch()
    mask = padded.batch["response_mask"].bool()
    row = int((~mask).any(-1).nonzero()[0])
    padded.batch["token_level_rewards"][row, -1] = bad  # a padding position of a short response
    out = compute_advantage(padded, adv_estimator="tc_grpo", config=algorithm_config("tc_grpo"))
    assert torch.isfinite(out.batch["advantages"]).all()


def test_estimator_and_recipe_must_agree():
    with pytest.raises(ValueError, match=re.escape("recipe 'tempo' computes the advantage 'tempo': set "
                                                   "algorithm.adv_estimator=tc_tempo")):
        compute_advantage(make_batch(), adv_estimator="tc_grpo", config=algorithm_config("tc_grpo", recipe="tempo"))


def test_legacy_trainer_keeps_the_old_policy_entropies():
    """The legacy `fit` pops `entropys` from `_compute_old_log_prob`'s output before the advantages; the wrapper
    keeps them as `entropy`, where the estimator finds them."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    data = make_batch()
    expected = data.batch["entropy"]

    class Worker:
        def compute_log_prob(self, td):
            flat = torch.zeros(int(data.batch["attention_mask"].sum()))
            offset = 0
            for i in range(len(data)):
                p = int(data.batch["attention_mask"][i, :3].sum())
                r = int(data.batch["response_mask"][i].sum())
                flat[offset + p - 1: offset + p - 1 + r] = expected[i, :r]
                offset += p + r
            nested = torch.nested.nested_tensor_from_jagged(flat, offsets=td["input_ids"].offsets())
            return tu.get_tensordict({"entropy": nested, "log_probs": nested}, non_tensor_dict={"metrics": {"mfu": 0}})

    class Trainer:
        config = OmegaConf.create({"algorithm": {"adv_estimator": "tc_grpo"}, "actor_rollout_ref": {"actor": {}}})
        actor_rollout_wg = Worker()

    assert left_right_2_no_padding  # the layout the worker sees (built inside _compute_old_log_prob)
    old_log_prob, _ = RayPPOTrainer._compute_old_log_prob(Trainer(), data)
    torch.testing.assert_close(old_log_prob.batch["entropy"], expected)
    torch.testing.assert_close(old_log_prob.batch["entropys"], expected)
