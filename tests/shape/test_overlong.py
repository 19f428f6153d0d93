import pytest
import torch

import tokencredit as tc
from helpers import rollouts
from tokencredit.shape.overlong import overlong_penalty


def test_penalty_hand_computed():
    # budget 10, cache 0.2: L_cache = 2, the penalty starts after 8 tokens and reaches −1 at 10
    length = torch.tensor([0, 8, 9, 10, 12])
    torch.testing.assert_close(overlong_penalty(length, 10, 0.2), torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(length, 10, 0.0)


def test_overlong_shape_adds_the_penalty_on_the_last_token():
    r = rollouts([1.0, 1.0, 0.0], [0, 0, 0], [8, 9, 10], width=10, budget=10)
    shaped = tc.get("shape", "overlong")(r, cache=0.2)
    expected = torch.zeros(3, 10)
    expected[0, 7], expected[1, 8], expected[2, 9] = 1.0, 0.5, -1.0
    torch.testing.assert_close(shaped, expected)
    # per-token rewards keep their places; the penalty joins the last token's
    per_token = torch.zeros(3, 10)
    per_token[:, 0] = 0.25
    shaped = tc.get("shape", "overlong")(rollouts(per_token, [0, 0, 0], [8, 9, 10], width=10, budget=10))
    assert shaped[1, 0] == 0.25 and shaped[1, 8] == -0.5 and shaped[0, 7] == 0.0
    with pytest.raises(ValueError, match=r"Rollouts\.budget"):
        tc.get("shape", "overlong")(rollouts([1.0], [0], [3]))


def test_dapo_preset_filters_truncated_responses_and_punishes_long_ones():
    """The `dapo` preset: a truncated response leaves the loss (overlong filtering) although its group has mixed
    rewards, and a long correct response's advantage falls below a short correct one's (soft punishment)."""
    truncated = torch.tensor([False, False, False, True])
    r = rollouts([1.0, 1.0, 0.0, 0.0], [0, 0, 0, 0], [3, 9, 4, 10], width=10, budget=10, truncated=truncated)
    credit = tc.recipe("dapo").credit(r)
    assert credit.keep.tolist() == [True, True, True, False]
    assert credit.advantage[0, 0] > credit.advantage[1, 0] > 0 > credit.advantage[2, 0]
    # without the penalty the two correct responses would get the same advantage
    plain = tc.recipe("dapo", shape="outcome", shape_params={}).credit(r)
    assert plain.advantage[0, 0] == plain.advantage[1, 0]
