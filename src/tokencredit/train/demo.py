"""`tokencredit demo`: one warm start, then RL with several presets side by side on the embedded default.

Presets run in parallel worker processes (one CPU thread each by default); the parent shows one progress bar
per preset by following each run's `metrics.jsonl`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tokencredit.inspect.plots import plot_accuracy
from tokencredit.train.config import TrainConfig
from tokencredit.train.trainer import train


def demo_config(out: Path, **overrides: Any) -> TrainConfig:
    """The demo's settings: sized so the whole demo fits in minutes on two CPU cores."""
    data: dict[str, Any] = {
        "out": str(out),
        "task": "chain_sum",
        "task_params": {"round_up_rate": 0.6, "mistake_rate": 0.1},
        "sft": {"steps": 400, "batch_size": 64, "lr": 3e-3, "warmup": 20},
        "rl": {"steps": 40, "prompts_per_step": 24, "group_size": 8, "max_new_tokens": 48, "lr": 1e-4,
               "minibatch_size": 192, "micro_batch_size": 96},
        "eval": {"every": 10, "size": 200, "pass_k": 4, "pass_k_size": 50},
        "checkpoint_every": 20,
        "log": {"progress": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return TrainConfig.model_validate(data)


def _train_worker(cfg_json: str, init_from: str | None, threads: int) -> dict[str, Any]:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    return train(TrainConfig.model_validate_json(cfg_json), init_from=init_from)


def _last_record(path: Path) -> dict[str, Any] | None:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    return json.loads(lines[-1]) if lines else None


def _describe(record: dict[str, Any]) -> str:
    parts = [record.get("phase", "")]
    parts += [f"{key} {record[key]:.3f}" for key in ("loss", "reward", "eval_accuracy") if key in record]
    if record.get("phase") == "eval":
        parts.append(f"accuracy {record['accuracy']:.3f}")
    return " ".join(parts)


def run_parallel(jobs: dict[str, tuple[TrainConfig, str | None]], workers: int, console: Console) -> dict[str, Any]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {}
    with Progress(TextColumn("[bold]{task.description:<14}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as progress:
        bars = {name: progress.add_task(name, total=cfg.sft.steps + cfg.rl.steps, info="queued")
                for name, (cfg, _) in jobs.items()}
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures: dict[str, Future] = {
                name: pool.submit(_train_worker, cfg.model_dump_json(), init, threads)
                for name, (cfg, init) in jobs.items()
            }
            while futures:
                for name, future in list(futures.items()):
                    cfg = jobs[name][0]
                    record = _last_record(Path(cfg.out) / "metrics.jsonl")
                    if record is not None:
                        progress.update(bars[name], completed=record.get("global_step", 0), info=_describe(record))
                    if future.done():
                        results[name] = future.result()
                        progress.update(bars[name], completed=cfg.sft.steps + cfg.rl.steps,
                                        info=f"done: accuracy {results[name]['final_accuracy']:.3f}")
                        del futures[name]
                time.sleep(0.5)
    return results


def run_demo(out: Path, presets: list[str], *, workers: int = 2, console: Console | None = None,
             **overrides: Any) -> dict[str, dict[str, float]]:
    """Warm start once, RL each preset from that checkpoint; write `summary.json` and `accuracy.png` to `out`."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    warm = demo_config(out / "sft", **{**overrides, "rl": {**overrides.get("rl", {}), "steps": 0}})
    console.print(f"[bold]warm start[/] on {warm.task} ({warm.sft.steps} steps) → {warm.out}")
    sft = run_parallel({"warm start": (warm, None)}, 1, console)["warm start"]
    sft_seconds = time.time() - started
    console.print(f"warm-started greedy accuracy: {sft['sft_accuracy']:.3f}")
    init = str(Path(warm.out) / "checkpoints" / "sft")
    jobs = {
        name: (demo_config(out / name, **{**overrides, "recipe": name,
                                          "sft": {**overrides.get("sft", {}), "steps": 0}}), init)
        for name in presets
    }
    console.print(f"[bold]RL[/] with {', '.join(presets)} ({workers} at a time)")
    results = run_parallel(jobs, min(workers, len(jobs)), console)
    summary = {
        name: {"sft_accuracy": r["sft_accuracy"], "final_accuracy": r["final_accuracy"],
               "seconds": r["seconds"] + sft_seconds}
        for name, r in results.items()
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy({name: r["history"] for name, r in results.items()}, out / "accuracy.png",
                  title=f"held-out greedy accuracy on {warm.task} after warm start")
    console.print(f"wrote {out / 'summary.json'} and {out / 'accuracy.png'} in {time.time() - started:.0f} s")
    return summary
