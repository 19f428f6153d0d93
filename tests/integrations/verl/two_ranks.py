"""Run by `test_two_processes_shuffled_mini_batches_give_the_recipe_gradient` under `torchrun --nproc_per_node 2`
(gloo): two data-parallel ranks train one batch as verl's actor worker does, and each optimizer step's gradient is
checked against the recipe's loss on that step's global mini-batch in one process. Prints "exact gradient" per
recipe, step and rank.

Per rank, as verl 0.9.1's `TrainingWorker.train_mini_batch`: its contiguous share of the batch (verl's dispatch),
`tu.make_iterator` (shuffled with seed + rank, 2 epochs) into mini-batches, each through the engine's
`train_batch` (wrapped by the plug-in: the global mini-batch's coefficients) and, as verl's FSDP engine's
`forward_backward_batch`, `prepare_micro_batches` (dynamic batch size: rows regrouped by length), the loss and
backward per micro-batch; then the gradients are averaged over the ranks."""

import torch
import torch.distributed as dist
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils import tensordict_utils as tu
from verl.workers.engine.base import BaseEngine
from verl.workers.engine.utils import prepare_micro_batches
from verl_batches import BUDGET, BigramPolicy, algorithm_config, make_batch, rollouts_of, worker_batch

import tokencredit as tc
from tokencredit.integrations.verl import TokenCreditLoss

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
GROUP = dist.new_group(list(range(world)))


class Engine(BaseEngine):
    """verl's engine interface with the FSDP engine's forward/backward loop, on a shared `BigramPolicy`."""

    def __init__(self, policy):
        self.policy = policy
        self.grads = []

    def get_data_parallel_group(self):
        return GROUP

    def get_data_parallel_size(self):
        return world

    def optimizer_zero_grad(self):
        self.policy.zero_grad()

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        tokens = data["loss_mask"].sum()
        dist.all_reduce(tokens, group=GROUP)
        tu.assign_non_tensor(data, batch_num_tokens=tokens.item(), dp_size=world)
        # (verl equalises the micro-batch count over the DP group with a tensor on the accelerator: not on CPU)
        micro_batches, _ = prepare_micro_batches(data=data, dp_group=None, same_micro_num_in_dp=False)
        assert len(micro_batches) > 1
        for micro in micro_batches:
            loss, _ = loss_function(model_output=self.policy(micro), data=micro, dp_group=GROUP)
            loss.backward()
        return {}

    def optimizer_step(self):
        grad = self.policy.logits.grad.clone()
        dist.all_reduce(grad, group=GROUP)  # DP averages gradients
        self.grads.append(grad / world)
        return 0.0

    def is_mp_src_rank_with_outputs(self):
        return False


RECIPES = {
    "forking": tc.recipe("forking"),  # token_mean over kept responses' tokens, entropy weights, dynamic filter
    "ba": tc.recipe("ba"),  # balanced aggregation: per-group counts of positive and negative responses
    "d3s+kl+entropy": tc.recipe("d3s", kl="k3", kl_coef=0.05, entropy_coef=0.01),  # selection, seq mean, KL, H
}
for name, rcp in RECIPES.items():
    batch = make_batch(seed=3, groups=4, per_group=4)
    fields = rcp.model_dump(exclude={"name"})
    batch = compute_advantage(batch, adv_estimator=f"tc_{rcp.advantage}",
                              config=algorithm_config(f"tc_{rcp.advantage}", **fields))
    b = len(batch)
    batch.batch["row"] = torch.arange(b)
    share = worker_batch(batch.select_idxs(torch.arange(b).chunk(world)[rank]))
    tu.assign_non_tensor(share, use_dynamic_bsz=True, max_token_len_per_gpu=20)
    policy = BigramPolicy(seed=0)
    engine = Engine(policy)
    loss_fn = TokenCreditLoss(rcp, BUDGET)
    rows_seen = []
    for mini_batch in tu.make_iterator(share, mini_batch_size=4, epochs=2, seed=7 + rank,
                                       dataloader_kwargs={"shuffle": True}):
        rows = mini_batch["row"].clone()
        engine.train_batch(mini_batch, loss_function=loss_fn)
        parts = [torch.zeros_like(rows) for _ in range(world)]
        dist.all_gather(parts, rows, group=GROUP)
        rows_seen.append(torch.cat(parts))
    assert len(engine.grads) == 4

    # the reference: the recipe's credit on the whole batch, its loss on each global mini-batch in one pass
    rollouts = rollouts_of(batch)
    credit = rcp.credit(rollouts)
    for step, (rows, grad) in enumerate(zip(rows_seen, engine.grads)):
        policy.zero_grad()
        logprob, entropy = policy.response_log_probs(batch)
        r, c = rollouts.select(rows), credit.select(rows)
        loss, _ = rcp.loss(logprob[rows], r, c, entropy=entropy[rows])
        loss.backward()
        reference = policy.logits.grad
        torch.testing.assert_close(grad, reference, atol=1e-6, rtol=1e-5)
        assert reference.abs().sum() > 0
        print(f"rank {rank} {name} step {step}: exact gradient ({grad.abs().sum().item():.4g})", flush=True)

dist.destroy_process_group()
