"""`tokencredit` command line."""

from __future__ import annotations

import inspect

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


if __name__ == "__main__":
    app()
