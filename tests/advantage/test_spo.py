import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokencredit as tc
from tokencredit.advantage.spo import spo_chain_values, spo_chain_values_for, spo_cutpoints
from tokencredit.tasks import Example

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
    # row 0: segments [0,2) → V(2)−V(0), [2,4) → V(4)−V(2), [4,end) → R−V(4); prob mask zeroes p ≥ 0.9
    expected0 = [0.25 - 0.5, 0.0, 0.75 - 0.25, 0.0, 1.0 - 0.75, 0.0]
    # row 1: before the first cut → 0; [1,end) → R − V(1), masked where p ≥ 0.9
    expected1 = [0.0, 0.0 - 0.5, 0.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor([expected0, expected1]))
    unmasked = tc.get("advantage", "spo_chain")(batch(value), interval=1, prob_mask=False)
    assert unmasked[0, 1] == -0.25 and unmasked[1, 2] == -0.5 and unmasked[1, 0] == 0


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
    r = spo_chain_values(scorer, ex, batch(), mc_samples=3, interval=1)
    assert calls == [([[], [0, 1], [0, 1, 2, 3], [6]], 3)]  # the prefix *before* each cut token
    assert r.value[0, 2] == 0.2 and r.value[1, 1] == 0.1 and r.value[0, 1] == 0
    assert math.isclose(r.value[0, 4].item(), 0.4, rel_tol=1e-6)


def test_values_for_a_recipe_read_its_value_parameters():
    calls = []

    def scorer(examples, prefixes, k):
        calls.append((list(prefixes), k))
        return torch.zeros(len(prefixes), k)

    ex = [Example(prompt="a", answer="1"), Example(prompt="b", answer="2")]
    params = {"mc_samples": 2, "interval": 2, "max_cuts": 1, "threshold": 0.9, "prob_mask": False}
    spo_chain_values_for(scorer, ex, batch(), params)  # prob_mask only shapes the advantage
    assert calls == [([[], [6]], 2)]  # interval 2 and one cut a row: row 0 cuts at 0, row 1 at 1
    spo_chain_values_for(scorer, ex, batch(), {**params, "threshold": 0.4, "max_cuts": 25})
    assert calls[-1] == ([[0, 1]], 2)  # p < 0.4: row 0's 2 and 4 (every 2nd: 2); none in row 1


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
    assert torch.count_nonzero(spo_tree(tree_batch(prob=0.95))) == 0  # every token sampled with p ≥ 0.9


def test_depth_one_tree_is_a_plain_group():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, 100, (12, 7), generator=gen)  # distinct rows
    group = torch.tensor([0] * 5 + [3] * 4 + [9] * 3)
    reward = (torch.rand(12, generator=gen) > 0.5).float()
    lengths = torch.randint(1, 8, (12,), generator=gen).tolist()
    r = tree_batch(reward=reward.tolist(), tokens=tokens, lengths=lengths, group=group.tolist())
    kw = {"branching": [5], "segment_tokens": 3, "prob_mask": False}
    torch.testing.assert_close(spo_tree(r, mode="grpo", **kw), tc.get("advantage", "grpo")(r))
    torch.testing.assert_close(spo_tree(r, mode="rloo", **kw), tc.get("advantage", "dr_grpo")(r))


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


def spo_chain_loop(r, threshold, interval, max_cuts, prob_mask):
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
                if r.mask[i, s] and (p[i, s] < threshold or not prob_mask):
                    out[i, s] = after - r.value[i, c]
    return out


@settings(max_examples=80, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(0, 12), seed=st.integers(0, 2**16), fill=st.sampled_from([0.5, 0.9, 1.0]),
       threshold=st.sampled_from([0.0, 0.3, 0.6, 0.9]), interval=st.integers(1, 3), max_cuts=st.integers(1, 4),
       prob_mask=st.booleans())
def test_spo_chain_matches_a_loop_over_tokens(b, t, seed, fill, threshold, interval, max_cuts, prob_mask):
    gen = torch.Generator().manual_seed(seed)
    r = tc.Rollouts(group=torch.zeros(b, dtype=torch.long), mask=torch.rand(b, t, generator=gen) < fill,
                    reward=torch.randint(0, 2, (b,), generator=gen).float(),
                    logprob=-2 * torch.rand(b, t, generator=gen),
                    value=torch.randint(0, 3, (b, t), generator=gen) / 3)  # ties: equal values give exact zeros
    adv = tc.get("advantage", "spo_chain")(r, threshold=threshold, interval=interval, max_cuts=max_cuts,
                                          prob_mask=prob_mask)
    expected = spo_chain_loop(r, threshold, interval, max_cuts, prob_mask)
    torch.testing.assert_close(adv, expected, rtol=0, atol=0)
    cuts = spo_cutpoints(r, threshold, interval, max_cuts)
    assert cuts.sum(-1).le(max_cuts).all() and not (cuts & ~r.mask).any()


def test_an_interval_beyond_int32_keeps_the_first_cut():
    r = batch(torch.zeros(2, 6))
    assert spo_cutpoints(r, interval=2**40, max_cuts=2**20).nonzero().tolist() == [[0, 0], [1, 1]]
