"""The reference trainer: supervised warm start, then RL with any recipe. Reads top to bottom.

    warm start   demonstrations (with mistakes) → cross-entropy on response tokens
    RL step      sample G responses per prompt → rewards → recipe.credit → PPO epochs over minibatches,
                 gradients accumulated over micro-batches with the whole minibatch's loss normaliser
    every N      greedy accuracy and pass@k on a fixed held-out set; atomic checkpoint (resumable)
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from tokencredit.advantage.spo import spo_chain_values
from tokencredit.models import create_tiny_model, load_model
from tokencredit.recipes import Recipe, at_progress, recipe
from tokencredit.rewards import safe_score
from tokencredit.rollouts import Credit, Rollouts
from tokencredit.sampling.continuation import TaskContinuations
from tokencredit.sampling.hf import Samples, TransformersSampler, policy_logprob
from tokencredit.tasks import examples, make_task
from tokencredit.train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from tokencredit.train.config import TrainConfig
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
        width = int(samples.response_mask[idx].sum(-1).max().clamp(min=1))
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
        if self.recipe.advantage == "gae":
            raise ValueError("recipe: the reference trainer has no critic yet, so presets that read "
                             "Rollouts.value (advantage 'gae', preset 'ppo') cannot run in it")
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
                        self.optimizer, self.task_rng, self.state)

    def _make_optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))

    def _restore_optimizer(self) -> None:
        if self.resume_from is not None:
            load_trainer_state(self.resume_from, self.optimizer, self.task_rng)
            self.resume_from = None

    # ---------------------------------------------------------------- warm start
    def _warm_start(self) -> bool:
        cfg = self.cfg.sft
        self.optimizer = self._make_optimizer(cfg.lr, 0.0)
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
        self.optimizer = self._make_optimizer(cfg.lr, cfg.weight_decay)
        self._restore_optimizer()
        if self.recipe.kl_coef > 0:  # the reference is the policy RL started from
            sft = self.ckpt_root / "sft"
            self.ref_model = load_model(sft if sft.is_dir() else self.init_path, device=self.cfg.device)[0]
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
        batch = [self.task.sample(self.task_rng) for _ in range(cfg.prompts_per_step)]
        expanded = [e for e in batch for _ in range(cfg.group_size)]
        t0 = time.time()
        samples = self.sampler.sample([e.prompt for e in expanded])
        t_sample = time.time() - t0
        rewards, failures = safe_score(self.task, samples.texts, expanded)
        group = torch.arange(cfg.prompts_per_step).repeat_interleave(cfg.group_size)
        ref_logprob = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref_logprob = policy_logprob(self.ref_model, samples.prompt_ids, samples.prompt_mask,
                                             samples.response_ids, cfg.temperature)[0] * samples.response_mask
        rollouts = make_rollouts(samples, rewards.to(samples.logprob.device), group.to(samples.logprob.device),
                                 ref_logprob)
        progress = step / max(1, cfg.steps)
        if self.recipe.advantage == "spo_chain":  # Monte-Carlo values at the cut points, from extra sampling
            params = at_progress(self.recipe.advantage_params, progress)
            spo_keys = ("mc_samples", "threshold", "interval", "max_cuts")
            rollouts = spo_chain_values(self.continuations, expanded, rollouts,
                                        **{k: v for k, v in params.items() if k in spo_keys})
        credit = self.recipe.credit(rollouts, progress=progress)
        kept = credit.keep.nonzero().squeeze(-1)

        t1 = time.time()
        self.model.train()
        stats: dict[str, float] = {}
        first_ratio_dev = 0.0
        trained_tokens = 0
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
        t_train = time.time() - t1

        sampled_tokens = int(samples.response_mask.sum())
        lengths = samples.response_mask.sum(-1).float()
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
            **{k: v for k, v in stats.items() if k != "ratio_max_dev"},
        }

    def _evaluate(self) -> dict[str, float]:
        return evaluate(self.sampler, self.task, self.eval_examples, pass_k=self.cfg.eval.pass_k,
                        pass_k_size=self.cfg.eval.pass_k_size)


def train(cfg: TrainConfig, *, init_from: str | Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg`; returns the summary."""
    return Trainer(cfg, init_from=init_from).run(stop_after=stop_after)
