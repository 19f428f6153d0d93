"""The demo's RL gain per seed: one warm start per seed, then RL with each preset, at the demo's settings.

    .venv/bin/python benchmarks/demo_seeds.py --seeds 0-4 --recipes grpo,tempo

Settings are `tokencredit.train.demo.demo_config` (what `tokencredit demo` runs) unless changed with
`--set rl.lr=3e-4` (RL and eval settings only: the warm start is never changed). A warm start already in
`--work` (same warm-start settings) is reused, so several RL settings can be compared on the same warm starts;
give each setting its own `--name` (its runs live in `--work/seed<N>/<name>/<preset>`, and a finished run
resumes as finished). Writes `benchmarks/results/demo_seeds[_<name>].json`: per seed and preset the accuracy
curve, the warm start, the final accuracy, the gain, the run's seconds, and the load average around it.
`--from-logs` trains nothing and writes `demo_seeds_<name>_from_logs.json` from the runs' metrics.jsonl (runs
stopped early count to their last evaluation; the mean training reward of the first and last 5 steps run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from learning import mean_ci
from tokencredit.train.config import SAFE_TO_CHANGE, apply_overrides, config_differences, read_run_record
from tokencredit.train.demo import demo_config, run_parallel


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,1")
    parser.add_argument("--recipes", default="grpo,tempo", help="comma-separated presets")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="an RL or eval setting to change from the demo's (rl.lr=3e-4, eval.size=400)")
    parser.add_argument("--name", default="", help="label of this setting (run folders and results file)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warm-only", action="store_true", help="train the missing warm starts, then stop")
    parser.add_argument("--from-logs", action="store_true",
                        help="train nothing: summarise the runs already in --work (unfinished ones to their last eval) "
                             "from their metrics.jsonl")
    parser.add_argument("--work", type=Path, default=Path("runs/demo_seeds"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    overrides = apply_overrides({}, args.sets)
    if bad := sorted(set(overrides) - {"rl", "eval"}):
        parser.error(f"--set changes RL and eval settings only, not {', '.join(bad)}")
    name = args.name or "demo"
    console = Console()
    if args.from_logs:
        return from_logs(args, seeds, recipes, name, overrides, console)
    started = time.time()
    load_start = os.getloadavg()

    # one warm start per seed, reused by every RL setting (its eval settings do not change its training)
    warm: dict[str, tuple[Any, None]] = {}
    for seed in seeds:
        cfg = demo_config(args.work / f"seed{seed}" / "sft", seed=seed, rl={"steps": 0})
        record = read_run_record(Path(cfg.out))
        if record is not None:
            # RL and eval settings do not change a warm start (it runs no RL step)
            diff = config_differences(record["config"], cfg.model_dump(mode="json"), (*SAFE_TO_CHANGE, "eval", "rl"))
            if diff:
                raise SystemExit(f"{cfg.out} holds a warm start with other settings: {diff}")
            if (Path(cfg.out) / "checkpoints" / "sft").is_dir():
                continue
        warm[f"warm seed {seed}"] = (cfg, None)
    warm_results = run_parallel(warm, args.workers, console) if warm else {}
    warm_seconds = time.time() - started
    if args.warm_only:
        for key, r in warm_results.items():
            console.print(f"{key}: warm-started greedy accuracy {r['sft_accuracy']:.3f}, {r['seconds']:.0f} s")
        return

    jobs = {
        f"{recipe} seed {seed}": (
            demo_config(args.work / f"seed{seed}" / name / recipe, seed=seed, recipe=recipe,
                        **{**overrides, "sft": {"steps": 0}}),
            str(args.work / f"seed{seed}" / "sft" / "checkpoints" / "sft"),
        )
        for seed in seeds
        for recipe in recipes
    }
    rl_started = time.time()
    results = run_parallel(jobs, args.workers, console)
    load_end = os.getloadavg()

    runs: dict[str, dict[str, dict]] = {recipe: {} for recipe in recipes}
    for recipe in recipes:
        for seed in seeds:
            r = results[f"{recipe} seed {seed}"]
            hist = r["history"]
            runs[recipe][str(seed)] = {
                "warm_start": hist[0]["accuracy"], "final": hist[-1]["accuracy"],
                "gain": hist[-1]["accuracy"] - hist[0]["accuracy"],
                "curve": [(h["step"], h["accuracy"]) for h in hist], "seconds": r["seconds"],
            }
    summary = {}
    for recipe in recipes:
        gains = [runs[recipe][str(s)]["gain"] for s in seeds]
        mean, ci = mean_ci(gains)
        summary[recipe] = {"gain_mean": mean, "gain_ci95": ci, "gain_min": min(gains), "gain_max": max(gains),
                           "seeds_with_gain_ge_10_points": sum(g >= 0.10 - 1e-9 for g in gains)}
    rl_cfg = next(iter(jobs.values()))[0]
    record = {
        "command": "python benchmarks/demo_seeds.py " + " ".join(
            [f"--seeds {args.seeds}", f"--recipes {args.recipes}", *(f"--set {s}" for s in args.sets),
             *([f"--name {args.name}"] if args.name else []), f"--workers {args.workers}"]),
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "load_avg_start": load_start, "load_avg_end": load_end},
        "seeds": seeds, "recipes": recipes, "workers": args.workers,
        "seconds_total": time.time() - started, "seconds_warm_starts_trained_here": warm_seconds,
        "warm_starts_trained_here": sorted(warm), "warm_start_seconds": {k: v["seconds"]
                                                                           for k, v in warm_results.items()},
        "seconds_rl": time.time() - rl_started,
        "rl_config": {k: rl_cfg.model_dump(mode="json")[k] for k in ("rl", "eval", "task", "task_params")},
        "sft_config": demo_config(Path("-")).sft.model_dump(mode="json"),
        "summary": summary, "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (f"demo_seeds_{args.name}.json" if args.name else "demo_seeds.json")
    path.write_text(json.dumps(record, indent=1) + "\n")
    console.print(f"{'seed':>4} " + " ".join(f"{r + ' warm → final (gain)':>30}" for r in recipes)
                  + "   seconds")
    for seed in seeds:
        cells = []
        for recipe in recipes:
            x = runs[recipe][str(seed)]
            cells.append(f"{x['warm_start']:.3f} → {x['final']:.3f} ({100 * x['gain']:+5.1f})")
        secs = " / ".join(f"{runs[r][str(seed)]['seconds']:.0f}" for r in recipes)
        console.print(f"{seed:>4} " + " ".join(f"{c:>30}" for c in cells) + f"   {secs}")
    for recipe, s in summary.items():
        console.print(f"{recipe}: gain {100 * s['gain_mean']:+.1f} ± {100 * s['gain_ci95']:.1f} points "
                      f"(min {100 * s['gain_min']:+.1f}, max {100 * s['gain_max']:+.1f}), "
                      f"{s['seeds_with_gain_ge_10_points']}/{len(seeds)} seeds ≥ +10")
    console.print(f"wrote {path}; load average {load_start} → {load_end}; {time.time() - started:.0f} s")


def read_run(folder: Path) -> dict[str, Any] | None:
    """A run's reward per RL step and its held-out accuracy per eval, from its metrics.jsonl."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return None
    evals, rewards = [], []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("phase") == "eval":
            evals.append((rec["step"], rec["accuracy"]))
        elif rec.get("phase") == "rl":
            rewards.append((rec["step"], rec["reward"]))
            if "eval_accuracy" in rec:
                evals.append((rec["step"], rec["eval_accuracy"]))
    return {"curve": evals, "reward": rewards}


