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
