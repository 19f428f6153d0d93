import random

import pytest
import torch

from tokencredit.models import create_tiny_model, load_model
from tokencredit.sampling import TransformersSampler
from tokencredit.sampling.continuation import TaskContinuations
from tokencredit.tasks import Example, Task


class Recorder(Task):
    name = "recorder"

    def __init__(self):
        self.seen = []

    def sample(self, rng: random.Random) -> Example:
        return Example(prompt="1+1=", answer="2")

    def score(self, response: str, example: Example) -> float:
        self.seen.append(response)
        return float(response.startswith("ab"))


def test_continuations_are_scored_as_prefix_plus_completion(tmp_path):
    create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    model, tok = load_model(tmp_path)
    torch.manual_seed(0)
    sampler = TransformersSampler(model, tok, max_new_tokens=4)
    task = Recorder()
    prefixes = [tok("ab", add_special_tokens=False)["input_ids"], [], tok("x", add_special_tokens=False)["input_ids"]]
    rewards = TaskContinuations(sampler, task, batch_size=4)([task.sample(random.Random())] * 3, prefixes, 3)
    assert rewards.shape == (3, 3)
    assert rewards[0].tolist() == [1.0, 1.0, 1.0] and rewards[2].tolist() == [0.0, 0.0, 0.0]
    assert len(task.seen) == 9 and all(s.startswith("x") for s in task.seen[6:])


def test_continuations_keep_the_response_budget(tmp_path):
    """prefix + continuation is never longer than the sampler's max_new_tokens; a full prefix is scored as is."""
    create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    model, tok = load_model(tmp_path)
    torch.manual_seed(0)
    sampler = TransformersSampler(model, tok, max_new_tokens=6)
    ids = tok("abcdef", add_special_tokens=False)["input_ids"]
    prefixes = [ids[:0], ids[:2], ids[:5], ids[:6]]
    out = sampler.continue_from(["1+1="] * 4, prefixes, 2, max_new_tokens=[6 - len(p) for p in prefixes])
    lengths = out.response_mask.sum(-1)
    budgets = torch.tensor([6, 6, 4, 4, 1, 1, 0, 0])
    assert (lengths <= budgets).all()
    cut = lengths == budgets  # a continuation that used its whole budget without EOS is truncated
    assert (out.truncated[cut] | (out.response_ids[cut, (budgets[cut] - 1).clamp(min=0)] == tok.eos_token_id)).all()
    assert out.texts[6] == out.texts[7] == "abcdef"
    assert (out.logprob[~out.response_mask] == 0).all()
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.sample(["1+1="], max_new_tokens=0)
    none = sampler.continue_from(["1+1="], [ids[:3]], 2, max_new_tokens=0)
    assert none.response_mask.sum() == 0 and none.truncated.all() and none.texts == ["abc", "abc"]

    task = Recorder()
    TaskContinuations(sampler, task)([task.sample(random.Random())] * 4, prefixes, 2)
    assert all(len(tok(s, add_special_tokens=False)["input_ids"]) <= 6 for s in task.seen)


def test_exclude_first_processor_masks_the_first_step_only():
    from tokencredit.sampling.hf import _ExcludeFirst

    scores = torch.zeros(3, 5)
    processor = _ExcludeFirst(torch.tensor([2, -1, 4]), start=7)
    first = processor(torch.zeros(3, 7, dtype=torch.long), scores)
    expected = torch.zeros(3, 5)
    expected[0, 2] = expected[2, 4] = float("-inf")
    assert torch.equal(first, expected) and torch.equal(scores, torch.zeros(3, 5))  # input left untouched
    assert torch.equal(processor(torch.zeros(3, 8, dtype=torch.long), scores), scores)  # a later step


def test_continuations_never_start_with_the_excluded_token(tmp_path):
    """Near-greedy sampling: every free continuation starts with the argmax token a; excluding a moves every
    continuation of that prefix off it (and nothing else), also with a nucleus that held only a."""
    create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    model, tok = load_model(tmp_path)
    torch.manual_seed(0)
    prefix = tok("1+", add_special_tokens=False)["input_ids"]
    sampler = TransformersSampler(model, tok, temperature=1e-3, max_new_tokens=3)
    free = sampler.continue_from(["2+2="] * 2, [prefix, prefix], 8).response_ids[:, 0]
    a = int(free[0])
    assert (free == a).all()
    first = sampler.continue_from(["2+2="] * 2, [prefix, prefix], 8, exclude_first=[a, None]).response_ids[:, 0]
    assert (first[:8] != a).all() and (first[8:] == a).all()  # prompt-major rows: the exclusion is per prefix
    nucleus = TransformersSampler(model, tok, top_p=1e-3, max_new_tokens=3)  # top-p after the mask: no empty set
    assert (nucleus.continue_from(["2+2="], [prefix], 8, exclude_first=[a]).response_ids[:, 0] != a).all()
    with pytest.raises(ValueError, match="exclude_first: expected one token id"):
        sampler.continue_from(["2+2="], [prefix], 2, exclude_first=[a, a])
    with pytest.raises(ValueError, match=r"exclude_first: expected token ids in \[0, "):
        sampler.continue_from(["2+2="], [prefix], 2, exclude_first=[10_000])


def test_task_continuations_pass_the_excluded_first_token_on(tmp_path):
    create_tiny_model(tmp_path, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    model, tok = load_model(tmp_path)
    torch.manual_seed(0)
    sampler = TransformersSampler(model, tok, temperature=1e-3, max_new_tokens=4)
    task = Recorder()
    example = task.sample(random.Random())
    prefix = tok("a", add_special_tokens=False)["input_ids"]
    TaskContinuations(sampler, task)([example], [prefix], 4)
    a = task.seen[0][1]  # the near-greedy first character after "a"
    task.seen.clear()
    b = tok(a, add_special_tokens=False)["input_ids"][0]
    rewards = TaskContinuations(sampler, task, batch_size=2)([example] * 2, [prefix, []], 2, exclude_first=[b, None])
    assert rewards.shape == (2, 2) and len(task.seen) == 4
    assert all(s.startswith("a") and s[1:2] != a for s in task.seen[:2])
    with pytest.raises(ValueError, match=r"exclude_first: prefixes \[0\] leave no token"):
        TaskContinuations(sampler, task)([example], [prefix * 4], 2, exclude_first=[b])
    with pytest.raises(ValueError, match=r"exclude_first: expected one per prefix \(1\), got 2"):
        TaskContinuations(sampler, task)([example], [prefix], 2, exclude_first=[b, b])
