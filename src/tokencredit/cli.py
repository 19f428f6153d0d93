"""`tokencredit` command line."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import tokencredit as tc

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Token-level credit assignment for RL.")
console = Console()


@app.callback()
def main() -> None:
    """Token-level credit assignment for RL post-training of language models."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars say what is happening


def _summary(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    return escape(doc.split("\n\n")[0].replace("\n", " "))


@app.command()
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
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output folder"),
    presets: str = typer.Option("grpo,tempo", help="comma-separated preset names"),
    workers: int = typer.Option(2, min=1, help="presets trained at the same time (one process each)"),
    sft_steps: int | None = typer.Option(None, help="warm-start steps (default: the demo's)"),
    rl_steps: int | None = typer.Option(None, help="RL steps per preset (default: the demo's)"),
    seed: int = typer.Option(0),
) -> None:
    """Warm start a tiny model on chain_sum, then RL with several presets side by side (CPU, minutes)."""
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
    summary = run_demo(out, names, workers=workers, console=console, **overrides)
    table = Table(title="demo summary (held-out greedy accuracy)")
    for column in ("preset", "after warm start", "after RL", "gain", "seconds"):
        table.add_column(column)
    for name, row in summary.items():
        gain = row["final_accuracy"] - row["sft_accuracy"]
        table.add_row(name, f"{row['sft_accuracy']:.3f}", f"{row['final_accuracy']:.3f}", f"{gain:+.3f}",
                      f"{row['seconds']:.0f}")
    console.print(table)


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", exists=True, dir_okay=False, help="YAML config"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set rl.steps=100"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in the output folder"),
) -> None:
    """Warm start and/or RL as described by a config file (see docs/training.md)."""
    from tokencredit.train import load_config
    from tokencredit.train import train as run_training
    from tokencredit.train.checkpoint import latest_checkpoint

    try:
        cfg = load_config(config, overrides)
    except ValueError as err:
        _fail(str(err))
    existing = latest_checkpoint(Path(cfg.out) / "checkpoints")
    if existing is not None and not resume:
        _fail(f"{cfg.out} already holds a run (checkpoint {existing.name}); pass --resume or choose --set out=DIR")
    if resume and existing is None:
        console.print(f"[yellow]no checkpoint in {cfg.out}; starting a new run[/]")
    summary = run_training(cfg)
    history = summary.pop("history")
    console.print_json(json.dumps({**summary, "last_eval": history[-1] if history else None}))


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: Path = typer.Option(..., exists=True, file_okay=False, help="a transformers model folder"),
    task: str = typer.Option("chain_sum", help="task spec: chain_sum, digit_sort, reasoning_gym:NAME, jsonl:PATH"),
    size: int = typer.Option(200, min=1, help="held-out examples"),
    pass_k: int = typer.Option(4, min=1, help="samples per prompt for pass@k"),
    temperature: float = typer.Option(1.0, min=1e-6),
    max_new_tokens: int = typer.Option(48, min=1),
    seed: int = typer.Option(0, help="the training seed (selects the same held-out set as training)"),
) -> None:
    """Greedy accuracy and pass@k of a checkpoint on a task's held-out set."""
    from tokencredit.models import load_model
    from tokencredit.sampling import TransformersSampler
    from tokencredit.tasks import examples, make_task
    from tokencredit.train.evaluate import evaluate
    from tokencredit.train.trainer import EVAL_SEED_OFFSET

    try:
        the_task = make_task(task)
        model, tokenizer = load_model(checkpoint)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    sampler = TransformersSampler(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens)
    held_out = examples(the_task, size, seed=seed + EVAL_SEED_OFFSET)
    console.print_json(json.dumps(evaluate(sampler, the_task, held_out, pass_k=pass_k)))


if __name__ == "__main__":
    app()
