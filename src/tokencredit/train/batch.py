"""One batch type for an RL step: what the model needs (prompt tensors), what credit reads (`Rollouts`), each
row's example, and one micro-batch iterator that every pass over the batch uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from tokencredit.masked import last_index
from tokencredit.rollouts import Rollouts
from tokencredit.sampling.hf import Samples
from tokencredit.tasks import Example


@dataclass(frozen=True)
class Batch:
    """N responses: `prompt_ids`/`prompt_mask` `[N,P]` (left-padded), `rollouts` (responses right-padded to T,
    with `tokens`, rewards and every input the recipe needs), `examples[i]` (row i's prompt and verifier
    context), `texts[i]` (the decoded response), the training `signals` at collection (`progress`,
    `accuracy`), the RL `step`, and `metrics` that collecting it measured."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    rollouts: Rollouts
    examples: list[Example]
    texts: list[str]
    signals: dict[str, float] = field(default_factory=dict)
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, samples: Samples, reward: Tensor, group: Tensor, examples: list[Example], *,
                     budget: int, **rest: Any) -> Batch:
        """The batch of sampled responses `samples` with their rewards `[N]`, prompt ids `group [N]` and examples;
        `budget` is the generation budget (the sampler's `max_new_tokens`)."""
        device = samples.response_ids.device
        rollouts = Rollouts(
            group=group.to(device), mask=samples.response_mask, reward=reward.to(device),
            tokens=samples.response_ids, logprob=samples.logprob, entropy=samples.entropy,
            truncated=samples.truncated, budget=budget,
        )
        return cls(samples.prompt_ids, samples.prompt_mask, rollouts, examples, samples.texts, **rest)

    @property
    def size(self) -> int:
        return self.rollouts.batch_size

    def with_inputs(self, **inputs: Any) -> Batch:
        """A copy whose rollouts carry the given inputs (fields or extras, see `Rollouts.with_inputs`)."""
        return replace(self, rollouts=self.rollouts.with_inputs(**inputs))

    def select(self, rows: Tensor) -> Batch:
        index = rows.tolist()
        return replace(self, prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
                       rollouts=self.rollouts.select(rows), examples=[self.examples[i] for i in index],
                       texts=[self.texts[i] for i in index])

    def model_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """`(prompt_ids, prompt_mask, response_ids)`: what a forward pass over prompt + response takes."""
        return self.prompt_ids, self.prompt_mask, self.rollouts.tokens

    def micro_batches(self, rows: Tensor, size: int) -> Iterator[tuple[Tensor, Batch]]:
        """`(part, micro)` for each `size` rows of `rows`: `part` indexes `rows`, `micro` is those rows narrowed to
        their longest response (at least one column), so a forward pass never runs over trailing padding."""
        for part in torch.arange(len(rows), device=rows.device).split(size):
            micro = self.select(rows[part])
            width = max(int(last_index(micro.rollouts.mask).max()) + 1, 1) if len(part) else 1
            yield part, replace(micro, rollouts=micro.rollouts.narrow(width))

    @torch.no_grad()
    def per_token(self, fn: Callable[[Batch], Tensor], size: int) -> Tensor:
        """`fn(micro) -> [n, w]` over every row, `size` rows at a time: `[N,T]` float32, 0 past each micro-batch's
        width. A model's no-grad pass over the whole batch at once would hold `[N,T,V]` logits."""
        mask = self.rollouts.mask
        out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        rows = torch.arange(self.size, device=mask.device)
        for part, micro in self.micro_batches(rows, size):
            out[rows[part], : micro.rollouts.mask.shape[1]] = fn(micro).float()
        return out
