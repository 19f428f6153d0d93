import math
import re

import pytest
import torch

import tokencredit as tc
from helpers import HAND_CHOSEN_DELTA, HAND_REJECTED_DELTA, hand_pairs, pairs
from tokencredit.needs import Needs
from tokencredit.preference import implicit_token_reward
from tokencredit.registry import needs_of


def softplus(x: float) -> float:  # −log σ(−x)
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


BETA = 0.5
# z_i = β (Σ Δ_w − Σ Δ_l): pair 0: 0.5 · (1.5 + 1) = 1.25; pair 1: 0.5 · (0.5 − 0.5) = 0
Z = [BETA * (sum(c) - sum(r)) for c, r in zip(HAND_CHOSEN_DELTA, HAND_REJECTED_DELTA)]


def test_dpo_by_hand():
    assert Z == [1.25, 0.0]
    p, lc, lr = hand_pairs()
    loss, stats = tc.get("preference", "dpo")(p, lc, lr, beta=BETA)
    assert loss.item() == pytest.approx((softplus(-1.25) + math.log(2)) / 2, rel=1e-6)
    loss.backward()
    # dℓ_i/dlog π(y_w^t) = −β σ(−z_i), / N = 2; 0 at padding
    g = [-BETA * sigmoid(-z) / 2 for z in Z]
    torch.testing.assert_close(lc.grad, torch.tensor([[g[0], g[0], 0.0], [g[1], 0.0, 0.0]]))
    torch.testing.assert_close(lr.grad, torch.tensor([[-g[0], 0.0], [-g[1], -g[1]]]))
    assert stats["chosen_reward"].item() == pytest.approx(BETA * (1.5 + 0.5) / 2)
    assert stats["rejected_reward"].item() == pytest.approx(BETA * (-1 + 0.5) / 2)
    assert stats["margin"].item() == pytest.approx(1.25 / 2) and stats["accuracy"].item() == 0.5


