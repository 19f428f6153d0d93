"""The `tc_<name>` advantage estimators and how they get what verl's estimator call does not pass them.

verl calls a registered estimator with `token_level_rewards`, `response_mask`, `config` (the `algorithm` config)
and `index` (the `uid` of each row) only. What else a recipe needs (`recipe.needs()`: token ids, behaviour
log-probs, entropies, reference log-probs, critic values) comes from the batch being processed, which the wrapped
call sites (`patches.py`) publish in a context variable while verl runs the estimator:

    V1 trainer        `PPOTrainer._compute_advantage(batch)`: the TransferQueue keys of the batch, read with
                      `tq.kv_batch_get(keys, partition_id, select_fields=[...])` (it fetches only `uid`,
                      `response_mask`, rewards and log-probs itself, never `responses` or `entropy`)
    legacy trainer    `ray_trainer.compute_advantage(data)`: the `DataProto` itself (`responses`, `old_log_probs`,
                      `ref_log_prob`, `values`, and `entropy`, kept by the wrapped `_compute_old_log_prob`)

The estimator returns `credit.folded()` as verl's `advantages` (what verl's own loss and metrics read) and leaves
the recipe's credit in the context, from which the call site writes it to the batch for the plug-in's loss:

    tc_advantage [B,T]   the recipe's advantage
    tc_weight    [B,T]   its token weights
    tc_loss_mask [B,T]   `credit.loss_mask(mask)`: the tokens in the loss and its normaliser
    tc_group     [B]     integer group ids of the whole batch (`uid`), for aggregations that read groups
    tc_progress  [B]     the training progress the credit was computed at

With `algorithm.tokencredit.records_every=N`, the estimator also writes the group records of `tokencredit inspect`
at global steps 1, 1 + N, ... (in the driver, the one process that computes advantages): the sampled groups'
token ids, prompts and every per-token quantity the batch carries, with the recipe's credit. Only then does it
read `responses`, the prompts and the optional per-token fields a recipe did not need.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokencredit.integrations.common import write_group_records
from tokencredit.integrations.verl.settings import ENGINE, FIELDS, PREFIX, Settings, read_settings
from tokencredit.masked import masked_mean, token_count, zero_outside
from tokencredit.needs import INPUTS as INPUT_TEXT
from tokencredit.recipes import CREDIT_STAGES
from tokencredit.registry import names
from tokencredit.rollouts import Credit, Rollouts, group_ids

CREDIT_FIELDS = ("tc_advantage", "tc_weight", "tc_loss_mask", "tc_group", "tc_progress")


@dataclass
class Result:
    """What one estimator call computed: the batch as tokencredit saw it and the recipe's credit."""

    settings: Settings
    rollouts: Rollouts
    credit: Credit

    def fields(self, mask_dtype: torch.dtype = torch.int64) -> dict[str, Tensor]:
        """The credit as verl batch fields (`CREDIT_FIELDS`), aligned with the batch rows."""
        b = self.rollouts.batch_size
        return {
            "tc_advantage": self.credit.advantage.float(),
            "tc_weight": self.credit.weight.float(),
            "tc_loss_mask": self.credit.loss_mask(self.rollouts.mask).to(mask_dtype),
            "tc_group": self.rollouts.group.long(),
            "tc_progress": torch.full((b,), float(self.credit.progress), device=self.rollouts.mask.device),
        }

    def metrics(self) -> dict[str, float]:
        mask, credit = self.rollouts.mask, self.credit
        loss_mask = credit.loss_mask(mask)
        tokens = max(1, int(token_count(mask)))
        return {
            "tokencredit/kept_frac": credit.keep.float().mean().item(),
            "tokencredit/loss_token_frac": int(token_count(loss_mask)) / tokens,
            "tokencredit/weight_mean": masked_mean(credit.weight, loss_mask).item(),
            "tokencredit/folded_advantage_mean": masked_mean(credit.folded(), loss_mask).item(),
            "tokencredit/progress": float(credit.progress),
        }


