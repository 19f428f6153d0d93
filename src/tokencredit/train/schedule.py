"""The optimizer and learning-rate schedule shared by the policy and any learned provider (a critic)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, groups: Sequence[dict] = ()
                   ) -> torch.optim.Optimizer:
    """AdamW on `model`'s parameters and any further parameter `groups` (trained modules beside the model, each
    with its own weight decay); every group follows one learning rate."""
    return torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": weight_decay}, *groups], lr=lr,
                             weight_decay=weight_decay, betas=(0.9, 0.99))


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
