import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokencredit as tc
from tokencredit.advantage.spo import spo_cutpoints
from tokencredit.tasks import Example
from tokencredit.train.values import monte_carlo_values

P = torch.tensor([[0.5, 0.95, 0.3, 0.99, 0.2, 0.0], [0.95, 0.5, 0.95, 0.95, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)


def batch(value=None, reward=(1.0, 0.0)):
    return tc.Rollouts(group=torch.tensor([0, 0]), mask=MASK, reward=torch.tensor(reward),
                       logprob=P.clamp(min=1e-6).log() * MASK, tokens=torch.arange(12).view(2, 6), value=value)


def test_cutpoints_every_kth_low_probability_token():
    r = batch()
    assert spo_cutpoints(r, interval=1).nonzero().tolist() == [[0, 0], [0, 2], [0, 4], [1, 1]]
    assert spo_cutpoints(r, interval=2).nonzero().tolist() == [[0, 0], [0, 4], [1, 1]]
    assert spo_cutpoints(r, interval=1, max_cuts=1).nonzero().tolist() == [[0, 0], [1, 1]]


def test_segment_advantages_hand_computed():
    value = torch.zeros(2, 6)
    value[0, 0], value[0, 2], value[0, 4] = 0.5, 0.25, 0.75  # V at the cuts of row 0
    value[1, 1] = 0.5
    adv = tc.get("advantage", "spo_chain")(batch(value), interval=1)
    # row 0: segments [0,2) → V(2)−V(0), [2,4) → V(4)−V(2), [4,end) → R−V(4)
    expected0 = [0.25 - 0.5, 0.25 - 0.5, 0.75 - 0.25, 0.75 - 0.25, 1.0 - 0.75, 0.0]
    # row 1: before the first cut → 0; [1,end) → R − V(1)
    expected1 = [0.0, 0.0 - 0.5, -0.5, -0.5, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor([expected0, expected1]))
    # the probability mask is a token-select stage: tokens with p ≥ 0.9 leave the loss
    keep = tc.get("token_select", "low_probability")(batch(value), adv, threshold=0.9)
    assert keep.tolist() == [[True, False, True, False, True, False], [False, True, False, False, False, False]]


def test_spo_chain_averages_over_decision_tokens_only():
    """SPO's trainer averages the loss over the tokens with π_old < 0.9: one response of 10 tokens, two of them
    decision tokens (cuts at 3 and 7 with interval 1), reward 1, zero values. The segment [7, end) gets
    1 − 0 = 1, so at ratio 1 the loss is −(0 + 1)/2 = −0.5. With the high-probability tokens left in the
    token-mean normaliser (the old preset) it was −1/10."""
    p = torch.full((1, 10), 0.95)
    p[0, 3], p[0, 7] = 0.5, 0.5
    r = tc.Rollouts(group=torch.tensor([0]), mask=torch.ones(1, 10, dtype=torch.bool), reward=torch.tensor([1.0]),
                    logprob=p.log(), tokens=torch.arange(10)[None], value=torch.zeros(1, 10))
    recipe = tc.recipe("spo_chain", advantage_params={"threshold": 0.9, "interval": 1})
    credit = recipe.credit(r)
    loss, stats = recipe.loss(r.logprob, r, credit)
    torch.testing.assert_close(loss, torch.tensor(-0.5))
    assert stats["tokens"] == 2
    assert credit.loss_mask(r.mask).nonzero().tolist() == [[0, 3], [0, 7]]
    assert credit.folded()[0].tolist() == [0.0] * 7 + [1.0, 0.0, 0.0]  # engines get the same tokens


def test_no_cuts_gives_zero_and_missing_values_are_an_error():
    r = batch(torch.zeros(2, 6))
    assert torch.count_nonzero(tc.get("advantage", "spo_chain")(r, threshold=0.01)) == 0
    with pytest.raises(ValueError, match=r"Rollouts\.value"):
        tc.get("advantage", "spo_chain")(batch())


def test_values_come_from_the_continuation_scorer_contract():
    calls = []

    def scorer(examples, prefixes, k):
        calls.append((list(prefixes), k))
        return torch.tensor([[len(p) / 10] * k for p in prefixes])

    ex = [Example(prompt="a", answer="1"), Example(prompt="b", answer="2")]
    request = tc.recipe("spo_chain", advantage_params={"interval": 1, "mc_samples": 3}).needs().values
    assert request.name == "monte_carlo" and request.params["samples"] == 3
    value = monte_carlo_values(scorer, ex, batch(), **request.params)
    assert calls == [([[], [0, 1], [0, 1, 2, 3], [6]], 3)]  # the prefix *before* each cut token
    assert value[0, 2] == 0.2 and value[1, 1] == 0.1 and value[0, 1] == 0
    assert math.isclose(value[0, 4].item(), 0.4, rel_tol=1e-6)


def test_the_value_request_follows_the_recipe_parameters():
    calls = []

    def scorer(examples, prefixes, k):
        calls.append((list(prefixes), k))
        return torch.zeros(len(prefixes), k)

    ex = [Example(prompt="a", answer="1"), Example(prompt="b", answer="2")]
    params = {"mc_samples": 2, "interval": 2, "max_cuts": 1, "threshold": 0.9}
    request = tc.recipe("spo_chain", advantage_params=params).needs().values
    monte_carlo_values(scorer, ex, batch(), **request.params)
    assert calls == [([[], [6]], 2)]  # interval 2 and one cut a row: row 0 cuts at 0, row 1 at 1
    request = tc.recipe("spo_chain", advantage_params={**params, "threshold": 0.4, "max_cuts": 25}).needs().values
    monte_carlo_values(scorer, ex, batch(), **request.params)
    assert calls[-1] == ([[0, 1]], 2)  # p < 0.4: row 0's 2 and 4 (every 2nd: 2); none in row 1
    # a schedule reaches the request at the progress it is asked at
    scheduled = tc.recipe("spo_chain", advantage_params={"mc_samples": {"start": 4, "end": 8}})
    assert scheduled.needs(0.5).values.params["samples"] == 6


# ------------------------------------------------------------------------------------------------ SPO-tree
# a depth-2 tree (branching 2-2, segments of 2 tokens): root → A=[1,2], B=[7,8] → four leaves
TREE = torch.tensor([[1, 2, 3, 9], [1, 2, 4, 9], [7, 8, 5, 9], [7, 8, 6, 9]])


def tree_batch(reward=(1.0, 0.0, 1.0, 1.0), tokens=TREE, lengths=(4, 4, 4, 4), prob=0.5, group=(0, 0, 0, 0)):
    mask = torch.arange(tokens.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    return tc.Rollouts(group=torch.tensor(group), mask=mask, reward=torch.tensor(reward), tokens=tokens,
                       logprob=torch.full(tokens.shape, math.log(prob)) * mask)


def spo_tree(r, **kw):
    return tc.get("advantage", "spo_tree")(r, **{"branching": [2, 2], "segment_tokens": 2, **kw})


def test_tree_edge_advantages_hand_computed():
    # V(root) = 0.75, V(A) = 0.5, V(B) = 1; leaves 1, 0, 1, 1
    expected = torch.tensor([[-0.25, -0.25, 0.5, 0.5], [-0.25, -0.25, -0.5, -0.5],
                             [0.25, 0.25, 0.0, 0.0], [0.25, 0.25, 0.0, 0.0]])
    torch.testing.assert_close(spo_tree(tree_batch(), dedup=False), expected)
    # dedup: a shared edge is trained once, in the lowest-index leaf below it
    deduped = expected.clone()
    deduped[1, :2] = deduped[3, :2] = 0.0
    torch.testing.assert_close(spo_tree(tree_batch()), deduped)
    # grpo mode: divided by the std of the parent's children (root: std(0.5, 1); A: std(1, 0); B: std(1, 1) = 0)
    s = 1 / math.sqrt(2)
    grpo = torch.tensor([[-s, -s, s, s], [0, 0, -s, -s], [s, s, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(spo_tree(tree_batch(), mode="grpo"), grpo, atol=1e-5, rtol=1e-5)


def test_tree_leaf_that_ended_early_and_probability_mask():
    # leaf 1 ended after one token of the second segment: its own leaf, one of the three leaves below A
    tokens = torch.tensor([[1, 2, 3, 9], [1, 2, 4, 0], [1, 2, 5, 9]])
    r = tree_batch(reward=(1.0, 1.0, 0.0), tokens=tokens, lengths=(4, 3, 4), group=(0, 0, 0))
    adv = spo_tree(r, branching=[1, 3], dedup=False)
    v_a = 2 / 3  # the root has one child, A, with the same leaves: its edge gets 0
    torch.testing.assert_close(adv, torch.tensor([[0, 0, 1 - v_a, 1 - v_a], [0, 0, 1 - v_a, 0],
                                                  [0, 0, -v_a, -v_a]]))
    # the preset's probability mask: every token sampled with p ≥ 0.9 leaves the loss
    high = replace(tree_batch(prob=0.95), budget=4)
    preset = tc.recipe("spo_tree", advantage_params={"branching": [2, 2], "segment_tokens": 2})
    assert not preset.credit(high).loss_mask(high.mask).any() and preset.credit(high).folded().eq(0).all()


def test_spo_tree_loss_counts_responses_with_decision_tokens():
    """The preset's constant normaliser (N · budget) counts the responses that have a token in the loss: a leaf
    whose every token was sampled with p ≥ 0.9 leaves it, as in SPO's masked mean."""
    r = replace(tree_batch(), budget=4)
    r = replace(r, logprob=torch.where(torch.arange(4)[:, None] == 3, math.log(0.95), math.log(0.5)) * r.mask)
    preset = tc.recipe("spo_tree", advantage_params={"branching": [2, 2], "segment_tokens": 2})
    credit = preset.credit(r)
    loss, _ = preset.loss(r.logprob, r, credit)
    adv = spo_tree(r)  # dedup on; leaf 3's tokens are out of the loss
    torch.testing.assert_close(loss, -adv[:3].sum() / (3 * 4))


def test_depth_one_tree_is_a_plain_group():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 100, (12, 7), generator=gen)  # distinct rows
    group = torch.tensor([0] * 5 + [3] * 4 + [9] * 3)
    reward = (torch.rand(12, generator=gen) > 0.5).float()
    lengths = torch.randint(1, 8, (12,), generator=gen).tolist()
    r = tree_batch(reward=reward.tolist(), tokens=tokens, lengths=lengths, group=group.tolist())
    kw = {"branching": [5], "segment_tokens": 3}
    torch.testing.assert_close(spo_tree(r, mode="grpo", **kw), tc.get("advantage", "grpo")(r))
    torch.testing.assert_close(spo_tree(r, mode="rloo", **kw), tc.get("advantage", "dr_grpo")(r))
    # a response that is a strict prefix of another still ends in its own leaf: [1] is not the node [1] that [1, 2]
    # passes through (by hand: rewards 1, 0, 0, mean 1/3; dr_grpo 2/3, −1/3, −1/3; grpo divides by std 1/√3)
    r = tree_batch(reward=[1.0, 0.0, 0.0], tokens=torch.tensor([[1, 0], [1, 2], [3, 4]]), lengths=[1, 2, 2],
                   group=[0, 0, 0])
    kw = {"branching": [3], "segment_tokens": 2, "dedup": False}
    torch.testing.assert_close(spo_tree(r, mode="rloo", **kw), torch.tensor([[2 / 3, 0], [-1 / 3, -1 / 3],
                                                                            [-1 / 3, -1 / 3]]))
    torch.testing.assert_close(spo_tree(r, mode="grpo", **kw), tc.get("advantage", "grpo")(r))
    # ... and its edge is its own, not the shared first segment of [1, 2] (segments of one token, dedup on):
    # V(root) = 1/3, V([1]) = 1/2, V(leaf [1]) = 1; row 1's second segment: V([1, 2]) − V([1]) = −1/2
    deduped = spo_tree(r, branching=[3, 2], segment_tokens=1)
    torch.testing.assert_close(deduped, torch.tensor([[2 / 3, 0], [1 / 6, -1 / 2], [-1 / 3, 0]]))


def test_tree_boundaries_in_mask_holes_stay_finite():
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 5, 6], [8, 2, 3, 4, 9, 9]])
    mask = torch.tensor([[1, 0, 1, 0, 1, 1], [1, 0, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    r = tc.Rollouts(group=torch.tensor([0, 0, 0]), mask=mask, reward=torch.tensor([1.0, 0.0, 1.0]), tokens=tokens,
                    logprob=torch.full((3, 6), -1.0))
    for mode in ("rloo", "grpo"):
        adv = spo_tree(r, branching=[2, 2, 2], mode=mode)
        assert torch.isfinite(adv).all() and (adv[~mask] == 0).all()


def test_tree_degenerate_and_bad_input():
    assert torch.count_nonzero(spo_tree(tree_batch(reward=(1.0, 1.0, 1.0, 1.0)), mode="grpo")) == 0
    with pytest.raises(ValueError, match="mode"):
        spo_tree(tree_batch(), mode="ppo")
    with pytest.raises(ValueError, match=r"Rollouts\.tokens"):
        spo_tree(replace(tree_batch(), tokens=None))


def spo_chain_loop(r, threshold, interval, max_cuts):
    """SPO-chain by loops over rows and tokens, straight from the card."""
    b, t = r.mask.shape
    p = r.logprob.exp()
    out = torch.zeros(b, t)
    for i in range(b):
        low = [s for s in range(t) if r.mask[i, s] and p[i, s] < threshold]
        cuts = low[::interval][:max_cuts]
        for j, c in enumerate(cuts):
            end = cuts[j + 1] if j + 1 < len(cuts) else t
            after = r.value[i, cuts[j + 1]] if j + 1 < len(cuts) else r.reward[i]
            for s in range(c, end):
                if r.mask[i, s]:
                    out[i, s] = after - r.value[i, c]
    return out


@settings(max_examples=80, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(0, 12), seed=st.integers(0, 2**16), fill=st.sampled_from([0.5, 0.9, 1.0]),
       threshold=st.sampled_from([0.0, 0.3, 0.6, 0.9]), interval=st.integers(1, 3), max_cuts=st.integers(1, 4))
def test_spo_chain_matches_a_loop_over_tokens(b, t, seed, fill, threshold, interval, max_cuts):
    gen = torch.Generator().manual_seed(seed)
    r = tc.Rollouts(group=torch.zeros(b, dtype=torch.long), mask=torch.rand(b, t, generator=gen) < fill,
                    reward=torch.randint(0, 2, (b,), generator=gen).float(),
                    logprob=-2 * torch.rand(b, t, generator=gen),
                    value=torch.randint(0, 3, (b, t), generator=gen) / 3)  # ties: equal values give exact zeros
    adv = tc.get("advantage", "spo_chain")(r, threshold=threshold, interval=interval, max_cuts=max_cuts)
    expected = spo_chain_loop(r, threshold, interval, max_cuts)
    torch.testing.assert_close(adv, expected, rtol=0, atol=0)
    cuts = spo_cutpoints(r, threshold, interval, max_cuts)
    assert cuts.sum(-1).le(max_cuts).all() and not (cuts & ~r.mask).any()


def test_an_interval_beyond_int32_keeps_the_first_cut():
    r = batch(torch.zeros(2, 6))
    assert spo_cutpoints(r, interval=2**40, max_cuts=2**20).nonzero().tolist() == [[0, 0], [1, 1]]