@dataclass
class Source:
    """Where an estimator call finds the batch: the trainer (config, step counters, tokenizer), the legacy
    `DataProto`, fetchers of further fields and of given rows' prompt token ids (V1: TransferQueue), and where it
    leaves its result."""

    trainer: Any = None
    data: Any = None
    fetch: Callable[[Sequence[str]], dict[str, Tensor]] | None = None
    prompt_ids: Callable[[Sequence[int]], list[list[int]]] | None = None
    result: Result | None = None


SOURCE: contextvars.ContextVar[Source | None] = contextvars.ContextVar("tokencredit_verl_source", default=None)


def progress_of(trainer: Any) -> float:
    """Training progress p ∈ [0, 1] of a verl trainer: (global_steps − 1) / total_training_steps (the first step is
    0, as in the reference trainer); 0 without a trainer."""
    step, total = getattr(trainer, "global_steps", None), getattr(trainer, "total_training_steps", None)
    if not step or not total:
        return 0.0
    return min(1.0, max(0.0, (step - 1) / max(1, total)))


def estimate(advantage: str, token_level_rewards: Tensor, response_mask: Tensor, config: Any = None,
             index: Any = None) -> tuple[Tensor, Tensor]:
    """The estimator `tc_<advantage>`: the recipe's credit of this batch; returns `(credit.folded(), returns)` where
    `returns` is the critic's regression target when the recipe takes values from verl's critic (GAE's returns),
    else the folded advantages (as verl's outcome estimators do)."""
    source = SOURCE.get()
    trainer = source.trainer if source is not None else None
    s = read_settings(config, estimator=f"{PREFIX}{advantage}", trainer_config=getattr(trainer, "config", None))
    rcp = s.recipe
    progress = progress_of(trainer)
    if index is None:
        raise ValueError(f"{PREFIX}{advantage}: needs verl's uid (the prompt of each response, "
                         "non_tensor_batch['uid']) to form groups; got none")
    mask = response_mask.bool()
    needs = rcp.needs(progress, stages=CREDIT_STAGES)
    wanted = sorted(needs.inputs & set(FIELDS))
    critic = needs.values is not None and needs.values.name == "critic"
    if critic:
        wanted.append("value")
    inputs = _lookup(wanted, source, mask, f"{PREFIX}{advantage} (recipe {rcp.name!r})")
    if "truncated" in needs.inputs and s.budget is not None:
        inputs["truncated"] = token_count(mask, -1) >= s.budget
    try:  # checked like any Rollouts: shapes, and finite rewards at the response tokens
        rollouts = Rollouts(group=group_ids(list(index)).to(mask.device), mask=mask,
                            reward=token_level_rewards.float(), budget=s.budget, **inputs)
    except ValueError as err:
        raise ValueError(f"tokencredit (verl) {PREFIX}{advantage}: verl's batch (token_level_rewards is "
                         f"Rollouts.reward, rows are the batch's rows): {err}") from None
    credit = rcp.credit(rollouts, progress)
    folded = credit.folded()
    returns = folded
    if critic and "returns" in needs.values.params:
        returns = zero_outside(needs.values.params["returns"](rcp.shaped(rollouts, progress)).float(), mask)
    if source is not None:
        source.result = Result(s, rollouts, credit)
        if trainer is not None and s.records.due(trainer.global_steps):
            _record(s, rollouts, credit, source)
    return folded, returns


# what a record shows when the batch carries it, whether or not the recipe reads it
RECORDED = ("tokens", "logprob", "entropy", "ref_logprob", "value")


def _record(s: Settings, rollouts: Rollouts, credit: Credit, source: Source) -> None:
    """Write this global step's group records (`s.records`) with the trainer's tokenizer."""
    if s.records.folder is None:
        raise ValueError("algorithm.tokencredit.records_dir: records_every > 0 needs a folder (set it, or "
                         "trainer.default_local_dir)")
    mask = rollouts.mask
    extra = _lookup([name for name in RECORDED if getattr(rollouts, name) is None], source, mask,
                    f"algorithm.tokencredit.records_every={s.records.every}", required=("tokens",))
    if rollouts.truncated is None and s.budget is not None:
        extra["truncated"] = token_count(mask, -1) >= s.budget
    tokenizer = source.trainer.tokenizer
    write_group_records(Path(s.records.folder), replace(rollouts, **extra), credit, step=source.trainer.global_steps,
                        recipe=s.recipe.name, source=ENGINE, tokenizer=tokenizer,
                        prompts=functools.partial(_prompt_texts, source, tokenizer), groups=s.records.groups,
                        max_bytes=s.records.max_bytes, candidates=mask.any(-1))


