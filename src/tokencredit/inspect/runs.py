"""Reading training runs back from their `metrics.jsonl` (written by `tokencredit train` and `demo`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECENT_STEPS = 10  # the training reward is noisy: average it over a run's last RL steps


def load_metrics(run: Path) -> list[dict[str, Any]]:
    """The records of run folder `run` (its `metrics.jsonl`), in order. A last line that is not a whole JSON
    record (a run killed while writing it) is left out; any other bad line is an error."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"run: {run} has no metrics.jsonl (expected a `tokencredit train` or demo output folder)")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"run: {path} line {number} is not JSON ({err})") from err
        if not isinstance(record, dict):
            raise ValueError(f"run: {path} line {number} is not a JSON object")
        records.append(record)
    return records


def eval_history(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Held-out evaluations `{"step", "accuracy", "pass@k"...}` against RL step: the evaluation before RL (the
    `eval` record at step 0) and the `eval_*` fields of RL steps."""
    history = []
    for r in records:
        if r.get("phase") == "eval":
            history.append({k: v for k, v in r.items() if k not in ("phase", "global_step")})
        elif r.get("phase") == "rl" and "eval_accuracy" in r:
            history.append({"step": r["step"], **{k[len("eval_"):]: v for k, v in r.items() if k.startswith("eval_")}})
    return history


def run_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Start, final and best held-out accuracy, RL steps done, the mean training reward of the last
    `RECENT_STEPS` RL steps and the mean sampling speed; `None` where the run has no such records."""
    history = eval_history(records)
    rl = [r for r in records if r.get("phase") == "rl"]
    recent = rl[-RECENT_STEPS:]
    accuracy = [h["accuracy"] for h in history]
    return {
        "start_accuracy": accuracy[0] if accuracy else None,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "best_accuracy": max(accuracy) if accuracy else None,
        "rl_steps": rl[-1]["step"] if rl else 0,
        "recent_reward": sum(r["reward"] for r in recent) / len(recent) if recent else None,
        "sampled_tokens_per_s": sum(r["sampled_tokens_per_s"] for r in rl) / len(rl) if rl else None,
    }
