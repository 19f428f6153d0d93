"""tokencredit's credit stages next to verl's `core_algos` (the anchor) on one batch, in one process.

    python3 -m venv .venv-anchors
    .venv-anchors/bin/pip install torch==2.13.0 verl==0.9.1 -e .     # verl pulls ray, tensordict, …
    .venv-anchors/bin/python benchmarks/anchor_speed.py [--threads 1] [--out PATH]

Batch: `credit_speed.make_batch` (B = 4096 in shuffled groups of 16, T = 1024, ragged lengths 256..1024, binary
rewards, random values). Each side gets the batch in its own format: tokencredit the `Rollouts` with the [B]
reward (as `Recipe.credit` passes it), verl its `token_level_rewards` [B,T] (the reward on the last token),
`response_mask` as float32 (verl's arithmetic dtype; a bool mask is slower in verl) and `index` as the numpy
array of prompt ids it expects; building those inputs is not timed. verl's trainer passes `index` as the
batch's `uid` strings (one uuid per prompt, an object array), which its vectorized estimators factorise with
`np.unique` on every call; `grpo (verl vectorized, uid strings)` times that, every other verl row gets integer
prompt ids (a numpy int64 array, which verl takes as is). Outputs are checked to agree on the mask
before timing (verl's whitened advantages are not 0 on padding). Aggregations: forward + backward of a [B,T]
loss, verl's `agg_loss` vs `tokencredit.objective.aggregate.aggregate`. Ratio = verl ms / tokencredit ms (median
wall time).
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import verl
from torch import Tensor
from verl.trainer.ppo import core_algos as verl_algos

import tokencredit as tc
from credit_speed import GAMMA, LAM, B, T, interleaved_ms, machine, make_batch
from tokencredit.objective.aggregate import aggregate
from tokencredit.shape.outcome import outcome

RESULTS = Path(__file__).parent / "results" / "anchor_speed.json"
AGGREGATIONS = {  # tokencredit name → verl loss_agg_mode
    "token_mean": "token-mean",
    "seq_mean_token_mean": "seq-mean-token-mean",
    "seq_mean_token_sum": "seq-mean-token-sum",
    "seq_mean_token_sum_norm": "seq-mean-token-sum-norm",
}


def advantage_pairs(r: tc.Rollouts) -> dict[str, tuple[Callable[[], Tensor], Callable[[], Tensor]]]:
    """name → (tokencredit call, verl call); each returns the advantages [B,T]."""
    token_reward, mask = outcome(r), r.mask.float()
    index = r.group.numpy()
    uids = np.array([str(uuid.uuid5(uuid.NAMESPACE_OID, str(g))) for g in index.tolist()], dtype=object)
    config = SimpleNamespace(gamma=GAMMA, lam=LAM, norm_adv_by_std_in_grpo=True)

    def ours(name: str, **params) -> Callable[[], Tensor]:
        return lambda: tc.get("advantage", name)(r, **params)

    def theirs(fn: Callable, *args, **kwargs) -> Callable[[], Tensor]:
        return lambda: fn(*args, **kwargs)[0]

    return {
        "grpo (verl loop)": (ours("grpo"), theirs(verl_algos.compute_grpo_outcome_advantage, token_reward, mask,
                                                  index)),
        "grpo (verl vectorized, uid strings)": (ours("grpo"), theirs(
            verl_algos.compute_grpo_vectorized_outcome_advantage, token_reward, mask, uids)),
        "grpo (verl vectorized, int ids)": (ours("grpo"), theirs(verl_algos.compute_grpo_vectorized_outcome_advantage,
                                                                 token_reward, mask, index)),
        "dr_grpo (verl loop, no std)": (ours("dr_grpo"), theirs(verl_algos.compute_grpo_outcome_advantage,
                                                                token_reward, mask, index,
                                                                norm_adv_by_std_in_grpo=False)),
        "rloo (verl loop)": (ours("rloo"), theirs(verl_algos.compute_rloo_outcome_advantage, token_reward, mask,
                                                  index, config=config)),
        "rloo (verl vectorized)": (ours("rloo"), theirs(verl_algos.compute_rloo_vectorized_outcome_advantage,
                                                        token_reward, mask, index, config=config)),
        "reinforce_pp": (ours("reinforce_pp", gamma=GAMMA),
                         theirs(verl_algos.compute_reinforce_plus_plus_outcome_advantage, token_reward, mask,
                                config=config)),
        "reinforce_pp_baseline": (ours("reinforce_pp_baseline"),
                                  theirs(verl_algos.compute_reinforce_plus_plus_baseline_outcome_advantage,
                                         token_reward, mask, index, config=config)),
        "gae": (ours("gae", gamma=GAMMA, lam=LAM),
                theirs(verl_algos.compute_gae_advantage_return, token_reward, r.value, mask, GAMMA, LAM)),
    }


def aggregation_pairs(r: tc.Rollouts) -> dict[str, tuple[Callable[[], Tensor], Callable[[], Tensor]]]:
    """name → (tokencredit, verl) forward + backward of a [B,T] loss; each returns the loss gradient."""
    base = torch.randn(B, T, generator=torch.Generator().manual_seed(1))
    mask, maskf = r.mask, r.mask.float()

    def backward(aggregate: Callable[[Tensor], Tensor]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            loss = base.clone().requires_grad_(True)
            aggregate(loss).backward()
            return loss.grad

        return run

    return {
        name: (backward(lambda loss, name=name: aggregate(name, loss, mask, budget=T)),
               backward(lambda loss, mode=mode: verl_algos.agg_loss(loss, maskf, mode)))
        for name, mode in AGGREGATIONS.items()
    }


def measure(runs: int, ref_runs: int, only: str | None = None) -> list[dict]:
    r = make_batch()
    rows = []
    for stage, pairs in (("advantage", advantage_pairs(r)), ("aggregate", aggregation_pairs(r))):
        for name, (ours, theirs) in pairs.items():
            if only is not None and only not in name:
                continue
            torch.testing.assert_close(torch.where(r.mask, ours(), 0.0), torch.where(r.mask, theirs(), 0.0),
                                       rtol=1e-4, atol=2e-4, msg=lambda m, name=name: f"{name}: {m}")
            (lib_ms, lib_cpu), (verl_ms, verl_cpu) = interleaved_ms(ours, theirs, runs, ref_runs)
            rows.append({"stage": stage, "name": name, "tokencredit_ms": lib_ms, "verl_ms": verl_ms,
                         "ratio": verl_ms / lib_ms, "cpu_ratio": verl_cpu / lib_cpu})
            print(f"  {stage:10s} {name:36s} tokencredit {lib_ms:8.2f} ms  verl {verl_ms:9.2f} ms  "
                  f"{verl_ms / lib_ms:6.1f}x", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each tokencredit function")
    parser.add_argument("--ref-runs", type=int, default=6, help="timed runs of each verl function")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", default=None, help="only the rows whose name contains this (e.g. 'grpo')")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = {**machine(), "verl": verl.__version__, "numpy": np.__version__}
    print(f"anchor_speed: B={B} T={T}, torch {info['torch']}, verl {info['verl']}, {info['threads']} threads")
    result = {"benchmark": "anchor_speed", "machine": info, "results": measure(args.runs, args.ref_runs, args.only)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
