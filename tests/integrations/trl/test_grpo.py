"""TokenCreditGRPOTrainer: any supported recipe inside TRL's GRPOTrainer, with the recipe's credit and exact loss."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

import tokencredit as tc
from tokencredit.integrations.trl import TokenCreditGRPOTrainer, check_recipe
from tokencredit.rollouts import Credit, Rollouts

# presets that TRL's GRPOTrainer cannot feed, and why (docs/engines.md lists the same)
REFUSED = {
    "ppo": "values from 'critic'",
    "spo_chain": "values from 'monte_carlo'",
    "spo_tree": "rollouts sampled as 'segment_tree'",
}
PROMPTS = ["3+4+1=", "2+2=", "5+1+1=", "7+0="]


def reward_of_ids(completion_ids, **_):
    """Deterministic rewards that differ within a group: the parity of the completion's first token id."""
    return [float(ids[0] % 2) if len(ids) else 0.0 for ids in completion_ids]


def make_trainer(tiny_model, tmp_path, recipe="grpo", **config):
    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                    per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=2,
                    learning_rate=1e-3, seed=0, temperature=1.0) | config
    return TokenCreditGRPOTrainer(model=str(tiny_model), reward_funcs=reward_of_ids, args=GRPOConfig(**settings),
                                  train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}), recipe=recipe)


def one_batch(trainer):
    """One generation batch as TRL builds it (prompts repeated `num_generations` times, contiguous)."""
    g = trainer.num_generations
    rows = [{"prompt": p} for p in PROMPTS[: trainer.args.generation_batch_size // g] for _ in range(g)]
    torch.manual_seed(0)
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


@pytest.mark.parametrize("name", ["tempo", "forking", "dr_grpo", "steer"])
def test_token_level_presets_train_two_steps(tiny_model, tmp_path, name):
    trainer = make_trainer(tiny_model, tmp_path, name, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train()
    assert trainer.state.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(p.detach(), b) for p, b in zip(trainer.model.parameters(), before))
    assert any("tokencredit/kept_frac" in log for log in trainer.state.log_history)


def _refusal(name):
    try:
        check_recipe(tc.recipe(name), GRPOConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none",
                                                 beta=tc.recipe(name).kl_coef))
    except ValueError as err:
        return str(err)
    return None


def test_the_refused_presets_are_exactly_the_documented_ones():
    refused = {name: _refusal(name) for name in tc.PRESETS}
    assert {n for n, why in refused.items() if why} == set(REFUSED)
    for name, why in REFUSED.items():
        assert f"recipe {name!r} needs {why}, which TRL's GRPOTrainer cannot supply" in refused[name]


@pytest.mark.parametrize("name", sorted(set(tc.PRESETS) - set(REFUSED)))
def test_the_loss_receives_the_recipe_credit(tiny_model, tmp_path, name):
    """Registry-driven: for every supported preset, the credit the loss reads equals `Recipe.credit` of the same
    batch built independently here (groups of `num_generations` contiguous rows, rewards from the reward
    function, behaviour log-probs and entropies of the policy, truncation at the budget)."""
    trainer = make_trainer(tiny_model, tmp_path, name)
    out = one_batch(trainer)
    ids, mask = out["completion_ids"], out["completion_mask"].bool()
    with torch.no_grad():
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
        logprob, entropy, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([out["prompt_ids"], ids], 1), attention, ids.shape[1], compute_entropy=True)
    reward = torch.tensor(reward_of_ids([row[m].tolist() for row, m in zip(ids, mask)]))
    eos = trainer.eos_token_ids[0]
    rollouts = Rollouts(group=torch.arange(len(ids)) // 4, mask=mask, reward=reward, tokens=ids, logprob=logprob,
                        entropy=entropy, truncated=~((ids == eos) & mask).any(-1), budget=8)
    recipe = tc.recipe(name)
    expected = recipe.credit(rollouts)
    got = Credit(advantage=out["tc_advantage"], weight=out["tc_weight"], keep=out["tc_keep"],
                 token_keep=out["tc_token_keep"])
    torch.testing.assert_close(got.folded(), expected.folded(), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.loss_mask(mask), expected.loss_mask(mask))
    torch.testing.assert_close(out["tc_coef"], recipe.coefficients(rollouts, expected))


