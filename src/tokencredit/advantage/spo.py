"""SPO-chain: segment advantages from Monte-Carlo values at low-probability cut points.

Source: "Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large Language
Models" (Guo et al., NeurIPS 2025), chain variant (card `specs/rlvr.md` §8, from the authors' code).

    cut points   positions c with π_old(o_c) < τ (τ = 0.9), every k-th of them (k = `interval`, the first one
                 kept), at most `max_cuts` per response; the state of a cut is the prefix *before* o_c
    values       V(c) = mean reward of N completions sampled from that prefix (`spo_chain_values`);
                 the terminal value is the response's own reward
    advantage    a token in the segment [c_j, c_{j+1}) gets V(c_{j+1}) − V(c_j); tokens before the first cut
                 get 0 unless the first cut is position 0 (the prompt state)
    prob mask    tokens with π_old(o_t) ≥ τ get 0 (only "decision" tokens are trained)

The values come from extra generation, so they are computed outside the pure advantage function: the trainer
(or any caller) fills `Rollouts.value` with `spo_chain_values(...)` (V at the cut positions, 0 elsewhere) and
the `spo_chain` advantage reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tokencredit.registry import register
from tokencredit.rollouts import Rollouts

if TYPE_CHECKING:  # generation backends stay out of `import tokencredit`
    from tokencredit.sampling.continuation import ContinuationScorer
    from tokencredit.tasks import Example


def spo_cutpoints(rollouts: Rollouts, threshold: float = 0.9, interval: int = 5, max_cuts: int = 25) -> Tensor:
    """Cut positions `[B,T]` bool: low-probability tokens (`exp(logprob) < threshold`), every `interval`-th one
    starting with the first, at most `max_cuts` per response."""
    if rollouts.logprob is None:
        raise ValueError("Rollouts.logprob: SPO cut points need behaviour log-probs [B,T]; got None")
    if interval < 1 or max_cuts < 1:
        raise ValueError(f"interval, max_cuts: expected >= 1, got {interval}, {max_cuts}")
    candidate = rollouts.mask & (rollouts.logprob.exp() < threshold)
    rank = candidate.long().cumsum(-1) - 1
    return candidate & (rank % interval == 0) & (rank // interval < max_cuts)


def spo_chain_values(
    scorer: ContinuationScorer,
    examples: Sequence[Example],
    rollouts: Rollouts,
    mc_samples: int = 9,
    threshold: float = 0.9,
    interval: int = 5,
    max_cuts: int = 25,
) -> Rollouts:
    """`rollouts` with `value` holding V(c) = mean reward of `mc_samples` completions of the prefix before each
    cut point (0 elsewhere). `examples[i]` is response i's prompt. One batched call to `scorer`."""
    if rollouts.tokens is None:
        raise ValueError("Rollouts.tokens: SPO values need the response token ids [B,T]; got None")
    cuts = spo_cutpoints(rollouts, threshold, interval, max_cuts)
    rows, cols = cuts.nonzero(as_tuple=True)
    tokens = rollouts.tokens.tolist()
    prefixes = [tokens[r][:c] for r, c in zip(rows.tolist(), cols.tolist())]
    value = torch.zeros(rollouts.mask.shape, dtype=torch.float32, device=rollouts.mask.device)
    if prefixes:
        rewards = scorer([examples[r] for r in rows.tolist()], prefixes, mc_samples)
        value[rows, cols] = rewards.mean(-1).to(value.device)
    return replace(rollouts, value=value)


@register("advantage", "spo_chain")
def spo_chain(
    rollouts: Rollouts,
    threshold: float = 0.9,
    interval: int = 5,
    max_cuts: int = 25,
    mc_samples: int = 9,
    prob_mask: bool = True,
) -> Tensor:
    """SPO-chain segment advantages `A_t = V(next boundary) − V(segment start)`, reading the cut values from
    `rollouts.value` (fill them with `spo_chain_values`; `mc_samples` is the N it uses). Terminal value =
    the response's reward. `prob_mask=False` keeps high-probability tokens."""
    if rollouts.value is None:
        raise ValueError("Rollouts.value: advantage 'spo_chain' needs Monte-Carlo values at the cut points "
                         "(fill them with tokencredit.advantage.spo.spo_chain_values); got None")
    mask = rollouts.mask
    b, t = mask.shape
    cuts = spo_cutpoints(rollouts, threshold, interval, max_cuts)
    pos = torch.arange(t, device=mask.device).expand(b, t)
    # segment start: the last cut at or before t (−1: none); next boundary: the first cut after t (t: the end)
    start = torch.where(cuts, pos, -1).cummax(-1).values
    nxt = torch.where(cuts, pos, t).flip(-1).cummin(-1).values.flip(-1)
    nxt = torch.nn.functional.pad(nxt[:, 1:], (0, 1), value=t)
    value = torch.cat([rollouts.value.float() * cuts, rollouts.sequence_reward()[:, None]], dim=1)  # [B,T+1]
    advantage = value.gather(1, nxt) - value.gather(1, start.clamp(min=0))
    advantage = torch.where((start >= 0) & mask, advantage, 0.0)
    if prob_mask:
        advantage = torch.where(rollouts.logprob.exp() < threshold, advantage, 0.0)
    return advantage
