import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokencredit as tc
from helpers import rollouts
from tokencredit.select.d3s import max_variance_subset


def _variance(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def test_max_variance_subset_by_hand():
    values = torch.tensor([0.0, -1.0, 0.2, 1.0, -0.5, 0.0])
    assert max_variance_subset(values, 2).tolist() == [False, True, False, True, False, False]  # {−1, 1}
    # size 3: {−1, −0.5, 1} (var 0.722) beats {−1, 0.2, 1} (0.676), {−1, −0.5, 0} and {0, 0.2, 1}
    assert max_variance_subset(values, 3).tolist() == [False, True, False, True, True, False]
    assert max_variance_subset(values, 6).all() and not max_variance_subset(values, 0).any()
    with pytest.raises(ValueError, match="size"):
        max_variance_subset(values, 7)


def test_max_variance_subset_is_shift_and_scale_proof_and_breaks_ties_to_the_smallest():
    values = torch.tensor([0.0, -1.0, 0.2, 1.0, -0.5, 0.0], dtype=torch.float64)
    for offset in (1e8, 1e12):  # raw prefix sums of x² lose a spread of 1 at these offsets
        assert max_variance_subset(values + offset, 3).tolist() == [False, True, False, True, True, False]
    huge = torch.tensor([1e200, -1e200, 0.0, 5e199], dtype=torch.float64)  # x² would overflow, or underflow
    assert max_variance_subset(huge, 2).tolist() == [True, True, False, False]
    tiny = torch.tensor([1e-200, -1e-200, 0.0, 5e-201], dtype=torch.float64)
    assert max_variance_subset(tiny, 2).tolist() == [True, True, False, False]
    assert max_variance_subset(torch.tensor([1.0, -1.0]), 1).tolist() == [False, True]  # k = 0: the smallest
    assert max_variance_subset(torch.full((4,), 3.0), 2).sum() == 2  # all equal: any two


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=8), st.data())
def test_max_variance_subset_matches_brute_force(values, data):
    size = data.draw(st.integers(1, len(values)))
    keep = max_variance_subset(torch.tensor(values), size)
    assert int(keep.sum()) == size
    best = max(_variance(list(c)) for c in itertools.combinations(values, size))
    assert _variance([v for v, k in zip(values, keep.tolist()) if k]) == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_d3s_samples_keeps_the_extreme_advantages_across_groups():
    # group 0: one right of two (A = ±0.71); group 1: all equal (A = 0); group 2: one right of four (A = 1.5, −0.5 ×3)
    r = rollouts([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0, 0, 1, 1, 2, 2, 2, 2], [2] * 8)
    adv = tc.get("advantage", "grpo")(r)
    select = tc.get("select", "d3s_samples")
    keep = select(r, adv, fraction=0.25)  # the 2 most extreme: group 2's +1.5 and group 0's −0.71
    assert keep.tolist() == [False, True, False, False, True, False, False, False]
    assert not select(r, adv, fraction=0.75)[2:4].any()  # the zero advantages are the last chosen
    assert select(r, adv, fraction=1.0).all()
    assert select(r, adv, fraction=0.01).sum() == 1  # at least one response
    with pytest.raises(ValueError, match="fraction"):
        select(r, adv, fraction=0.0)


def test_d3s_samples_rank_responses_by_their_mean_token_advantage():
    # means 0.3, −0.5, 0.5 (sums 1.2, −0.5, 1.0): the mean keeps {−0.5, 0.5}, the sum would keep {1.2, −0.5}
    r = rollouts([0.0, 0.0, 0.0], [0, 1, 2], [4, 1, 2], width=4)
    adv = torch.tensor([[0.3] * 4, [-0.5, 0, 0, 0], [0.5, 0.5, 0, 0]])
    assert tc.get("select", "d3s_samples")(r, adv, fraction=2 / 3).tolist() == [False, True, True]


def test_d3s_preset_ends_at_grpo():
    r = rollouts([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [0, 0, 0, 1, 1, 1], [3, 1, 2, 3, 0, 2], width=3,
                 entropy=torch.rand(6, 3))
    start, end = tc.recipe("d3s").credit(r, progress=0.0), tc.recipe("d3s").credit(r, progress=1.0)
    grpo = tc.recipe("grpo").credit(r)
    assert int(start.keep.sum()) == 3 and start.weight.sum() < r.mask.sum()
    torch.testing.assert_close(end.advantage, grpo.advantage)
    torch.testing.assert_close(end.weight, grpo.weight)
    assert end.keep.all()
