"""`TokenCreditGRPOTrainer`: TRL's `GRPOTrainer` with a tokencredit recipe's per-token credit and exact loss.

TRL has no advantage hook; this subclass (TRL 1.16) replaces two steps of its trainer and keeps everything else
(generation, vLLM, reward functions, logging, accelerate/DeepSpeed):

    _generate_and_score_completions   after TRL generates and scores, the recipe's credit is computed on the
                                      *gathered* generation batch (groups are `num_generations` contiguous
                                      global rows and may straddle processes), with the inputs it declares:
                                      token ids, behaviour log-probs and entropies (one extra no-grad pass when
                                      a credit stage needs them and TRL kept none), truncation, the budget
                                      `max_completion_length`, TRL's reference log-probs; then sliced back to
                                      this process's rows with the whole batch's aggregation coefficients
    _compute_loss                     `recipe.loss` on each micro-batch with those coefficients: the recipe's
                                      objective, token weights, token/response keep masks, KL and entropy terms
                                      under one normaliser, instead of TRL's `loss_type`

Exactness: an optimizer step sees the whole generation batch (`steps_per_generation` must equal
`gradient_accumulation_steps`, TRL's default), each micro-step's loss is its share `Σ_{i∈micro} c_i Σ_t …` of
the whole batch's loss, times the process count because DDP averages gradients over processes; the summed,
averaged gradient is the gradient of the recipe's loss on the whole batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from trl import GRPOTrainer

from tokencredit.integrations.common import unsupported_needs, write_group_records
from tokencredit.recipes import CREDIT_STAGES, Recipe, recipe
from tokencredit.rollouts import Credit, Rollouts

ENGINE = "TRL's GRPOTrainer"
# what this plug-in supplies: from TRL's batch (tokens, truncated, budget, TRL's reference log-probs when
# beta > 0) or from one no-grad pass of the policy (behaviour log-probs and entropies)
INPUTS = ("tokens", "logprob", "entropy", "truncated", "budget", "ref_logprob")


def check_recipe(rcp: Recipe, args: Any) -> None:
    """A `ValueError` listing every reason `rcp` cannot run exactly with TRL settings `args`."""
    problems = unsupported_needs(rcp, ENGINE, inputs=INPUTS, policy=("entropy",))
    if args.importance_sampling_level != "token":
        problems.append("importance_sampling_level='sequence' sums a response's token credit into one number: "
                        "use 'token' (GSPO-token is the recipe objective 'gspo')")
    if args.top_entropy_quantile < 1.0:
        problems.append("top_entropy_quantile < 1 would mask the recipe's loss a second time: choose a recipe "
                        "weight stage instead (preset 'forking')")
    if args.beta != rcp.kl_coef:
        problems.append(f"beta = {args.beta} but the recipe's kl_coef = {rcp.kl_coef}: the KL term is the recipe's "
                        "(set beta equal to it, so TRL computes the reference log-probs it needs)")
    if args.steps_per_generation != args.gradient_accumulation_steps:
        problems.append(f"steps_per_generation = {args.steps_per_generation} differs from gradient_accumulation_steps "
                        f"= {args.gradient_accumulation_steps}: the recipe's normaliser is exact only when each "
                        "optimizer step sees the whole generation batch")
    if problems:
        raise ValueError("TokenCreditGRPOTrainer: " + "; ".join(problems))


class TokenCreditGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer(model, reward_funcs, args=..., ..., recipe="tempo")`: every other argument is TRL's. The recipe
    replaces TRL's advantages and loss (`loss_type`, `epsilon`, `epsilon_high`, `scale_rewards` and `delta` are
    not used; the recipe's objective parameters are)."""

    def __init__(self, *args: Any, recipe: Recipe | str = "grpo", records_every: int = 0, records_groups: int = 2,
                 records_max_bytes: int = 1_000_000, **kwargs: Any) -> None:
        """`records_every` > 0: every that many generation batches, the main process writes `records_groups`
        sampled groups with every per-token quantity to `args.output_dir/records/` (the group-record format of
        `tokencredit inspect RUN`, docs/inspect.md)."""
        self.recipe = _as_recipe(recipe)
        if records_every < 0 or records_groups < 1:
            raise ValueError(f"TokenCreditGRPOTrainer: records_every >= 0 and records_groups >= 1, got "
                             f"{records_every} and {records_groups}")
        self.records = {"every": records_every, "groups": records_groups, "max_bytes": records_max_bytes}
        super().__init__(*args, **kwargs)
        check_recipe(self.recipe, self.args)

    # ------------------------------------------------------------------------------------------- credit
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._tc_rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._tc_rewards_per_func

    def _progress(self) -> float:
        return min(1.0, self.state.global_step / self.state.max_steps) if self.state.max_steps else 0.0

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        train = self.model.training
        progress = self._progress()
        needs = self.recipe.needs(progress, stages=CREDIT_STAGES)
        mask = out["completion_mask"].bool()
        if "tool_mask" in out:
            mask = mask & out["tool_mask"].bool()
        local = {"mask": mask, "tokens": out["completion_ids"],
                 "truncated": ~(torch.isin(out["completion_ids"], torch.tensor(self.eos_token_ids, device=mask.device))
                                & mask).any(-1)}
        if needs.inputs & {"logprob", "entropy"}:
            local.update(self._behaviour(out, compute_entropy="entropy" in needs.inputs))
        if "ref_logprob" in needs.inputs:
            local["ref_logprob"] = out["ref_per_token_logps"]
        rows = _gather(self.accelerator, local)
        reward = torch.nan_to_num((self._tc_rewards_per_func * self.reward_weights.to(mask.device)).nansum(1))
        generations = self.num_generations if train else self.num_generations_eval
        group = torch.arange(len(reward), device=reward.device) // generations
        rollouts = Rollouts(group=group, reward=reward, budget=self.max_completion_length, **rows)
        credit = self.recipe.credit(rollouts, progress)
        coef = self.recipe.coefficients(rollouts, credit)
        n = mask.shape[0]
        mine = torch.arange(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n,
                           device=mask.device)
        if train and self.records["every"] and self.state.global_step % self.records["every"] == 0:
            self._write_records(inputs, rollouts, credit)
        part = credit.select(mine).narrow(mask.shape[1])
        out.update(tc_advantage=part.advantage, tc_weight=part.weight, tc_keep=part.keep,
                   tc_token_keep=part.token_keep, tc_coef=coef[mine],
                   tc_progress=torch.tensor(progress, device=mask.device))
        return out

    def _write_records(self, inputs: list[dict[str, Any]], rollouts: Rollouts, credit: Credit) -> None:
        """Group records of the gathered generation batch (main process), step numbered as TRL's global step + 1."""
        from accelerate.utils import gather_object

        prompts = gather_object([p if isinstance(p := x["prompt"], str) else json.dumps(p) for x in inputs])
        if not self.accelerator.is_main_process:
            return
        write_group_records(Path(self.args.output_dir), rollouts, credit, step=self.state.global_step + 1,
                            recipe=self.recipe.name, source=ENGINE, tokenizer=self.processing_class,
                            prompts=lambda rows: [prompts[i] for i in rows], groups=self.records["groups"],
                            max_bytes=self.records["max_bytes"])

    @torch.no_grad()
    def _behaviour(self, out: dict[str, Any], compute_entropy: bool) -> dict[str, Tensor]:
        """Behaviour log-probs (TRL's `old_per_token_logps` when it kept them) and entropies `[n,T]`: one no-grad pass
        of the policy that generated the batch."""
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        logprob, entropy, _ = self._get_per_token_logps_and_entropies(
            self.model, ids, attention, out["completion_ids"].shape[1],
            batch_size=self.args.per_device_train_batch_size, compute_entropy=compute_entropy)
        found = {"logprob": out.get("old_per_token_logps", logprob)}
        return found | ({"entropy": entropy} if compute_entropy else {})

    # ------------------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs: dict[str, Any]) -> Tensor:
        completion_ids = inputs["completion_ids"]
        ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        compute_entropy = "entropy" in self.recipe.needs().policy
        logprob, entropy, _ = self._get_per_token_logps_and_entropies(
            model, ids, attention, completion_ids.shape[1], compute_entropy=compute_entropy)
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        old = inputs.get("old_per_token_logps")
        rollouts = Rollouts(group=torch.zeros(len(mask), dtype=torch.long, device=mask.device), mask=mask,
                            reward=torch.zeros(len(mask), device=mask.device),
                            logprob=logprob.detach() if old is None else old,
                            ref_logprob=inputs.get("ref_per_token_logps"), budget=self.max_completion_length)
        weight = inputs["tc_weight"]
        if "importance_sampling_ratio" in inputs:  # TRL's vLLM correction multiplies the per-token loss, as a weight
            weight = weight * inputs["importance_sampling_ratio"]
        credit = Credit(advantage=inputs["tc_advantage"], weight=weight, keep=inputs["tc_keep"],
                        token_keep=inputs["tc_token_keep"], progress=float(inputs["tc_progress"]))
        loss, stats = self.recipe.loss(logprob, rollouts, credit, coef=inputs["tc_coef"], entropy=entropy)
        mode = "train" if self.model.training else "eval"
        for key, value in stats.items():
            self._metrics[mode][f"tokencredit/{key}"].append(self.accelerator.gather(value.reshape(1)).mean().item())
        return loss * self.accelerator.num_processes  # DDP averages gradients over processes


def _as_recipe(value: Recipe | str) -> Recipe:
    return recipe(value) if isinstance(value, str) else value


def _gather(accelerator, local: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every process's rows, in process order: `[n,T_p]` tensors padded to the longest `T`, `[n]` ones as they are."""
    out = {}
    for name, x in local.items():
        as_int = x.dtype == torch.bool  # gloo gathers no bool tensors
        y = x.to(torch.int32) if as_int else x
        if y.dim() == 2:
            y = accelerator.pad_across_processes(y, dim=1, pad_index=0)
        y = accelerator.gather(y)
        out[name] = y.bool() if as_int else y
    return out
