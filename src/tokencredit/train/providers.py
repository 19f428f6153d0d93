"""Providers: how the reference trainer (and `inspect`) supply what a recipe needs (`tokencredit.needs`).

One provider per kind of need, looked up by `(kind, name)`; a method that needs something new registers a provider
beside itself and no trainer code changes:

    kind      name                 provider                                 called
    prompts   uniform (default)    `next(n) -> list[Example]`               before each step
    rollout   independent (def.)   `sample(examples, request) -> (Samples, group)`   to sample a batch
              segment_tree
    input     ref_logprob,         `provide(batch) -> [N,T,...]`            for each needed input the sampler lacks
              logprob, entropy
    values    monte_carlo, critic  `provide(batch, request) -> Batch`       after the inputs (fills `value`)
    policy    entropy              function `(logp [n,w,V], tokens) -> [n,w]` in every training forward pass
    pair_input   ref_logprob, ...  function `(ctx, PairBatch) -> {Pairs field: tensor}`   pairs mode (train/pairs.py)
    pair_policy  kl                function `(ctx, PairBatch, side, logits) -> [B,T]`  pairs mode, forward pass
    pair_module  token_masks       function `(ctx, Request) -> nn.Module`   pairs mode, once per run (the loss's
                                   trained modules, `Needs.modules`)

The transformers sampler records `tokens`, `logprob`, `entropy`, `truncated` and `budget`; the vLLM sampler records no
`entropy` (and no `logprob` with top_p < 1), which the `entropy` and `logprob` input providers then supply from a
no-grad pass of the policy, when the recipe needs them (`tokencredit.sampling.base`). A provider class takes a
`RunContext`; `learn(batch, rows, step)` (after each policy optimizer step) and `save(folder)` (into each
checkpoint; restore from `ctx.resume` when built) are optional hooks for providers that hold trained state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokencredit.needs import Needs, Request
from tokencredit.recipes import Recipe
from tokencredit.rewards import safe_score
from tokencredit.sampling.base import Sampler
from tokencredit.sampling.hf import Samples, entropy, gathered, response_logits, tempered_logprobs
from tokencredit.sampling.segment_tree import sample_segment_tree
from tokencredit.tasks import Example, Task
from tokencredit.train.batch import Batch
from tokencredit.train.config import TrainConfig

KINDS = ("prompts", "rollout", "input", "values", "policy", "pair_input", "pair_policy", "pair_module")
_PROVIDERS: dict[tuple[str, str], Any] = {}


def register_provider(kind: str, name: str) -> Callable:
    """Decorator registering a provider class (a function, for kind `policy`) for need `name` of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")

    def decorate(provider):
        _PROVIDERS[(kind, name)] = provider
        return provider

    return decorate


def provider(kind: str, name: str) -> Any:
    """The provider registered for need `name` of `kind`; a clear error when the reference trainer has none."""
    if (kind, name) not in _PROVIDERS:
        known = sorted(n for k, n in _PROVIDERS if k == kind)
        raise ValueError(f"{kind} {name!r}: the reference trainer has no provider for it (it has {known}); register "
                         f"one with tokencredit.train.register_provider({kind!r}, {name!r})")
    return _PROVIDERS[(kind, name)]


def unregister_provider(kind: str, name: str) -> None:
    _PROVIDERS.pop((kind, name), None)


@dataclass
class RunContext:
    """What providers may use. `start`: the policy RL starts from (a reference model, a new critic); `resume`: a
    checkpoint to restore provider state from; `learn=False` (inspect): providers use saved state only, never
    train and never start one afresh; `recipe`: the run's recipe (None when several are inspected)."""

    cfg: TrainConfig
    model: torch.nn.Module
    sampler: Sampler
    task: Task
    rng: random.Random
    start: Path
    resume: Path | None = None
    learn: bool = True
    recipe: Recipe | None = None


class Provider:
    """Base of the provider classes: keeps the context; the learning and checkpoint hooks do nothing."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def learn(self, batch: Batch, rows: Tensor, step: int) -> dict[str, float]:
        return {}

    def save(self, folder: Path) -> None:
        return None


class Providers:
    """The providers that `needs` call for, built once per run; `collect` assembles one batch."""

    def __init__(self, ctx: RunContext, needs: Needs) -> None:
        self.ctx = ctx
        self.prompts = provider("prompts", needs.prompts.name)(ctx)
        self.rollout = provider("rollout", needs.rollout.name)(ctx)
        self.values = provider("values", needs.values.name)(ctx) if needs.values is not None else None
        policy_quantities(needs)  # an unknown current-policy quantity is an error now, not at the first update
        self.inputs: dict[str, Provider] = {}  # built when first needed: the sampler may record an input itself

    def _all(self) -> list[Provider]:
        return [self.prompts, self.rollout, *self.inputs.values(), *([self.values] if self.values else [])]

    def collect(self, examples: list[Example], needs: Needs, *, step: int = 0,
                signals: dict[str, float] | None = None) -> Batch:
        """Sample responses to `examples` as `needs.rollout` asks, score them with the task's verifier, and add
        every input and the values `needs` names: the batch a recipe's `credit` can read."""
        started = time.time()
        samples, group = self.rollout.sample(examples, needs.rollout)
        seconds = time.time() - started
        expanded = [examples[i] for i in group.tolist()]
        reward, failures = safe_score(self.ctx.task, samples.texts, expanded, timeout_s=self.ctx.cfg.verifier_timeout)
        metrics = {"sample_seconds": seconds, "verifier_exceptions": failures.get("exception", 0),
                   "verifier_timeouts": failures.get("timeout", 0)}
        batch = Batch.from_samples(samples, reward, group, expanded, budget=self.ctx.sampler.max_new_tokens,
                                   signals=dict(signals or {}), step=step, metrics=metrics)
        for name in sorted(needs.inputs):
            if batch.rollouts.input(name) is None:
                if name not in self.inputs:
                    self.inputs[name] = provider("input", name)(self.ctx)
                batch = batch.with_inputs(**{name: self.inputs[name].provide(batch)})
        if needs.values is not None:
            batch = self.values.provide(batch, needs.values)
        return batch

    def learn(self, batch: Batch, rows: Tensor, step: int) -> dict[str, float]:
        """Every provider's update on minibatch `rows` (after the policy's optimizer step on it)."""
        return {k: v for p in self._all() for k, v in p.learn(batch, rows, step).items()}

    def save(self, folder: Path) -> None:
        for p in self._all():
            p.save(folder)


