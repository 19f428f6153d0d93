import math
import re

import pytest
import torch

import tokencredit as tc
from helpers import hand_pairs
from tokencredit.needs import Needs
from tokencredit.preference import implicit_token_reward
from tokencredit.registry import needs_of

BETA = 0.5
# chosen Δ = [[1, 0.5], [0.5]], rejected Δ = [[-1], [-0.5, 1]] (helpers.hand_pairs)
R_CHOSEN = [[0.4, -0.2, 9.0], [1.0, 9.0, 9.0]]
R_REJECTED = [[0.3, 9.0], [-0.5, 2.0]]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _pairs(chosen=R_CHOSEN, rejected=R_REJECTED):
    return hand_pairs(chosen_token_reward=torch.tensor(chosen), rejected_token_reward=torch.tensor(rejected))


def test_tgdpo_by_hand():
    p, lc, lr = _pairs()
    loss, stats = tc.get("preference", "tgdpo")(p, lc, lr, beta=BETA, alpha=0.5)
    # f_w = 1 + α r̂, f_l = 1 − α r̂
    z0 = BETA * ((1.2 * 1 + 0.9 * 0.5) - (0.85 * -1))
    z1 = BETA * ((1.5 * 0.5) - (1.25 * -0.5 + 0.0 * 1))  # f_l = 1 − 0.5·2 = 0 on the last token
    assert loss.item() == pytest.approx((softplus(-z0) + softplus(-z1)) / 2, rel=1e-6)
    loss.backward()
    assert lr.grad[1, 1].item() == 0.0  # weight 0
    assert lc.grad[0, 0].item() == pytest.approx(-BETA * 1.2 / (1 + math.exp(z0)) / 2, rel=1e-6)
    assert stats["negative_weight"].item() == 0.0
    # α = 3: f_l = 1 − 3·2 < 0 on pair 1's last rejected token (not clipped, reported)
    p, lc, lr = _pairs()
    _, stats = tc.get("preference", "tgdpo")(p, lc, lr, alpha=3.0)
    # pair 0: f_w = 1 − 0.6 ≥ 0 … f_l = 1 − 0.9 → none; pair 1: f_w = 4, f_l = 2.5, −5 → 1 of 3 tokens
    assert stats["negative_weight"].item() == pytest.approx((0 + 1 / 3) / 2)


def test_degenerate_cases_give_dpo():
    tgdpo, dpo = tc.get("preference", "tgdpo"), tc.get("preference", "dpo")
    p, lc, lr = _pairs()
    reference = dpo(p, lc, lr, beta=BETA)[0]
    torch.testing.assert_close(tgdpo(p, lc, lr, beta=BETA, alpha=0.0)[0], reference)  # α = 0
    # π̂ = π_ref: the guidance reward is 0 everywhere
    zero_c = implicit_token_reward(p.chosen_ref_logprob, p.chosen_ref_logprob, p.chosen_mask, beta=BETA)
    zero_r = implicit_token_reward(p.rejected_ref_logprob, p.rejected_ref_logprob, p.rejected_mask, beta=BETA)
    guided = p.with_inputs(chosen_token_reward=zero_c, rejected_token_reward=zero_r)
    torch.testing.assert_close(tgdpo(guided, lc, lr, beta=BETA)[0], reference)
    # r̂ ≡ c on y_w and ≡ −c on y_l: f ≡ 1 + αc on both, i.e. DPO with β(1 + αc)
    constant, lc, lr = _pairs([[0.4] * 3] * 2, [[-0.4] * 2] * 2)
    torch.testing.assert_close(tgdpo(constant, lc, lr, beta=BETA, alpha=0.5)[0],
                               dpo(constant, lc, lr, beta=BETA * 1.2)[0])


def test_needs_and_errors():
    assert needs_of("preference", "tgdpo") == Needs(inputs={"ref_logprob", "token_reward"})
    p, lc, lr = hand_pairs(chosen_token_reward=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=re.escape("Pairs.rejected_token_reward: preference 'tgdpo' needs per-token "
                                                   "rewards of the responses [B,T_r]")):
        tc.get("preference", "tgdpo")(p, lc, lr)
    p, lc, lr = _pairs()
    for bad in (float("inf"), "0.5", None):
        with pytest.raises(ValueError, match="alpha"):
            tc.get("preference", "tgdpo")(p, lc, lr, alpha=bad)
