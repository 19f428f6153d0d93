"""Plots written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_accuracy(histories: dict[str, list[dict[str, Any]]], path: Path, *, title: str = "") -> Path:
    """Held-out accuracy (and pass@k when present) against RL step, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, history in histories.items():
        steps = [h["step"] for h in history]
        line, = ax.plot(steps, [h["accuracy"] for h in history], marker="o", label=f"{name} greedy")
        pass_keys = sorted({k for h in history for k in h if k.startswith("pass@")})  # k may change on resume
        for key in pass_keys:
            points = [(h["step"], h[key]) for h in history if key in h]
            ax.plot(*zip(*points), linestyle="--", color=line.get_color(), alpha=0.6, label=f"{name} {key}")
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
