"""Speed of the credit stages against straightforward loop references (a script, not a test).

    .venv/bin/python benchmarks/credit_speed.py [--threads 1] [--allocator both|default|keep-heap] [--repeats 3]
                                                [--large] [--out PATH]

Batch: B = 4096 responses in groups of 16 (group ids shuffled over the rows, so groups are not contiguous),
T = 1024, ragged lengths uniform in 256..1024, binary outcome rewards, random critic values.

* Advantage estimators (every `tc.methods()["advantage"]` that runs on this batch) are called as
  `Recipe.credit` calls them: on rollouts with the per-sequence reward [B] (the `outcome` shape is implied).
  The references get the same inputs. References: a per-group Python loop (select the group's rows,
  mean/std with torch on that subset) for the group estimators; a per-token loop over t, vectorised over B,
  for the returns of reinforce_pp and gae (after placing each reward on its response's last token).
* Aggregations: forward + backward of a [B,T] per-token loss that requires grad. Reference: a Python loop
  over sequences (per group, then per sequence, for `balanced`).
* Weight stages (`forking_tokens`, `d3s_tokens`, `steer`, called as `Recipe.credit` calls them, with the grpo
  advantage and `keep` = the mask, every token in the loss): timed next to `grpo` on the same batch (`x grpo` =
  stage ms / grpo ms, interleaved; goals: the batch-quantile selections ≤ 10×, steer ≤ 5×) and next to the
  implementation they replaced (`before`, a verbatim copy: a `topk` of the top fraction of the masked copy of
  the scores; the STEER formula written out with a masked copy for the maximum), whose output must be equal (steer's:
  within 2e-6, float32 rounding of its log p and exp2 choices). `x input floor` = stage ms / one elementwise pass
  that reads the stage's float [B,T] inputs into a fresh output (`INPUT_FLOORS`), a yardstick that does not move
  when grpo gets faster. Every call of these rows starts with a cold cache (a 128 MB buffer is read first,
  untimed), as in a training step, where the model's forward and backward pass run between two credit calls;
  `x grpo hot` repeats stage and grpo back to back, where grpo's whole working set (the 4 MB mask and its 16 MB
  output) stays in this machine's 32 MB last-level cache and the stages' (52–68 MB) cannot: that flatters grpo
  alone (1.1–1.6 ms against 2.0–2.7 cold).
  `steer fused=True` (its `torch.compile`d kernels) is a row of its own (`WEIGHT_OPTIONS`), with the time of its
  first call, which compiles (`first_call_s`, untimed in the ratios).
  `--large` adds `forking_tokens` on B = 8192, T = 8192 (67M elements: 512 prompts × 16 responses × 8k
  positions, 42M of them tokens; beyond the 2^24 elements `torch.quantile` accepts), next to grpo there
  (≈2 GB of memory, ≈1 min with `before`).

Each reference is first checked to agree with the library (allclose); then both are timed (median of
several runs after a warm-up; wall and process CPU time). The ratio is reference ms / library ms (wall);
`cpu_ratio` is the same from process CPU time, which is steadier on a shared machine when --threads 1.
`ratio_bound` is the reference's time over the cost of one fresh [B,T] float32 output (`torch.zeros(B, T)`):
every advantage estimator must hand such a tensor back, so no implementation can exceed that ratio.
Single runs on a shared VM vary up to 2× (the references too), so `--repeats N` measures N times in fresh
processes and reports per-row medians. Results go to a JSON file.

Allocator: with glibc's defaults a fresh [B,T] float32 temporary (16 MB) is mmap-ed and page-faulted in on
first touch and handed back on free, and on a VM those faults cost more than the arithmetic. `--allocator
both` (the default) measures everything twice, each in its own process: `default` (what a user gets) and
`keep-heap` (mallopt: big blocks come from the heap and stay there), so the table shows both the cost users
see and the cost of the arithmetic itself.
The verl anchor (verl's `core_algos` on this batch) is `anchor_speed.py`, run in an environment with verl.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

import tokencredit as tc
from tokencredit.advantage.group import broadcast
from tokencredit.discount import discounted_reverse_cumsum
from tokencredit.groups import group_index, group_stats
from tokencredit.masked import last_index, masked_whiten, masked_whiten_rows, token_count, zero_outside
from tokencredit.objective.aggregate import aggregate
from tokencredit.shape.outcome import outcome

B, T, GROUP_SIZE, MIN_LEN = 4096, 1024, 16, 256
EPS_GRPO, EPS_WHITEN = 1e-6, 1e-8
GAMMA, LAM = 1.0, 0.95  # the library's gae defaults
TARGET = 20.0
EVICT_BYTES = 128 << 20  # read before each timed call of a weight row: 4× this machine's 32 MB last-level cache
RESULTS = Path(__file__).parent / "results" / "credit_speed.json"


# ------------------------------------------------------------------------------------------------ data


def make_batch(seed: int = 0) -> tc.Rollouts:
    gen = torch.Generator().manual_seed(seed)
    num_groups = B // GROUP_SIZE
    # non-contiguous, non-dense ids: row i belongs to prompt 1000 + 7·g for a shuffled g
    group = 1000 + 7 * (torch.randperm(B, generator=gen) % num_groups)
    lengths = torch.randint(MIN_LEN, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    reward = (torch.rand(B, generator=gen) < 0.5).float()
    value = torch.randn(B, T, generator=gen)
    logprob = -torch.rand(B, T, generator=gen) * 3
    entropy = torch.rand(B, T, generator=gen) * 2
    return tc.Rollouts(group=group, mask=mask, reward=reward, value=value, logprob=logprob, entropy=entropy)


# ------------------------------------------------------------------------------------------------ references
# Deliberately plain: the loops a reader would write first. Inputs: token rewards [B,T], mask, group ids.


def _groups(group: Tensor) -> list[Tensor]:
    return [(group == g).nonzero().squeeze(1) for g in torch.unique(group).tolist()]


def ref_token_rewards(reward: Tensor, mask: Tensor) -> Tensor:
    token_reward = torch.zeros(mask.shape)
    lengths = mask.sum(-1)
    rows = (lengths > 0).nonzero().squeeze(1)
    token_reward[rows, lengths[rows] - 1] = reward[rows]
    return token_reward


def ref_group(scores: Tensor, mask: Tensor, group: Tensor, kind: str) -> Tensor:
    adv = torch.zeros(B)
    for rows in _groups(group):
        s = scores[rows]
        if s.numel() < 2:
            continue  # a single-response group carries no relative information
        if kind == "grpo":
            adv[rows] = (s - s.mean()) / (s.std() + EPS_GRPO)
        elif kind == "dr_grpo":
            adv[rows] = s - s.mean()
        elif kind == "rloo":
            adv[rows] = s - (s.sum() - s) / (s.numel() - 1)
        elif kind == "reinforce_pp_baseline":
            adv[rows] = s - s.mean()
    out = adv[:, None] * mask
    return ref_whiten(out, mask) if kind == "reinforce_pp_baseline" else out


def ref_whiten(x: Tensor, mask: Tensor) -> Tensor:
    values = x[mask]
    centred = (x - values.mean()) / torch.sqrt(values.var() + EPS_WHITEN)
    return centred * mask


def ref_reinforce_pp(reward: Tensor, mask: Tensor, group: Tensor) -> Tensor:
    token_reward = ref_token_rewards(reward, mask)
    returns = torch.zeros_like(token_reward)
    running = torch.zeros(token_reward.shape[0])
    for t in reversed(range(token_reward.shape[1])):
        running = token_reward[:, t] + GAMMA * running
        returns[:, t] = running
        running = running * mask[:, t]
    return ref_whiten(returns, mask)


def ref_gae(reward: Tensor, mask: Tensor, group: Tensor, value: Tensor) -> Tensor:
    token_reward = ref_token_rewards(reward, mask)
    value = value * mask
    adv = torch.zeros_like(token_reward)
    last = torch.zeros(token_reward.shape[0])
    for t in reversed(range(token_reward.shape[1])):
        next_value = value[:, t + 1] if t + 1 < token_reward.shape[1] else 0.0
        delta = (token_reward[:, t] + GAMMA * next_value - value[:, t]) * mask[:, t]
        last = delta + GAMMA * LAM * last
        adv[:, t] = last
    return ref_whiten(adv, mask)


def ref_aggregate(name: str, loss: Tensor, mask: Tensor, advantage: Tensor, group: Tensor) -> Tensor:
    lengths = mask.sum(-1).tolist()
    rows = loss.unbind(0)  # one autograd node for the split; slicing `loss[i]` would cost a [B,T] grad per row
    nonempty = sum(1 for n in lengths if n > 0)
    if name == "balanced":
        signs = torch.sign((advantage * mask).sum(-1)).tolist()
        per_group = []
        for members in _groups(group):
            pos = [i for i in members.tolist() if signs[i] > 0]
            neg = [i for i in members.tolist() if signs[i] < 0]
            if not pos and not neg:
                continue
            part = loss.new_zeros(())
            for side in (pos, neg):
                if side:
                    tokens = sum(lengths[i] for i in side)
                    side_sum = sum(rows[i][: lengths[i]].sum() for i in side)
                    part = part + len(side) / (len(pos) + len(neg)) * side_sum / max(tokens, 1)
            per_group.append(part)
        return sum(per_group) / max(len(per_group), 1)
    total = loss.new_zeros(())
    for row, n in zip(rows, lengths):
        if n == 0:
            continue
        total = total + (row[:n].mean() if name == "seq_mean_token_mean" else row[:n].sum())
    if name == "token_mean":
        return total / max(sum(lengths), 1)
    if name in ("seq_mean_token_mean", "seq_mean_token_sum"):
        return total / max(nonempty, 1)
    if name == "seq_mean_token_sum_norm":
        return total / (max(nonempty, 1) * mask.shape[1])
    raise KeyError(name)


def ref_group_stats(scores: Tensor, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mean, std, count = torch.zeros(B), torch.zeros(B), torch.zeros(B)
    for rows in _groups(group):
        s = scores[rows]
        mean[rows], count[rows] = s.mean(), float(s.numel())
        std[rows] = s.std() if s.numel() > 1 else 0.0
    return mean, std, count


def ref_discounted(x: Tensor, gamma: float) -> Tensor:
    out = torch.zeros_like(x)
    running = torch.zeros(x.shape[0])
    for t in reversed(range(x.shape[1])):
        running = x[:, t] + gamma * running
        out[:, t] = running
    return out


def ref_top_fraction(score: Tensor, mask: Tensor, top: float) -> Tensor:
    """`top_fraction_mask` before the exact selection: a `topk` of the top fraction of the masked copy."""
    values = score[mask]
    if values.numel() == 0:
        return torch.zeros(mask.shape)
    threshold = torch.topk(values, max(1, round(top * values.numel()))).values[-1]
    return ((score >= threshold) & mask).float()


def ref_steer(r: tc.Rollouts, advantage: Tensor, w_min: float = 0.8) -> Tensor:
    """`steer` (exp mode) before: the formula written out, a masked copy for the maximum."""
    p = r.logprob.float().exp().clamp(1e-8, 1.0 - 1e-8)
    omega = zero_outside(advantage.float() * (1.0 - p) * (p.log() + r.entropy.float()), r.mask).abs()
    rate = -math.log(w_min) / omega[r.mask].max().clamp(min=0.02)
    return zero_outside(torch.exp(-rate * omega).clamp(w_min, 1.0), r.mask)


WEIGHT_REFS = {  # name → (goal: at most this many times grpo's time, rtol against the reference, reference)
    "forking_tokens": (10.0, 0.0, lambda r, adv: ref_top_fraction(r.entropy, r.mask, 0.2)),
    "d3s_tokens": (10.0, 0.0, lambda r, adv: ref_top_fraction(adv.float().abs() * r.entropy, r.mask, 0.2)),
    "steer": (5.0, 2e-6, ref_steer),  # log p and exp2 instead of log(exp(·)) and exp: float32 rounding apart
}
WEIGHT_OPTIONS = {"steer": {"fused": True}}  # also timed with these parameters, as a row of their own

# One elementwise pass that reads the stage's float [B,T] inputs and writes a fresh float [B,T] output: the memory
# traffic no implementation of the stage can avoid (grpo reads a [B] reward and the mask: its traffic is ~1/3 of
# steer's 3 inputs and output). `x floor` = stage ms / this; a yardstick that does not move when grpo gets faster.
INPUT_FLOORS = {
    "forking_tokens": lambda r, adv: torch.mul(r.entropy, 1.0),
    "d3s_tokens": lambda r, adv: torch.mul(adv, r.entropy),
    "steer": lambda r, adv: torch.addcmul(adv, r.logprob, r.entropy),
}

GROUP_REFS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")


def advantage_reference(name: str) -> Callable[[tc.Rollouts], Tensor] | None:
    if name in GROUP_REFS:
        return lambda r: ref_group(r.reward, r.mask, r.group, name)
    if name == "reinforce_pp":
        return lambda r: ref_reinforce_pp(r.reward, r.mask, r.group)
    if name == "gae":
        return lambda r: ref_gae(r.reward, r.mask, r.group, r.value)
    return None


# ------------------------------------------------------------------------------------------------ timing


Timing = tuple[float, float]  # (wall ms, process CPU ms)


def _timed(fn: Callable[[], object], evict: Tensor | None = None) -> Timing:
    """Wall and process CPU ms of one call; with `evict`, a buffer larger than the last-level cache is read first
    (untimed; read, not written, so that no dirty lines are left for the call to write back), so the call
    starts with nothing of its own in cache, as in a training step."""
    if evict is not None:
        evict.amax()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def _median(times: list[Timing]) -> Timing:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        fn()
    return _median([_timed(fn) for _ in range(runs)])


def interleaved_ms(library: Callable[[], object], reference: Callable[[], object], runs: int,
                   ref_runs: int, rounds: int = 3) -> tuple[Timing, Timing]:
    """Medians over `rounds` alternating blocks (library block, then reference block), so that drifting
    background load on a shared machine hits both sides alike. Each block starts with an untimed warm-up call:
    the other side's allocations in between would otherwise make the first call pay fresh page faults."""
    lib_times: list[Timing] = []
    ref_times: list[Timing] = []
    for r in range(rounds):
        for fn, times, n in ((library, lib_times, runs), (reference, ref_times, ref_runs)):
            block = -(-n // rounds) if r < n % rounds or n % rounds == 0 else n // rounds
            fn()
            times.extend(_timed(fn) for _ in range(block))
    return _median(lib_times), _median(ref_times)


def interleaved_many(fns: dict[str, Callable[[], object]], runs: dict[str, int], rounds: int = 3,
                     evict: Tensor | None = None) -> dict[str, Timing]:
    """`interleaved_ms` for several functions: per round, a block of each (after an untimed warm-up call); with
    `evict`, each call starts with a cold cache (`_timed`)."""
    times: dict[str, list[Timing]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            n = runs[name]
            block = -(-n // rounds) if r < n % rounds or n % rounds == 0 else n // rounds
            fn()
            times[name].extend(_timed(fn, evict) for _ in range(block))
    return {name: _median(t) for name, t in times.items()}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {  # threads is read when the run starts (after --threads)
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
        "load_average_at_start": load,
    }


def breakdown(rollouts: tc.Rollouts, runs: int) -> dict[str, Timing]:
    """Costs of the [B,T] building blocks (single passes, and the library helpers made of several), to read
    the table against: the idioms the library avoids next to the ones it uses (`tokencredit.masked`)."""
    mask, x = rollouts.mask, rollouts.value
    maskf = mask.float()
    adv = torch.randn(B)
    positions = torch.arange(T, dtype=torch.int32)
    return {
        "torch.zeros(B, T) (a fresh output: the floor of any [B,T] estimator)": median_ms(output_floor, runs),
        "x * mask (bool mask: avoided)": median_ms(lambda: x * mask, runs),
        "x * mask_f (float mask made once)": median_ms(lambda: x * maskf, runs),
        "torch.where(mask, x, 0) (zero_outside)": median_ms(lambda: zero_outside(x, mask), runs),
        "x.masked_fill(~mask, 0) (avoided)": median_ms(lambda: x.masked_fill(~mask, 0.0), runs),
        "mask.sum(-1) (default int64: avoided)": median_ms(lambda: mask.sum(-1), runs),
        "mask.sum(-1, dtype=int32) (avoided)": median_ms(lambda: mask.sum(-1, dtype=torch.int32), runs),
        "token_count(mask, -1) (8 bytes a word)": median_ms(lambda: token_count(mask, -1), runs),
        "torch.where(mask, positions, -1).amax(-1) (avoided)": median_ms(
            lambda: torch.where(mask, positions, -1).amax(-1), runs),
        "last_index(mask) (8 bytes a word)": median_ms(lambda: last_index(mask), runs),
        "adv[:, None] * mask (bool: avoided)": median_ms(lambda: adv[:, None] * mask, runs),
        "broadcast(adv, mask) (where on a [B,1] column)": median_ms(lambda: broadcast(adv, mask), runs),
        "outcome(rollouts) shape": median_ms(lambda: outcome(rollouts), runs),
        "masked_whiten(x, mask)": median_ms(lambda: masked_whiten(x, mask), runs),
        "masked_whiten_rows(adv, mask) (a value per row)": median_ms(lambda: masked_whiten_rows(adv, mask), runs),
        "torch.unique(group) [B]": median_ms(lambda: group_index(rollouts.group), runs),
    }


def output_floor() -> Tensor:
    """What every advantage estimator must at least do here: hand back a fresh [B,T] float32 tensor."""
    return torch.zeros(B, T)


class Bench:
    def __init__(self, runs: int, ref_runs: int) -> None:
        self.runs, self.ref_runs = runs, ref_runs
        self.rows: list[dict] = []
        self.notes: list[str] = []

    def compare(
        self,
        stage: str,
        name: str,
        library: Callable[[], object],
        reference: Callable[[], object] | None,
        reference_kind: str | None,
        check: Callable[[object, object], None] | None = None,
    ) -> None:
        row = {"stage": stage, "name": name, "reference": reference_kind, "ref_ms": None, "ratio": None,
               "ref_cpu_ms": None, "cpu_ratio": None}
        if reference is not None:
            out, expected = library(), reference()
            check(out, expected)
            first = out[0] if isinstance(out, tuple) else out
            first_ref = expected[0] if isinstance(expected, tuple) else expected
            row["max_abs_diff"] = (first - first_ref).abs().max().item()
            lib, ref = interleaved_ms(library, reference, self.runs, self.ref_runs)
            row["ref_ms"], row["ref_cpu_ms"] = ref
        else:
            lib = median_ms(library, self.runs)
        row["lib_ms"], row["lib_cpu_ms"] = lib
        if row["ref_ms"] is not None:
            row["ratio"] = row["ref_ms"] / row["lib_ms"]
            row["cpu_ratio"] = row["ref_cpu_ms"] / row["lib_cpu_ms"]
            row["meets_target"] = row["ratio"] >= TARGET
        self.rows.append(row)
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.1f}x (cpu {row['cpu_ratio']:.1f}x)"
        ref_ms = row["ref_ms"] or 0.0
        print(f"  {stage:10s} {name:36s} lib {row['lib_ms']:9.2f} ms  ref {ref_ms:9.2f} ms  {ratio}", flush=True)

    def add_stage_row(self, stage: str, name: str, timing: dict[str, Timing], goal: float, reference_kind: str,
                      max_abs_diff: float, hot: dict[str, Timing] | None = None) -> None:
        """A stage timed with `interleaved_many` as lib / grpo / ref: `x_grpo` = lib ms / grpo ms (its goal:
        at most `goal`), `ratio` = ref ms / lib ms, with a "floor" timing `x_floor` = lib ms / floor ms, and with
        `hot` (lib and grpo timed back to back) `x_grpo_hot`."""
        (lib, lib_cpu), (grpo, grpo_cpu), (ref, ref_cpu) = timing["lib"], timing["grpo"], timing["ref"]
        row = {"stage": stage, "name": name, "reference": reference_kind, "ref_ms": ref, "ref_cpu_ms": ref_cpu,
               "lib_ms": lib, "lib_cpu_ms": lib_cpu, "ratio": ref / lib, "cpu_ratio": ref_cpu / lib_cpu,
               "max_abs_diff": max_abs_diff, "grpo_ms": grpo, "grpo_cpu_ms": grpo_cpu, "x_grpo": lib / grpo,
               "x_grpo_cpu": lib_cpu / grpo_cpu, "x_grpo_goal": goal, "meets_goal": lib / grpo <= goal}
        if "floor" in timing:
            row.update(floor_ms=timing["floor"][0], x_floor=lib / timing["floor"][0])
        if hot is not None:
            row.update(lib_ms_hot=hot["lib"][0], grpo_ms_hot=hot["grpo"][0], x_grpo_hot=hot["lib"][0] / hot["grpo"][0])
        self.rows.append(row)
        print(f"  {stage:10s} {name:36s} lib {lib:9.2f} ms  grpo {grpo:6.2f} ms  {lib / grpo:5.1f}x grpo "
              f"(cpu {lib_cpu / grpo_cpu:.1f}x; goal <= {goal:g}x)  before {ref:9.2f} ms  {ref / lib:.1f}x faster"
              + (f"  {row['x_floor']:.1f}x its input floor ({row['floor_ms']:.2f} ms)" if "floor" in timing else "")
              + (f"  back to back: {row['lib_ms_hot']:.2f} / {row['grpo_ms_hot']:.2f} ms = {row['x_grpo_hot']:.1f}x"
                 if hot is not None else ""), flush=True)


def _close(rtol: float, atol: float, what: str) -> Callable[[object, object], None]:
    def check(out, expected) -> None:
        torch.testing.assert_close(out, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")

    return check


# ------------------------------------------------------------------------------------------------ main


ALLOCATORS = ("default", "keep-heap")


def keep_heap() -> bool:
    """glibc: serve [B,T] float32 tensors (16 MB) from the heap and never hand freed memory back to the OS, so
    that a fresh temporary does not pay a page fault per 4 KiB page (the default returns every block above the
    dynamic mmap threshold to the OS). Equivalent to MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=…"""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) and libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    applied = keep_heap() if args.allocator == "keep-heap" else False
    if args.allocator == "keep-heap" and not applied:
        raise SystemExit("--allocator keep-heap: glibc mallopt is not available here")
    torch.manual_seed(0)
    started = time.perf_counter()
    info = machine()
    rollouts = make_batch()  # with the [B] reward: what Recipe.credit hands the advantage stage
    mask, group = rollouts.mask, rollouts.group
    bench = Bench(args.runs, args.ref_runs)
    print(f"credit_speed ({args.allocator}): B={B} T={T}, torch {info['torch']}, {info['threads']} threads",
          flush=True)

    # end to end: every registered advantage estimator
    floor_ms, _ = median_ms(output_floor, args.runs)
    for name in tc.names("advantage"):
        fn = tc.get("advantage", name)
        try:
            fn(rollouts)
        except ValueError as error:  # e.g. tempo needs token ids with shared prefixes: its own benchmark
            bench.notes.append(f"advantage {name!r} skipped (needs data this batch lacks): {error}")
            continue
        ref = advantage_reference(name)
        if ref is None:
            bench.notes.append(f"advantage {name!r}: no reference in this benchmark; library time only")
        kind = None if ref is None else ("per-token loop" if name in ("reinforce_pp", "gae") else "per-group loop")
        reference = None if ref is None else (lambda ref=ref: ref(rollouts))
        bench.compare("advantage", name, lambda fn=fn: fn(rollouts), reference, kind, _close(1e-4, 2e-4, name))

    for row in bench.rows:  # no implementation can beat the time it takes to hand back its [B,T] output
        row["ratio_bound"] = None if row["ref_ms"] is None else row["ref_ms"] / floor_ms

    # the vectorised cores alone, without the [B,T] broadcasting and masking they share with any implementation
    scores = rollouts.sequence_reward()
    bench.compare("core", "group_stats [B]", lambda: group_stats(scores, group),
                  lambda: ref_group_stats(scores, group), "per-group loop", _close(1e-5, 1e-6, "group_stats"))
    returns_input = outcome(rollouts)
    for gamma in (1.0, GAMMA * LAM):
        bench.compare("core", f"discounted_reverse_cumsum g={gamma:g}",
                      lambda gamma=gamma: discounted_reverse_cumsum(returns_input, gamma),
                      lambda gamma=gamma: ref_discounted(returns_input, gamma), "per-token loop",
                      _close(1e-4, 1e-4, f"discount {gamma}"))

    # aggregations: forward + backward of a [B,T] per-token loss
    base_loss = torch.randn(B, T, generator=torch.Generator().manual_seed(1))
    advantage = tc.get("advantage", "grpo")(rollouts)
    for name in tc.names("aggregate"):

        def library(name=name) -> tuple[Tensor, Tensor]:
            loss = base_loss.clone().requires_grad_(True)
            value = aggregate(name, loss, mask, advantage=advantage, group=group, budget=T)
            value.backward()
            return loss.grad, value.detach()

        def reference(name=name) -> tuple[Tensor, Tensor]:
            loss = base_loss.clone().requires_grad_(True)
            value = ref_aggregate(name, loss, mask, advantage, group)
            value.backward()
            return loss.grad, value.detach()

        try:
            reference()
        except KeyError:
            bench.notes.append(f"aggregate {name!r}: no reference in this benchmark; library time only")
            bench.compare("aggregate", name, library, None, None)
            continue
        bench.compare("aggregate", name, library, reference, "per-sequence loop (fwd+bwd)",
                      _close(1e-4, 1e-9, name))

    measure_weights(bench, rollouts, advantage)
    if args.large:
        measure_large(bench)

    parts = {key: {"wall_ms": wall, "cpu_ms": cpu} for key, (wall, cpu) in breakdown(rollouts, args.runs).items()}
    bench.notes.append("the verl anchor on this batch: benchmarks/anchor_speed.py (needs an environment with verl)")
    result = {
        "allocator": args.allocator,
        "machine": info,
        "sizes": {"B": B, "T": T, "group_size": GROUP_SIZE, "groups": B // GROUP_SIZE,
                  "lengths": f"uniform {MIN_LEN}..{T}", "tokens": int(mask.sum()),
                  "reward": "binary per sequence [B], passed unshaped as Recipe.credit does",
                  "gae": {"gamma": GAMMA, "lam": LAM}},
        "runs": {"library": args.runs, "reference": args.ref_runs,
                 "statistic": "median ms; 3 alternating blocks of library/reference runs, 1 warm-up per block"},
        "target_ratio": TARGET,
        "output_floor_ms": floor_ms,
        "results": bench.rows,
        "building_blocks_ms": parts,
        "notes": bench.notes,
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    return result


def measure_weights(bench: Bench, rollouts: tc.Rollouts, advantage: Tensor) -> None:
    """The weight stages as `Recipe.credit` calls them, timed in one interleaved set with grpo (`x grpo`) and
    with the implementation they replaced (`before`, checked equal first), every call from a cold cache; then
    stage and grpo again back to back (`x grpo hot`)."""
    keep = rollouts.mask  # `Recipe.credit`'s keep [B,T]: every token of the mask in the loss
    grpo = tc.get("advantage", "grpo")
    evict = torch.zeros(EVICT_BYTES // 4)
    rows = [(name, {}) for name in WEIGHT_REFS] + list(WEIGHT_OPTIONS.items())
    for name, params in rows:
        goal, rtol, before = WEIGHT_REFS[name]
        fn = tc.get("weight", name)

        def library(fn=fn, params=params) -> Tensor:
            return fn(rollouts, advantage, keep=keep, **params)

        def reference(before=before) -> Tensor:
            return before(rollouts, advantage)

        first = time.perf_counter()
        out = library()  # with fused=True, this call compiles
        first = time.perf_counter() - first
        expected = reference()
        torch.testing.assert_close(out, expected, rtol=rtol, atol=0.0, msg=lambda m, name=name: f"{name}: {m}")
        floor = INPUT_FLOORS[name]
        timing = interleaved_many({"lib": library, "grpo": lambda: grpo(rollouts), "ref": reference,
                                   "floor": lambda floor=floor: floor(rollouts, advantage)},
                                  {"lib": bench.runs, "grpo": bench.runs, "ref": bench.ref_runs, "floor": bench.runs},
                                  evict=evict)
        hot = interleaved_many({"lib": library, "grpo": lambda: grpo(rollouts)},
                               {"lib": bench.runs, "grpo": bench.runs})
        label = " ".join([name, *(f"{key}={value}" for key, value in params.items())])
        bench.add_stage_row("weight", label, timing, goal, "before (topk / formula as written)",
                            (out - expected).abs().max().item(), hot=hot)
        bench.rows[-1]["first_call_s"] = first


def measure_large(bench: Bench, rows: int = 8192, width: int = 8192) -> None:
    """`forking_tokens` on a 67M-token batch (B = 8192 = 512 prompts × 16, T = 8192), next to grpo there, and the
    `topk` selection it replaced (one run)."""
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(width // 4, width + 1, (rows,), generator=gen)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    group = torch.arange(rows) // GROUP_SIZE
    big = tc.Rollouts(group=group, mask=mask, reward=(torch.rand(rows, generator=gen) < 0.5).float(),
                      entropy=torch.rand(rows, width, generator=gen) * 2)
    adv = tc.get("advantage", "grpo")(big)
    fn, grpo = tc.get("weight", "forking_tokens"), tc.get("advantage", "grpo")
    out = fn(big, adv)
    expected = ref_top_fraction(big.entropy, big.mask, 0.2)
    assert torch.equal(out, expected), "forking_tokens at 67M tokens differs from the topk selection"
    del out, expected
    timing = interleaved_many({"lib": lambda: fn(big, adv), "grpo": lambda: grpo(big),
                               "ref": lambda: ref_top_fraction(big.entropy, big.mask, 0.2)},
                              {"lib": 3, "grpo": 3, "ref": 1}, rounds=1)
    bench.add_stage_row("weight", f"forking_tokens B={rows} T={width} ({int(mask.sum()) / 1e6:.0f}M tokens)",
                        timing, 10.0, "before (topk)", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each library function")
    parser.add_argument("--ref-runs", type=int, default=6, help="timed runs of each reference")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--allocator", choices=("both", *ALLOCATORS), default="both",
                        help="glibc allocator setting; 'both' runs each in its own process")
    parser.add_argument("--repeats", type=int, default=1,
                        help="whole measurements per allocator, each in its own process (alternating allocators); "
                             "the table shows per-row medians and the JSON keeps every repeat's ratio")
    parser.add_argument("--large", action="store_true",
                        help="also forking_tokens on a 67M-token batch (B = T = 8192; ~2 GB of memory)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.allocator != "both" and args.repeats == 1:
        result = {"benchmark": "credit_speed", "modes": {args.allocator: measure(args)}}
    else:
        allocators = ALLOCATORS if args.allocator == "both" else (args.allocator,)
        runs: dict[str, list[dict]] = {allocator: [] for allocator in allocators}
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                for allocator in allocators:
                    out = Path(tmp) / f"{allocator}-{repeat}.json"
                    command = [sys.executable, __file__, "--allocator", allocator, "--out", str(out),
                               "--runs", str(args.runs), "--ref-runs", str(args.ref_runs)]
                    if args.threads:
                        command += ["--threads", str(args.threads)]
                    if args.large:
                        command += ["--large"]
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                    runs[allocator].append(json.loads(out.read_text())["modes"][allocator])
        result = {"benchmark": "credit_speed", "modes": {name: combine(r) for name, r in runs.items()}}
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for mode in result["modes"].values():
        show(mode)
    print(f"wrote {args.out}")


def combine(runs: list[dict]) -> dict:
    """One table from repeated measurements: per-row medians of the times and ratios (each ratio is the median
    of the repeats' ratios), with every repeat's ratio kept under `ratio_runs`."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    rows = []
    for i, row in enumerate(first["results"]):
        same = [run["results"][i] for run in runs]
        merged = dict(row)
        for key in ("lib_ms", "lib_cpu_ms", "ref_ms", "ref_cpu_ms", "ratio", "cpu_ratio", "ratio_bound", "grpo_ms",
                    "grpo_cpu_ms", "x_grpo", "x_grpo_cpu", "floor_ms", "x_floor", "lib_ms_hot", "grpo_ms_hot",
                    "x_grpo_hot", "first_call_s"):
            values = [r.get(key) for r in same]
            merged[key] = None if None in values else statistics.median(values)
        if merged.get("x_grpo") is not None:
            merged["x_grpo_runs"] = [r["x_grpo"] for r in same]
            merged["grpo_ms_runs"] = [r["grpo_ms"] for r in same]
            if merged.get("x_grpo_hot") is not None:
                merged["x_grpo_hot_runs"] = [r["x_grpo_hot"] for r in same]
            merged["meets_goal"] = merged["x_grpo"] <= merged["x_grpo_goal"]
        if merged["ratio"] is not None:
            merged["ratio_runs"] = [r["ratio"] for r in same]
            if "meets_target" in row:
                merged["meets_target"] = merged["ratio"] >= TARGET
        rows.append(merged)
    blocks = {key: {part: statistics.median(run["building_blocks_ms"][key][part] for run in runs)
                    for part in ("wall_ms", "cpu_ms")} for key in first["building_blocks_ms"]}
    return {**first, "repeats": len(runs), "results": rows, "building_blocks_ms": blocks,
            "output_floor_ms": statistics.median(run["output_floor_ms"] for run in runs),
            "statistic": "per row: median over repeats of (median over runs)",
            "load_average_at_end": runs[-1]["load_average_at_end"]}


def show(result: dict) -> None:
    header = ("stage", "function", "reference", "library ms", "reference ms", "ratio", "cpu-time ratio",
              "bound", "x grpo (goal)", "x input floor", "x grpo hot")
    lines = [
        (r["stage"], r["name"], r["reference"] or "-", f"{r['lib_ms']:.2f}",
         "-" if r["ref_ms"] is None else f"{r['ref_ms']:.2f}",
         "-" if r["ratio"] is None else f"{r['ratio']:.1f}x",
         "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.1f}x",
         "-" if r.get("ratio_bound") is None else f"{r['ratio_bound']:.1f}x",
         "-" if r.get("x_grpo") is None else f"{r['x_grpo']:.1f}x (<= {r['x_grpo_goal']:g}x)",
         "-" if r.get("x_floor") is None else f"{r['x_floor']:.1f}x",
         "-" if r.get("x_grpo_hot") is None else f"{r['x_grpo_hot']:.1f}x")
        for r in result["results"]
    ]
    m = result["machine"]
    title = (f"credit_speed ({result['allocator']} allocator): B={B} T={T} groups of {GROUP_SIZE}; "
             f"torch {m['torch']}, {m['threads']} threads, {m['cpu_model']}")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        for line in (header, *lines):
            print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    else:
        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="right" if "ms" in h or "ratio" in h else "left")
        for line in lines:
            table.add_row(*line)
        Console(width=160).print(table)
    print(f"  bound: reference ms / {result['output_floor_ms']:.2f} ms, the cost of one fresh [B,T] float32 output "
          "(torch.zeros), which every advantage estimator must hand back: no implementation can exceed it")
    for key, value in result["building_blocks_ms"].items():
        print(f"  building block: {key}: {value['wall_ms']:.2f} ms wall, {value['cpu_ms']:.2f} ms cpu")
    for note in result["notes"]:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
