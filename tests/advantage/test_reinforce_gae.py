from dataclasses import replace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokencredit as tc
from helpers import rollouts
from tokencredit.advantage.gae import gae_advantage_and_return
from tokencredit.masked import masked_whiten
from tokencredit.shape.outcome import outcome


@st.composite
def holey_rollouts(draw, max_rows: int = 6, max_len: int = 9) -> tc.Rollouts:
    """Masks with holes, empty rows and leading gaps; small integer rewards (exact sums in float32)."""
    # widths past one discount chunk (32), whole and not, reach the padded path of the chunked cumsum
    b, t = draw(st.integers(1, max_rows)), draw(st.one_of(st.integers(0, max_len), st.sampled_from([33, 64, 65])))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=gen) < draw(st.sampled_from([0.3, 0.7, 1.0]))
    reward = torch.randint(0, 3, (b,), generator=gen).float()
    group = torch.randint(0, 2, (b,), generator=gen)
    return tc.Rollouts(group=group, mask=mask, reward=reward, value=torch.randn(b, t, generator=gen))


def gae_loop(r: tc.Rollouts, gamma: float, lam: float) -> torch.Tensor:
    """GAE by a loop over tokens, as verl writes it (`compute_gae_advantage_return`), on the outcome-shaped
    rewards: a masked-out token (a hole: context between response tokens) neither updates the next value nor
    the running advantage, so V(s_{t+1}) is the next response token's value and the discount counts response
    tokens only."""
    value, token_reward, mask = r.value, outcome(r), r.mask
    advantage = torch.zeros_like(value)
    next_value, running = torch.zeros(value.shape[0]), torch.zeros(value.shape[0])
    for t in reversed(range(value.shape[1])):
        delta = token_reward[:, t] + gamma * next_value - value[:, t]
        next_value = torch.where(mask[:, t], value[:, t], next_value)
        running = torch.where(mask[:, t], delta + gamma * lam * running, running)
        advantage[:, t] = running
    return torch.where(mask, advantage, 0.0)


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


def test_gae_skips_mask_holes_as_verl_does():
    # tokens 0 and 2 are the response's, token 1 a hole (e.g. tool output) whose value is never read
    r = tc.Rollouts(group=torch.zeros(1, dtype=torch.long), mask=torch.tensor([[True, False, True]]),
                    reward=torch.ones(1), value=torch.tensor([[0.5, 0.6, 0.7]]))
    adv, ret = gae_advantage_and_return(r, gamma=0.9, lam=0.8)
    d0, d2 = 0.9 * 0.7 - 0.5, 1.0 - 0.7  # δ_0 = γ·V(next response token) − V_0; δ_2 = R − V_2
    torch.testing.assert_close(adv, torch.tensor([[d0 + 0.9 * 0.8 * d2, 0.0, d2]]))
    torch.testing.assert_close(ret, torch.tensor([[d0 + 0.72 * d2 + 0.5, 0.0, d2 + 0.7]]))


def test_gae_lambda_one_zero_values_is_return():
    r = rollouts([2.0, -1.0], [0, 1], [3, 2], value=torch.zeros(2, 3))
    adv = tc.get("advantage", "gae")(r, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, 0.0]]))


@settings(max_examples=60, deadline=None)
@given(r=holey_rollouts(), gamma=st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_reinforce_pp_sequence_reward_is_the_outcome_token_reward(r, gamma):
    """The closed forms for a [B] reward (γ^{L−t}·R; statistics from [B] at γ = 1) equal the cumsum path on the
    outcome-shaped token rewards, for masks with holes too."""
    fn = tc.get("advantage", "reinforce_pp")
    expected = fn(replace(r, reward=outcome(r)), gamma=gamma)
    torch.testing.assert_close(fn(r, gamma=gamma), expected, rtol=1e-4, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(r=holey_rollouts(), gamma=st.sampled_from([0.5, 1.0]), lam=st.sampled_from([0.0, 0.95, 1.0]))
def test_gae_matches_a_loop_over_tokens_with_mask_holes(r, gamma, lam):
    expected = gae_loop(r, gamma, lam)
    advantage, returns = gae_advantage_and_return(r, gamma, lam)
    torch.testing.assert_close(advantage, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, torch.where(r.mask, expected + r.value, 0.0), rtol=1e-5, atol=1e-5)
    whitened = tc.get("advantage", "gae")(r, gamma=gamma, lam=lam)
    torch.testing.assert_close(whitened, masked_whiten(expected, r.mask), rtol=1e-4, atol=1e-4)
