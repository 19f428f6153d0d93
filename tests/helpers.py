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
