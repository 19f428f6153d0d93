import random

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
