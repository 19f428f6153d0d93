"""`tokencredit` command line."""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

import tokencredit as tc

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Token-level credit assignment for RL.")
# soft_wrap: paths and commands in messages stay on one line, so they can be copied (tables still fit the width)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)  # errors, warnings and notes: stdout keeps the results
_DEBUG = {"on": False}


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", envvar="TOKENCREDIT_DEBUG",
                               help="on an error, show the full traceback instead of one line"),
) -> None:
    """Token-level credit assignment for RL post-training of language models."""
    from transformers.utils import logging as hf_logging

    _DEBUG["on"] = debug
    hf_logging.disable_progress_bar()  # our own progress bars say what is happening


def _describe_error(err: BaseException) -> str:
    """One line for a user error: pydantic's field errors joined, an OSError's reason and path."""
    from pydantic import ValidationError

    from tokencredit.recipes import validation_messages

    if isinstance(err, ValidationError):
        return "; ".join(validation_messages(err))
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    return str(err).strip() or type(err).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)


def _reported(command):
    """Run a command so that every user error (a `ValueError` or `OSError`: bad config, bad input, a damaged
    checkpoint, a full disk) is one line and exit code 2; `tokencredit --debug` shows the traceback instead.
    Python warnings (a checkpoint fallback, a task without a held-out set) are one yellow line each."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return command(*args, **kwargs)
            except (ValueError, OSError) as err:
                if _DEBUG["on"]:
                    raise
                _fail(_describe_error(err))

    return run


def _summary(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    return escape(doc.split("\n\n")[0].replace("\n", " "))


@app.command()
@_reported
def methods() -> None:
    """List every registered stage function and preset recipe."""
    table = Table(title="tokencredit methods", show_lines=False)
    table.add_column("stage", style="bold cyan")
    table.add_column("name", style="green")
    table.add_column("what it computes")
    for stage in tc.STAGES:
        for name in tc.names(stage):
            table.add_row(stage, name, _summary(tc.get(stage, name)))
    for name in sorted(tc.PRESETS):
        r = tc.recipe(name)
        parts = [f"advantage={r.advantage}", f"objective={r.objective}", f"agg={r.agg}"]
        parts += [f"{k}={getattr(r, k)}" for k in ("weight", "select", "kl") if getattr(r, k)]
        table.add_row("preset", name, ", ".join(parts))
    console.print(table)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


RECORDED = "default: the run's recorded"
TASK_PARAM_HELP = ("task option key=value (repeatable; JSON values, else text), e.g. --task-param mistake_rate=0.1; "
                   "added to the run's recorded task_params when the task is the run's")
# options shared by the commands that load a checkpoint and a task
CHECKPOINT = typer.Option(..., help="a checkpoint (a transformers model folder), a run folder or its "
                                    "checkpoints/latest (the newest checkpoint)")
TASK = typer.Option(None, help=f"task spec: chain_sum, digit_sort, reasoning_gym:NAME, jsonl:PATH ({RECORDED} task, "
                               "else chain_sum)")
TASK_PARAMS = typer.Option([], "--task-param", help=TASK_PARAM_HELP)
TEMPERATURE = typer.Option(None, min=1e-6, help=f"sampling temperature ({RECORDED} rl.temperature, else 1.0)")
MAX_NEW_TOKENS = typer.Option(None, min=1, help=f"token budget of a response ({RECORDED} rl.max_new_tokens, "
                                                "else 48)")
SEED = typer.Option(None, help=f"the training seed: selects the same held-out set as training ({RECORDED} seed, "
                               "else 0)")


def _task_params(items: list[str]) -> dict[str, Any]:
    """`--task-param key=value` items as `make_task` options: each value parsed as JSON (0.6, [1, 9], true),
    falling back to the raw text."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--task-param: expected key=value, got {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


@dataclass
class RunSettings:
    """What `eval`, `inspect` and `critical` use: the resolved checkpoint and the run's settings, each from the
    command line when given, else from the run's recorded config (`run_config.json` in the checkpoint or its run
    folder), else `TrainConfig`'s defaults."""

    checkpoint: Path
    cfg: Any  # the run's TrainConfig with the command-line values applied
    recorded: Path | None  # the record the settings came from


