"""The plug-in's worker loss: the recipe's objective, token weights, keep masks, KL and entropy terms under the
recipe's one normaliser, exact across verl's shuffled mini-batches, micro-batches and data-parallel ranks.

verl's actor splits the train batch across data-parallel (DP) ranks, each rank cuts its share into (optionally
shuffled) mini-batches, one optimizer step each, and every mini-batch into micro-batches (gradients accumulated,
then averaged over the DP ranks). The recipe's loss of one optimizer step is

    L = Σ_i c_i Σ_t m_{i,t} (w_{i,t} ℓ_{i,t} + β·kl_{i,t} − α·H_{i,t})

over the *global* mini-batch (the union of the ranks' mini-batches), with the coefficients `c` of the recipe's
aggregation computed on that whole mini-batch. Two pieces keep it exact:

* `TokenCreditLoss.prepare` runs once per mini-batch on every rank, before verl's forward/backward (the
  wrapped `BaseEngine.train_batch`, `patches.py`): it gathers the mini-batch's loss masks (and advantages and
  groups, when the aggregation reads them) from the DP group, computes `c` of the whole mini-batch and stores
  this rank's rows as the per-row field `tc_coef`, which verl's micro-batching carries along;
* `TokenCreditLoss.__call__` (the worker loss, installed with `set_loss_fn`) returns each micro-batch's share
  `Σ_{i∈micro} c_i Σ_t …` times the DP size (verl averages gradients over the DP ranks, as for its own losses).

The summed, averaged gradient is then the gradient of the recipe's loss on the global mini-batch. Folding the
weights and normaliser into verl's `advantages` instead would be exact only with one mini-batch and no KL or
entropy term; this loss never approximates.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tokencredit.recipes import Recipe
from tokencredit.registry import accepted, get
from tokencredit.rollouts import Credit, Rollouts


class TokenCreditLoss:
    """A verl worker loss (`loss(model_output=..., data=..., dp_group=...) -> (loss, metrics)`, like verl's
    `ppo_loss`) that applies `recipe` to the credit fields the `tc_*` estimators wrote (`credit.py`)."""

    def __init__(self, recipe: Recipe, budget: int | None = None) -> None:
        self.recipe = recipe
        self.budget = budget

    def __repr__(self) -> str:
        return f"TokenCreditLoss(recipe={self.recipe.name!r}, budget={self.budget})"

    def __getstate__(self) -> dict[str, Any]:
        return {"recipe": self.recipe.model_dump(), "budget": self.budget}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickled in a verl worker (set_loss_fn): make sure the mini-batch hook is installed there, even when
        # the worker loaded no plug-ins (VERL_USE_EXTERNAL_PLUGINS=none)
        from tokencredit.integrations.verl.patches import install

        self.recipe = Recipe(**state["recipe"])
        self.budget = state["budget"]
        install()

    # ------------------------------------------------------------------------------------ per mini-batch
    def prepare(self, data: Any, dp_group: Any = None) -> None:
        """Store `tc_coef [n]` in the mini-batch `data` (this rank's rows): the recipe's aggregation coefficients of
        the global mini-batch, gathered over `dp_group` (collective: every DP rank calls it once per mini-batch)."""
        reads_advantage = "advantage" in accepted(get("aggregate", self.recipe.agg), {"advantage": None})
        fields = ["tc_loss_mask", "tc_group", "tc_progress"] + (["tc_advantage"] if reads_advantage else [])
        missing = [f for f in fields if f not in data]
        if missing:
            raise RuntimeError(f"TokenCreditLoss: the mini-batch has no {missing}: the actor must train on a batch "
                               "whose advantages a tc_<name> estimator computed")
        td = data.select(*fields).to_padded_tensor()
        mask = td["tc_loss_mask"].bool()
        group = td["tc_group"].long()
        advantage = td["tc_advantage"].float() if reads_advantage else None
        progress = float(td["tc_progress"][0]) if len(group) else 0.0
        rows = torch.arange(len(group))
        if dp_group is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size(dp_group) > 1:
            mask, group, advantage, rows = _gather_rows(mask, group, advantage, dp_group)
        rollouts = Rollouts(group=group, mask=mask, reward=torch.zeros(len(group)), budget=self.budget)
        credit = Credit(advantage=advantage if advantage is not None else torch.zeros(mask.shape),
                        weight=torch.ones(mask.shape), keep=torch.ones(len(group), dtype=torch.bool),
                        progress=progress)
        coef = self.recipe.coefficients(rollouts, credit)
        data["tc_coef"] = coef[rows].float().to(td["tc_group"].device)

    # ------------------------------------------------------------------------------------ per micro-batch
    def __call__(self, model_output: dict[str, Any], data: Any, dp_group: Any = None, **_: Any):
        from verl.utils.metric import AggregationType, Metric
        from verl.workers.utils.padding import no_padding_2_padding

        if "tc_coef" not in data:
            raise RuntimeError("TokenCreditLoss: no tc_coef in the micro-batch: the per-mini-batch hook "
                               "(tokencredit.integrations.verl.patches, BaseEngine.train_batch) did not run")
        log_prob = no_padding_2_padding(model_output["log_probs"], data)
        width = log_prob.shape[1]
        needs = self.recipe.needs()
        entropy = None
        if "entropy" in needs.policy:
            if model_output.get("entropy") is None:
                raise RuntimeError(f"TokenCreditLoss: recipe {self.recipe.name!r} needs the current policy's entropy; "
                                   "set actor_rollout_ref.actor.entropy_coeff to the recipe's entropy_coef")
            entropy = no_padding_2_padding(model_output["entropy"], data)
        fields = ["response_mask", "old_log_probs", "tc_coef", "tc_progress", *CREDIT_LOSS_FIELDS]
        fields += [f for f in ("ref_log_prob", "rollout_is_weights") if f in data]
        td = data.select(*fields).to_padded_tensor()

        def per_token(name: str) -> Tensor:
            x = td[name]
            return x[:, :width] if x.shape[1] >= width else torch.nn.functional.pad(x, (0, width - x.shape[1]))

        mask = per_token("response_mask").bool()
        weight = per_token("tc_weight").float()
        if "rollout_is_weights" in td:  # verl's rollout correction multiplies the per-token loss
            weight = weight * per_token("rollout_is_weights").float()
        n = mask.shape[0]
        rollouts = Rollouts(group=torch.zeros(n, dtype=torch.long, device=mask.device), mask=mask,
                            reward=torch.zeros(n, device=mask.device), logprob=per_token("old_log_probs").float(),
                            ref_logprob=per_token("ref_log_prob").float() if "ref_log_prob" in td else None,
                            budget=self.budget)
        credit = Credit(advantage=per_token("tc_advantage").float(), weight=weight,
                        keep=torch.ones(n, dtype=torch.bool, device=mask.device),
                        token_keep=per_token("tc_loss_mask").bool(), progress=float(td["tc_progress"][0]))
        loss, stats = self.recipe.loss(log_prob, rollouts, credit, coef=td["tc_coef"].float(), entropy=entropy)
        loss = loss * data["dp_size"]
        metrics: dict[str, Any] = {"actor/pg_loss": Metric(value=loss.detach(), aggregation=AggregationType.SUM)}
        for key, value in stats.items():
            if key == "kept_frac":  # every row here is kept (dropped responses are out of tc_loss_mask)
                continue
            metrics[f"tokencredit/{key}"] = Metric(value=value.detach().float(), aggregation=AggregationType.MEAN)
        return loss, metrics


CREDIT_LOSS_FIELDS = ("tc_advantage", "tc_weight", "tc_loss_mask")


def _collective_device(group: Any) -> torch.device:
    """The device a collective on `group` needs: CPU for gloo, the current accelerator otherwise."""
    backend = str(dist.get_backend(group))
    if backend == "gloo" or "cpu:gloo" in backend:
        return torch.device("cpu")
    from verl.utils.device import get_device_id, get_device_name

    return torch.device(get_device_name(), get_device_id())


def _gather_rows(mask: Tensor, group: Tensor, advantage: Tensor | None, dp_group: Any):
    """Every DP rank's rows (in rank order), padded to the widest; returns them and this rank's row indices."""
    device = _collective_device(dp_group)
    world, rank = dist.get_world_size(dp_group), dist.get_rank(dp_group)
    shape = torch.tensor(mask.shape, device=device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=dp_group)
    counts = [int(s[0]) for s in shapes]
    rows, width = max(counts), max(int(s[1]) for s in shapes)

    def gather(x: Tensor) -> Tensor:
        padded = torch.zeros((rows, width) if x.dim() == 2 else (rows,), dtype=x.dtype, device=device)
        if x.dim() == 2:
            padded[: x.shape[0], : x.shape[1]] = x
        else:
            padded[: x.shape[0]] = x
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=dp_group)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()

    mask_all = gather(mask.to(torch.uint8)).bool()  # gloo gathers no bool tensors
    group_all = gather(group)
    advantage_all = gather(advantage.float()) if advantage is not None else None
    start = sum(counts[:rank])
    return mask_all, group_all, advantage_all, torch.arange(start, start + counts[rank])
