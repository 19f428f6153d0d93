import math

import pytest
import torch

import tokencredit as tc
from tokencredit.objective import policy_loss

MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
ADV = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])


def test_ppo_gradient_at_ratio_one_is_minus_advantage_times_grad_logprob():
    old = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.3, 0.6, 0.9]]))
    logprob = old.clone().requires_grad_(True)
    loss, stats = policy_loss("ppo_clip", logprob, old, ADV, MASK)
    loss.backward()
    # token_mean over 5 tokens: dL/dlogπ = −A / 5 on real tokens
    torch.testing.assert_close(logprob.grad, -ADV * MASK / 5)
    torch.testing.assert_close(loss, torch.tensor(-(3 * 1.0 - 2 * 2.0) / 5))
    assert stats["clip_frac"] == 0 and stats["ratio_max_dev"] == 0


def test_ppo_clip_and_clip_higher_hand_computed():
    old = torch.zeros(1, 4)
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, stats = policy_loss("ppo_clip", ratio.log(), old, adv, mask, clip_low=0.2, clip_high=0.28)
    # per token: max(−A r, −A clip(r, 0.8, 1.28))
    expected = [max(-1.5, -1.28), max(-0.5, -0.8), max(1.5, 1.28), max(0.5, 0.8)]
    torch.testing.assert_close(loss, torch.tensor(sum(expected) / 4))
    # tokens 1 (A>0, r<0.8) and 3 (A<0, r<0.8) take the clipped branch
    assert math.isclose(stats["clip_frac"].item(), 0.5)
    assert math.isclose(stats["clip_frac_high"].item(), 0.25)


def test_dual_clip_caps_negative_advantage_loss():
    old = torch.zeros(1, 2)
    logprob = torch.log(torch.tensor([[10.0, 10.0]])).requires_grad_(True)
    adv = torch.tensor([[-1.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = policy_loss("ppo_clip", logprob, old, adv, mask, dual_clip=3.0)
    # token 0: max(10, 1.2) = 10 capped to 3; token 1: max(−10, −1.2) = −1.2
    torch.testing.assert_close(loss, torch.tensor((3.0 - 1.2) / 2))
    loss.backward()
    assert torch.all(logprob.grad == 0)  # both tokens are on constant branches
    assert stats["dual_clip_frac"] == 0.5


def test_negative_only_ignores_positive_advantages():
    old = torch.zeros(2, 3)
    logprob = old.clone().requires_grad_(True)
    loss, _ = policy_loss("negative_only", logprob, old, ADV, MASK)
    loss.backward()
    torch.testing.assert_close(logprob.grad, torch.tensor([[0.0, 0, 0], [2 / 5, 2 / 5, 0]]))


def test_gspo_uses_sequence_geometric_mean_ratio():
    old = torch.zeros(2, 3)
    logprob = torch.tensor([[0.1, -0.1, 0.3], [0.2, 0.0, 5.0]])
    loss, _ = policy_loss("gspo", logprob, old, ADV, MASK, agg="seq_mean_token_mean", clip_low=0.5,
                          clip_high=0.5)
    s0 = math.exp((0.1 - 0.1 + 0.3) / 3)
    s1 = math.exp(0.2 / 2)  # the padded 5.0 is ignored
    expected = (max(-s0, -min(s0, 1.5)) + 2 * min(s1, 1.5)) / 2  # seq_mean_token_mean
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_gspo_gradient_matches_finite_differences():
    torch.manual_seed(0)
    old = torch.randn(2, 3, dtype=torch.float64) * 0.01
    lp = (old + torch.randn(2, 3, dtype=torch.float64) * 0.01).requires_grad_(True)
    adv = ADV.double()

    def f(x):
        return policy_loss("gspo", x, old, adv, MASK, agg="seq_mean_token_mean", clip_low=10.0, clip_high=10.0)[0]

    # inside the clip range the sg construction must give the true gradient of the sequence objective
    def seq_objective(x):
        s = torch.exp(((x - old) * MASK).sum(-1) / MASK.sum(-1))
        return (-adv[:, 0] * s).mean()

    g = torch.autograd.grad(f(lp), lp)[0]
    g_true = torch.autograd.grad(seq_objective(lp), lp)[0]
    torch.testing.assert_close(g * MASK, g_true * MASK)
    assert torch.autograd.gradcheck(seq_objective, (lp,))


def test_cispo_keeps_gradient_of_clipped_tokens():
    old = torch.zeros(1, 2)
    logprob = torch.log(torch.tensor([[2.0, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = policy_loss("cispo", logprob, old, adv, mask, clip_high=0.28)
    loss.backward()
    # gradient −sg(clip(r)) A / N: token 0 weight clipped to 1.28, token 1 weight 0.5 (no lower bound)
    torch.testing.assert_close(logprob.grad, torch.tensor([[-1.28 / 2, 0.5 / 2]]))
    assert stats["clip_frac"] == 0.5


def test_weight_multiplies_loss_not_normaliser():
    old = torch.zeros(2, 3)
    weight = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logprob = old.clone().requires_grad_(True)
    loss, _ = policy_loss("ppo_clip", logprob, old, ADV, MASK, weight=weight)
    loss.backward()
    torch.testing.assert_close(logprob.grad, -ADV * weight / 5)


def test_objectives_return_the_per_token_loss_zero_outside_the_mask():
    old = torch.zeros(2, 3)
    logprob = torch.full((2, 3), 0.1)
    for name in tc.names("objective"):
        per_token, _ = tc.get("objective", name)(logprob, old, ADV, MASK)
        assert per_token.shape == MASK.shape and (per_token[~MASK] == 0).all(), name
    per_token, _ = tc.get("objective", "ppo_clip")(logprob, old, ADV, MASK)
    ratio = math.exp(0.1)
    expected = torch.tensor([[-min(ratio, 1.2)] * 3, [2 * ratio] * 2 + [0.0]])  # max(−A r, −A clip(r))
    torch.testing.assert_close(per_token, expected)


def test_negative_clip_range_is_an_error_naming_the_field():
    old = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="clip_low, clip_high"):
        tc.get("objective", "ppo_clip")(old, old, ADV, MASK, clip_low=-0.1)
    with pytest.raises(ValueError, match="dual_clip"):
        tc.get("objective", "ppo_clip")(old, old, ADV, MASK, dual_clip=0.5)


@pytest.mark.parametrize("name", tc.names("objective"))
@pytest.mark.parametrize("junk", [math.nan, math.inf, -math.inf])
def test_junk_in_padding_stays_out_of_the_loss_and_its_gradient(name, junk):
    """Padding may hold anything (an engine's fill value, NaN included): the loss, the stats and the gradient stay
    finite, and no gradient reaches a padded token."""
    mask = torch.tensor([[True, True, False], [False, False, False]])  # a ragged row and a fully masked one
    adv = torch.tensor([[1.0, -0.5, 0.0], [0.0, 0.0, 0.0]])
    for current_junk, old_junk in ((True, False), (False, True), (True, True)):
        logprob = torch.tensor([[-0.5, -1.0, 0.0], [0.0, 0.0, 0.0]])
        old = torch.tensor([[-0.7, -0.9, 0.0], [0.0, 0.0, 0.0]])
        if current_junk:
            logprob = logprob.masked_fill(~mask, junk)
        if old_junk:
            old = old.masked_fill(~mask, junk)
        logprob.requires_grad_(True)
        loss, stats = policy_loss(name, logprob, old, adv, mask)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in stats.values()), (name, loss, stats)
        assert torch.isfinite(logprob.grad).all() and (logprob.grad[~mask] == 0).all(), (name, logprob.grad)
