import math
import re

import pytest
import torch

import tokencredit as tc
from helpers import hand_pairs
from tokencredit.needs import Needs
from tokencredit.preference import ContrastivePromptRewards, CriticalTokenRewards, contrastive_prompt_reward
from tokencredit.registry import needs_of

BETA, ALPHA = 0.5, 0.5
Z = [1.25, 0.0]  # the DPO logits of helpers.hand_pairs at β = 0.5
R_CHOSEN = [[0.4, -0.2, 9.0], [0.3, 9.0, 9.0]]
R_REJECTED = [[-0.5, 9.0], [0.1, -0.3]]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _pairs(chosen=R_CHOSEN, rejected=R_REJECTED, dtype=torch.float32):
    return hand_pairs(dtype, chosen_token_reward=torch.tensor(chosen, dtype=dtype),
                      rejected_token_reward=torch.tensor(rejected, dtype=dtype))


def test_t_reg_by_hand():
    p, lc, lr = _pairs()
    loss, stats = tc.get("preference", "t_reg")(p, lc, lr, beta=BETA, alpha=ALPHA)
    # R(y) = −β Σ r̂_t log π_θ(y^t); log-probs: chosen [[-1, -2], [-0.5]], rejected [[-3], [-1, -1]]
    reg = [-BETA * (0.4 * -1 + -0.2 * -2) - BETA * (-0.5 * -3), -BETA * (0.3 * -0.5) - BETA * (0.1 * -1 + -0.3 * -1)]
    assert reg == pytest.approx([-0.75, -0.025])
    w = [sigmoid(-z) for z in Z]
    expected = sum(softplus(-z) + ALPHA * wi * r for z, wi, r in zip(Z, w, reg)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["regulariser"].item() == pytest.approx(sum(reg) / 2)
    assert stats["balance"].item() == pytest.approx(sum(w) / 2)
    loss.backward()
    # w is a constant: dℓ_0/dlog π(y_w^0) = −β σ(−z_0) + α w_0 (−β r̂), over N = 2
    assert lc.grad[0, 0].item() == pytest.approx((-BETA * w[0] + ALPHA * w[0] * -BETA * 0.4) / 2, rel=1e-6)
    assert lr.grad[1, 1].item() == pytest.approx((BETA * w[1] + ALPHA * w[1] * -BETA * -0.3) / 2, rel=1e-6)
    assert lc.grad[0, 2].item() == 0.0
    # the token mean instead of the sum
    p, lc, lr = _pairs()
    loss, _ = tc.get("preference", "t_reg")(p, lc, lr, beta=BETA, alpha=ALPHA, reg_reduction="mean")
    reg = [-BETA * (0.4 * -1 + -0.2 * -2) / 2 - BETA * (-0.5 * -3), -BETA * (0.3 * -0.5) - BETA * (0.2) / 2]
    assert loss.item() == pytest.approx(sum(softplus(-z) + ALPHA * wi * r for z, wi, r in zip(Z, w, reg)) / 2)


def test_degenerate_cases():
    t_reg, dpo = tc.get("preference", "t_reg"), tc.get("preference", "dpo")
    p, lc, lr = _pairs()
    reference = dpo(p, lc, lr, beta=BETA)[0]
    torch.testing.assert_close(t_reg(p, lc, lr, beta=BETA, alpha=0.0)[0], reference)  # α = 0
    zero, lc, lr = _pairs([[0.0] * 3] * 2, [[0.0] * 2] * 2)
    torch.testing.assert_close(t_reg(zero, lc, lr, beta=BETA, alpha=ALPHA)[0], reference)  # r̂ ≡ 0
    # r̂ ≡ c > 0 on y_w only, static weighting: DPO + α c β · NLL(y_w) (the paper's "DPO + SFT" ablation)
    sft, lc, lr = _pairs([[0.3] * 3] * 2, [[0.0] * 2] * 2)
    loss, _ = t_reg(sft, lc, lr, beta=BETA, alpha=ALPHA, weighting="static")
    nll = torch.tensor([3.0, 0.5])  # −Σ log π(y_w^t) per pair
    torch.testing.assert_close(loss, reference + (ALPHA * 0.3 * BETA * nll).mean())


def test_contrastive_prompt_source():
    plus, minus = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]])
    mask = torch.tensor([[True, False]])
    torch.testing.assert_close(contrastive_prompt_reward(plus, minus, mask), torch.tensor([[sigmoid(1.0) - 0.5, 0.0]]))
    p, lc, lr = hand_pairs()
    gen = torch.Generator().manual_seed(0)
    extra = {f"{side}_{kind}": -torch.rand(2, t, generator=gen) for side, t in (("chosen", 3), ("rejected", 2))
             for kind in ("plus_logprob", "minus_logprob")}
    p = p.with_inputs(**extra)
    source = ContrastivePromptRewards()
    chosen, rejected = source(p)
    expected = torch.sigmoid(extra["chosen_plus_logprob"] - extra["chosen_minus_logprob"]) - 0.5
    torch.testing.assert_close(chosen, expected * p.chosen_mask)
    assert (chosen.abs() < 0.5).all() and (rejected.abs() < 0.5).all()
    given = p.with_inputs(chosen_token_reward=chosen, rejected_token_reward=rejected)
    t_reg = tc.get("preference", "t_reg")
    torch.testing.assert_close(t_reg(p, lc, lr, source=source)[0], t_reg(given, lc, lr)[0])
    assert needs_of("preference", "t_reg", {"source": source}) == Needs(
        inputs={"ref_logprob", "plus_logprob", "minus_logprob"})
    assert needs_of("preference", "t_reg") == Needs(inputs={"ref_logprob", "token_reward"})
    with pytest.raises(ValueError, match=re.escape("Pairs.extra['chosen_minus_logprob']: token-reward source")):
        source(tc.Pairs(p.chosen_mask, p.rejected_mask,
                        extra={k: v for k, v in extra.items() if k != "chosen_minus_logprob"}))