def _run_settings(checkpoint: Path, task: str | None, task_param: list[str], *, seed: int | None = None,
                  temperature: float | None = None, max_new_tokens: int | None = None, **rl: Any) -> RunSettings:
    from tokencredit.train import TrainConfig
    from tokencredit.train.checkpoint import resolve_checkpoint
    from tokencredit.train.config import read_run_record, recorded_config

    path = resolve_checkpoint(checkpoint)
    where, record = None, None
    for folder in (path, path.parent.parent if path.parent.name == "checkpoints" else None):
        if folder is not None and (record := read_run_record(folder)) is not None:
            where = folder / "run_config.json"
            break
    base = recorded_config(record, where) if record is not None else TrainConfig()
    params = _task_params(task_param)
    if task is None or task == base.task:
        task, params = base.task, {**base.task_params, **params}
    given = {"temperature": temperature, "max_new_tokens": max_new_tokens, **rl}
    data = base.model_dump()
    data.update(task=task, task_params=params, seed=base.seed if seed is None else seed, device="cpu")
    data["rl"].update({k: v for k, v in given.items() if v is not None})
    return RunSettings(path, TrainConfig.model_validate(data), where)


def _note_settings(run: RunSettings, what: str) -> None:
    cfg = run.cfg
    source = f"recorded in {run.recorded}" if run.recorded else "no recorded config found: defaults"
    err_console.print(escape(f"{run.checkpoint}: {what}; task {cfg.task} {json.dumps(cfg.task_params)}, seed "
                             f"{cfg.seed}, temperature {cfg.rl.temperature:g}, top_p {cfg.rl.top_p:g}, max_new_tokens "
                             f"{cfg.rl.max_new_tokens} ({source}, unless given)"), style="dim", soft_wrap=True)


def _task_and_model(run: RunSettings) -> tuple[Any, Any, Any]:
    """The task (with its options) and the checkpoint's model and tokenizer."""
    from tokencredit.models import load_model
    from tokencredit.tasks import make_task

    return make_task(run.cfg.task, **run.cfg.task_params), *load_model(run.checkpoint)


def _sampler(run: RunSettings, model: Any, tokenizer: Any) -> Any:
    """A sampler of the checkpoint's model with the run's sampling settings; torch seeded with the run's seed."""
    import torch

    from tokencredit.sampling import TransformersSampler

    torch.manual_seed(run.cfg.seed)
    rl = run.cfg.rl
    return TransformersSampler(model, tokenizer, temperature=rl.temperature, top_p=rl.top_p,
                               max_new_tokens=rl.max_new_tokens)


def _held_out_sampler(run: RunSettings, prompts: int) -> tuple[Any, Any, Any, list[Any]]:
    """The task, tokenizer, a sampler of the checkpoint's model, and the first `prompts` examples of the held-out
    set training evaluates on (`Task.held_out` with the run's seed)."""
    the_task, model, tokenizer = _task_and_model(run)
    sampler = _sampler(run, model, tokenizer)
    return the_task, tokenizer, sampler, the_task.held_out(prompts, run.cfg.seed)


@app.command()
@_reported
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output folder"),
    presets: str = typer.Option("grpo,tempo", help="comma-separated preset names"),
    workers: int = typer.Option(2, min=1, help="presets trained at the same time (one process each)"),
    sft_steps: int | None = typer.Option(None, help="warm-start steps (default: the demo's)"),
    rl_steps: int | None = typer.Option(None, help="RL steps per preset (default: the demo's)"),
    seed: int = typer.Option(0, help="seed of the model's initialisation, the data streams and the held-out set"),
    fresh: bool = typer.Option(False, "--fresh", help="if --out holds another demo, delete it and start afresh "
                                                      "(without it, such a folder is refused)"),
) -> None:
    """Warm start a tiny model on chain_sum, then RL with several presets side by side (CPU, minutes).

    Run again into the same --out with the same settings, it continues that demo (finished runs are kept)."""
    from tokencredit.train.demo import run_demo

    names = [p.strip() for p in presets.split(",") if p.strip()]
    unknown = [n for n in names if n not in tc.PRESETS]
    if unknown:
        _fail(f"--presets: unknown {unknown}; presets: {sorted(tc.PRESETS)}")
    overrides: dict = {"seed": seed}
    if sft_steps is not None:
        overrides["sft"] = {"steps": sft_steps}
    if rl_steps is not None:
        overrides["rl"] = {"steps": rl_steps}
    summary = run_demo(out, names, workers=workers, console=console, fresh=fresh, **overrides)
    table = Table(title="demo summary (held-out greedy accuracy)")
    for column in ("preset", "after warm start", "after RL", "gain", "seconds"):
        table.add_column(column)
    for name, row in summary.items():
        gain = row["final_accuracy"] - row["sft_accuracy"]
        table.add_row(name, f"{row['sft_accuracy']:.3f}", f"{row['final_accuracy']:.3f}", f"{gain:+.3f}",
                      f"{row['seconds']:.0f}")
    console.print(table)
    runs = " ".join(str(out / name) for name in names)
    console.print(escape(f"next: tokencredit compare {runs}; which tokens got the credit: tokencredit inspect "
                         f"--checkpoint {out / names[0]}"))


