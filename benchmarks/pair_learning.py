"""Pair-training study on the embedded default: held-out greedy accuracy after training each preference loss on
on-policy pairs from the warm-started model, over seeds, paired against the first loss (dpo).

    python benchmarks/pair_learning.py --losses dpo,ipo,cdpo,t_reg,sparsepo,tab_po --seeds 5

For each seed one warm start is shared by every loss; each (loss, seed) run starts from it in `mode: pairs` and
samples its on-policy pairs from it with the same seed, so every loss of a seed trains on the same pairs (cDPO and
T-REG read the rejected responses' critical tokens, found by rollouts: `cdpo` with `weights: critical`, `t_reg`
with `source: critical`; plain `sparsepo` runs without learned masks, i.e. TDPO-1). A loss may carry parameters,
`name:key=value[:key=value]` (values as YAML), e.g. `sparsepo:masks=sparse` for SparsePO's learned masks:

    python benchmarks/pair_learning.py --losses dpo,sparsepo:masks=sparse --seeds 5 --name pair_learning_masks

Writes `benchmarks/results/<name>.json` (per-run histories, final accuracy mean ± 95% CI, gain over the warm
start and the paired difference to the first loss per seed). Settings are the demo's
(`tokencredit.train.demo.demo_config`) unless overridden; every run checkpoints under `--work`, so a rerun
recomputes only what is missing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from learning import summarise
from tokencredit.train.demo import demo_config, run_parallel

# what the character-level default can feed each loss from a config (docs/preference.md)
LOSS_PARAMS = {"cdpo": {"weights": "critical"}, "t_reg": {"source": "critical"}}


def loss_spec(text: str) -> tuple[str, dict[str, Any]]:
    """`name` or `name:key=value[:key=value]` as the loss and its parameters (over `LOSS_PARAMS`' for it)."""
    name, *given = text.split(":")
    params = dict(LOSS_PARAMS.get(name, {}))
    for item in given:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--losses: expected name:key=value, got {text!r}")
        params[key] = yaml.safe_load(value)
    return name, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", default="dpo,ipo,cdpo,t_reg,sparsepo,tab_po",
                        help="comma-separated preference losses, each name[:key=value...]; the first is the baseline")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sft-steps", type=int, default=None, help="default: the demo's")
    parser.add_argument("--prompts", type=int, default=128, help="on-policy prompts per run")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--critical-k", type=int, default=8)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--warm", type=Path, default=None,
                        help="one warm-started model folder shared by every seed (default: a warm start per seed); "
                             "seeds then differ in the pairs sampled, their order and the held-out set only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/pair_learning"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="pair_learning", help="results file name (without .json)")
    args = parser.parse_args()
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    specs = {spec: loss_spec(spec) for spec in losses}
    console = Console()
    started = time.time()
    sft = {"steps": args.sft_steps} if args.sft_steps is not None else {}
    evaluation = {"size": args.eval_size, "pass_k_size": min(50, args.eval_size)}

    if args.warm is None:
        warm = {f"warm seed {seed}": (demo_config(args.work / f"seed{seed}" / "sft", seed=seed, rl={"steps": 0},
                                                  sft=sft, eval=evaluation), None)
                for seed in range(args.seeds)}
        run_parallel(warm, args.workers, console)
    start = {seed: str(args.warm or args.work / f"seed{seed}" / "sft" / "checkpoints" / "sft")
             for seed in range(args.seeds)}
    pairs = {"prompts": args.prompts, "samples": args.samples, "epochs": args.epochs, "batch_size": args.batch_size,
             "micro_batch_size": args.batch_size, "lr": args.lr, "critical_k": args.critical_k}
    jobs = {
        f"{spec} seed {seed}": (
            demo_config(args.work / f"seed{seed}" / spec.replace(":", "_"), seed=seed, mode="pairs",
                        sft={"steps": 0}, eval=evaluation, pairs=pairs | {"loss": name, "loss_params": params}),
            start[seed],
        )
        for seed in range(args.seeds)
        for spec, (name, params) in specs.items()
    }
    results = run_parallel(jobs, args.workers, console)
    histories = {name: {seed: results[f"{name} seed {seed}"]["history"] for seed in range(args.seeds)}
                 for name in losses}
    summary = summarise(histories)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"warm": str(args.warm) if args.warm else "one per seed",
              "losses": losses, "loss_params": {spec: params for spec, (_, params) in specs.items()},
              "seeds": args.seeds,
              "seconds": time.time() - started, "config": next(iter(jobs.values()))[0].model_dump(),
              "summary": summary, "histories": histories}
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=1))
    for name, s in summary.items():
        final = s["final"]
        gain, diff = s["gain_over_warm_start"], s["final_minus_first_recipe"]
        console.print(f"{name:>21}: final {final['mean']:.3f} ± {final['ci95']:.3f} (pair step {final['step']}), "
                      f"gain over warm start {gain['mean']:+.3f} ± {gain['ci95']:.3f}, "
                      f"paired vs {losses[0]} {diff['mean']:+.3f} ± {diff['ci95']:.3f}")


if __name__ == "__main__":
    main()