def test_critical_token_source():
    p, lc, lr = hand_pairs(extra={"rejected_critical": torch.tensor([0, 1]), "chosen_critical": torch.tensor([-1, 5])})
    source = CriticalTokenRewards()
    chosen, rejected = source(p)
    torch.testing.assert_close(chosen, torch.zeros(2, 3))  # −1 and an index past the response: no critical token
    torch.testing.assert_close(rejected, torch.tensor([[-0.5, 0.0], [0.0, -0.5]]))
    assert needs_of("preference", "t_reg", {"source": source}) == Needs(inputs={"ref_logprob", "critical"})
    # T-REG with it: an unlikelihood push α w β ½ log π on the critical tokens, nothing on the chosen side
    loss, _ = tc.get("preference", "t_reg")(p, lc, lr, beta=BETA, alpha=ALPHA, source=CriticalTokenRewards(0.25))
    reg = [BETA * 0.25 * -3.0, BETA * 0.25 * -1.0]
    expected = sum(softplus(-z) + ALPHA * sigmoid(-z) * r for z, r in zip(Z, reg)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    only_rejected, lc, lr = hand_pairs(extra={"rejected_critical": torch.tensor([0, -1])})
    assert source(only_rejected)[0].abs().sum() == 0
    with pytest.raises(ValueError, match=re.escape("Pairs.extra['rejected_critical']: token-reward source "
                                                   "CriticalTokenRewards needs the critical-token index")):
        source(hand_pairs()[0])
    with pytest.raises(ValueError, match="critical"):
        source(hand_pairs(extra={"rejected_critical": torch.tensor([0.0, 1.0])})[0])
    for bad in (0.0, 0.6, -0.1, True):
        with pytest.raises(ValueError, match="penalty"):
            CriticalTokenRewards(bad)


def test_errors_name_the_field():
    t_reg = tc.get("preference", "t_reg")
    p, lc, lr = hand_pairs()
    with pytest.raises(ValueError, match=re.escape("Pairs.chosen_token_reward: preference 't_reg' needs")):
        t_reg(p, lc, lr)
    p, lc, lr = _pairs()
    for kwargs, field in (({"weighting": "none"}, "weighting"), ({"reg_reduction": "max"}, "reg_reduction"),
                          ({"alpha": -0.1}, "alpha"), ({"source": 3}, "source")):
        with pytest.raises(ValueError, match=field):
            t_reg(p, lc, lr, **kwargs)
    with pytest.raises(ValueError, match=re.escape("source: rejected token rewards of <lambda>")):
        t_reg(p, lc, lr, source=type("S", (), {"__call__": lambda self, q: (torch.zeros(2, 3), torch.zeros(2, 3)),
                                               "__repr__": lambda self: "<lambda>"})())


def test_sources_by_name():
    p, lc, lr = _pairs()
    p = p.with_inputs(rejected_critical=torch.tensor([0, 1]))
    named, _ = tc.get("preference", "t_reg")(p, lc, lr, beta=BETA, alpha=ALPHA, source="critical")
    given, _ = tc.get("preference", "t_reg")(p, lc.detach(), lr.detach(), beta=BETA, alpha=ALPHA,
                                             source=CriticalTokenRewards())
    assert named.item() == pytest.approx(given.item(), rel=1e-6)
    assert needs_of("preference", "t_reg", {"source": "critical"}) == Needs(inputs={"ref_logprob", "critical"})
    with pytest.raises(ValueError, match=r"^source: expected one of \('critical', 'contrastive_prompt'\)"):
        tc.get("preference", "t_reg")(p, lc, lr, source="attention")