@app.command()
@_reported
def train(
    config: Path | None = typer.Option(None, "--config", "-c", exists=True, dir_okay=False, help="YAML config"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set rl.steps=100"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in the output folder (its recorded config "
                                                        "must match, up to rl.steps, log, threads, device, "
                                                        "checkpoint_every)"),
) -> None:
    """Warm start and/or RL as described by a config file (see docs/training.md)."""
    from tokencredit.train import load_config
    from tokencredit.train import train as run_training
    from tokencredit.train.checkpoint import latest_checkpoint

    cfg = load_config(config, overrides)
    with warnings.catch_warnings():  # a fallback from a lost `latest` is reported once, by the trainer
        warnings.simplefilter("ignore")
        existing = latest_checkpoint(Path(cfg.out) / "checkpoints")
    if existing is not None and not resume:
        _fail(f"{cfg.out} already holds a run (checkpoint {existing.name}); pass --resume or choose --set out=DIR")
    if resume and existing is None:
        console.print(f"[yellow]no checkpoint in {cfg.out}; starting a new run[/]")
    summary = run_training(cfg)
    history = summary.pop("history")
    console.print_json(json.dumps({**summary, "last_eval": history[-1] if history else None}))


@app.command("eval")
@_reported
def evaluate_checkpoint(
    checkpoint: Path = CHECKPOINT,
    task: str | None = TASK,
    task_param: list[str] = TASK_PARAMS,
    size: int | None = typer.Option(None, min=1, help=f"held-out examples ({RECORDED} eval.size, else 200)"),
    pass_k: int | None = typer.Option(None, min=1, help=f"samples per prompt for pass@k ({RECORDED} eval.pass_k, "
                                                        "else 4)"),
    pass_k_size: int | None = typer.Option(None, min=1, help="held-out examples (the first ones) that pass@k "
                                                             f"samples ({RECORDED} eval.pass_k_size, else 100)"),
    temperature: float | None = TEMPERATURE,
    max_new_tokens: int | None = MAX_NEW_TOKENS,
    seed: int | None = SEED,
    verifier_timeout: float | None = typer.Option(
        None, min=0, help=f"seconds a verifier may take per response ({RECORDED} verifier_timeout, else 2; "
                          "0: no limit)"),
) -> None:
    """Greedy accuracy and pass@k of a checkpoint on its run's held-out set, as the run evaluated it.

    Greedy accuracy equals the run's logged eval_accuracy at that checkpoint; pass@k uses the same settings but
    its own random draws. Verifier failures are counted (verifier_exceptions, verifier_timeouts)."""
    from tokencredit.train.evaluate import evaluate

    run = _run_settings(checkpoint, task, task_param, seed=seed, temperature=temperature,
                        max_new_tokens=max_new_tokens)
    ev = run.cfg.eval
    size, pass_k = size or ev.size, pass_k or ev.pass_k
    pass_k_size = pass_k_size or ev.pass_k_size
    timeout = run.cfg.verifier_timeout if verifier_timeout is None else verifier_timeout
    _note_settings(run, f"{size} held-out examples, pass@{pass_k} on the first {min(pass_k_size, size)}")
    the_task, _, sampler, held_out = _held_out_sampler(run, size)
    metrics = evaluate(sampler, the_task, held_out, pass_k=pass_k, pass_k_size=pass_k_size, verifier_timeout=timeout)
    console.print_json(json.dumps({"checkpoint": str(run.checkpoint), "examples": len(held_out), **metrics}))


