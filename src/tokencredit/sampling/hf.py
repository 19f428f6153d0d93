"""Sampling with `transformers` `generate` (KV cache, left-padded prompts), recording what RL needs.

The behaviour log-probs are those of the distribution the trainer recomputes: `log_softmax(logits / T)` of
the raw logits, the same function (`token_logprob_entropy`) on both sides, so the first-epoch PPO ratio is 1
up to float error. `top_k` is disabled (transformers' default of 50 would silently truncate the sampling
distribution); with `top_p < 1` tokens are drawn from the nucleus but log-probs stay those of the full
tempered distribution (verl's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase


def tempered_logprobs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """`log_softmax(logits / T)` `[N,T,V]` in float32: the distribution the sampler draws from."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def gathered(logp: Tensor, tokens: Tensor) -> Tensor:
    """Log-probs `[N,T]` of `tokens [N,T]` under the log-distributions `logp [N,T,V]`."""
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logp: Tensor) -> Tensor:
    """Entropy `[N,T]` of the log-distributions `logp [N,T,V]`."""
    return -(logp.exp() * logp).sum(-1)


def token_logprob_entropy(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Log-prob of `tokens [N,T]` and entropy of the tempered distribution, from `logits [N,T,V]`, in float32."""
    logp = tempered_logprobs(logits, temperature)
    return gathered(logp, tokens), entropy(logp)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Token rows left-padded with `pad_id` to one width: `(ids [N,W] long, mask [N,W] bool)` on `device`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = True
    return ids.to(device), mask.to(device)


def sample_limit(max_new_tokens: int | None, default: int) -> int:
    """A `sample` call's token limit: `max_new_tokens`, or the sampler's `default` for None; < 1 is an error (a
    sampled response has at least one token)."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected >= 1 (or None for the sampler's {default}), got {max_new_tokens}")
    return default if max_new_tokens is None else max_new_tokens


class _ExcludeFirst(LogitsProcessor):
    """Sets `scores[row, banned[row]] = −inf` at the first generated step, the one whose input is `start` wide
    (the padded prompt + prefix); rows with `banned = −1` are untouched."""

    def __init__(self, banned: Tensor, start: int) -> None:
        self.banned, self.start = banned, start

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] != self.start:
            return scores
        rows = (self.banned >= 0).nonzero().squeeze(-1)
        return scores.index_put((rows, self.banned[rows]), torch.tensor(float("-inf"), device=scores.device))


