
import tokencredit as tc
from helpers import rollouts


def test_dynamic_filter_drops_all_equal_and_single_groups():
    r = rollouts([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [5, 5, 2, 2, 9, 3], [1] * 6)
    keep = tc.get("select", "dynamic_filter")(r)
    assert keep.tolist() == [True, True, False, False, False, False]


def test_negative_samples_keeps_negative_responses():
    r = rollouts([1.0, 0.0, 0.0], [0, 0, 0], [2, 2, 0])
    adv = tc.get("advantage", "grpo")(r)
    assert tc.get("select", "negative_samples")(r, adv).tolist() == [False, True, False]
