"""Speed of the prefix-tree advantages (TEMPO) against GRPO, a memory-bandwidth yardstick and a naive
pure-Python trie.

Batch: B = 4096 responses in groups of 16, T = 1024, vocabulary 32k, CPU, torch's default thread count.
Each group is a random tree: response k copies the prefix (of random length) of a random earlier sibling
and then continues with random tokens; lengths are ragged. Binary rewards.

Timings are medians over several runs after a warm-up. The naive trie (a dict of dicts per group, one
Python step per token) is timed on a subset of groups and scaled linearly to the batch (it is linear in the
number of groups); its output is checked against the vectorised one on that subset.

    PYTHONPATH=src python benchmarks/tree_speed.py [--quick]

Writes benchmarks/results/tree_speed.json and prints a table.

On a shared machine (other processes holding cores), OpenMP's default active spin-wait makes every parallel
kernel wait for a descheduled thread, which inflates multi-threaded timings by up to 10-20x at random. This
script therefore defaults `OMP_WAIT_POLICY=PASSIVE` (set it yourself to override; it is recorded in the
results). It also reports every timing at 1 thread, which is the steadiest.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the OpenMP runtime's start (torch import)

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import tokencredit.advantage.group  # registers grpo
import tokencredit.advantage.tempo  # noqa: F401  (registers tempo)
from tokencredit.registry import get
from tokencredit.rollouts import Rollouts
from tokencredit.tree import prefix_tree, tvm_labels

RESULTS = Path(__file__).parent / "results" / "tree_speed.json"


def make_batch(b: int, g: int, t: int, vocab: int, seed: int = 0) -> Rollouts:
    """Groups of `g` responses sharing realistic prefixes (a random tree per group), ragged lengths."""
    gen = torch.Generator().manual_seed(seed)
    n = b // g
    tokens = torch.randint(0, vocab, (n, g, t), generator=gen)
    length = torch.randint(t // 8, t + 1, (n, g), generator=gen)
    rows = torch.arange(n)
    for k in range(1, g):  # data generation only: a loop over siblings
        src = torch.randint(0, k, (n,), generator=gen)
        # shared prefix: a random fraction (skewed short) of the sibling's length; sometimes the whole of it
        frac = torch.rand(n, generator=gen) ** 2
        frac = torch.where(torch.rand(n, generator=gen) < 0.1, 1.0, frac)
        cut = (frac * length[rows, src]).long()
        copy = torch.arange(t)[None, :] < cut[:, None]
        tokens[:, k] = torch.where(copy, tokens[rows, src], tokens[:, k])
        same = torch.rand(n, generator=gen) < 0.05  # an exact duplicate now and then
        tokens[:, k] = torch.where(same[:, None], tokens[rows, src], tokens[:, k])
        length[:, k] = torch.where(same, length[rows, src], torch.maximum(length[:, k], cut))
    mask = torch.arange(t)[None, :] < length.view(b, 1)
    reward = (torch.rand(b, generator=gen) < 0.5).float()
    group = torch.arange(n).repeat_interleave(g)
    return Rollouts(group=group, mask=mask, reward=reward, tokens=tokens.view(b, t))


def naive_tempo(rollouts: Rollouts, lam: float = 1.0, eps: float = 1e-6) -> list[list[float]]:
    """TEMPO with a dict-of-dicts trie per group and a Python step per token (same conventions)."""
    tokens = rollouts.tokens.tolist()
    lengths = rollouts.length.tolist()
    reward = rollouts.sequence_reward().tolist()
    members: dict[int, list[int]] = {}
    for i, gid in enumerate(rollouts.group.tolist()):
        members.setdefault(gid, []).append(i)
    out = [[0.0] * len(tokens[0]) for _ in tokens]
    for rows in members.values():
        rs = [reward[i] for i in rows]
        mean = sum(rs) / len(rs)
        std = (sum((x - mean) ** 2 for x in rs) / (len(rs) - 1)) ** 0.5 if len(rs) > 1 else 0.0
        adv = {i: (reward[i] - mean) / (std + eps) if len(rs) > 1 else 0.0 for i in rows}
        root: list = [0, 0.0, {}]  # [count, sum of Â, children]; child None is END
        for i in rows:
            node = root
            node[0] += 1
            node[1] += adv[i]
            for tok in [*tokens[i][: lengths[i]], None]:
                node = node[2].setdefault(tok, [0, 0.0, {}])
                node[0] += 1
                node[1] += adv[i]
        for i in rows:
            node, row, n = root, out[i], lengths[i]
            for k, tok in enumerate(tokens[i][:n]):
                child = node[2][tok]
                delta = child[1] / child[0] - node[1] / node[0]
                if k == n - 1:
                    leaf = child[2][None]
                    delta += leaf[1] / leaf[0] - child[1] / child[0]
                row[k] = adv[i] + lam * delta
                node = child
    return out


def median_time(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller batch, for a smoke test")
    parser.add_argument("--naive-groups", type=int, default=16, help="groups timed with the naive trie")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    b, g, t, vocab = (512, 16, 256, 32000) if args.quick else (4096, 16, 1024, 32000)
    load_start = os.getloadavg()[0]

    r = make_batch(b, g, t, vocab)
    tempo, grpo = get("advantage", "tempo"), get("advantage", "grpo")
    x = torch.randn(b, t)
    ops = {
        "cumsum [B,T] float32": lambda: torch.cumsum(x, 1),
        "grpo": lambda: grpo(r),
        "tempo": lambda: tempo(r, lam=1.0),
        "prefix_tree (all fields)": lambda: prefix_tree(r.tokens, r.mask, r.group, r.sequence_reward()),
        "tvm_labels": lambda: tvm_labels(r),
    }
    default_threads = torch.get_num_threads()
    times = {name: median_time(fn, args.repeat) for name, fn in ops.items()}
    # the same at one thread: on a shared machine, other processes stall multi-threaded kernels (each
    # parallel op waits for its slowest thread), so both are reported
    torch.set_num_threads(1)
    times_1 = {name: median_time(fn, args.repeat) for name, fn in ops.items()}
    torch.set_num_threads(default_threads)

    # naive trie on a subset of groups, scaled linearly; checked against the vectorised output
    k = min(args.naive_groups, b // g)
    subset = r.select(torch.arange(k * g))
    start = time.perf_counter()
    naive = naive_tempo(subset)
    naive_subset_s = time.perf_counter() - start
    naive_s = naive_subset_s * (b // g) / k
    times[f"naive python trie (scaled from {k} groups)"] = naive_s
    vectorised = tempo(r)[: k * g]
    max_abs_diff = (torch.tensor(naive) - vectorised).abs().max().item()
    assert max_abs_diff < 1e-4, f"naive and vectorised TEMPO disagree: max |diff| = {max_abs_diff}"

    def ratios_of(tm: dict[str, float]) -> dict[str, float]:
        return {
            "tempo / cumsum (target <= 20)": tm["tempo"] / tm["cumsum [B,T] float32"],
            "tempo / grpo": tm["tempo"] / tm["grpo"],
            "naive / tempo (target >= 50)": naive_s / tm["tempo"],
            "prefix_tree / cumsum": tm["prefix_tree (all fields)"] / tm["cumsum [B,T] float32"],
        }

    ratios, ratios_1 = ratios_of(times), ratios_of(times_1)
    stats = {
        "mean_length": r.length.float().mean().item(),
        "branch_tokens_fraction": prefix_tree(r.tokens, r.mask, r.group, r.sequence_reward()).branch.sum().item()
        / r.mask.sum().item(),
    }
    result = {
        "config": {"B": b, "group_size": g, "T": t, "vocab": vocab, "repeat": args.repeat, "device": "cpu",
                   "threads": default_threads, "cpu_count": os.cpu_count(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
                   "python": platform.python_version(), "load_avg_1m_at_start": load_start,
                   "load_avg_1m_at_end": os.getloadavg()[0],
                   "naive_groups_timed": k, "naive_subset_seconds": naive_subset_s},
        "seconds": times,
        "ratios": ratios,
        "seconds_1_thread": times_1,
        "ratios_1_thread": ratios_1,
        "check": {"naive_vs_vectorised_max_abs_diff": max_abs_diff},
        "batch": stats,
    }
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(f"B={b} G={g} T={t} vocab={vocab} mean length={stats['mean_length']:.0f} "
          f"branch tokens={stats['branch_tokens_fraction']:.2%} load avg {load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    head = f"{default_threads} threads"
    print(f"{'median ms':<45} {head:>12} {'1 thread':>12}")
    for name, sec in times.items():
        print(f"{name:<45} {sec * 1e3:>12.2f} {times_1.get(name, sec) * 1e3:>12.2f}")
    print()
    for name, value in ratios.items():
        print(f"{name:<45} {value:>11.1f}x {ratios_1[name]:>11.1f}x")
    print(f"naive vs vectorised on {k} groups: max |diff| = {max_abs_diff:.2e}")
    if not args.quick:
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
