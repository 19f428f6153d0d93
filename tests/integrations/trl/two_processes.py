"""Run by `test_two_processes_give_the_single_process_gradient` under `torchrun --nproc_per_node 2`: argv = tiny model
folder, work folder. Prints "exact gradient" per recipe and rank when the DDP-averaged gradient of one optimizer step
equals the one-process gradient of the recipe's loss on the gathered generation batch."""

import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from trl import GRPOConfig
from trl.trainer.utils import split_tensor_dict

import tokencredit as tc
from tokencredit.integrations.trl import TokenCreditGRPOTrainer
from tokencredit.rollouts import Rollouts

model_path, work = sys.argv[1], sys.argv[2]
PROMPTS = ["3+4+1=", "2+2=", "5+1+1=", "7+0="]


def reward(completion_ids, **_):
    return [float(ids[0] % 2) if len(ids) else 0.0 for ids in completion_ids]


def trainer_for(name):
    # per process: 2 rows per micro-step × 2 accumulation steps = 4 rows; 8 generations per prompt: one group of 8
    # spans both processes
    args = GRPOConfig(output_dir=f"{work}/{name}", use_cpu=True, bf16=False, report_to="none", save_strategy="no",
                      per_device_train_batch_size=2, gradient_accumulation_steps=2, num_generations=8,
                      max_completion_length=8, max_steps=2, learning_rate=1e-3, seed=0, ddp_backend="gloo")
    return TokenCreditGRPOTrainer(model=model_path, reward_funcs=reward, args=args, recipe=name,
                                  train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}))


def gather_rows(accelerator, x):
    return accelerator.gather(accelerator.pad_across_processes(x, dim=1, pad_index=0) if x.dim() == 2 else x)


for name in ("tempo", "forking"):
    trainer = trainer_for(name)
    acc, model = trainer.accelerator, trainer.accelerator.unwrap_model(trainer.model)
    rank, world = acc.process_index, acc.num_processes
    model.train()
    torch.manual_seed(rank)
    out = trainer._generate_and_score_completions([{"prompt": PROMPTS[0]}] * 4)
    # this process's share of one optimizer step: 2 micro-steps, gradients accumulated, then averaged over ranks
    model.zero_grad()
    for micro in split_tensor_dict(out, 2):
        trainer._compute_loss(model, micro).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(grad)
    grad /= world
    # the reference: the whole generation batch in one process
    full = {k: gather_rows(acc, out[k].int() if out[k].dtype == torch.bool else out[k])
            for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
    ids, mask = full["completion_ids"], full["completion_mask"].bool()
    prompt_ids = full["prompt_ids"]
    model.zero_grad()
    logprob, entropy, _ = trainer._get_per_token_logps_and_entropies(
        model, torch.cat([prompt_ids, ids], 1), torch.cat([full["prompt_mask"], full["completion_mask"]], 1),
        ids.shape[1], compute_entropy=True)
    eos = trainer.eos_token_ids[0]
    rewards = torch.tensor(reward([row[m].tolist() for row, m in zip(ids, mask)]))
    rollouts = Rollouts(group=torch.zeros(len(ids), dtype=torch.long), mask=mask, reward=rewards, tokens=ids,
                        logprob=logprob.detach(), entropy=entropy.detach(), truncated=~((ids == eos) & mask).any(-1),
                        budget=8)
    recipe = tc.recipe(name)
    credit = recipe.credit(rollouts)
    loss, _ = recipe.loss(logprob, rollouts, credit)
    loss.backward()
    reference = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(grad, reference, atol=1e-6, rtol=1e-4)
    assert reference.abs().sum() > 0 or not credit.keep.any()
    print(f"rank {rank} {name}: exact gradient ({grad.abs().sum().item():.4g})", flush=True)
    trainer.train()
    assert trainer.state.global_step == 2