@pytest.mark.parametrize(("loss_type", "overrides"), [
    ("grpo", {"agg": "seq_mean_token_mean"}),
    ("dapo", {"agg": "token_mean"}),
    ("dr_grpo", {"agg": "seq_mean_token_sum_norm"}),
])
def test_grpo_recipe_matches_trl_own_loss(tiny_model, tmp_path, loss_type, overrides):
    """With the GRPO recipe (TRL's ε = 1e-4 on the std) the adapter's loss and gradient equal TRL's `loss_type`."""
    recipe = tc.recipe("grpo", advantage_params={"eps": 1e-4}, **overrides)
    trainer = make_trainer(tiny_model, tmp_path, recipe, loss_type=loss_type, epsilon=0.2, epsilon_high=0.2)
    inputs = one_batch(trainer)
    assert inputs["advantages"].abs().sum() > 0  # TRL's own (B,) advantages are left in place
    trainer.current_gradient_accumulation_steps = 1  # what TRL's train loop sets (one micro-step per optimizer step)
    model = trainer.model

    def loss_and_grad(compute):
        model.zero_grad()
        loss = compute(model, inputs)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    ours, our_grad = loss_and_grad(trainer._compute_loss)
    theirs, their_grad = loss_and_grad(lambda m, x: GRPOTrainer._compute_loss(trainer, m, x))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-6, rtol=1e-4)
    assert our_grad.abs().sum() > 0


@pytest.mark.parametrize(("config", "message"), [
    ({"importance_sampling_level": "sequence"}, "importance_sampling_level='sequence'"),
    ({"top_entropy_quantile": 0.2}, "top_entropy_quantile"),
    ({"beta": 0.1}, "beta = 0.1 but the recipe's kl_coef = 0.0"),
    ({"gradient_accumulation_steps": 2, "steps_per_generation": 4, "per_device_train_batch_size": 4},
     "steps_per_generation = 4"),
])
def test_settings_that_would_break_the_recipe_are_refused(tiny_model, tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(tiny_model, tmp_path, "tempo", **config)


def test_a_refused_preset_names_itself_and_the_reason(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="recipe 'spo_tree' needs rollouts sampled as 'segment_tree'"):
        make_trainer(tiny_model, tmp_path, "spo_tree")


def test_kl_recipes_use_trl_reference_log_probs(tiny_model, tmp_path):
    recipe = tc.recipe("grpo", kl="k3", kl_coef=0.05)
    trainer = make_trainer(tiny_model, tmp_path, recipe, beta=0.05, per_device_train_batch_size=4,
                           gradient_accumulation_steps=2)
    trainer.train()
    assert any("tokencredit/kl" in log for log in trainer.state.log_history)


def test_two_processes_give_the_single_process_gradient(tiny_model, tmp_path):
    """Under torchrun with 2 CPU processes (gloo) one group straddles the processes; the DDP-averaged gradient of
    one optimizer step (2 accumulation micro-steps per process) equals the gradient of the recipe's loss on the
    whole generation batch in one process, for tempo and forking; then each trains 2 steps."""
    script = Path(__file__).with_name("two_processes.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(script),
         str(tiny_model), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("exact gradient") == 4, result.stdout  # 2 recipes × 2 ranks


def test_records_option_writes_group_records(tiny_model, tmp_path):
    from tokencredit.inspect.records import read_records

    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                    per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=2,
                    learning_rate=1e-3, seed=0)
    trainer = TokenCreditGRPOTrainer(model=str(tiny_model), reward_funcs=reward_of_ids, args=GRPOConfig(**settings),
                                     train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}), recipe="tempo",
                                     records_every=1, records_groups=1)
    trainer.train()
    records = read_records(tmp_path / "out")
    assert [r.step for r in records] == [1, 2] and records[0].source == "TRL's GRPOTrainer"
    [group] = records[0].groups
    assert group.prompt in PROMPTS and len(group.responses) == 4
    for r in group.responses:
        assert len(r.ids) == len(r.text) == len(r.channels["advantage"]) == len(r.node)
        assert r.reward == float(r.ids[0] % 2)
