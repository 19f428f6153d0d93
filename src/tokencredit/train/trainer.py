"""The reference trainer: supervised warm start, then RL with any recipe. Reads top to bottom.

    warm start   demonstrations (with mistakes) → cross-entropy on response tokens
    RL step      sample G responses (or a tree of segments) per prompt → rewards → values (gae: critic;
                 spo_chain: extra sampling) → recipe.credit → PPO epochs over minibatches, gradients accumulated
                 over micro-batches with the whole minibatch's loss normaliser (the critic, if any, fits its
                 targets on the same minibatches)
    every N      greedy accuracy and pass@k on a fixed held-out set; atomic checkpoint (resumable)
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor
from transformers import PreTrainedModel

from tokencredit.advantage.spo import SPO_TREE_BRANCHING, SPO_TREE_SEGMENT_TOKENS, spo_chain_values_for
from tokencredit.masked import last_index, masked_mean, token_count, zero_outside
from tokencredit.models import create_tiny_model, load_model
from tokencredit.recipes import Recipe, at_progress, recipe
from tokencredit.rewards import safe_score
from tokencredit.rollouts import Credit, Rollouts
from tokencredit.sampling.continuation import TaskContinuations
from tokencredit.sampling.hf import Samples, TransformersSampler, policy_logprob
from tokencredit.sampling.segment_tree import sample_segment_tree
from tokencredit.tasks import Example, examples, make_task
from tokencredit.train.checkpoint import CRITIC, latest_checkpoint, load_trainer_state, save_checkpoint
from tokencredit.train.config import TrainConfig
from tokencredit.train.critic import critic_values, explained_variance, load_critic, value_loss, value_target
from tokencredit.train.evaluate import evaluate
from tokencredit.train.logger import MetricsLogger

EVAL_SEED_OFFSET = 1_000_003  # held-out prompts come from a stream disjoint from training's


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_rollouts(samples: Samples, rewards: Tensor, group: Tensor, ref_logprob: Tensor | None) -> Rollouts:
    return Rollouts(
        group=group, mask=samples.response_mask, reward=rewards, tokens=samples.response_ids,
        logprob=samples.logprob, entropy=samples.entropy, truncated=samples.truncated, ref_logprob=ref_logprob,
    )


def _longest(mask: Tensor) -> int:
    """The longest response of a micro-batch (at least 1): micro-batches are narrowed to it."""
    return max(int(last_index(mask).max()) + 1, 1)


@torch.no_grad()
def per_token_in_micro_batches(
    fn: Callable[[Tensor, Tensor, Tensor], Tensor], samples: Samples, micro_batch_size: int
) -> Tensor:
    """`fn(prompt_ids, prompt_mask, response_ids) -> [n, w]` over all of `samples`, `micro_batch_size` rows at a
    time, each micro-batch narrowed to its longest response: `[N,T]` float32, 0 past each micro-batch's width.
    A model's no-grad pass over the whole batch at once would hold `[N,T,V]` logits."""
    response_ids = samples.response_ids
    out = torch.zeros(response_ids.shape, dtype=torch.float32, device=response_ids.device)
    for idx in torch.arange(len(response_ids), device=response_ids.device).split(micro_batch_size):
        width = _longest(samples.response_mask[idx])
        out[idx, :width] = fn(samples.prompt_ids[idx], samples.prompt_mask[idx], response_ids[idx, :width]).float()
    return out


