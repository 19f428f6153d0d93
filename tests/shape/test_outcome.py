import torch

import tokencredit as tc
from helpers import rollouts


def test_outcome_places_reward_on_last_real_token():
    r = rollouts([1.0, -2.0, 3.0], [0, 0, 1], [2, 0, 3], width=4)
    expected = torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0]])
    torch.testing.assert_close(tc.get("shape", "outcome")(r), expected)


def test_per_token_rewards_pass_through_masked():
    mask = torch.tensor([[True, True, False]])
    r = tc.Rollouts(group=torch.tensor([0]), mask=mask, reward=torch.tensor([[0.5, 0.25, 9.0]]))
    torch.testing.assert_close(tc.get("shape", "outcome")(r), torch.tensor([[0.5, 0.25, 0.0]]))
