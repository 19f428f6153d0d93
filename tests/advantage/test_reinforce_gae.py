import torch

import tokencredit as tc
from helpers import rollouts
from tokencredit.advantage.gae import gae_advantage_and_return


def whiten(x, mask):
    v = x[mask]
    return torch.where(mask, (x - v.mean()) / torch.sqrt(v.var(unbiased=True) + 1e-8), torch.zeros_like(x))


def test_reinforce_pp_gamma_one_is_whitened_outcome():
    r = rollouts([1.0, 0.0, 2.0], [0, 0, 1], [2, 3, 1])
    returns = torch.tensor([[1.0, 1.0, 0], [0, 0, 0], [2.0, 0, 0]])
    torch.testing.assert_close(tc.get("advantage", "reinforce_pp")(r), whiten(returns, r.mask))


def test_reinforce_pp_discounts_return_to_go():
    r = rollouts([1.0], [0], [3])
    mask = r.mask
    adv = tc.get("advantage", "reinforce_pp")(r, gamma=0.5)
    torch.testing.assert_close(adv, whiten(torch.tensor([[0.25, 0.5, 1.0]]), mask))


def test_reinforce_pp_baseline_subtracts_group_mean_then_whitens():
    r = rollouts([1.0, 0.0, 1.0, 4.0], [0, 0, 0, 1], [1, 2, 1, 2])
    centred = torch.tensor([1 / 3, -2 / 3, 1 / 3, 0.0])[:, None] * r.mask
    torch.testing.assert_close(tc.get("advantage", "reinforce_pp_baseline")(r), whiten(centred, r.mask))


def test_gae_hand_computed():
    # one response of 3 tokens, reward 1 at the end, values V = [0.5, 0.2, 0.8], gamma=1, lam=0.5
    r = rollouts([1.0], [0], [3], width=4, value=torch.tensor([[0.5, 0.2, 0.8, 7.0]]))
    adv, ret = gae_advantage_and_return(r, gamma=1.0, lam=0.5)
    d = [0.2 - 0.5, 0.8 - 0.2, 1.0 - 0.8]  # δ_t = r_t + V_{t+1} − V_t, V after the last token is 0
    a2 = d[2]
    a1 = d[1] + 0.5 * a2
    a0 = d[0] + 0.5 * a1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.8, 0.0]]))
    torch.testing.assert_close(tc.get("advantage", "gae")(r, gamma=1.0, lam=0.5, whiten=False), adv)


def test_gae_lambda_one_zero_values_is_return():
    r = rollouts([2.0, -1.0], [0, 1], [3, 2], value=torch.zeros(2, 3))
    adv = tc.get("advantage", "gae")(r, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, 0.0]]))
