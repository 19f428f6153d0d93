"""Held-out evaluation: greedy accuracy and pass@k."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import torch

from tokencredit.rewards import safe_score
from tokencredit.sampling.base import Sampler
from tokencredit.tasks import Example, Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: `1 − C(n−c, k)/C(n, k)` (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(
    sampler: Sampler,
    task: Task,
    examples: Sequence[Example],
    *,
    pass_k: int,
    pass_k_size: int | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """`accuracy`: greedy accuracy on every example; `pass@k`: k samples per prompt at the sampler's temperature
    on the first `pass_k_size` examples (all by default)."""
    correct = []
    hits = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        greedy = sampler.sample([e.prompt for e in chunk], greedy=True)
        correct.append(safe_score(task, greedy.texts, chunk)[0])
        if pass_k > 1 and start < (pass_k_size or len(examples)):
            chunk = chunk[: (pass_k_size or len(examples)) - start]
            prompts = [e.prompt for e in chunk for _ in range(pass_k)]
            sampled = sampler.sample(prompts)
            expanded = [e for e in chunk for _ in range(pass_k)]
            rewards = safe_score(task, sampled.texts, expanded)[0].view(len(chunk), pass_k)
            hits.append((rewards > 0.5).sum(-1))
    accuracy = torch.cat(correct).gt(0.5).float().mean().item()
    metrics = {"accuracy": accuracy}
    if hits:
        counts = torch.cat(hits).tolist()
        metrics[f"pass@{pass_k}"] = sum(pass_at_k(pass_k, c, pass_k) for c in counts) / len(counts)
    return metrics