def accumulate_policy_gradient(
    model: torch.nn.Module,
    rcp: Recipe,
    samples: Samples,
    rollouts: Rollouts,
    credit: Credit,
    rows: Tensor,
    micro_batch_size: int,
    temperature: float,
) -> dict[str, float]:
    """Backward the loss of minibatch `rows` in micro-batches. Each micro-batch uses the whole minibatch's
    aggregation coefficients, so the summed gradient equals the one-pass gradient exactly."""
    mb_rollouts, mb_credit = rollouts.select(rows), credit.select(rows)
    seq_weight = rcp.aggregation_weight(mb_rollouts, mb_credit)
    totals: dict[str, float] = defaultdict(float)
    for part in torch.arange(len(rows)).split(micro_batch_size):
        idx = rows[part]
        width = _longest(samples.response_mask[idx])
        logprob, entropy = policy_logprob(
            model, samples.prompt_ids[idx], samples.prompt_mask[idx], samples.response_ids[idx, :width], temperature
        )
        micro, micro_credit = rollouts.select(idx).narrow(width), credit.select(idx).narrow(width)
        loss, stats = rcp.loss(logprob, micro, micro_credit, entropy=entropy, seq_weight=seq_weight[part])
        loss.backward()
        share = len(part) / len(rows)
        totals["loss"] += loss.item()
        for key, value in stats.items():
            value = value.item()
            totals[key] = max(totals[key], value) if key == "ratio_max_dev" else totals[key] + share * value
    return dict(totals)


def accumulate_value_gradient(
    critic: PreTrainedModel, samples: Samples, target: Tensor, rows: Tensor, micro_batch_size: int
) -> float:
    """Backward the critic's masked MSE over minibatch `rows` (token mean over the minibatch) in micro-batches;
    returns the minibatch loss. Every micro-batch divides by the minibatch's token count, so the summed
    gradient equals the one-pass gradient exactly."""
    mask = samples.response_mask
    tokens = token_count(mask[rows]).clamp(min=1)
    total = 0.0
    for idx in rows.split(micro_batch_size):
        width = _longest(mask[idx])
        value = critic_values(critic, samples.prompt_ids[idx], samples.prompt_mask[idx],
                              samples.response_ids[idx, :width])
        loss = value_loss(value, target[idx, :width], mask[idx, :width], tokens)
        loss.backward()
        total += loss.item()
    return total


