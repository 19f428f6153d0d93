import pytest
import torch

import tokencredit as tc
from helpers import rollouts


def test_top_fraction_of_batch_entropy_is_kept():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.8, 0.2, 0.0]])
    r = rollouts([1.0, 0.0], [0, 0], [3, 4], entropy=entropy)  # 7.0 is padding and must not count
    adv = tc.get("advantage", "grpo")(r)
    w = tc.get("weight", "forking_tokens")(r, adv, top=2 / 7)  # 7 real tokens → keep the top 2
    assert w.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    w_all = tc.get("weight", "forking_tokens")(r, adv, top=1.0)
    torch.testing.assert_close(w_all, r.mask.float())


def test_forking_rejects_bad_fraction():
    r = rollouts([1.0], [0], [2], entropy=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="top"):
        tc.get("weight", "forking_tokens")(r, torch.zeros(1, 2), top=0.0)


def test_dropped_responses_do_not_count_in_the_quantile():
    # group 1 is all-equal (dynamic_filter drops it) and holds the batch's highest entropies
    entropy = torch.tensor([[0.1, 0.4], [0.3, 0.2], [5.0, 6.0], [7.0, 8.0]])
    r = rollouts([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], [2, 2, 2, 2], entropy=entropy, budget=8,
                 truncated=torch.zeros(4, dtype=torch.bool))
    adv = tc.get("advantage", "grpo")(r)
    keep = torch.tensor([True, True, False, False])
    w = tc.get("weight", "forking_tokens")(r, adv, top=0.25, keep=r.mask & keep[:, None])  # 4 kept: the top 1, 0.4
    assert w[:2].tolist() == [[0, 1], [0, 0]]
    # the recipe hands the select stage's keep to the weight stage; without it the top 25% of all 8 tokens
    # (7.0, 8.0) would lie in the dropped group and the kept responses would get no gradient at all
    credit = tc.recipe("forking", weight_params={"top": 0.25}).credit(r)
    assert credit.keep.tolist() == keep.tolist() and credit.weight[:2].tolist() == [[0, 1], [0, 0]]
    assert tc.get("weight", "forking_tokens")(r, adv, top=0.25)[:2].sum() == 0


def test_d3s_tokens_rank_advantage_times_entropy_over_kept_responses():
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    entropy = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.1, 9.0]])  # 9.0 is padding
    r = rollouts([1.0, 0.0], [0, 0], [3, 2], entropy=entropy)
    d3s = tc.get("weight", "d3s_tokens")
    # scores |A|·H: 0.1 0.5 0.2 | 0.6 0.2 → the top 2 of 5 tokens: 0.6 and 0.5
    assert d3s(r, adv, top=0.4).tolist() == [[0, 1, 0], [1, 0, 0]]
    # response 1 dropped: the top 1 of response 0's 3 tokens is 0.5 (response 1's weights are not used)
    assert d3s(r, adv, top=0.4, keep=r.mask & torch.tensor([[True], [False]]))[0].tolist() == [0, 1, 0]
    torch.testing.assert_close(d3s(r, adv, top=1.0), r.mask.float())
    with pytest.raises(ValueError, match=r"Rollouts\.entropy"):
        d3s(rollouts([1.0], [0], [1]), torch.zeros(1, 1))


def test_d3s_tokens_score_is_advantage_times_entropy_and_counts_kept_tokens_only():
    adv = torch.tensor([[2.0, 2.0], [-0.5, -0.5]])
    entropy = torch.tensor([[0.2, 0.3], [0.9, 0.1]])  # scores 0.4 0.6 | 0.45 0.05; entropy alone would pick 0.9
    r = rollouts([1.0, 0.0], [0, 0], [2, 2], entropy=entropy)
    d3s = tc.get("weight", "d3s_tokens")
    assert d3s(r, adv, top=0.25).tolist() == [[0, 1], [0, 0]]
    assert d3s(r, adv, top=0.5).tolist() == [[0, 1], [1, 0]]  # 2 of 4 tokens
    # 3 of all 4 tokens (0.6 0.45 0.4) leave 0.05 out; 2 of response 1's 2 tokens (when only it is kept) do not
    assert d3s(r, adv, top=0.75)[1].tolist() == [1, 0]
    assert d3s(r, adv, top=0.75, keep=r.mask & torch.tensor([[False], [True]]))[1].tolist() == [1, 1]


def test_tokens_out_of_the_loss_do_not_count_in_the_quantile():
    """`keep [B,T]` is per token: a token the token-select stage dropped is not ranked (the top 1 of the 3 kept
    tokens of response 0 is 0.4, although 0.9 is the larger entropy)."""
    entropy = torch.tensor([[0.9, 0.4, 0.1, 0.2]])
    r = rollouts([1.0], [0], [4], entropy=entropy)
    keep = torch.tensor([[False, True, True, True]])
    w = tc.get("weight", "forking_tokens")(r, torch.zeros(1, 4), top=0.34, keep=keep)
    assert (w * keep).tolist() == [[0, 1, 0, 0]]  # token 0 is not in the loss: its weight is never used
