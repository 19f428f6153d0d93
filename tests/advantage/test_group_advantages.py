import math

import torch

import tokencredit as tc
from helpers import rollouts


def test_grpo_hand_computed():
    # group 7: rewards 1,0,0 -> mean 1/3, unbiased std sqrt(1/3); group 2: rewards 1,1 -> zero variance
    r = rollouts([1.0, 0.0, 1.0, 0.0, 1.0], [7, 7, 2, 7, 2], [2, 3, 1, 2, 3])
    adv = tc.get("advantage", "grpo")(r)
    std = math.sqrt(1 / 3)
    pos, neg = (1 - 1 / 3) / (std + 1e-6), (0 - 1 / 3) / (std + 1e-6)
    expected = torch.tensor([pos, neg, 0.0, neg, 0.0])
    torch.testing.assert_close(adv[:, 0], expected)
    assert torch.equal(adv != 0, r.mask & (expected != 0)[:, None])  # broadcast over real tokens only
    torch.testing.assert_close(adv[1, :3], expected[1].expand(3))


def test_dr_grpo_has_no_std():
    r = rollouts([3.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], [1, 1, 1, 1])
    torch.testing.assert_close(tc.get("advantage", "dr_grpo")(r)[:, 0], torch.tensor([2.0, -1.0, -1.0, 0.0]))


def test_rloo_leave_one_out():
    r = rollouts([3.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], [1, 2, 1, 1])
    adv = tc.get("advantage", "rloo")(r)[:, 0]
    # R_i - mean of the others
    torch.testing.assert_close(adv, torch.tensor([3 - 1 / 3, 0 - 4 / 3, 0 - 4 / 3, 1 - 1.0]))


def test_single_response_groups_and_equal_rewards_give_zero():
    r = rollouts([5.0, 1.0, 1.0], [0, 1, 1], [2, 2, 2])
    for name in ("grpo", "dr_grpo", "rloo"):
        assert torch.count_nonzero(tc.get("advantage", name)(r)) == 0


def test_rloo_and_grpo_agree_in_sign():
    torch.manual_seed(0)
    rew = torch.randint(0, 3, (40,)).float()
    group = torch.randint(0, 6, (40,))
    r = tc.Rollouts(group=group, mask=torch.ones(40, 3, dtype=torch.bool), reward=rew)
    a, b = tc.get("advantage", "grpo")(r), tc.get("advantage", "rloo")(r)
    assert torch.equal(torch.sign(a), torch.sign(b))


def test_per_token_rewards_are_summed_per_sequence():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    reward = torch.tensor([[0.5, 0.5, 9.0], [0.0, 0.0, 0.0]])  # 9.0 lies outside the mask
    r = tc.Rollouts(group=torch.tensor([0, 0]), mask=mask, reward=reward)
    torch.testing.assert_close(tc.get("advantage", "dr_grpo")(r)[:, 0], torch.tensor([0.5, -0.5]))
