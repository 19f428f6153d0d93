"""The continuation-sampler contract: given response prefixes, sample k continuations and score them.

Monte-Carlo credit (SPO segment values, critical-token search, PPPO continuation rewards) needs one thing from
a generation backend: the rewards of k completions of a prefix. `ContinuationScorer` is that contract; any
callable with this signature works (a vLLM backend, a stub in a test). `TaskContinuations` implements it
with the trainer's `TransformersSampler` and a task's verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from tokencredit.rewards import safe_score
from tokencredit.sampling.hf import TransformersSampler
from tokencredit.tasks import Example, Task


class ContinuationScorer(Protocol):
    def __call__(self, examples: Sequence[Example], prefixes: Sequence[Sequence[int]], k: int) -> Tensor:
        """Rewards `[N, k]` float32 of k sampled completions of each response prefix.

        `examples[i]` is the prompt and verifier context of prefix i; `prefixes[i]` are the response token ids
        already generated (possibly empty: the prompt state). Each completion is scored as the whole response
        `prefix + continuation`."""
        ...


class TaskContinuations:
    """`ContinuationScorer` backed by a `TransformersSampler` and a `Task` verifier. Prefixes are processed in
    chunks of `batch_size` rows (prefix × k) to bound memory.

    A continuation gets the budget its response had: the sampler's `max_new_tokens` minus the prefix length,
    so prefix + continuation is never longer than a sampled response can be (a prefix that already fills the
    budget is scored as it is)."""

    def __init__(self, sampler: TransformersSampler, task: Task, batch_size: int = 512) -> None:
        self.sampler, self.task, self.batch_size = sampler, task, batch_size

    def __call__(self, examples: Sequence[Example], prefixes: Sequence[Sequence[int]], k: int) -> Tensor:
        if len(examples) != len(prefixes):
            raise ValueError(f"prefixes: expected one per example ({len(examples)}), got {len(prefixes)}")
        out = torch.zeros(len(prefixes), k)
        per_chunk = max(1, self.batch_size // k)
        for start in range(0, len(prefixes), per_chunk):
            ex = list(examples[start : start + per_chunk])
            chunk = list(prefixes[start : start + per_chunk])
            budget = [self.sampler.max_new_tokens - len(p) for p in chunk]
            samples = self.sampler.continue_from([e.prompt for e in ex], chunk, k, max_new_tokens=budget)
            rewards, _ = safe_score(self.task, samples.texts, [e for e in ex for _ in range(k)])
            out[start : start + len(ex)] = rewards.view(len(ex), k)
        return out