def test_dpo_label_smoothing_by_hand():
    p, lc, lr = hand_pairs()
    loss, _ = tc.get("preference", "dpo")(p, lc, lr, beta=BETA, label_smoothing=0.1)
    expected = (0.9 * softplus(-1.25) + 0.1 * softplus(1.25) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_identical_and_empty_responses_give_log_2():
    dpo = tc.get("preference", "dpo")
    ref = -torch.rand(2, 3)
    p = pairs([3, 1], [3, 1], chosen_ref_logprob=ref, rejected_ref_logprob=ref)
    logprob = -torch.rand(2, 3)
    loss, stats = dpo(p, logprob, logprob.clone())
    assert loss.item() == pytest.approx(math.log(2)) and stats["accuracy"].item() == 0
    empty = pairs([0, 0], [0, 0], 0, 4, chosen_ref_logprob=torch.zeros(2, 0), rejected_ref_logprob=torch.zeros(2, 4))
    logprob = torch.zeros(2, 0, requires_grad=True)
    loss, _ = dpo(empty, logprob, -torch.rand(2, 4))
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    none = pairs([], [], 0, 0, chosen_ref_logprob=torch.zeros(0, 0), rejected_ref_logprob=torch.zeros(0, 0))
    assert dpo(none, torch.zeros(0, 0), torch.zeros(0, 0))[0].item() == 0.0  # an empty batch: nothing to average


def test_micro_batches_with_the_whole_batch_pair_count_sum_to_the_full_loss():
    dpo = tc.get("preference", "dpo")
    p, lc, lr = hand_pairs()
    full, _ = dpo(p, lc, lr, beta=BETA)
    full_grad = torch.autograd.grad(full, (lc, lr))
    parts = [dpo(p.select(torch.tensor([i])), lc[i:i + 1], lr[i:i + 1], beta=BETA, num_pairs=2)[0] for i in range(2)]
    total = parts[0] + parts[1]
    assert total.item() == pytest.approx(full.item(), rel=1e-7)
    for a, b in zip(torch.autograd.grad(total, (lc, lr)), full_grad):
        torch.testing.assert_close(a, b)
    # without num_pairs each part is its own mean: twice its share
    alone = dpo(p.select(torch.tensor([0])), lc[:1], lr[:1], beta=BETA)[0]
    assert alone.item() == pytest.approx(2 * parts[0].item())
    for bad in (1, 0, -2.0, float("nan"), True):  # fewer than this call's pairs, or not a count
        with pytest.raises(ValueError, match="num_pairs"):
            dpo(p, lc, lr, num_pairs=bad)


def test_ipo_by_hand():
    ipo = tc.get("preference", "ipo")
    p, lc, lr = hand_pairs()
    h = [sum(c) - sum(r) for c, r in zip(HAND_CHOSEN_DELTA, HAND_REJECTED_DELTA)]  # 2.5, 0
    target = 1 / (2 * BETA)
    loss, stats = ipo(p, lc, lr, beta=BETA)
    assert loss.item() == pytest.approx(sum((x - target) ** 2 for x in h) / 2)
    loss.backward()
    torch.testing.assert_close(lc.grad[0, :2], torch.full((2,), (h[0] - target)))  # 2(h − 1/2β)/N = h − 1
    assert stats["margin"].item() == pytest.approx(BETA * 2.5 / 2)
    # TRL's length-normalised h: the mean log-ratio of each response
    h_mean = [sum(c) / len(c) - sum(r) / len(r) for c, r in zip(HAND_CHOSEN_DELTA, HAND_REJECTED_DELTA)]
    p, lc, lr = hand_pairs()
    loss, _ = ipo(p, lc, lr, beta=BETA, length_normalise=True)
    assert loss.item() == pytest.approx(sum((x - target) ** 2 for x in h_mean) / 2)
    # identical responses: (0 − 1/(2β))²
    ref = -torch.rand(1, 2)
    same = pairs([2], [2], chosen_ref_logprob=ref, rejected_ref_logprob=ref)
    assert ipo(same, ref, ref, beta=0.25)[0].item() == pytest.approx(4.0)


def test_implicit_token_reward_sums_to_the_sequence_reward():
    p, lc, _ = hand_pairs()
    r = implicit_token_reward(lc, p.chosen_ref_logprob, p.chosen_mask, beta=BETA)
    torch.testing.assert_close(r, torch.tensor([[0.5, 0.25, 0.0], [0.25, 0.0, 0.0]]))
    assert not r.requires_grad
    with pytest.raises(ValueError, match=re.escape("ref_logprob: expected a float tensor of shape [B,T]")):
        implicit_token_reward(lc, p.rejected_ref_logprob, p.chosen_mask)


def test_needs_and_errors_name_the_field():
    for name in ("dpo", "ipo"):
        assert needs_of("preference", name) == Needs(inputs={"ref_logprob"})
        fn = tc.get("preference", name)
        p, lc, lr = hand_pairs()
        with pytest.raises(ValueError, match=re.escape("Pairs.rejected_ref_logprob: preference")):
            fn(p.with_inputs(rejected_ref_logprob=None), lc, lr)
        with pytest.raises(ValueError, match=re.escape("chosen_logprob: expected a float tensor of shape [B,T_c] = "
                                                       "[2, 3], got dtype torch.float32, shape [2, 2]")):
            fn(p, lr, lr)
        with pytest.raises(ValueError, match=re.escape("rejected_logprob: expected a float tensor of shape [B,T_r]")):
            fn(p, lc, lr.long())
        with pytest.raises(ValueError, match="beta"):
            fn(p, lc, lr, beta=0.0)
        with pytest.raises(ValueError, match=re.escape("pairs: expected a tokencredit.Pairs")):
            fn("pairs", lc, lr)
    with pytest.raises(ValueError, match="label_smoothing"):
        tc.get("preference", "dpo")(p, lc, lr, label_smoothing=0.5)
