"""`tokencredit demo`: one warm start, then RL with several presets side by side on the embedded default.

Presets run in parallel worker processes (one CPU thread each by default); the parent shows one progress bar
per preset by following each run's `metrics.jsonl`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tokencredit.inspect.plots import plot_accuracy
from tokencredit.train.config import TrainConfig, config_differences, describe_differences, run_record
from tokencredit.train.trainer import train

DEMO_RECORD = "demo.json"  # the demo's settings (its config before the per-preset recipe), in the demo folder
# what may differ between two demos in one folder: where it lives, how it logs and how fast it runs
DEMO_SAFE_TO_CHANGE = ("out", "recipe", "log", "threads", "device", "checkpoint_every", "records")


def demo_config(out: Path, **overrides: Any) -> TrainConfig:
    """The demo's settings: sized so the whole demo fits in minutes on two CPU cores."""
    data: dict[str, Any] = {
        "out": str(out),
        "task": "chain_sum",
        "task_params": {"round_up_rate": 0.6, "mistake_rate": 0.1},
        "sft": {"steps": 400, "batch_size": 64, "lr": 3e-3, "warmup": 20},
        # 80 steps of 48 prompts, two optimizer steps each (minibatches of 192 of the 384 responses), sampled at
        # temperature 0.7: the per-seed study (docs/training.md, benchmarks/demo_seeds.py) gained ≥ 10 points on
        # each of seeds 0-4 this way, where one optimizer step a batch at temperature 1 left two seeds short;
        # 48 prompts beat 24 and 80 steps beat 40; 400 held-out prompts halve the binomial error of 200
        "rl": {"steps": 80, "prompts_per_step": 48, "group_size": 8, "max_new_tokens": 48, "lr": 1e-4,
               "temperature": 0.7, "minibatch_size": 192, "micro_batch_size": 96},
        "eval": {"every": 10, "size": 400, "pass_k": 4, "pass_k_size": 50},
        "checkpoint_every": 20,
        "log": {"progress": False},
        "records": {"every": 5, "groups": 2},
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


def _demo_products(out: Path, record: dict[str, Any] | None, presets: list[str]) -> list[Path]:
    """What a demo writes in `out` (its own files and run folders: the warm start, each preset's run) and
    nothing else."""
    names = ["sft", *presets, *((record or {}).get("presets") or [])]
    runs = [out / n for n in dict.fromkeys(names) if (out / n).is_dir()]
    files = [out / n for n in (DEMO_RECORD, "summary.json", "accuracy.png") if (out / n).is_file()]
    return runs + files


def prepare_demo_folder(out: Path, base: TrainConfig, presets: list[str], *, fresh: bool = False) -> None:
    """Refuse a folder that holds another demo (different settings, or one that recorded none), naming the
    differing settings; with `fresh`, delete that demo's files and runs first. Then record this demo."""
    path = out / DEMO_RECORD
    record = json.loads(path.read_text()) if path.is_file() else None
    products = _demo_products(out, record, presets)
    if record is None:
        problem = "a demo that recorded no settings" if products else None
    else:
        diff = config_differences(record.get("config", {}), run_record(base)["config"], DEMO_SAFE_TO_CHANGE)
        problem = f"another demo ({describe_differences(diff)})" if diff else None
    if problem is not None:
        if not fresh:
            raise ValueError(f"{out} holds {problem}; pass --fresh to delete it and start afresh, or choose "
                             "another --out")
        for p in products:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        record = None
    presets_done = list(dict.fromkeys([*((record or {}).get("presets") or []), *presets]))
    path.write_text(json.dumps({**run_record(base), "presets": presets_done}, indent=2) + "\n")


def run_demo(out: Path, presets: list[str], *, workers: int = 2, console: Console | None = None,
             fresh: bool = False, **overrides: Any) -> dict[str, dict[str, float]]:
    """Warm start once, RL each preset from that checkpoint; write `summary.json` and `accuracy.png` to `out`.

    A folder that already holds this demo (same settings) continues it: finished runs are kept, unfinished ones
    resume. A folder that holds another demo is refused, naming the differing settings, unless `fresh`, which
    deletes that demo first."""
    console = console or Console()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out: cannot create the output folder {str(out)!r} ({err.strerror or err})") from err
    prepare_demo_folder(out, demo_config(out, **overrides), presets, fresh=fresh)
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
