import math
import re

import pytest
import torch

import tokencredit as tc
from helpers import hand_pairs
from tokencredit.needs import Needs
from tokencredit.registry import needs_of

BETA = 0.5
# chosen Δ = [[1, 0.5], [0.5]], rejected Δ = [[-1], [-0.5, 1]] (helpers.hand_pairs)
A = [[0.2, 1.0, 7.0], [0.5, 7.0, 7.0]]  # 7s lie at padding
W_REJ = [[0.9, 7.0], [0.1, 0.6]]


def softplus(x: float) -> float:  # −log σ(−x)
    return math.log1p(math.exp(x))


def _pairs(chosen=True):
    fields = {"rejected_weight": torch.tensor(W_REJ)}
    if chosen:
        fields["chosen_weight"] = torch.tensor(A)
    return hand_pairs(**fields)


def test_sequence_form_by_hand():
    p, lc, lr = _pairs()
    loss, stats = tc.get("preference", "cdpo")(p, lc, lr, beta=BETA)
    z0 = BETA * ((0.2 * 1 + 1.0 * 0.5) - (0.9 * -1))  # 0.8
    z1 = BETA * ((0.5 * 0.5) - (0.1 * -0.5 + 0.6 * 1))  # -0.15
    assert loss.item() == pytest.approx((softplus(-z0) + softplus(-z1)) / 2, rel=1e-6)
    loss.backward()
    s0, s1 = 1 / (1 + math.exp(z0)), 1 / (1 + math.exp(z1))  # σ(−z)
    torch.testing.assert_close(lc.grad, torch.tensor([[-BETA * s0 * 0.2 / 2, -BETA * s0 / 2, 0.0],
                                                      [-BETA * s1 * 0.5 / 2, 0.0, 0.0]]))
    torch.testing.assert_close(lr.grad, torch.tensor([[BETA * s0 * 0.9 / 2, 0.0],
                                                      [BETA * s1 * 0.1 / 2, BETA * s1 * 0.6 / 2]]))
    assert stats["margin"].item() == pytest.approx((z0 + z1) / 2)


def test_unit_weights_give_dpo_and_a_missing_chosen_weight_means_one():
    cdpo, dpo = tc.get("preference", "cdpo"), tc.get("preference", "dpo")
    p, lc, lr = hand_pairs(chosen_weight=torch.ones(2, 3), rejected_weight=torch.ones(2, 2))
    torch.testing.assert_close(cdpo(p, lc, lr, beta=BETA)[0], dpo(p, lc, lr, beta=BETA)[0])
    only_neg, lc, lr = _pairs(chosen=False)  # the released only_neg=True: a ≡ 1
    with_ones = only_neg.with_inputs(chosen_weight=torch.ones(2, 3))
    torch.testing.assert_close(cdpo(only_neg, lc, lr)[0], cdpo(with_ones, lc, lr)[0])


def test_position_aligned_form_by_hand():
    p, lc, lr = _pairs()
    loss, _ = tc.get("preference", "cdpo")(p, lc, lr, beta=BETA, reduction="position_aligned")
    # pair 0: positions 0 (both), 1 (chosen only); pair 1: positions 0 (both), 1 (rejected only)
    pair0 = [softplus(-BETA * (0.2 * 1 - 0.9 * -1)), softplus(-BETA * (1.0 * 0.5))]
    pair1 = [softplus(-BETA * (0.5 * 0.5 - 0.1 * -0.5)), softplus(-BETA * (-0.6 * 1))]
    assert loss.item() == pytest.approx((sum(pair0) / 2 + sum(pair1) / 2) / 2, rel=1e-6)
    loss.backward()
    g = lc.grad.clone()
    # the released code's mean over a constant L positions: log 2 for each of the L − |U| others
    lc.grad = None
    coded, _ = tc.get("preference", "cdpo")(p, lc, lr, beta=BETA, reduction="position_aligned", positions=10)
    expected = ((sum(pair0) + 8 * math.log(2)) / 10 + (sum(pair1) + 8 * math.log(2)) / 10) / 2
    assert coded.item() == pytest.approx(expected, rel=1e-6)
    coded.backward()
    torch.testing.assert_close(lc.grad, g * 2 / 10)  # the same gradient, over 10 positions instead of 2