@app.command()
@_reported
def critical(
    checkpoint: Path = CHECKPOINT,
    task: str | None = TASK,
    task_param: list[str] = TASK_PARAMS,
    prompts: int = typer.Option(16, min=1, help="held-out prompts (one sampled response each; not with --responses)"),
    responses: Path | None = typer.Option(
        None, exists=True, dir_okay=False,
        help="search recorded responses instead of sampling: JSONL, one {prompt, response_ids or response, answer} "
             "per line (see docs/critical.md)"),
    k: int = typer.Option(64, min=1, help="continuations sampled per prefix"),
    mode: str = typer.Option("scan", help="scan: every prefix (the paper); binary: bisection, assumes one collapse"),
    counterfactual: bool = typer.Option(
        False, "--counterfactual",
        help="also sample k continuations at each critical token with a different first token, and report whether "
             "the success rate rises (the paper's check)"),
    temperature: float | None = TEMPERATURE,
    max_new_tokens: int | None = typer.Option(
        None, min=1, help=f"token budget of a response; a continuation gets what its prefix left ({RECORDED} "
                          "rl.max_new_tokens, else 48)"),
    seed: int | None = SEED,
    out: Path = typer.Option(Path("critical_tokens.jsonl"), help="one JSON line per failed response"),
) -> None:
    """Critical tokens of a checkpoint's failed responses: where sampled continuations stop succeeding (cDPO)."""
    from tokencredit.analysis import critical_tokens
    from tokencredit.analysis.critical_tokens import MODES
    from tokencredit.rewards import safe_score
    from tokencredit.sampling.continuation import TaskContinuations

    if mode not in MODES:
        _fail(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    run = _run_settings(checkpoint, task, task_param, seed=seed, temperature=temperature,
                        max_new_tokens=max_new_tokens)
    _note_settings(run, "critical tokens")
    if responses is None:
        the_task, tokenizer, sampler, held_out = _held_out_sampler(run, prompts)
        with console.status(f"sampling {prompts} responses"):
            sampled = sampler.sample([e.prompt for e in held_out])
        content = sampled.response_mask & (sampled.response_ids != tokenizer.eos_token_id)
        candidates = [(None, e, row[keep].tolist(), text)
                      for e, row, keep, text in zip(held_out, sampled.response_ids, content, sampled.texts)]
        source = f"sampled {prompts} responses"
    else:
        the_task, tokenizer, sampler, candidates = _recorded_responses(responses, run)
        source = f"read {len(candidates)} responses from {responses}"
    rewards, _ = safe_score(the_task, [text for *_, text in candidates], [e for _, e, *_ in candidates],
                            timeout_s=run.cfg.verifier_timeout)
    failed = [c for c, reward in zip(candidates, rewards.tolist()) if reward <= 0.5]
    scorer = TaskContinuations(sampler, the_task)
    total = sum(len(tokens) + 1 for _, _, tokens, _ in failed) if mode == "scan" else None  # bisection's: unknown
    with _progress() as progress:
        bar = progress.add_task(f"prefixes × {k} continuations", total=total)
        results = critical_tokens(_advancing(scorer, progress, bar, total), [e for _, e, *_ in failed],
                                  [tokens for _, _, tokens, _ in failed], k=k, mode=mode,
                                  counterfactual=counterfactual)
    rows = [_critical_row(line, example, text, tokens, result, tokenizer, mode, k)
            for (line, example, tokens, text), result in zip(failed, results)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    console.print(_critical_table(rows, tokenizer, mode, k, counterfactual))
    found = sum(r["index"] is not None for r in rows)
    rises = sum(bool(r["counterfactual_rises"]) for r in rows)
    checked = f"; replacing the critical token raised the success rate at {rises} of {found}" if counterfactual else ""
    console.print(escape(f"{source}; {len(failed)} of {len(candidates)} responses failed, {found} with a critical "
                         f"token{checked}; {sum(r['samples'] for r in rows)} continuations sampled; wrote {out}"))


@app.command()
@_reported
def compare(
    runs: list[Path] = typer.Argument(..., help="run folders, each with the metrics.jsonl that train/demo write"),
    out: Path = typer.Option(Path("compare.png"), help="the plot; the table goes next to it as .json"),
) -> None:
    """Compare training runs: held-out accuracy (start, final, best), reward and speed, as a table and a plot."""
    from tokencredit.inspect.plots import plot_accuracy
    from tokencredit.inspect.runs import RECENT_STEPS, eval_history, load_metrics, run_summary

    if out.suffix == ".json":
        _fail("--out: the plot's path (e.g. compare.png); the table is written next to it as .json")
    folders = [run.resolve() for run in runs]
    if len(set(folders)) != len(folders):
        _fail(f"runs: each folder once, got {[str(r) for r in runs]}")
    try:
        records = {str(run): load_metrics(run) for run in runs}
    except ValueError as err:
        _fail(str(err))
    summaries = {name: run_summary(r) for name, r in records.items()}
    table = Table(title="runs (held-out greedy accuracy)")
    table.add_column("run", overflow="fold")
    for column in ("start", "final", "best", "gain", "RL steps", f"reward (last {RECENT_STEPS})", "sampled tokens/s"):
        table.add_column(column)
    for name, s in summaries.items():
        gain = None if s["start_accuracy"] is None else s["final_accuracy"] - s["start_accuracy"]
        table.add_row(escape(name), *(_number(s[k]) for k in ("start_accuracy", "final_accuracy", "best_accuracy")),
                      _number(gain, signed=True), str(s["rl_steps"]), _number(s["recent_reward"]),
                      _number(s["sampled_tokens_per_s"], digits=0))
    console.print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summaries, indent=2) + "\n")
    plot_accuracy({name: eval_history(r) for name, r in records.items()}, out, title="held-out greedy accuracy")
    console.print(f"wrote {escape(str(out))} and {escape(str(out.with_suffix('.json')))}")