@dataclass
class Samples:
    """N sampled responses. Prompts are left-padded `[N,P]`, responses right-padded `[N,T]`; `response_mask`
    covers the response tokens up to and including EOS. `logprob`: the sampled tokens' log-probs under the full
    tempered distribution; `entropy`: that distribution's entropy; either is None when the sampler does not
    compute it (`tokencredit.sampling.base` says when)."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprob: Tensor | None
    entropy: Tensor | None
    truncated: Tensor
    texts: list[str]


class TransformersSampler:
    """Batched sampling from a causal LM with `generate`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0 (use greedy=True for argmax), got {temperature}")
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id

    def sync_weights(self) -> None:
        """Nothing to do: this sampler generates with the training model itself."""

    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
        device = self.model.device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()

    @torch.no_grad()
    def sample(self, prompts: list[str], *, greedy: bool = False, max_new_tokens: int | None = None) -> Samples:
        """One response per prompt (repeat a prompt G times for a group), of at most `max_new_tokens` tokens
        (default: the sampler's)."""
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        return self._generate(prompt_ids, prompt_mask, greedy, sample_limit(max_new_tokens, self.max_new_tokens))

    @torch.no_grad()
    def continue_from(self, prompts: list[str], prefixes: list[list[int]], k: int,
                      max_new_tokens: int | Sequence[int] | None = None,
                      exclude_first: Sequence[int | None] | None = None) -> Samples:
        """k continuations of each response prefix (token ids after the prompt), `N·k` rows, prompt-major,
        of at most `max_new_tokens` tokens: one limit for all (default: the sampler's) or one per prefix.

        Per-prefix limits are applied by sampling up to the largest and cutting each continuation at its own
        limit (a continuation cut before its EOS is `truncated`), which draws from the same distribution as
        stopping each row at its limit. The returned `response_*` tensors hold the continuation only; `texts`
        hold prefix + continuation, the whole response a verifier scores.

        `exclude_first[i]` (a token id, or None for no constraint) is a token the first token of prefix i's
        continuations must differ from: its logit is set to −inf at the first step, before temperature and
        top-p, so the first token is drawn from the tempered distribution renormalised without it. The
        returned `logprob`/`entropy` stay those of the unconstrained distribution."""
        if isinstance(max_new_tokens, int) and max_new_tokens <= 0:
            max_new_tokens = [0] * len(prefixes)  # nothing to sample: every continuation is empty
        if max_new_tokens is None or isinstance(max_new_tokens, int):
            limits = None
        else:
            if len(max_new_tokens) != len(prefixes):
                raise ValueError(f"max_new_tokens: expected one limit per prefix ({len(prefixes)}), "
                                 f"got {len(max_new_tokens)}")
            limits = torch.tensor(list(max_new_tokens), device=self.model.device).clamp(min=0).repeat_interleave(k)
            max_new_tokens = max(int(limits.max()), 1) if len(limits) else 1
        if exclude_first is not None:
            if len(exclude_first) != len(prefixes):
                raise ValueError(f"exclude_first: expected one token id (or None) per prefix ({len(prefixes)}), "
                                 f"got {len(exclude_first)}")
            vocab = self.model.config.get_text_config().vocab_size
            if any(t is not None and not 0 <= t < vocab for t in exclude_first):
                raise ValueError(f"exclude_first: expected token ids in [0, {vocab}) or None, "
                                 f"got {list(exclude_first)}")
        encoded = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        rows = [list(p) + list(x) for p, x in zip(encoded, prefixes) for _ in range(k)]
        ids, mask = left_pad(rows, self.pad_id, self.model.device)
        processors = None
        if exclude_first is not None:
            banned = torch.tensor([-1 if t is None else t for t in exclude_first], dtype=torch.long)
            banned = banned.repeat_interleave(k)
            processors = LogitsProcessorList([_ExcludeFirst(banned.to(self.model.device), start=ids.shape[1])])
        out = self._generate(ids, mask, greedy=False, max_new_tokens=max_new_tokens, limits=limits,
                             logits_processor=processors)
        heads = self.tokenizer.batch_decode([list(x) for x in prefixes for _ in range(k)], skip_special_tokens=True)
        out.texts = [h + t for h, t in zip(heads, out.texts)]
        return out

    def _generate(self, prompt_ids: Tensor, prompt_mask: Tensor, greedy: bool, max_new_tokens: int | None,
                  limits: Tensor | None = None, logits_processor: LogitsProcessorList | None = None) -> Samples:
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask.long(),
            do_sample=not greedy,
            temperature=None if greedy else self.temperature,
            top_p=None if greedy else self.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
            logits_processor=logits_processor,
        )
        self.model.train(was_training)
        response_ids = out.sequences[:, prompt_ids.shape[1]:]
        logits = torch.stack(out.logits, dim=1)
        temperature = 1.0 if greedy else self.temperature
        return self._package(prompt_ids, prompt_mask, response_ids, logits, temperature, limits)

    def _package(self, prompt_ids, prompt_mask, response_ids, logits, temperature, limits=None) -> Samples:
        is_eos = response_ids == self.eos_id
        if limits is not None:  # tokens past a row's limit were never sampled, as far as the caller knows
            within = torch.arange(response_ids.shape[1], device=response_ids.device) < limits[:, None]
            is_eos &= within
        # a response ends at its first EOS (included); everything after it is padding
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        response_mask = ~after_eos if limits is None else ~after_eos & within
        truncated = ~is_eos.any(-1)
        logprob, entropy = token_logprob_entropy(logits, response_ids, temperature)
        response_ids = response_ids.masked_fill(~response_mask, self.pad_id)
        texts = self.tokenizer.batch_decode(
            response_ids.masked_fill(is_eos, self.pad_id), skip_special_tokens=True
        )
        return Samples(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
            response_mask=response_mask, logprob=logprob * response_mask, entropy=entropy * response_mask,
            truncated=truncated, texts=texts,
        )


def prompt_response_inputs(prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor) -> dict[str, Tensor]:
    """`input_ids`, `attention_mask` and `position_ids` `[N,P+T]` of left-padded prompts followed by responses.

    Position ids follow `generate`'s rule (`cumsum(attention) − 1`, pads clamped to 0), so a forward pass over
    these inputs sees the same positions as at sampling. The hidden state at position `P − 1 + t` is the
    one that predicts response token t (the last prompt position for t = 0).
    """
    attention = torch.cat([prompt_mask, torch.ones_like(response_ids, dtype=torch.bool)], dim=1).long()
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids}


def response_logits(model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor) -> Tensor:
    """The logits `[N,T,V]` that predict each response token, in one forward pass (with grad if enabled).

    Inputs and position ids come from `prompt_response_inputs` (`generate`'s rule), so they describe the same
    distribution as at sampling."""
    t = response_ids.shape[1]
    # logits only at the positions that predict response tokens (the last T+1, minus the final one)
    logits = model(**prompt_response_inputs(prompt_ids, prompt_mask, response_ids), logits_to_keep=t + 1).logits
    return logits[:, :-1]


def policy_logprob(
    model: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Recompute the policy's log-probs and entropies of `response_ids` in one forward pass (with grad)."""
    return token_logprob_entropy(response_logits(model, prompt_ids, prompt_mask, response_ids), response_ids,
                                 temperature)
