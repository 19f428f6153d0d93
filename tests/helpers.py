"""Small builders shared by the tests."""

from __future__ import annotations

import torch

from tokencredit import Rollouts


def lengths_mask(lengths: list[int], width: int | None = None) -> torch.Tensor:
    width = max(lengths, default=0) if width is None else width
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def rollouts(rewards, groups, lengths, width=None, **fields) -> Rollouts:
    mask = lengths_mask(lengths, width)
    return Rollouts(
        group=torch.tensor(groups), mask=mask, reward=torch.tensor(rewards, dtype=torch.float32), **fields
    )