def policy_quantities(needs: Needs) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """The functions that compute the current-policy quantities `needs.policy` names."""
    return {name: provider("policy", name) for name in sorted(needs.policy)}


def policy_forward(model: torch.nn.Module, micro: Batch, temperature: float,
                   quantities: dict[str, Callable[[Tensor, Tensor], Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
    """The current policy's log-probs `[n,w]` of `micro`'s responses (with grad) and the `quantities` a recipe
    needs (e.g. entropy), from one forward pass."""
    tokens = micro.rollouts.tokens
    logp = tempered_logprobs(response_logits(model, micro.prompt_ids, micro.prompt_mask, tokens), temperature)
    return gathered(logp, tokens), {name: fn(logp, tokens) for name, fn in quantities.items()}


# ---------------------------------------------------------------------------------------------- built-ins


@register_provider("prompts", "uniform")
class UniformPrompts(Provider):
    """The task's prompt stream: each step draws `n` examples with the run's RNG (restored on resume)."""

    def next(self, n: int) -> list[Example]:
        return [self.ctx.task.sample(self.ctx.rng) for _ in range(n)]


@register_provider("rollout", "independent")
class IndependentSamples(Provider):
    """`rl.group_size` independent responses per prompt, prompt-major; the group of a row is its prompt's index."""

    def sample(self, examples: list[Example], request: Request) -> tuple[Samples, Tensor]:
        g = self.ctx.cfg.rl.group_size
        samples = self.ctx.sampler.sample([e.prompt for e in examples for _ in range(g)])
        return samples, torch.arange(len(examples)).repeat_interleave(g)


@register_provider("rollout", "segment_tree")
class SegmentTreeSamples(Provider):
    """One sampled tree of segments per prompt (`sample_segment_tree`); every leaf is a row, its group the prompt."""

    def sample(self, examples: list[Example], request: Request) -> tuple[Samples, Tensor]:
        return sample_segment_tree(self.ctx.sampler, [e.prompt for e in examples], **request.params)


@register_provider("input", "ref_logprob")
class ReferenceLogprob(Provider):
    """Log-probs of the sampled tokens under the reference policy: the policy RL started from, frozen."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        from tokencredit.models import load_model

        self.model = load_model(ctx.start, device=ctx.cfg.device)[0].requires_grad_(False)

    def provide(self, batch: Batch) -> Tensor:
        temperature = self.ctx.cfg.rl.temperature
        logprob = batch.per_token(lambda micro: policy_forward(self.model, micro, temperature, {})[0],
                                  self.ctx.cfg.rl.micro_batch_size)
        return logprob * batch.rollouts.mask


class _SamplingPolicyPass(Provider):
    """An input of the sampling distribution that the sampler did not record (the vLLM sampler: entropies; with
    top_p < 1, log-probs), from a no-grad pass of the policy in eval mode at the sampling temperature. The policy
    is the sampling policy here: collection runs before any update of the step, and a sampler with its own copy of
    the weights (vLLM) loads them before it samples (`Sampler.sync_weights`). One forward pass per input."""

    def quantity(self, logp: Tensor, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def provide(self, batch: Batch) -> Tensor:
        model, temperature = self.ctx.model, self.ctx.cfg.rl.temperature
        was_training = model.training
        model.eval()
        quantity = {"q": self.quantity}
        try:
            value = batch.per_token(lambda micro: policy_forward(model, micro, temperature, quantity)[1]["q"],
                                    self.ctx.cfg.rl.micro_batch_size)
        finally:
            model.train(was_training)
        return value * batch.rollouts.mask


@register_provider("input", "logprob")
class SamplingLogprob(_SamplingPolicyPass):
    """Behaviour log-probs `[N,T]` (full tempered distribution) when the sampler did not record them."""

    def quantity(self, logp: Tensor, tokens: Tensor) -> Tensor:
        return gathered(logp, tokens)


@register_provider("input", "entropy")
class SamplingEntropy(_SamplingPolicyPass):
    """Entropies `[N,T]` of the tempered sampling distribution when the sampler did not record them (vLLM)."""

    def quantity(self, logp: Tensor, tokens: Tensor) -> Tensor:
        return entropy(logp)


@register_provider("policy", "entropy")
def current_entropy(logp: Tensor, tokens: Tensor) -> Tensor:
    """The current policy's token entropy `[n,w]` (for an entropy bonus or an objective that reads it)."""
    return entropy(logp)
