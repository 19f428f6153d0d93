"""Monte-Carlo values: V(s) = the mean reward of k continuations sampled from state s.

The value source `monte_carlo` (SPO-chain's cut-point values; any method that asks for it): the request's
`at(rollouts) -> [B,T] bool` marks the tokens whose preceding state needs a value, `samples` is k. State
`(i, c)` is response i's prefix before token c (c = 0: the prompt alone); its value lands in
`Rollouts.value[i, c]`, 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tokencredit.needs import Request
from tokencredit.rollouts import Rollouts
from tokencredit.sampling.continuation import ContinuationScorer, TaskContinuations
from tokencredit.tasks import Example
from tokencredit.train.batch import Batch
from tokencredit.train.providers import Provider, RunContext, register_provider


def monte_carlo_values(
    scorer: ContinuationScorer,
    examples: Sequence[Example],
    rollouts: Rollouts,
    at: Callable[[Rollouts], Tensor],
    samples: int,
) -> Tensor:
    """`[B,T]` float32: at each position `at(rollouts)` marks, the mean reward of `samples` completions of the
    prefix before it (`examples[i]` is response i's prompt); 0 elsewhere. One batched call to `scorer`."""
    if rollouts.tokens is None:
        raise ValueError("Rollouts.tokens: Monte-Carlo values need the response token ids [B,T]; got None")
    rows, cols = at(rollouts).nonzero(as_tuple=True)
    tokens = rollouts.tokens.tolist()
    prefixes = [tokens[r][:c] for r, c in zip(rows.tolist(), cols.tolist())]
    value = torch.zeros(rollouts.mask.shape, dtype=torch.float32, device=rollouts.mask.device)
    if prefixes:
        rewards = scorer([examples[r] for r in rows.tolist()], prefixes, samples)
        value[rows, cols] = rewards.mean(-1).to(value.device)
    return value


@register_provider("values", "monte_carlo")
class MonteCarloValues(Provider):
    """Values from continuations sampled with the run's sampler and scored by its task's verifier (each
    continuation gets the budget its prefix left, see `TaskContinuations`)."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.scorer = TaskContinuations(ctx.sampler, ctx.task)

    def provide(self, batch: Batch, request: Request) -> Batch:
        value = monte_carlo_values(self.scorer, batch.examples, batch.rollouts, request.params["at"],
                                   request.params["samples"])
        return batch.with_inputs(value=value)
