"""Learning study on the embedded default: held-out greedy accuracy per RL step, per recipe, over seeds.

    python benchmarks/learning.py --recipes grpo,tempo --seeds 5

For each seed one warm start is shared by every recipe (so recipes differ only in RL); each (recipe, seed)
RL run starts from it. Writes `benchmarks/results/learning.json` (per-run histories, mean ± 95% CI per step,
final accuracy, steps to reach the first recipe's final mean accuracy) and `learning.png`.
Settings are the demo's (`tokencredit.train.demo.demo_config`) unless overridden. Every run checkpoints under
`--work`, and a finished run resumes as finished: rerunning with the same `--work` recomputes only what is
missing (e.g. `--seeds 8` after `--seeds 5` trains seeds 5–7 and summarises all eight).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from rich.console import Console

from tokencredit.train.demo import demo_config, run_parallel

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def summarise(histories: dict[str, dict[int, list[dict]]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, by_seed in histories.items():
        steps = sorted({h["step"] for hist in by_seed.values() for h in hist})
        curve = []
        for step in steps:
            values = [h["accuracy"] for hist in by_seed.values() for h in hist if h["step"] == step]
            mean, ci = mean_ci(values)
            curve.append({"step": step, "mean": mean, "ci95": ci, "n": len(values)})
        out[name] = {"curve": curve, "final": curve[-1]}
    first = next(iter(histories))
    baseline = out[first]["final"]["mean"]
    for name, summary in out.items():
        reached = [c["step"] for c in summary["curve"] if c["mean"] >= baseline]
        summary["steps_to_first_recipe_final"] = reached[0] if reached else None
        # Warm starts differ a lot between seeds, so paired differences are the informative comparison.
        by_seed = histories[name]
        summary["gain_over_warm_start"] = _mean_ci_record(
            [hist[-1]["accuracy"] - hist[0]["accuracy"] for hist in by_seed.values()])
        summary["final_minus_first_recipe"] = _mean_ci_record(
            [by_seed[seed][-1]["accuracy"] - histories[first][seed][-1]["accuracy"] for seed in by_seed])
    return out


def _mean_ci_record(values: list[float]) -> dict:
    mean, ci = mean_ci(values)
    return {"mean": mean, "ci95": ci, "per_seed": values}


def plot(summary: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, s in summary.items():
        steps = [c["step"] for c in s["curve"]]
        mean = [c["mean"] for c in s["curve"]]
        ci = [c["ci95"] for c in s["curve"]]
        ax.plot(steps, mean, marker="o", label=name)
        ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], alpha=0.2)
    ax.set_xlabel("RL step")
    ax.set_ylabel("held-out greedy accuracy (mean ± 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="grpo,tempo", help="comma-separated presets; the first is the baseline")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sft-steps", type=int, default=None)
    parser.add_argument("--rl-steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/learning"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    console = Console()
    started = time.time()
    overrides: dict = {}
    if args.sft_steps is not None:
        overrides["sft"] = {"steps": args.sft_steps}
    rl = {"steps": args.rl_steps} if args.rl_steps is not None else {}

    warm = {
        f"warm seed {seed}": (demo_config(args.work / f"seed{seed}" / "sft", seed=seed, rl={"steps": 0}, **overrides),
                              None)
        for seed in range(args.seeds)
    }
    run_parallel(warm, args.workers, console)
    jobs = {
        f"{name} seed {seed}": (
            demo_config(args.work / f"seed{seed}" / name, seed=seed, recipe=name, sft={"steps": 0}, rl=rl),
            str(args.work / f"seed{seed}" / "sft" / "checkpoints" / "sft"),
        )
        for seed in range(args.seeds)
        for name in recipes
    }
    results = run_parallel(jobs, args.workers, console)
    histories = {name: {seed: results[f"{name} seed {seed}"]["history"] for seed in range(args.seeds)}
                 for name in recipes}
    summary = summarise(histories)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"recipes": recipes, "seeds": args.seeds, "seconds": time.time() - started,
              "config": next(iter(jobs.values()))[0].model_dump(), "summary": summary, "histories": histories}
    (args.out / "learning.json").write_text(json.dumps(record, indent=1))
    plot(summary, args.out / "learning.png", f"embedded default, {args.seeds} seeds")
    for name, s in summary.items():
        final = s["final"]
        gain, diff = s["gain_over_warm_start"], s["final_minus_first_recipe"]
        console.print(f"{name:>12}: final {final['mean']:.3f} ± {final['ci95']:.3f} (step {final['step']}), "
                      f"gain over warm start {gain['mean']:+.3f} ± {gain['ci95']:.3f}, "
                      f"paired vs {recipes[0]} {diff['mean']:+.3f} ± {diff['ci95']:.3f}, "
                      f"reaches {recipes[0]}'s final mean at step {s['steps_to_first_recipe_final']}")


if __name__ == "__main__":
    main()