def test_weights_are_constants_and_a_pair_without_tokens_is_zero():
    w = torch.tensor(W_REJ, requires_grad=True)
    p, lc, lr = hand_pairs(rejected_weight=w)
    loss, _ = tc.get("preference", "cdpo")(p, lc, lr)
    loss.backward()
    assert w.grad is None and lc.grad is not None
    empty, lc, lr = hand_pairs(rejected_weight=torch.ones(2, 2))
    empty = empty.with_inputs(chosen_mask=torch.zeros(2, 3, dtype=torch.bool),
                              rejected_mask=torch.zeros(2, 2, dtype=torch.bool))
    assert tc.get("preference", "cdpo")(empty, lc, lr, reduction="position_aligned")[0].item() == 0.0
    assert tc.get("preference", "cdpo")(empty, lc, lr)[0].item() == pytest.approx(math.log(2))


def test_needs_and_errors():
    assert needs_of("preference", "cdpo") == Needs(inputs={"ref_logprob", "weight"})
    cdpo = tc.get("preference", "cdpo")
    p, lc, lr = hand_pairs(chosen_weight=torch.ones(2, 3))
    with pytest.raises(ValueError, match=re.escape("Pairs.rejected_weight: preference 'cdpo' needs per-token weights "
                                                   "of the responses [B,T_r]; got None")):
        cdpo(p, lc, lr)
    p, lc, lr = _pairs()
    with pytest.raises(ValueError, match="reduction"):
        cdpo(p, lc, lr, reduction="token")
    with pytest.raises(ValueError, match=re.escape("positions: expected at least the most response positions of a "
                                                   "pair (2), got 1")):
        cdpo(p, lc, lr, reduction="position_aligned", positions=1)
    with pytest.raises(ValueError, match="positions: only reduction='position_aligned'"):
        cdpo(p, lc, lr, positions=10)
    with pytest.raises(ValueError, match="positions: expected a positive int"):
        cdpo(p, lc, lr, reduction="position_aligned", positions=2.5)


def test_critical_token_weights_by_hand():
    from tokencredit.preference.cdpo import critical_token_weights

    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    index = torch.tensor([2, -1, 9, 0])  # t* = 2; none; outside the response (none); t* = 0
    w = critical_token_weights(index, mask, window=1, floor=0.1)
    torch.testing.assert_close(w, torch.tensor([
        [0.1, 1.0, 1.0, 1.0, 0.1, 1.0],  # t* ± 1 and the last token
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # no critical token: DPO's uniform weight
        [1.0, 1.0, 1.0, 1.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # t* = 0 (its neighbour 1 is also the last token)
    ]))
    w0 = critical_token_weights(index, mask)  # window 0, floor 0: only t* and the last token
    assert w0[0].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"^window: "):
        critical_token_weights(index, mask, window=-1)
    with pytest.raises(ValueError, match=r"^floor: "):
        critical_token_weights(index, mask, floor=2.0)
    with pytest.raises(ValueError, match=re.escape("Pairs.extra['rejected_critical']: expected an int tensor")):
        critical_token_weights(index.float(), mask)


def test_critical_weights_are_cdpo_with_those_weights():
    from tokencredit.preference.cdpo import critical_token_weights

    p, lc, lr = hand_pairs()
    critical = torch.tensor([0, 0])  # rejected lengths 1, 2: pair 1 weights [1, 1] (t* and the last), pair 0 [1]
    p = p.with_inputs(rejected_critical=critical)
    loss, _ = tc.get("preference", "cdpo")(p, lc, lr, beta=BETA, weights="critical", floor=0.25)
    b = critical_token_weights(critical, p.rejected_mask, floor=0.25)
    assert b.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    given, _ = tc.get("preference", "cdpo")(p.with_inputs(rejected_weight=b), lc.detach(), lr.detach(), beta=BETA)
    assert loss.item() == pytest.approx(given.item(), rel=1e-6)
    # a ≡ 1 and these weights: the DPO logits of helpers.hand_pairs
    assert loss.item() == pytest.approx((softplus(-1.25) + softplus(0.0)) / 2, rel=1e-6)
    assert needs_of("preference", "cdpo", {"weights": "critical"}) == Needs(inputs={"ref_logprob", "critical"})
    assert needs_of("preference", "cdpo", {}) == Needs(inputs={"ref_logprob", "weight"})
    with pytest.raises(ValueError, match=re.escape("Pairs.extra['rejected_critical']: preference 'cdpo' needs")):
        tc.get("preference", "cdpo")(hand_pairs()[0], lc, lr, weights="critical")
    with pytest.raises(ValueError, match=r"^weights: expected one of"):
        tc.get("preference", "cdpo")(p, lc, lr, weights="contrastive")
