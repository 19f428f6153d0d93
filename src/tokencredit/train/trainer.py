"""The reference trainer: supervised warm start, then RL with any recipe, or pair training with any preference
loss (`mode: pairs`). Reads top to bottom.

    warm start   demonstrations (with mistakes) → cross-entropy on response tokens
    RL step      collect: the recipe's providers sample prompts and responses, score them, and add every input
                 and value the recipe needs (`tokencredit.needs`) → recipe.credit → PPO epochs over
                 minibatches, gradients accumulated over micro-batches with the whole minibatch's aggregation
                 coefficients (a learned provider such as a critic updates on the same minibatches) → log
    pair step    (pairs mode) the pair data (on-policy or JSONL, `train/pairs.py`) is built once and kept in every
                 checkpoint; epochs over it in a fixed order per epoch; each batch of pairs gets the inputs the
                 loss needs from the frozen reference (the warm-started policy) → the loss in micro-batches
    every N      greedy accuracy and pass@k on a fixed held-out set; atomic checkpoint (resumable)

Nothing here names a method: the recipe (or the preference loss) says what it needs, the providers
(`train/providers.py`, `train/pairs.py`) supply it.
"""

from __future__ import annotations

import random
import time
import warnings
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from tokencredit.inspect.records import records_from_tensors, sample_groups, write_records
from tokencredit.inspect.report import token_pieces
from tokencredit.models import create_tiny_model, load_model
from tokencredit.needs import Needs
from tokencredit.recipes import Recipe, recipe
from tokencredit.registry import get, needs_of
from tokencredit.rollouts import Credit
from tokencredit.sampling.base import make_sampler
from tokencredit.sampling.hf import policy_logprob
from tokencredit.tasks import HELD_OUT_SEED_OFFSET, make_task
from tokencredit.train.batch import Batch
from tokencredit.train.checkpoint import (
    CheckpointWriteError,
    checkpoint_state,
    checkpoint_step,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from tokencredit.train.config import (
    SAFE_TO_CHANGE,
    TrainConfig,
    config_differences,
    describe_differences,
    read_run_record,
    run_record,
    write_run_record,
)
from tokencredit.train.evaluate import evaluate
from tokencredit.train.logger import MetricsLogger
from tokencredit.train.pairs import (
    PAIRS_FILE,
    PairContext,
    PairRecord,
    accumulate_pair_gradient,
    build_modules,
    collate,
    epoch_order,
    load_modules,
    module_groups,
    read_pairs,
    sample_pairs,
    save_modules,
    steps_per_epoch,
    with_critical_tokens,
    write_pairs,
)
from tokencredit.train.providers import Providers, RunContext, policy_forward, policy_quantities
from tokencredit.train.schedule import lr_at, make_optimizer

EVAL_SEED_OFFSET = HELD_OUT_SEED_OFFSET  # held-out prompts come from a stream disjoint from training's (Task.held_out)


def check_device(device: str) -> None:
    """A ValueError unless `device` names a torch device this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device: {device!r} is not a torch device ({err})") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device: {device!r} asked for, but CUDA is not available here (torch "
                             f"{torch.__version__}, {build}); set device=cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {device!r} asked for, but MPS is not available here; set device=cpu")


def check_pair_sources(cfg: TrainConfig) -> None:
    """A ValueError naming `pairs.data` or `pairs.guide` when the file or model folder it names is missing (found
    before the warm start, not after it)."""
    data = cfg.pairs.data.removeprefix("jsonl:")
    if cfg.pairs.data.startswith("jsonl:") and not Path(data).is_file():
        raise ValueError(f"pairs.data: no such file {data!r}")
    if cfg.pairs.guide is not None and not (Path(cfg.pairs.guide) / "config.json").is_file():
        raise ValueError(f"pairs.guide: {cfg.pairs.guide!r} is not a local model folder (no config.json)")


def accumulate_policy_gradient(
    model: torch.nn.Module,
    rcp: Recipe,
    batch: Batch,
    credit: Credit,
    rows: Tensor,
    micro_batch_size: int,
    temperature: float,
) -> dict[str, float]:
    """Backward the loss of minibatch `rows` in micro-batches. Each micro-batch uses the whole minibatch's
    aggregation coefficients, so the summed gradient equals the one-pass gradient exactly. The forward pass
    also computes the current-policy quantities the recipe needs (`needs().policy`)."""
    coef = rcp.coefficients(batch.rollouts.select(rows), credit.select(rows))
    quantities = policy_quantities(rcp.needs(credit.progress))
    totals: dict[str, float] = defaultdict(float)
    for part, micro in batch.micro_batches(rows, micro_batch_size):
        logprob, policy = policy_forward(model, micro, temperature, quantities)
        micro_credit = credit.select(rows[part]).narrow(micro.rollouts.mask.shape[1])
        loss, stats = rcp.loss(logprob, micro.rollouts, micro_credit, coef=coef[part], **policy)
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
        """Everything a mistake can be found in (device, task, recipe, model path, a run already in `out` with
        another config) is checked before anything is written; errors are `ValueError`s naming the field."""
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        check_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.task_rng = random.Random(cfg.seed)
        self.task = make_task(cfg.task, **cfg.task_params)
        self.eval_examples = self.task.held_out(cfg.eval.size, cfg.seed)
        self.recipe = recipe(cfg.recipe, **cfg.recipe_overrides)
        if cfg.mode == "pairs":
            check_pair_sources(cfg)
        self.resume_from = latest_checkpoint(self.ckpt_root)
        if self.resume_from is not None:
            self._check_same_run(self.resume_from)
        if init_from is not None or cfg.model.path is not None:
            self.init_path = Path(init_from if init_from is not None else cfg.model.path)
            if not (self.init_path / "config.json").is_file():
                raise ValueError(f"{'init_from' if init_from is not None else 'model.path'}: "
                                 f"{str(self.init_path)!r} is not a local model folder (no config.json); leave "
                                 "model.path unset to build the tiny default model")
        else:
            self.init_path = self.out / "init"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"out: cannot create the output folder {str(self.out)!r} ({err.strerror or err})") \
                from err
        if not (self.init_path / "config.json").exists():
            create_tiny_model(self.init_path, seed=cfg.seed, **cfg.model.tiny)
        write_run_record(self.out, cfg)
        self.model, self.tokenizer = load_model(self.resume_from or self.init_path, device=cfg.device)
        # rl.sampler: transformers (generates with self.model) or vllm (an engine loaded from the same folder)
        self.sampler = make_sampler(
            cfg.rl.sampler, self.model, self.tokenizer, path=self.resume_from or self.init_path,
            temperature=cfg.rl.temperature, top_p=cfg.rl.top_p, max_new_tokens=cfg.rl.max_new_tokens,
            engine=cfg.vllm.engine(cfg.seed),
        )
        self.state: dict[str, Any] = {"phase": "sft", "step": 0, "sft_accuracy": None, "history": []}
        self.optimizer: torch.optim.Optimizer | None = None
        self.providers: Providers | None = None  # what the recipe needs, built when RL starts
        self.pair_records: list[PairRecord] | None = None  # the pair data, built when pair training starts
        self.pair_modules: dict[str, torch.nn.Module] = {}  # the preference loss's trained modules (pairs mode)

    def _check_same_run(self, checkpoint: Path) -> None:
        """A ValueError unless the run in `out` (its checkpoint's recorded config) has this run's config, up to the
        fields that are safe to change (`SAFE_TO_CHANGE`), and `rl.steps` is not below the step it reached: a run
        never mixes two configs."""
        record = read_run_record(checkpoint) or read_run_record(self.out)
        if record is None:
            warnings.warn(f"{checkpoint} records no config (written before tokencredit recorded one): cannot check "
                          "that the resumed run has the same config", stacklevel=3)
        elif diff := config_differences(record["config"], self.cfg.model_dump(mode="json")):
            raise ValueError(f"{self.out} holds a run with another config ({describe_differences(diff)}); a resumed "
                             f"run may change only {', '.join(SAFE_TO_CHANGE)}. Start a new run in another folder "
                             "(--set out=DIR), or resume with the recorded values")
        state = checkpoint_state(checkpoint) or {}
        if self.cfg.mode == "rl" and state.get("phase") in ("rl", "done") and state.get("step", 0) > self.cfg.rl.steps:
            raise ValueError(f"rl.steps: the run in {self.out} is at RL step {state['step']}; resume it with "
                             f"rl.steps >= {state['step']}")

    # ---------------------------------------------------------------- driver
    def run(self, *, stop_after: int | None = None) -> dict[str, Any]:
        """Train to the end (or stop after `stop_after` global steps, as a kill would); returns the summary."""
        resume_step = None
        if self.resume_from is not None:
            self.state = load_trainer_state(self.resume_from, None, self.task_rng)
            resume_step = self.state["global_step"]
            if self.cfg.mode == "rl" and self.state["phase"] == "done" and self.state["step"] < self.cfg.rl.steps:
                self.state["phase"] = "rl"  # a finished run extended with more steps
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
                if self.cfg.mode == "pairs":
                    self._train_pairs()
                else:
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
        name = name or f"step-{self.state['global_step']}"
        try:
            save_checkpoint(self.ckpt_root, name, self.model, self.tokenizer, self.optimizer, self.task_rng,
                            self.state, save_extra=self._save_extra, record=run_record(self.cfg))
        except OSError as err:  # a full disk, a lost mount: say where the run can continue from
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                last = latest_checkpoint(self.ckpt_root)
            if last is None:
                where = "no checkpoint was written before it, so a new run starts from the beginning"
            else:
                where = (f"the last good checkpoint is {last} (global step {checkpoint_step(last)}); after freeing "
                         "space, --resume continues from it")
            raise CheckpointWriteError(f"checkpoint {name}: could not be written to {self.ckpt_root} "
                                       f"({err.strerror or err}); {where}") from err

    def _save_extra(self, folder: Path) -> None:
        """What a checkpoint holds besides the model and trainer state: the providers' files, the pair data and the
        preference loss's trained modules."""
        if self.providers is not None:
            self.providers.save(folder)
        if self.pair_records is not None:
            write_pairs(folder / PAIRS_FILE, self.pair_records, self.tokenizer)
        save_modules(folder, self.pair_modules)

    def _restore_optimizer(self) -> None:
        """The optimizer and RNG state of the checkpoint resumed from (the RNG last, after anything that draws)."""
        if self.resume_from is not None:
            load_trainer_state(self.resume_from, self.optimizer, self.task_rng)
            self.resume_from = None

    def _rl_start(self) -> Path:
        """The policy RL starts from: the warm-start checkpoint, or the initial model if there is none."""
        sft = self.ckpt_root / "sft"
        return sft if sft.is_dir() else Path(self.init_path)

    # ---------------------------------------------------------------- warm start
    def _warm_start(self) -> bool:
        cfg = self.cfg.sft
        self.optimizer = make_optimizer(self.model, cfg.lr, 0.0)
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
            self.sampler.sync_weights()
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
        self.state.update(phase="pairs" if self.cfg.mode == "pairs" else "rl", step=0, sft_accuracy=metrics["accuracy"])
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
    def start_rl(self) -> None:
        """The RL optimizer and the providers of what the recipe needs, restored from the checkpoint resumed from."""
        self.optimizer = make_optimizer(self.model, self.cfg.rl.lr, self.cfg.rl.weight_decay)
        context = RunContext(cfg=self.cfg, model=self.model, sampler=self.sampler,
                             task=self.task, rng=self.task_rng, start=self._rl_start(), resume=self.resume_from,
                             recipe=self.recipe)
        self.providers = Providers(context, self.recipe.needs())
        self._restore_optimizer()

    def _reinforce(self) -> None:
        cfg = self.cfg.rl
        self.start_rl()
        bar = self._bar(f"RL {self.recipe.name}", cfg.steps, self.state["step"])
        while self.state["step"] < cfg.steps:
            record = self._rl_step(self.state["step"])
            speed = record["sampled_tokens_per_s"]
            if self._finish_step("rl", cfg.steps, record, bar, f"reward {record['reward']:.2f}", f"{speed:.0f} tok/s"):
                return

    def _finish_step(self, phase: str, total: int, record: dict[str, Any], bar, info: str, speed: str) -> bool:
        """After an update of step `state.step` (of `total`): count it, evaluate every `eval.every` steps and at the
        end, log `record`, checkpoint every `checkpoint_every` steps and at the end. Returns whether the run is
        to stop here (`stop_after`, as a kill would)."""
        self.state["step"] += 1
        step = self.state["step"]
        if step % self.cfg.eval.every == 0 or step == total:
            metrics = self._evaluate()
            record.update({f"eval_{k}": v for k, v in metrics.items()})
            self.state["history"].append({"step": step, **metrics})
        self.state["global_step"] = self._global_step()
        self.logger.log({"phase": phase, "step": step, "global_step": self.state["global_step"], **record})
        acc = self.state["history"][-1]["accuracy"] if self.state["history"] else float("nan")
        self._advance(bar, f"{info} acc {acc:.2f} {speed}")
        if step == total:
            self.state["phase"] = "done"
        if step % self.cfg.checkpoint_every == 0 or step == total:
            self._checkpoint()
        return self._killed()

    def _rl_step(self, step: int) -> dict[str, Any]:
        """One RL step: collect a batch with everything the recipe needs, credit it, update, report."""
        cfg = self.cfg.rl
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        signals = {"progress": step / max(1, cfg.steps)}
        if self.state["history"]:
            signals["accuracy"] = self.state["history"][-1]["accuracy"]
        needs = self.recipe.needs(signals["progress"])
        batch = self.providers.collect(self.providers.prompts.next(cfg.prompts_per_step), needs, step=step,
                                       signals=signals)
        credit = self.recipe.credit(batch.rollouts, **signals)
        every = self.cfg.records.every
        if every and step % every == 0:
            self._record(batch, credit, step + 1)
        started = time.time()
        stats, learned, trained_tokens = self._update(batch, credit, step)
        return self._step_record(batch, credit, stats, learned, trained_tokens, time.time() - started)

    def _record(self, batch: Batch, credit: Credit, step: int) -> None:
        """Write a few sampled groups of RL step `step`'s batch (numbered as logged: the first is 1), every per-token
        quantity, for `tokencredit inspect RUN`."""
        r = batch.rollouts
        token_text = [token_pieces(self.tokenizer, row[keep].tolist()) for row, keep in zip(r.tokens, r.mask)]
        groups = sample_groups(r.group, self.cfg.records.groups, seed=self.cfg.seed * 1_000_003 + step)
        record = records_from_tensors(
            step=step, recipe=self.recipe.name, prompts=[e.prompt for e in batch.examples], group=r.group,
            mask=r.mask, tokens=r.tokens, reward=r.reward, token_text=token_text, groups=groups,
            answers=[e.answer for e in batch.examples], source_indices=[e.source_index for e in batch.examples],
            truncated=r.truncated, keep=credit.keep, token_keep=credit.token_keep, source="tokencredit train",
            logprob=r.logprob, ref_logprob=r.ref_logprob, entropy=r.entropy, advantage=credit.advantage,
            weight=credit.weight, value=r.value)
        write_records(self.out, record, self.cfg.records.max_bytes)

    def _update(self, batch: Batch, credit: Credit, step: int) -> tuple[dict[str, float], dict[str, float], int]:
        """PPO epochs over shuffled minibatches of the kept responses; each minibatch is one optimizer step of the
        policy, then of every learned provider. Returns the last minibatch's stats (with the first one's
        `ratio_max_dev` as `first_epoch_ratio_max_dev`), the providers' mean stats and the trained tokens."""
        cfg = self.cfg.rl
        self.model.train()
        kept = credit.keep.nonzero().squeeze(-1)
        stats: dict[str, float] = {}
        learned: dict[str, list[float]] = defaultdict(list)
        trained_tokens, first_ratio_dev = 0, 0.0
        for epoch in range(cfg.ppo_epochs):
            order = kept[torch.randperm(len(kept), device=kept.device)]
            minibatches = order.split(cfg.minibatch_size) if len(order) else ()  # every group dropped: no update
            for m, rows in enumerate(minibatches):
                stats = accumulate_policy_gradient(self.model, self.recipe, batch, credit, rows, cfg.micro_batch_size,
                                                   cfg.temperature)
                if epoch == 0 and m == 0:
                    first_ratio_dev = stats["ratio_max_dev"]
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
                self.optimizer.step()
                self.sampler.sync_weights()  # a sampler with its own copy of the weights (vLLM) reloads them
                self.optimizer.zero_grad(set_to_none=True)
                trained_tokens += int(batch.rollouts.mask[rows].sum())
                for key, value in self.providers.learn(batch, rows, step).items():
                    learned[key].append(value)
        stats["first_epoch_ratio_max_dev"] = first_ratio_dev
        return stats, {k: sum(v) / len(v) for k, v in learned.items()}, trained_tokens

    def _step_record(self, batch: Batch, credit: Credit, stats: dict[str, float], learned: dict[str, float],
                     trained_tokens: int, train_seconds: float) -> dict[str, Any]:
        r = batch.rollouts
        rewards = r.sequence_reward()
        sampled_tokens = int(r.mask.sum())
        record = {
            "reward": rewards.mean().item(),
            "accuracy": rewards.gt(0.5).float().mean().item(),
            "response_length": r.mask.sum(-1).float().mean().item(),
            "truncated_frac": r.truncated.float().mean().item(),
            "kept_frac": credit.keep.float().mean().item(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "sampled_tokens_per_s": sampled_tokens / max(batch.metrics.pop("sample_seconds"), 1e-9),
            "trained_tokens_per_s": trained_tokens / max(train_seconds, 1e-9),
        }
        if r.entropy is not None:
            record["entropy"] = (r.entropy.sum() / max(1, sampled_tokens)).item()
        # a minibatch's own kept_frac is 1 (only kept rows are trained): the batch's, above, is the one to log
        return record | batch.metrics | {k: v for k, v in stats.items() if k not in ("ratio_max_dev", "kept_frac")} \
            | learned

    # ---------------------------------------------------------------- pairs
    def _train_pairs(self) -> None:
        """Epochs over the pair data with the configured preference loss; the reference is the warm-started
        policy, frozen. The pair data is built (or read) once and saved with every checkpoint; so are the loss's
        trained modules (`Needs.modules`), which the policy's optimizer trains."""
        cfg = self.cfg.pairs
        resumed = self.resume_from
        reference = load_model(self._rl_start(), device=self.cfg.device)[0].requires_grad_(False)
        guide = load_model(cfg.guide, device=self.cfg.device)[0].requires_grad_(False) if cfg.guide else None
        loss_fn, params = get("preference", cfg.loss), dict(cfg.loss_params)
        needs = needs_of("preference", cfg.loss, params)
        context = PairContext(reference=reference, params=params, guide=guide)
        self.pair_modules = build_modules(context, needs, self.cfg.seed)
        built = resumed is None or not (resumed / PAIRS_FILE).is_file()
        if not built:
            load_modules(resumed, self.pair_modules)
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, module_groups(self.pair_modules, needs))
        self._restore_optimizer()  # the RNG as checkpointed, before the data is drawn
        self.pair_records = self._pair_data(needs) if built else read_pairs(resumed / PAIRS_FILE, self.tokenizer)
        if built:
            self._checkpoint()  # the data (and the RNG after drawing it) before the first update
        records = self.pair_records
        loss_params = params | self.pair_modules
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        per_epoch = steps_per_epoch(len(records), cfg.batch_size)
        total = cfg.epochs * per_epoch
        bar = self._bar(f"pairs {cfg.loss}", total, self.state["step"])
        while self.state["step"] < total:
            step = self.state["step"]
            epoch, index = divmod(step, per_epoch)
            rows = epoch_order(len(records), self.cfg.seed, epoch)[index * cfg.batch_size:(index + 1) * cfg.batch_size]
            batch = collate([records[i] for i in rows.tolist()], self.sampler)
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr, cfg.warmup)
            started = time.time()
            self.model.train()
            stats = accumulate_pair_gradient(self.model, loss_fn, loss_params, context, batch, needs,
                                             cfg.micro_batch_size)
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip).item()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            seconds = max(time.time() - started, 1e-9)
            record = {"epoch": epoch, "pairs": len(rows), "lr": self.optimizer.param_groups[0]["lr"], **stats,
                      "pairs_per_s": len(rows) / seconds}
            if self._finish_step("pairs", total, record, bar, f"loss {stats['loss']:.3f}",
                                 f"{record['pairs_per_s']:.0f} pairs/s"):
                return

    def _pair_data(self, needs: Needs) -> list[PairRecord]:
        """The pair data `pairs.data` names: a JSONL file, or on-policy pairs sampled from the current (start)
        policy on `pairs.prompts` prompts of the task, with the rejected responses' critical tokens searched when
        the loss reads them."""
        cfg = self.cfg.pairs
        if cfg.data.startswith("jsonl:"):
            return read_pairs(cfg.data.removeprefix("jsonl:"), self.tokenizer)
        from tokencredit.sampling.continuation import TaskContinuations

        examples = [self.task.sample(self.task_rng) for _ in range(cfg.prompts)]
        records = sample_pairs(self.sampler, self.task, examples, cfg.samples,
                               verifier_timeout=self.cfg.verifier_timeout)
        if not records:
            raise ValueError(f"pairs.prompts: none of {cfg.prompts} prompts got both a correct and a wrong response "
                             f"among {cfg.samples} samples; raise pairs.prompts or pairs.samples, or warm start "
                             "longer (sft.steps)")
        if "critical" in needs.inputs:
            records = with_critical_tokens(records, TaskContinuations(self.sampler, self.task), k=cfg.critical_k,
                                           mode=cfg.critical_mode)
        return records

    def _evaluate(self) -> dict[str, float]:
        return evaluate(self.sampler, self.task, self.eval_examples, pass_k=self.cfg.eval.pass_k,
                        pass_k_size=self.cfg.eval.pass_k_size, verifier_timeout=self.cfg.verifier_timeout)


def train(cfg: TrainConfig, *, init_from: str | Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg`; returns the summary."""
    return Trainer(cfg, init_from=init_from).run(stop_after=stop_after)
