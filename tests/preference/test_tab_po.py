import math
import re

import pytest
import torch

import tokencredit as tc
from helpers import hand_pairs
from tokencredit.needs import Needs
from tokencredit.preference import tab_po_weights
from tokencredit.preference.tab_po import renormalised
from tokencredit.registry import needs_of

BETA = 0.5
# log-probs (helpers.hand_pairs): chosen [[-1, -2], [-0.5]] (ref [[-2, -2.5], [-1]]),
# rejected [[-3], [-1, -1]] (ref [[-2], [-0.5, -2]])
W_CHOSEN = [[1.0, 3.0, 50.0], [2.0, 50.0, 50.0]]
W_REJECTED = [[4.0, 50.0], [1.0, 3.0]]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _pairs(**fields):
    return hand_pairs(chosen_weight=torch.tensor(W_CHOSEN), rejected_weight=torch.tensor(W_REJECTED), **fields)


def test_tab_po_by_hand():
    p, lc, lr = _pairs()
    loss, stats = tc.get("preference", "tab_po")(p, lc, lr, beta=BETA, tau=0.3, barrier=0.5)
    # weights rescaled to mean 1: chosen [[0.5, 1.5], [1]], rejected [[1], [0.5, 1.5]]
    # pair 0: ℓ̄_θ(y_w) = (0.5·−1 + 1.5·−2)/2 = −1.75, ℓ̄_ref(y_w) = −2.375, ℓ̄_θ(y_l) = −3, ℓ̄_ref(y_l) = −2
    # pair 1: ℓ̄_θ(y_w) = −0.5, ℓ̄_ref(y_w) = −1, ℓ̄_θ(y_l) = −1, ℓ̄_ref(y_l) = −1.625
    logits = [BETA * ((-1.75 + 3) - (-2.375 + 2)), BETA * ((-0.5 + 1) - (-1 + 1.625))]
    assert logits == pytest.approx([0.8125, -0.0625])
    # the gate log π < log 0.3 = −1.20 holds for pair 0's second chosen token only (w̃ = 1.5, −log π = 2)
    barrier = [1.5 * 2 / 1.5, 0.0]
    expected = sum(softplus(-z) + 0.5 * b for z, b in zip(logits, barrier)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["barrier"].item() == pytest.approx(1.0) and stats["gated"].item() == pytest.approx(0.25)
    loss.backward()
    s0 = 1 / (1 + math.exp(logits[0]))
    # d/dlog π(y_w^1) of pair 0: preference −β σ(−z) w̃/T = −0.5·s0·1.5/2, barrier −λ w̃/Σw̃g = −0.5; over N = 2
    assert lc.grad[0, 1].item() == pytest.approx((-BETA * s0 * 1.5 / 2 - 0.5) / 2, rel=1e-6)
    assert lc.grad[0, 0].item() == pytest.approx((-BETA * s0 * 0.5 / 2) / 2, rel=1e-6)  # gate off: no barrier


def test_degenerate_cases():
    tab_po = tc.get("preference", "tab_po")
    # all weights 1 and λ = 0: DPO on mean log-ratios
    p, lc, lr = hand_pairs()
    loss, _ = tab_po(p, lc, lr, beta=BETA, barrier=0.0)
    mean_logits = [BETA * (0.75 - (-1.0)), BETA * (0.5 - 0.25)]
    assert loss.item() == pytest.approx(sum(softplus(-z) for z in mean_logits) / 2, rel=1e-6)
    # τ = 1: the gate is on at every token, DPO + λ · mean NLL of y_w
    loss, _ = tab_po(p, lc, lr, beta=BETA, barrier=0.5, tau=1.0)
    assert loss.item() == pytest.approx(sum(softplus(-z) for z in mean_logits) / 2 + 0.5 * (1.5 + 0.5) / 2, rel=1e-6)
    # λ = 0: weighted DPO (the barrier never counts)
    p, lc, lr = _pairs()
    for tau in (0.3, 1.0):
        loss, _ = tab_po(p, lc, lr, beta=BETA, barrier=0.0, tau=tau)
        assert loss.item() == pytest.approx((softplus(-0.8125) + softplus(0.0625)) / 2, rel=1e-6)
    # renormalisation: weights given already at mean 1 are the same loss with and without it
    unit = p.with_inputs(chosen_weight=renormalised(p.chosen_weight, p.chosen_mask),
                         rejected_weight=renormalised(p.rejected_weight, p.rejected_mask))
    torch.testing.assert_close(tab_po(unit, lc, lr, renormalise=False)[0], tab_po(p, lc, lr)[0])


def test_renormalised_weights():
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    w = torch.tensor([[1.0, 3.0, 9.0], [0.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    torch.testing.assert_close(renormalised(w, mask), torch.tensor([[0.5, 1.5, 0.0], [0.0, 0.0, 0.0], [0.0] * 3]))


def test_weights_by_hand():
    tokens = {"chosen_tokens": torch.tensor([[1, 0, 2], [0, 1, 0]]), "rejected_tokens": torch.tensor([[1, 2], [2, 1]])}
    p, _, _ = hand_pairs(**tokens)  # chosen lengths 2, 1; rejected lengths 1, 2
    field = torch.tensor([[1.1, 0.5, 7.0], [1.3, 7.0, 7.0]])
    chosen, rejected = tab_po_weights(p, chosen_field=field, w_diff=2.0)
    # pair 0: position 0 agrees (1 = 1), the chosen token at 1 has no counterpart; pair 1: 0 ≠ 2, then rejected only
    torch.testing.assert_close(chosen, torch.tensor([[1.1, 2.0, 0.0], [2.6, 0.0, 0.0]]))
    torch.testing.assert_close(rejected, torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match=re.escape("Pairs.chosen_tokens: tab_po_weights needs the response token ids")):
        tab_po_weights(hand_pairs()[0])
    with pytest.raises(ValueError, match=re.escape("rejected_field: expected a float tensor of shape [B,T_r]")):
        tab_po_weights(p, rejected_field=field)


def test_needs_and_errors():
    assert needs_of("preference", "tab_po") == Needs(inputs={"ref_logprob"})
    tab_po = tc.get("preference", "tab_po")
    p, lc, lr = _pairs()
    for kwargs, field in (({"tau": 0.0}, "tau"), ({"tau": 1.5}, "tau"), ({"barrier": -1.0}, "barrier"),
                          ({"beta": -0.5}, "beta")):
        with pytest.raises(ValueError, match=field):
            tab_po(p, lc, lr, **kwargs)