def from_logs(args: argparse.Namespace, seeds: list[int], recipes: list[str], name: str,
              overrides: dict[str, Any], console: Console) -> None:
    runs: dict[str, dict[str, dict]] = {recipe: {} for recipe in recipes}
    for recipe in recipes:
        for seed in seeds:
            run = read_run(args.work / f"seed{seed}" / name / recipe)
            if run is None or not run["curve"]:
                continue
            (_, warm), (last, final) = run["curve"][0], run["curve"][-1]
            reward = [r for _, r in run["reward"]]
            runs[recipe][str(seed)] = {
                "warm_start": warm, "final": final, "final_step": last, "gain": final - warm,
                "curve": run["curve"], "reward_first_5_steps": sum(reward[:5]) / max(1, len(reward[:5])),
                "reward_last_5_steps": sum(reward[-5:]) / max(1, len(reward[-5:])), "rl_steps_done": len(reward),
            }
            console.print(f"{name} {recipe} seed {seed}: " + ", ".join(f"{s}: {a:.3f}" for s, a in run["curve"])
                          + f"; reward first 5 steps {runs[recipe][str(seed)]['reward_first_5_steps']:.3f}, last 5 "
                          f"{runs[recipe][str(seed)]['reward_last_5_steps']:.3f} ({len(reward)} steps)")
    cfg = demo_config(Path("-"), **{**overrides, "sft": {"steps": 0}})
    record = {"setting": name, "from_logs": True, "sets": args.sets, "seeds": seeds,
              "rl_config": {k: cfg.model_dump(mode="json")[k] for k in ("rl", "eval")}, "runs": runs,
              "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "load_avg_now": os.getloadavg()}}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"demo_seeds_{name}_from_logs.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
