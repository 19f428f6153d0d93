"""Small builders shared by the tests."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from hypothesis import strategies as st

from tokencredit import Rollouts
from tokencredit.registry import register, unregister


def lengths_mask(lengths: list[int], width: int | None = None) -> torch.Tensor:
    width = max(lengths, default=0) if width is None else width
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def rollouts(rewards, groups, lengths, width=None, **fields) -> Rollouts:
    mask = lengths_mask(lengths, width)
    return Rollouts(
        group=torch.tensor(groups), mask=mask, reward=torch.as_tensor(rewards, dtype=torch.float32), **fields
    )


@st.composite
def prefix_sharing_sequences(draw, max_rows: int = 10, vocab: int = 3, max_len: int = 6) -> list[list[int]]:
    """Token rows that often share prefixes (and are sometimes identical or empty): each row copies a random
    earlier row's prefix and diverges, or is drawn fresh."""
    n = draw(st.integers(1, max_rows))
    seqs: list[list[int]] = []
    for _ in range(n):
        if seqs and draw(st.booleans()):
            src = draw(st.sampled_from(seqs))
            cut = draw(st.integers(0, len(src)))
            seqs.append(src[:cut] + draw(st.lists(st.integers(0, vocab), max_size=3)))
        else:
            seqs.append(draw(st.lists(st.integers(0, vocab), max_size=max_len)))
    return seqs


@contextmanager
def registered(stage: str, name: str, fn, needs=None):
    """`fn` registered as `name` in `stage` for the duration of the block (other tests never see it)."""
    register(stage, name, needs=needs)(fn)
    try:
        yield fn
    finally:
        unregister(stage, name)


def pairs(chosen_lengths, rejected_lengths, chosen_width=None, rejected_width=None, **fields):
    """A `Pairs` with right-padded masks of the given lengths and any other fields."""
    from tokencredit import Pairs

    return Pairs(chosen_mask=lengths_mask(chosen_lengths, chosen_width),
                 rejected_mask=lengths_mask(rejected_lengths, rejected_width), **fields)


# Two hand-made pairs for the preference tests (garbage at the padding: 99 and NaN-free but absurd values).
# Pair 0: chosen Δ = [1, 0.5] (sum 1.5), rejected Δ = [-1] (sum -1). Pair 1: chosen Δ = [0.5], rejected Δ = [-0.5, 1].
HAND_CHOSEN_LOGPROB = [[-1.0, -2.0, 99.0], [-0.5, 99.0, 99.0]]
HAND_CHOSEN_REF = [[-2.0, -2.5, -7.0], [-1.0, 5.0, 5.0]]
HAND_REJECTED_LOGPROB = [[-3.0, 99.0], [-1.0, -1.0]]
HAND_REJECTED_REF = [[-2.0, -9.0], [-0.5, -2.0]]
HAND_CHOSEN_DELTA = [[1.0, 0.5], [0.5]]
HAND_REJECTED_DELTA = [[-1.0], [-0.5, 1.0]]


def hand_pairs(dtype=torch.float32, **fields):
    """`(pairs, chosen_logprob, rejected_logprob)` of the two hand-made pairs (chosen lengths 2, 1 in width 3;
    rejected lengths 1, 2 in width 2); the log-probs are leaves that require grad."""
    p = pairs([2, 1], [1, 2], 3, 2, chosen_ref_logprob=torch.tensor(HAND_CHOSEN_REF, dtype=dtype),
              rejected_ref_logprob=torch.tensor(HAND_REJECTED_REF, dtype=dtype), **fields)
    chosen = torch.tensor(HAND_CHOSEN_LOGPROB, dtype=dtype, requires_grad=True)
    rejected = torch.tensor(HAND_REJECTED_LOGPROB, dtype=dtype, requires_grad=True)
    return p, chosen, rejected


TINY_MODEL = {"hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
TIMING_KEYS = {"sampled_tokens_per_s", "trained_tokens_per_s", "pairs_per_s"}


def tiny_train_config(out, *extra):
    """A training config sized for tests (seconds): the tiny model, few steps, small batches, no progress bars."""
    from tokencredit.train import load_config

    return load_config(None, [
        f"out={out}", "sft.steps=4", "sft.batch_size=8", "rl.steps=4", "rl.prompts_per_step=2", "rl.group_size=4",
        "rl.max_new_tokens=12", "rl.minibatch_size=4", "rl.micro_batch_size=2", "eval.size=6", "eval.every=2",
        "eval.pass_k=2", "checkpoint_every=2", "log.progress=false", "log.tensorboard=false",
        *[f"model.tiny.{k}={v}" for k, v in TINY_MODEL.items()], *extra,
    ])


def metric_records(path):
    """The records of a run's metrics.jsonl without the timing fields (which differ between two runs)."""
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
