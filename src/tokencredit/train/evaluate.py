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
    verifier_timeout: float = 2.0,
) -> dict[str, float]:
    """`accuracy`: greedy accuracy on every example; `pass@k`: k samples per prompt at the sampler's temperature
    on the first `pass_k_size` examples (all by default); `verifier_exceptions` and `verifier_timeouts`: the
    responses (greedy and sampled) whose verifier raised or ran past `verifier_timeout` seconds (scored 0), as
    in RL steps."""
    correct = []
    hits = []
    failed = {"exception": 0, "timeout": 0}

    def score(texts: list[str], chunk: list[Example]) -> torch.Tensor:
        rewards, failures = safe_score(task, texts, chunk, timeout_s=verifier_timeout)
        for key in failed:
            failed[key] += failures.get(key, 0)
        return rewards

    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        greedy = sampler.sample([e.prompt for e in chunk], greedy=True)
        correct.append(score(greedy.texts, chunk))
        if pass_k > 1 and start < (pass_k_size or len(examples)):
            chunk = chunk[: (pass_k_size or len(examples)) - start]
            prompts = [e.prompt for e in chunk for _ in range(pass_k)]
            sampled = sampler.sample(prompts)
            expanded = [e for e in chunk for _ in range(pass_k)]
            rewards = score(sampled.texts, expanded).view(len(chunk), pass_k)
            hits.append((rewards > 0.5).sum(-1))
    accuracy = torch.cat(correct).gt(0.5).float().mean().item() if correct else 0.0
    metrics = {"accuracy": accuracy}
    if hits:
        counts = torch.cat(hits).tolist()
        metrics[f"pass@{pass_k}"] = sum(pass_at_k(pass_k, c, pass_k) for c in counts) / len(counts)
    metrics["verifier_exceptions"] = failed["exception"]
    metrics["verifier_timeouts"] = failed["timeout"]
    return metrics