def _number(value: float | None, *, digits: int = 3, signed: bool = False) -> str:
    return "–" if value is None else f"{value:{'+' if signed else ''}.{digits}f}"


@app.command("inspect")
@_reported
def inspect_credit(
    checkpoint: Path = CHECKPOINT,
    task: str | None = TASK,
    task_param: list[str] = TASK_PARAMS,
    recipes: str = typer.Option("grpo,tempo,forking,spo_chain", help="comma-separated presets to compare"),
    prompts: int = typer.Option(4, min=1, help="held-out prompts"),
    group_size: int | None = typer.Option(None, min=2, help=f"responses sampled per prompt ({RECORDED} "
                                                            "rl.group_size, else 8)"),
    progress: float = typer.Option(0.0, min=0.0, max=1.0, help="training progress for scheduled parameters"),
    temperature: float | None = TEMPERATURE,
    max_new_tokens: int | None = MAX_NEW_TOKENS,
    seed: int | None = SEED,
    out: Path = typer.Option(Path("token_credit.html"), help="the HTML report"),
) -> None:
    """Which tokens get the credit: one batch of sampled responses, each recipe's per-token credit, as HTML."""
    import random

    from tokencredit.inspect.report import credit_report, token_pieces
    from tokencredit.needs import merge
    from tokencredit.train.providers import Providers, RunContext

    names = [n.strip() for n in recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in tc.PRESETS]
    if unknown or not names:
        _fail(f"--recipes: unknown {unknown or names}; presets: {sorted(tc.PRESETS)}")
    if len(set(names)) != len(names):
        _fail(f"--recipes: each preset once, got {names}")
    chosen = [tc.recipe(n) for n in names]
    run = _run_settings(checkpoint, task, task_param, seed=seed, temperature=temperature,
                        max_new_tokens=max_new_tokens, group_size=group_size)
    _note_settings(run, f"group size {run.cfg.rl.group_size}")
    checkpoint = run.checkpoint
    the_task, tokenizer, sampler, held_out = _held_out_sampler(run, prompts)
    cfg = run.cfg
    context = RunContext(cfg=cfg, model=sampler.model, sampler=sampler, task=the_task,
                         rng=random.Random(cfg.seed), start=checkpoint, resume=checkpoint, learn=False)
    try:  # one batch for every recipe: their needs must fit together, and inspect must be able to supply them
        needs = merge((f"recipe {r.name!r}", r.needs(progress)) for r in chosen)
        providers = Providers(context, needs)
    except ValueError as err:
        _fail(f"--recipes {','.join(names)}: {err}")
    with console.status(f"sampling {prompts} prompts' responses and what {','.join(names)} need"):
        batch = providers.collect(held_out, needs, signals={"progress": progress})
    rollouts = batch.rollouts
    token_text = [token_pieces(tokenizer, row[keep].tolist()) for row, keep in zip(rollouts.tokens, rollouts.mask)]
    title = f"token credit: {checkpoint.name} on {cfg.task}" + (f" at progress {progress:g}" if progress else "")
    page, summary = credit_report(rollouts, chosen, token_text, [e.prompt for e in batch.examples], title=title,
                                  progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    accuracy = rollouts.sequence_reward().gt(0.5).float().mean()
    table = Table(title=f"credit over {batch.size} responses to {prompts} prompts (accuracy {accuracy:.0%})")
    for column in ("recipe", "responses kept", "tokens with credit", "|credit| share of the top 10% tokens"):
        table.add_column(column)
    for name, row in summary.items():
        table.add_row(escape(name), f"{row['kept']:.0%}", f"{row['tokens_with_credit']:.0%}",
                      f"{row['top_share']:.0%}")
    console.print(table)
    console.print(f"wrote {escape(str(out))}")


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def _advancing(scorer, progress, bar, total: int | None):
    """`scorer` called on one generate batch of prefixes at a time, each advancing the progress bar; a call with
    `exclude_first` (the counterfactual probes, not counted in `total`) first adds its prefixes to the total."""
    import torch

    def scored(exs, prefixes, k, exclude_first=None):
        nonlocal total
        if exclude_first is not None and total is not None:
            total += len(prefixes)
            progress.update(bar, total=total)
        step = max(1, scorer.batch_size // k)
        parts = []
        for start in range(0, len(prefixes), step):
            extra = {} if exclude_first is None else {"exclude_first": exclude_first[start : start + step]}
            parts.append(scorer(exs[start : start + step], prefixes[start : start + step], k, **extra))
            progress.advance(bar, len(parts[-1]))
        return torch.cat(parts)

    return scored


def _recorded_responses(path: Path, run: RunSettings) -> tuple[Any, Any, Any, list[tuple[int, Any, list[int], str]]]:
    """The task, tokenizer, a sampler of the checkpoint's model (torch seeded with the run's seed) and the responses
    of the `--responses` file as `(line, example, tokens, text)`; a bad record is a ValueError naming its line."""
    from tokencredit.analysis.recorded import read_responses

    the_task, model, tokenizer = _task_and_model(run)
    records = read_responses(path, tokenizer, the_task, max_tokens=run.cfg.rl.max_new_tokens)
    sampler = _sampler(run, model, tokenizer)
    texts = tokenizer.batch_decode([r.tokens for r in records], skip_special_tokens=True)
    return the_task, tokenizer, sampler, [(r.line, r.example, r.tokens, t) for r, t in zip(records, texts)]


def _critical_row(line: int | None, example, text: str, tokens: list[int], result, tokenizer, mode: str,
                  k: int) -> dict[str, Any]:
    """The JSON line of one failed response (fields documented in docs/critical.md)."""
    token = None if result.index is None else tokenizer.decode(tokens[result.index : result.index + 1])
    return {"line": line, "prompt": example.prompt, "answer": example.answer, "response": text, "tokens": tokens,
            "critical_token": token, "mode": mode, "k": k, **result.to_dict()}


def _critical_table(rows: list[dict[str, Any]], tokenizer, mode: str, k: int, counterfactual: bool) -> Table:
    table = Table(title=f"critical tokens ({mode}, k={k}): success rate c of continuations from each state")
    rates = ["prompt_rate", "rate_before", "rate_after"] + (["counterfactual_rate"] if counterfactual else [])
    for column in ("prompt", "response (critical token highlighted)", "t*", "c prompt", "c before", "c after",
                   *(["c replaced"] if counterfactual else [])):
        table.add_column(column)
    for row in rows:
        t = "–" if row["index"] is None else str(row["index"]) + (" (fallback)" if row["fallback"] else "")
        table.add_row(escape(row["prompt"]), _highlighted(row["tokens"], row["index"], tokenizer), t,
                      *(_rate(row[key]) for key in rates))
    return table


def _highlighted(tokens: list[int], index: int | None, tokenizer) -> str:
    """Rich markup of the response with token `index` in bold on red (a newline token shown as ↵)."""
    if index is None:
        return escape(tokenizer.decode(tokens, skip_special_tokens=True))
    head, token, tail = (tokenizer.decode(part, skip_special_tokens=True)
                         for part in (tokens[:index], tokens[index : index + 1], tokens[index + 1 :]))
    shown = token.replace("\n", "↵\n")
    return f"{escape(head)}[bold white on red]{escape(shown)}[/]{escape(tail)}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    app()
