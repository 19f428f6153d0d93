"""The plug-in's worker loss on the TensorDict a verl actor worker trains on (the no-padding layout, log-probs from
a model in verl's flat per-sequence layout): it is the recipe's loss (objective, weights, keep masks, KL and entropy
under one normaliser), it equals verl's own `ppo_loss` where both compute the same thing, and its data-parallel
shares add up to the one-rank gradient."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils import tensordict_utils as tu
from verl.workers.config import ActorConfig
from verl.workers.utils.losses import ppo_loss
from verl_batches import BUDGET, BigramPolicy, algorithm_config, make_batch, rollouts_of, worker_batch

import tokencredit as tc
from tokencredit.integrations.verl import TokenCreditLoss

REFUSED = {"spo_chain", "spo_tree"}
# every preset verl can feed, plus a recipe with the KL and entropy terms (verl's reference log-probs and the
# current policy's entropies)
RECIPES = {name: tc.recipe(name) for name in sorted(set(tc.PRESETS) - REFUSED)}
RECIPES["grpo+kl+entropy"] = tc.recipe("grpo", kl="k3", kl_coef=0.05, entropy_coef=0.01)


def credit_batch(rcp: tc.Recipe, seed: int = 0):
    """A legacy batch with the recipe's credit fields, as `compute_advantage` writes them."""
    fields = rcp.model_dump(exclude={"name"})
    config = algorithm_config(f"tc_{rcp.advantage}", **fields)
    return compute_advantage(make_batch(seed), adv_estimator=f"tc_{rcp.advantage}", config=config)


def loss_and_grad(policy: BigramPolicy, compute) -> tuple[torch.Tensor, torch.Tensor]:
    policy.zero_grad()
    loss = compute()
    loss.backward()
    return loss.detach(), policy.logits.grad.clone()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_worker_loss_is_the_recipe_loss(name):
    """`prepare` (once per mini-batch) then the loss on the worker's TensorDict: loss and gradient equal
    `Recipe.loss` on the padded batch with the whole batch's coefficients."""
    rcp = RECIPES[name]
    data = credit_batch(rcp)
    td = worker_batch(data)
    loss_fn = TokenCreditLoss(rcp, BUDGET)
    loss_fn.prepare(td)
    policy = BigramPolicy()
    ours, our_grad = loss_and_grad(policy, lambda: loss_fn(model_output=policy(td), data=td)[0])

    rollouts = rollouts_of(data)
    credit = rcp.credit(rollouts)

    def reference():
        logprob, entropy = policy.response_log_probs(data)
        return rcp.loss(logprob, rollouts, credit, entropy=entropy)[0]

    theirs, their_grad = loss_and_grad(policy, reference)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-6, rtol=1e-5)
    assert our_grad.abs().sum() > 0


@pytest.mark.parametrize(("agg", "verl_mode"), [
    ("seq_mean_token_mean", "seq-mean-token-mean"),
    ("token_mean", "token-mean"),
    ("seq_mean_token_sum_norm", "seq-mean-token-sum-norm"),
])
def test_matches_verl_own_ppo_loss(agg, verl_mode):
    """With the GRPO recipe (verl's dual clip c = 3) the plug-in's loss and gradient equal verl's `ppo_loss` (vanilla
    policy loss) with the matching `loss_agg_mode` and verl's global normalisers."""
    rcp = tc.recipe("grpo", agg=agg, objective_params={"dual_clip": 3.0})
    data = credit_batch(rcp)
    td = worker_batch(data)
    b = len(data)
    tokens = int(data.batch["response_mask"].sum())
    tu.assign_non_tensor(td, batch_num_tokens=tokens, global_batch_size=b)
    config = ActorConfig(strategy="fsdp", rollout_n=1, ppo_mini_batch_size=b, ppo_micro_batch_size_per_gpu=b,
                         clip_ratio=0.2, loss_agg_mode=verl_mode,
                         loss_scale_factor=BUDGET if agg == "seq_mean_token_sum_norm" else None)
    loss_fn = TokenCreditLoss(rcp, BUDGET)
    loss_fn.prepare(td)
    policy = BigramPolicy()
    ours, our_grad = loss_and_grad(policy, lambda: loss_fn(model_output=policy(td), data=td)[0])
    theirs, their_grad = loss_and_grad(policy, lambda: ppo_loss(config, policy(td), td)[0])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-6, rtol=1e-5)
    assert our_grad.abs().sum() > 0


