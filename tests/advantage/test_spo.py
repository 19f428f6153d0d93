import math

import pytest
import torch

import tokencredit as tc
from tokencredit.advantage.spo import spo_chain_values, spo_cutpoints
from tokencredit.tasks import Example

P = torch.tensor([[0.5, 0.95, 0.3, 0.99, 0.2, 0.0], [0.95, 0.5, 0.95, 0.95, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)


def batch(value=None, reward=(1.0, 0.0)):
    return tc.Rollouts(group=torch.tensor([0, 0]), mask=MASK, reward=torch.tensor(reward),
                       logprob=P.clamp(min=1e-6).log() * MASK, tokens=torch.arange(12).view(2, 6), value=value)


def test_cutpoints_every_kth_low_probability_token():
    r = batch()
    assert spo_cutpoints(r, interval=1).nonzero().tolist() == [[0, 0], [0, 2], [0, 4], [1, 1]]
    assert spo_cutpoints(r, interval=2).nonzero().tolist() == [[0, 0], [0, 4], [1, 1]]
    assert spo_cutpoints(r, interval=1, max_cuts=1).nonzero().tolist() == [[0, 0], [1, 1]]


def test_segment_advantages_hand_computed():
    value = torch.zeros(2, 6)
    value[0, 0], value[0, 2], value[0, 4] = 0.5, 0.25, 0.75  # V at the cuts of row 0
    value[1, 1] = 0.5
    adv = tc.get("advantage", "spo_chain")(batch(value), interval=1)
    # row 0: segments [0,2) → V(2)−V(0), [2,4) → V(4)−V(2), [4,end) → R−V(4); prob mask zeroes p ≥ 0.9
    expected0 = [0.25 - 0.5, 0.0, 0.75 - 0.25, 0.0, 1.0 - 0.75, 0.0]
    # row 1: before the first cut → 0; [1,end) → R − V(1), masked where p ≥ 0.9
    expected1 = [0.0, 0.0 - 0.5, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor([expected0, expected1]))
    unmasked = tc.get("advantage", "spo_chain")(batch(value), interval=1, prob_mask=False)
    assert unmasked[0, 1] == -0.25 and unmasked[1, 2] == -0.5 and unmasked[1, 0] == 0


def test_no_cuts_gives_zero_and_missing_values_are_an_error():
    r = batch(torch.zeros(2, 6))
    assert torch.count_nonzero(tc.get("advantage", "spo_chain")(r, threshold=0.01)) == 0
    with pytest.raises(ValueError, match=r"Rollouts\.value"):
        tc.get("advantage", "spo_chain")(batch())


def test_values_come_from_the_continuation_scorer_contract():
    calls = []

    def scorer(examples, prefixes, k):
        calls.append((list(prefixes), k))
        return torch.tensor([[len(p) / 10] * k for p in prefixes])

    ex = [Example(prompt="a", answer="1"), Example(prompt="b", answer="2")]
    r = spo_chain_values(scorer, ex, batch(), mc_samples=3, interval=1)
    assert calls == [([[], [0, 1], [0, 1, 2, 3], [6]], 3)]  # the prefix *before* each cut token
    assert r.value[0, 2] == 0.2 and r.value[1, 1] == 0.1 and r.value[0, 1] == 0
    assert math.isclose(r.value[0, 4].item(), 0.4, rel_tol=1e-6)