class Trainer:
    """One training run (warm start and/or RL) described by a `TrainConfig`."""

    def __init__(self, cfg: TrainConfig, *, init_from: str | Path | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.task_rng = random.Random(cfg.seed)
        self.task = make_task(cfg.task, **cfg.task_params)
        self.eval_examples = examples(self.task, cfg.eval.size, seed=cfg.seed + EVAL_SEED_OFFSET)
        self.recipe = recipe(cfg.recipe, **cfg.recipe_overrides)
        self.resume_from = latest_checkpoint(self.ckpt_root)
        self.init_path = init_from or cfg.model.path or self.out / "init"
        if not (Path(self.init_path) / "config.json").exists():
            create_tiny_model(self.init_path, seed=cfg.seed, **cfg.model.tiny)
        self.model, self.tokenizer = load_model(self.resume_from or self.init_path, device=cfg.device)
        self.sampler = TransformersSampler(
            self.model, self.tokenizer, temperature=cfg.rl.temperature, top_p=cfg.rl.top_p,
            max_new_tokens=cfg.rl.max_new_tokens,
        )
        self.continuations = TaskContinuations(self.sampler, self.task)
        self.state: dict[str, Any] = {"phase": "sft", "step": 0, "sft_accuracy": None, "history": []}
        self.optimizer: torch.optim.Optimizer | None = None
        self.ref_model: torch.nn.Module | None = None
        self.critic: PreTrainedModel | None = None  # advantage "gae" only, built when RL starts
        self.critic_optimizer: torch.optim.Optimizer | None = None

    # ---------------------------------------------------------------- driver
    def run(self, *, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the end (or stop after `stop_after` global steps, as a kill would); returns the summary."""
        resume_step = None
        if self.resume_from is not None:
            self.state = load_trainer_state(self.resume_from, None, self.task_rng)
            resume_step = self.state["global_step"]
        self.logger = MetricsLogger(
            self.out, tensorboard=self.cfg.log.tensorboard, wandb=self.cfg.log.wandb,
            project=self.cfg.log.wandb_project, config=self.cfg.model_dump(), resume_step=resume_step,
        )
        self.started = time.time()
        self._stop_after = stop_after
        try:
            with self._progress() as progress:
                self.progress = progress
                if self.state["phase"] == "sft" and not self._warm_start():
                    return self.summary()
                self._reinforce()
        finally:
            self.logger.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        history = self.state["history"]
        return {
            "sft_accuracy": self.state["sft_accuracy"],
            "final_accuracy": history[-1]["accuracy"] if history else self.state["sft_accuracy"],
            "history": history,
            "seconds": time.time() - self.started,
            "global_step": self.state.get("global_step", 0),
            "finished": self.state["phase"] == "done",
        }

    def _progress(self):
        if not self.cfg.log.progress:
            return nullcontext(None)
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
        )

    def _bar(self, description: str, total: int, completed: int):
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total, completed=completed, info="")

    def _advance(self, bar, info: str) -> None:
        if self.progress is not None:
            self.progress.update(bar, advance=1, info=info)

    def _global_step(self) -> int:
        offset = self.cfg.sft.steps if self.state["phase"] != "sft" else 0
        return offset + self.state["step"]

    def _killed(self) -> bool:
        return self._stop_after is not None and self.state["global_step"] >= self._stop_after

    def _checkpoint(self, name: str | None = None) -> None:
        self.state["global_step"] = self._global_step()
        save_checkpoint(self.ckpt_root, name or f"step-{self.state['global_step']}", self.model, self.tokenizer,
                        self.optimizer, self.task_rng, self.state, critic=self.critic,
                        critic_optimizer=self.critic_optimizer)

    @staticmethod
    def _make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))

    def _restore_optimizer(self) -> None:
        if self.resume_from is not None:
            load_trainer_state(self.resume_from, self.optimizer, self.task_rng, self.critic_optimizer)
            self.resume_from = None

    def _rl_start(self) -> Path:
        """The policy RL starts from: the warm-start checkpoint, or the initial model if there is none."""
        sft = self.ckpt_root / "sft"
        return sft if sft.is_dir() else Path(self.init_path)

    # ---------------------------------------------------------------- warm start
    def _warm_start(self) -> bool:
        cfg = self.cfg.sft
        self.optimizer = self._make_optimizer(self.model, cfg.lr, 0.0)
        self._restore_optimizer()
        bar = self._bar("warm start", cfg.steps, self.state["step"])
        self.model.train()
        while self.state["step"] < cfg.steps:
            step = self.state["step"]
            batch = [self.task.sample(self.task_rng) for _ in range(cfg.batch_size)]
            if any(e.demonstration is None for e in batch):
                raise ValueError(f"sft.steps: task {self.cfg.task!r} has no demonstrations; set sft.steps=0")
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
            loss = self._sft_loss([e.prompt for e in batch], [e.demonstration for e in batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state["step"] += 1
            self.state["global_step"] = self._global_step()
            self.logger.log({"phase": "sft", "step": step + 1, "global_step": self.state["global_step"],
                             "loss": loss.item()})
            self._advance(bar, f"loss {loss.item():.3f}")
            if self.state["step"] % self.cfg.checkpoint_every == 0 and self.state["step"] < cfg.steps:
                self._checkpoint()
            if self._killed():
                return False
        metrics = self._evaluate()
        self.state.update(phase="rl", step=0, sft_accuracy=metrics["accuracy"])
        self.state["history"].append({"step": 0, **metrics})
        self.logger.log({"phase": "eval", "step": 0, "global_step": self._global_step(), **metrics})
        self.optimizer = None
        self._checkpoint("sft")
        return not self._killed()

    def _sft_loss(self, prompts: list[str], targets: list[str]) -> Tensor:
        """Mean cross-entropy of the demonstration tokens (and EOS) given the prompt."""
        tok = self.tokenizer
        prompt_ids, prompt_mask = self.sampler.encode_prompts(prompts)
        target = tok(targets, add_special_tokens=False, padding=True, padding_side="right", return_tensors="pt")
        ids = torch.nn.functional.pad(target["input_ids"], (0, 1), value=tok.pad_token_id)
        lengths = target["attention_mask"].sum(-1)
        ids[torch.arange(len(ids)), lengths] = tok.eos_token_id
        mask = (torch.arange(ids.shape[1])[None] <= lengths[:, None]).to(prompt_ids.device)
        logprob, _ = policy_logprob(self.model, prompt_ids, prompt_mask, ids.to(prompt_ids.device))
        return -(logprob * mask).sum() / mask.sum()

    # ---------------------------------------------------------------- RL
    def _reinforce(self) -> None:
        cfg = self.cfg.rl
        self.optimizer = self._make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        if self.recipe.advantage == "gae":  # a critic initialised from the policy RL starts from
            saved = self.resume_from / CRITIC if self.resume_from is not None else None
            source = saved if saved is not None and saved.is_dir() else self._rl_start()
            self.critic = load_critic(source, device=self.cfg.device)
            self.critic_optimizer = self._make_optimizer(self.critic, self.cfg.critic.lr, self.cfg.critic.weight_decay)
        self._restore_optimizer()
        if self.recipe.kl_coef > 0:  # the reference is the policy RL started from
            self.ref_model = load_model(self._rl_start(), device=self.cfg.device)[0]
            self.ref_model.requires_grad_(False)
        bar = self._bar(f"RL {self.recipe.name}", cfg.steps, self.state["step"])
        while self.state["step"] < cfg.steps:
            record = self._rl_step(self.state["step"])
            self.state["step"] += 1
            step = self.state["step"]
            if step % self.cfg.eval.every == 0 or step == cfg.steps:
                metrics = self._evaluate()
                record.update({f"eval_{k}": v for k, v in metrics.items()})
                self.state["history"].append({"step": step, **metrics})
            self.state["global_step"] = self._global_step()
            self.logger.log({"phase": "rl", "step": step, "global_step": self.state["global_step"], **record})
            acc = self.state["history"][-1]["accuracy"] if self.state["history"] else float("nan")
            speed = record["sampled_tokens_per_s"]
            self._advance(bar, f"reward {record['reward']:.2f} acc {acc:.2f} {speed:.0f} tok/s")
            if step == cfg.steps:
                self.state["phase"] = "done"
            if step % self.cfg.checkpoint_every == 0 or step == cfg.steps:
                self._checkpoint()
            if self._killed():
                return

    def _rl_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg.rl
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        if self.critic_optimizer is not None:
            for group in self.critic_optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.steps, self.cfg.critic.lr, self.cfg.critic.warmup)
        progress = step / max(1, cfg.steps)
        batch = [self.task.sample(self.task_rng) for _ in range(cfg.prompts_per_step)]
        t0 = time.time()
        samples, expanded, group = self._sample(batch, progress)
        t_sample = time.time() - t0
        rewards, failures = safe_score(self.task, samples.texts, expanded)
        ref_logprob = None
        if self.ref_model is not None:
            ref_logprob = per_token_in_micro_batches(
                lambda *inputs: policy_logprob(self.ref_model, *inputs, cfg.temperature)[0], samples,
                cfg.micro_batch_size) * samples.response_mask
        rollouts = make_rollouts(samples, rewards.to(samples.logprob.device), group.to(samples.logprob.device),
                                 ref_logprob)
        # value estimation: where Rollouts.value comes from, per advantage
        if self.recipe.advantage == "spo_chain":  # Monte-Carlo values at the cut points, from extra sampling
            params = at_progress(self.recipe.advantage_params, progress)
            rollouts = spo_chain_values_for(self.continuations, expanded, rollouts, params)
        elif self.critic is not None:  # gae: the critic's V(s_t), the state before each response token
            value = per_token_in_micro_batches(lambda *inputs: critic_values(self.critic, *inputs), samples,
                                               cfg.micro_batch_size)
            rollouts = replace(rollouts, value=zero_outside(value, samples.response_mask))
        credit = self.recipe.credit(rollouts, progress=progress)
        kept = credit.keep.nonzero().squeeze(-1)
        target, critic_stats = None, {}
        if self.critic is not None:  # what the critic will fit, and how well the values GAE used explain it
            target = value_target(rollouts, self.recipe, self.cfg.critic.target, progress)
            critic_stats = {"value_mean": masked_mean(rollouts.value, samples.response_mask).item(),
                            "explained_variance": explained_variance(rollouts.value, target, samples.response_mask)}

        t1 = time.time()
        self.model.train()
        stats: dict[str, float] = {}
        first_ratio_dev = 0.0
        trained_tokens = 0
        critic_updates: list[dict[str, float]] = []
        for epoch in range(cfg.ppo_epochs):
            order = kept[torch.randperm(len(kept), device=kept.device)]
            minibatches = order.split(cfg.minibatch_size) if len(order) else ()  # every group dropped: no update
            for m, rows in enumerate(minibatches):
                stats = accumulate_policy_gradient(self.model, self.recipe, samples, rollouts, credit, rows,
                                                   cfg.micro_batch_size, cfg.temperature)
                if epoch == 0 and m == 0:
                    first_ratio_dev = stats["ratio_max_dev"]
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                stats["grad_norm"] = grad_norm.item()
                trained_tokens += int(samples.response_mask[rows].sum())
                if self.critic is not None:  # the critic fits its targets on the same minibatch
                    critic_updates.append(self._update_critic(samples, target, rows))
        t_train = time.time() - t1

        sampled_tokens = int(samples.response_mask.sum())
        lengths = samples.response_mask.sum(-1).float()
        if critic_updates:  # means over the step's critic updates
            critic_stats.update({k: sum(u[k] for u in critic_updates) / len(critic_updates) for k in critic_updates[0]})
        return {
            "reward": rewards.mean().item(),
            "accuracy": rewards.gt(0.5).float().mean().item(),
            "response_length": lengths.mean().item(),
            "truncated_frac": samples.truncated.float().mean().item(),
            "entropy": (samples.entropy.sum() / max(1, sampled_tokens)).item(),
            "kept_frac": credit.keep.float().mean().item(),
            "verifier_exceptions": failures.get("exception", 0),
            "verifier_timeouts": failures.get("timeout", 0),
            "first_epoch_ratio_max_dev": first_ratio_dev,
            "lr": self.optimizer.param_groups[0]["lr"],
            "sampled_tokens_per_s": sampled_tokens / max(t_sample, 1e-9),
            "trained_tokens_per_s": trained_tokens / max(t_train, 1e-9),
            # a minibatch's own kept_frac is 1 (only kept rows are trained): the batch's, above, is the one to log
            **{k: v for k, v in stats.items() if k not in ("ratio_max_dev", "kept_frac")},
            **critic_stats,
        }

    def _sample(self, batch: list[Example], progress: float) -> tuple[Samples, list[Example], Tensor]:
        """Responses to `batch`: `group_size` independent samples per prompt, or one sampled tree of segments
        per prompt (advantage `spo_tree`). Returns them, each row's example and each row's group."""
        prompts = [e.prompt for e in batch]
        if self.recipe.advantage == "spo_tree":
            params = at_progress(self.recipe.advantage_params, progress)
            samples, group = sample_segment_tree(self.sampler, prompts, params.get("branching", SPO_TREE_BRANCHING),
                                                 params.get("segment_tokens", SPO_TREE_SEGMENT_TOKENS))
        else:
            samples = self.sampler.sample([p for p in prompts for _ in range(self.cfg.rl.group_size)])
            group = torch.arange(len(batch)).repeat_interleave(self.cfg.rl.group_size)
        return samples, [batch[i] for i in group.tolist()], group

    def _update_critic(self, samples: Samples, target: Tensor, rows: Tensor) -> dict[str, float]:
        """One critic optimizer step on minibatch `rows` (micro-batched like the policy's, clipped)."""
        loss = accumulate_value_gradient(self.critic, samples, target, rows, self.cfg.rl.micro_batch_size)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.critic.grad_clip)
        self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)
        return {"value_loss": loss, "value_grad_norm": grad_norm.item()}

    def _evaluate(self) -> dict[str, float]:
        return evaluate(self.sampler, self.task, self.eval_examples, pass_k=self.cfg.eval.pass_k,
                        pass_k_size=self.cfg.eval.pass_k_size)


def train(cfg: TrainConfig, *, init_from: str | Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg`; returns the summary."""
    return Trainer(cfg, init_from=init_from).run(stop_after=stop_after)
