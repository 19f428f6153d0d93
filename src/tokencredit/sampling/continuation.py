"""The continuation-sampler contract: given response prefixes, sample k continuations and score them.

Monte-Carlo credit (SPO segment values, critical-token search, PPPO continuation rewards) needs one thing from
a generation backend: the rewards of k completions of a prefix. `ContinuationScorer` is that contract; any
callable with this signature works (a stub in a test). `TaskContinuations` implements it with the trainer's
sampler (`TransformersSampler` or `VLLMSampler`) and a task's verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from tokencredit.rewards import safe_score
from tokencredit.sampling.base import Sampler
from tokencredit.tasks import Example, Task


class ContinuationScorer(Protocol):
    def __call__(self, examples: Sequence[Example], prefixes: Sequence[Sequence[int]], k: int) -> Tensor:
        """Rewards `[N, k]` float32 of k sampled completions of each response prefix.

        `examples[i]` is the prompt and verifier context of prefix i; `prefixes[i]` are the response token ids
        already generated (possibly empty: the prompt state). Each completion is scored as the whole response
        `prefix + continuation`.

        Optional extension: a scorer may also accept a keyword `exclude_first: Sequence[int | None] | None`,
        one token id (or None) per prefix that the *first* token of that prefix's completions must differ from
        (the counterfactual check of the critical-token search: resample at a token). Callers pass it only
        when they need it, so a scorer without it still serves every other use; `TaskContinuations` has it."""
        ...


class TaskContinuations:
    """`ContinuationScorer` backed by a sampler (`TransformersSampler`, `VLLMSampler`) and a `Task` verifier.
    Prefixes are processed in chunks of `batch_size` rows (prefix × k) to bound memory.

    A continuation gets the budget its response had: the sampler's `max_new_tokens` minus the prefix length,
    so prefix + continuation is never longer than a sampled response can be (a prefix that already fills the
    budget is scored as it is). `exclude_first` is passed on to the sampler's `continue_from`; a prefix
    with an excluded first token needs at least one token of budget left."""

    def __init__(self, sampler: Sampler, task: Task, batch_size: int = 512) -> None:
        self.sampler, self.task, self.batch_size = sampler, task, batch_size

    def __call__(self, examples: Sequence[Example], prefixes: Sequence[Sequence[int]], k: int,
                 exclude_first: Sequence[int | None] | None = None) -> Tensor:
        if len(examples) != len(prefixes):
            raise ValueError(f"prefixes: expected one per example ({len(examples)}), got {len(prefixes)}")
        if exclude_first is not None:
            if len(exclude_first) != len(prefixes):
                raise ValueError(f"exclude_first: expected one per prefix ({len(prefixes)}), got {len(exclude_first)}")
            full = [i for i, (p, t) in enumerate(zip(prefixes, exclude_first))
                    if t is not None and len(p) >= self.sampler.max_new_tokens]
            if full:
                raise ValueError(f"exclude_first: prefixes {full} leave no token of the sampler's budget "
                                 f"({self.sampler.max_new_tokens}) for a replacement first token")
        out = torch.zeros(len(prefixes), k)
        per_chunk = max(1, self.batch_size // k)
        for start in range(0, len(prefixes), per_chunk):
            ex = list(examples[start : start + per_chunk])
            chunk = list(prefixes[start : start + per_chunk])
            budget = [self.sampler.max_new_tokens - len(p) for p in chunk]
            extra = {} if exclude_first is None else {"exclude_first": list(exclude_first[start : start + per_chunk])}
            samples = self.sampler.continue_from([e.prompt for e in ex], chunk, k, max_new_tokens=budget, **extra)
            rewards, _ = safe_score(self.task, samples.texts, [e for e in ex for _ in range(k)])
            out[start : start + len(ex)] = rewards.view(len(ex), k)
        return out