def _prompt_texts(source: Source, tokenizer: Any, rows: Sequence[int]) -> list[str]:
    """The prompts of batch rows `rows` as the policy read them (special tokens kept, padding left out): from the
    legacy batch's left-padded `prompts`, else from the V1 fetcher."""
    batch = getattr(source.data, "batch", None)
    if batch is not None and "prompts" in batch:
        ids = batch["prompts"]
        attention = batch["attention_mask"][:, : ids.shape[1]].bool()
        found = [ids[i][attention[i]].tolist() for i in rows]
    elif source.prompt_ids is not None:
        found = source.prompt_ids(rows)
    else:
        raise ValueError("algorithm.tokencredit.records_every: the group records need the prompts, verl's "
                         "'prompts', which this batch does not carry")
    return tokenizer.batch_decode(found)


def _lookup(inputs: Sequence[str], source: Source | None, mask: Tensor, who: str,
            required: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The per-token `inputs` from the batch (`FIELDS` names verl's field of each), `[B,T]` like `mask`; a missing
    one of `required` (default: all) is an error naming `who`, the others are left out."""
    found: dict[str, Tensor] = {}
    data = getattr(source, "data", None)
    batch = getattr(data, "batch", None)
    for name in inputs:
        if batch is not None and FIELDS[name] in batch:
            found[name] = batch[FIELDS[name]]
    missing = [name for name in inputs if name not in found]
    if missing and source is not None and source.fetch is not None:
        fetched = source.fetch([FIELDS[name] for name in missing])
        found.update({name: fetched[FIELDS[name]] for name in missing if FIELDS[name] in fetched})
    for name in inputs if required is None else required:
        if name in inputs and name not in found:
            hint = {"entropy": " (verl computes it with the old log-probs: not in rollout_correction.bypass_mode)",
                    "ref_logprob": " (set actor_rollout_ref.actor.use_kl_loss=True)",
                    "value": " (set critic.enable=True)"}.get(name, "")
            raise ValueError(f"{who} needs {INPUT_TEXT.get(name, name)}, verl's {FIELDS[name]!r}, which this batch "
                             f"does not carry{hint}")
    for name, x in found.items():
        x = _width(x.to(mask.device), mask.shape[1])
        found[name] = x.long() if name == "tokens" else zero_outside(x.float(), mask)
    return found


def _width(x: Tensor, width: int) -> Tensor:
    """`x [B,T']` cut or right-padded with zeros to `[B,width]`."""
    if x.shape[1] >= width:
        return x[:, :width]
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def _estimator(advantage: str) -> Callable:
    def estimator(token_level_rewards: Tensor, response_mask: Tensor, config: Any = None, index: Any = None,
                  **_: Any) -> tuple[Tensor, Tensor]:
        return estimate(advantage, token_level_rewards, response_mask, config, index)

    estimator.__name__ = estimator.__qualname__ = f"{PREFIX}{advantage}"
    estimator.__doc__ = (f"tokencredit's advantage {advantage!r} with the recipe of `algorithm.tokencredit` "
                         "(tokencredit.integrations.verl).")
    return estimator


_REGISTERED: dict[str, Callable] = {}


def register_estimators() -> list[str]:
    """Register `tc_<name>` in verl's estimator registry for every tokencredit advantage registered now (idempotent;
    call it again after registering a new advantage stage). Returns the names."""
    from verl.trainer.ppo.core_algos import register_adv_est

    for advantage in names("advantage"):
        name = f"{PREFIX}{advantage}"
        if name not in _REGISTERED:
            _REGISTERED[name] = register_adv_est(name)(_estimator(advantage))
    return sorted(_REGISTERED)