def test_two_simulated_data_parallel_ranks_give_the_one_rank_gradient():
    """dp_size = 2: each rank's rows with their slice of the mini-batch coefficients, its loss times 2; verl
    averages the ranks' gradients: the one-rank gradient."""
    rcp = tc.recipe("forking")
    data = credit_batch(rcp)
    whole = worker_batch(data)
    loss_fn = TokenCreditLoss(rcp, BUDGET)
    loss_fn.prepare(whole)
    policy = BigramPolicy()
    one, one_grad = loss_and_grad(policy, lambda: loss_fn(model_output=policy(whole), data=whole)[0])
    b = len(data)
    halves = [torch.arange(b)[: b // 2], torch.arange(b)[b // 2:]]
    grads, losses = [], []
    for rows in halves:
        part = worker_batch(data.select_idxs(rows))
        part["tc_coef"] = whole["tc_coef"][rows]
        tu.assign_non_tensor(part, dp_size=2)
        loss, grad = loss_and_grad(policy, lambda part=part: loss_fn(model_output=policy(part), data=part)[0])
        losses.append(loss)
        grads.append(grad)
    torch.testing.assert_close(sum(losses) / 2, one, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sum(grads) / 2, one_grad, atol=1e-6, rtol=1e-5)


def test_rollout_correction_weights_multiply_the_token_loss():
    rcp = tc.recipe("grpo")
    data = credit_batch(rcp)
    is_weights = 0.5 + torch.rand(data.batch["response_mask"].shape, generator=torch.Generator().manual_seed(1))
    data.batch["rollout_is_weights"] = is_weights
    td = worker_batch(data)
    loss_fn = TokenCreditLoss(rcp, BUDGET)
    loss_fn.prepare(td)
    policy = BigramPolicy()
    ours, _ = loss_and_grad(policy, lambda: loss_fn(model_output=policy(td), data=td)[0])
    rollouts = rollouts_of(data)
    credit = rcp.credit(rollouts)
    weighted = tc.Credit(advantage=credit.advantage, weight=credit.weight * is_weights, keep=credit.keep,
                         token_keep=credit.token_keep)
    coef = rcp.coefficients(rollouts, credit)
    theirs = rcp.loss(policy.response_log_probs(data)[0], rollouts, weighted, coef=coef)[0]
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-6, rtol=1e-5)


def test_the_loss_refuses_a_mini_batch_without_coefficients():
    rcp = tc.recipe("grpo")
    td = worker_batch(credit_batch(rcp))
    policy = BigramPolicy()
    with pytest.raises(RuntimeError, match="no tc_coef"):
        TokenCreditLoss(rcp, BUDGET)(model_output=policy(td), data=td)


def test_the_loss_pickles_for_set_loss_fn():
    import pickle

    loss_fn = pickle.loads(pickle.dumps(TokenCreditLoss(tc.recipe("forking", kl="k3", kl_coef=0.1), 7)))
    assert loss_fn.recipe == tc.recipe("forking", kl="k3", kl_coef=0.1) and loss_fn.budget == 7


def test_two_processes_shuffled_mini_batches_give_the_recipe_gradient(tmp_path):
    """Two gloo processes as two data-parallel ranks, each training its share of one batch with verl's own
    mini-batch iterator (shuffled, 2 epochs) and micro-batching (dynamic batch size), through the wrapped
    `BaseEngine.train_batch`: every optimizer step's averaged gradient equals the gradient of the recipe's loss on
    that global mini-batch computed in one process, for recipes whose coefficients read token counts, groups and
    advantages, with KL and entropy terms."""
    script = Path(__file__).with_name("two_ranks.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29533", str(script)], env=env, capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("exact gradient") == 2 * 4 * 3, result.stdout  # 2 ranks × 4 steps × 3 recipes
