import torch

from tokencredit.models import build_char_tokenizer, create_tiny_model, load_model
from tokencredit.sampling import Samples, TransformersSampler
from tokencredit.sampling.hf import policy_logprob
from tokencredit.sampling.segment_tree import sample_segment_tree


def tiny_sampler(tmp_path, max_new_tokens):
    create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    model, tok = load_model(tmp_path)
    return TransformersSampler(model, tok, max_new_tokens=max_new_tokens)


def test_leaves_share_their_ancestors_segments_and_log_probs_match_the_policy(tmp_path):
    sampler = tiny_sampler(tmp_path, max_new_tokens=8)
    torch.manual_seed(0)
    samples, prompt = sample_segment_tree(sampler, ["1+2=", "3+4+5="], branching=[3, 2], segment_tokens=3)
    assert prompt.tolist() == sorted(prompt.tolist()) and set(prompt.tolist()) == {0, 1}
    assert all(int((prompt == p).sum()) <= 6 for p in (0, 1))
    assert int(samples.response_mask.sum(-1).max()) <= 8
    for p in (0, 1):  # at most 3 distinct first segments per prompt, each shared by at most 2 leaves
        heads = [tuple(row[:3].tolist()) for row in samples.response_ids[prompt == p]]
        assert len(set(heads)) <= 3 and max(heads.count(h) for h in heads) <= 2
    logprob, _ = policy_logprob(sampler.model, samples.prompt_ids, samples.prompt_mask, samples.response_ids)
    mask = samples.response_mask
    torch.testing.assert_close(logprob * mask, samples.logprob * mask, atol=1e-4, rtol=1e-4)


class ScriptedSampler:
    """Continuation i of a node is token 10 + i repeated; continuation 0 of the first level ends with EOS."""

    max_new_tokens, pad_id, eos = 6, 0, 2

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def encode_prompts(self, prompts):
        return torch.ones(len(prompts), 1, dtype=torch.long), torch.ones(len(prompts), 1, dtype=torch.bool)

    def continue_from(self, prompts, prefixes, k, max_new_tokens=None):
        self.calls.append(([list(p) for p in prefixes], k, max_new_tokens))
        rows, ended = [], []
        for prefix in prefixes:
            for i in range(k):
                end = not prefix and i == 0
                rows.append([10 + i] * (max_new_tokens - 1) + ([self.eos] if end else [10 + i]))
                ended.append(end)
        ids = torch.tensor(rows)
        n = len(rows)
        return Samples(prompt_ids=torch.ones(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.bool),
                       response_ids=ids, response_mask=torch.ones_like(ids, dtype=torch.bool),
                       logprob=-ids.float(), entropy=ids.float(), truncated=~torch.tensor(ended), texts=[""] * n)


def test_ended_segments_are_leaves_and_the_last_level_gets_the_remaining_budget():
    sampler = ScriptedSampler(build_char_tokenizer())
    samples, prompt = sample_segment_tree(sampler, ["p"], branching=[2, 3], segment_tokens=2)
    # level 0: two segments of 2 tokens, the first ends with EOS; level 1: three children of the open one (4 left)
    assert [c[1:] for c in sampler.calls] == [(2, 2), (3, 4)]
    assert sampler.calls[1][0] == [[11, 11]]
    assert prompt.tolist() == [0] * 4
    assert samples.response_ids[0, :2].tolist() == [10, 2] and samples.response_mask.sum(-1).tolist() == [2, 6, 6, 6]
    assert samples.response_ids[1].tolist() == [11, 11, 10, 10, 10, 10]
    assert samples.logprob[3].tolist() == [-11.0, -11.0, -12.0, -12.0, -12.0, -12.0]
    assert samples.truncated.tolist() == [False, True, True, True]
