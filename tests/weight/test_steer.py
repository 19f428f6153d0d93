import math

import pytest
import torch

import tokencredit as tc
from helpers import rollouts

P = [[0.5, 0.25, 0.9], [0.5, 1.0, 0.9]]  # 0.9s lie outside the mask (lengths 2, 2)
H = [[1.0, 0.5, 9.0], [0.2, 0.0, 9.0]]
A = [[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]


def _batch():
    return rollouts([1.0, 0.0], [0, 0], [2, 2], width=3, logprob=torch.tensor(P).log(), entropy=torch.tensor(H))


def _omega(i, t):  # A·(1 − p)·(log p + H), written out per token
    return A[i][t] * (1 - P[i][t]) * (math.log(P[i][t]) + H[i][t])


def test_entropy_change_by_hand():
    from tokencredit.weight.steer import entropy_change

    expected = [[_omega(0, 0), _omega(0, 1), 0.0], [_omega(1, 0), _omega(1, 1), 0.0]]
    torch.testing.assert_close(entropy_change(_batch(), torch.tensor(A)), torch.tensor(expected))
    assert expected[0][1] < 0 < expected[0][0]  # the sign follows the quadrant (probability × advantage)


def test_exponential_weights_by_hand():
    steer = tc.get("weight", "steer")
    omega = [[abs(_omega(i, t)) for t in range(2)] for i in range(2)]
    rate = -math.log(0.8) / max(max(row) for row in omega)  # the largest |Ω| (token (0, 1)) gets w_min
    expected = [[math.exp(-rate * o) for o in row] + [0.0] for row in omega]
    w = steer(_batch(), torch.tensor(A))
    torch.testing.assert_close(w, torch.tensor(expected))
    assert w[0, 1].item() == pytest.approx(0.8) and w[1, 1] == 1.0
    # response 0 dropped: the largest kept |Ω| is response 1's first token, which now gets w_min
    kept = _batch().mask & torch.tensor([[False], [True]])
    assert steer(_batch(), torch.tensor(A), keep=kept)[1, 0].item() == pytest.approx(0.8)
    # every |Ω| below 0.02: k uses 0.02, so no token is pushed down to w_min
    small = steer(_batch(), torch.tensor(A) * 1e-3)
    assert small[0, 1].item() == pytest.approx(math.exp(math.log(0.8) * abs(_omega(0, 1)) * 1e-3 / 0.02))
    nothing_kept = steer(_batch(), torch.tensor(A), keep=torch.zeros_like(_batch().mask))
    torch.testing.assert_close(nothing_kept, _batch().mask.float())


def test_an_impossible_token_does_not_set_the_scale_alone():
    # p = 0 (log p = −∞): clamped to 1e-8 as the paper's code does, so weights stay finite and the others move
    logprob = torch.tensor(P).log()
    logprob[0, 0] = -float("inf")
    r = rollouts([1.0, 0.0], [0, 0], [2, 2], width=3, logprob=logprob, entropy=torch.tensor(H))
    for advantage in (torch.tensor(A), torch.zeros(2, 3)):
        w = tc.get("weight", "steer")(r, advantage)
        assert torch.isfinite(w).all() and w[0, 0].item() == pytest.approx(0.8 if advantage.any() else 1.0)
    expected = 1.0 * (1 - 1e-8) * (math.log(1e-8) + 1.0)
    from tokencredit.weight.steer import entropy_change
    assert entropy_change(r, torch.tensor(A))[0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_linear_weights_and_the_degenerate_case():
    steer = tc.get("weight", "steer")
    omega = [[abs(_omega(i, t)) for t in range(2)] for i in range(2)]
    low, high = min(min(r) for r in omega), max(max(r) for r in omega)
    expected = [[1.2 - (o - low) * 0.4 / (high - low) for o in row] + [0.0] for row in omega]
    torch.testing.assert_close(steer(_batch(), torch.tensor(A), w_max=1.2, mode="linear"), torch.tensor(expected))
    flat = tc.get("advantage", "grpo")(_batch())
    torch.testing.assert_close(steer(_batch(), flat, w_min=1.0, w_max=1.0), _batch().mask.float())
    # nothing to rank: the middle of [w_min, w_max]
    torch.testing.assert_close(steer(_batch(), torch.zeros(2, 3), w_max=1.2, mode="linear"), _batch().mask.float())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"mode": "cubic"}, "mode"), ({"w_min": 0.9, "w_max": 0.8, "mode": "linear"}, "w_min, w_max"),
     ({"w_min": 1.1, "w_max": 1.2}, "mode 'exp'"), ({"w_max": 0.9}, "mode 'exp'")],
)
def test_bad_parameters_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tc.get("weight", "steer")(_batch(), torch.tensor(A), **kwargs)
    with pytest.raises(ValueError, match=r"Rollouts\.logprob"):
        tc.get("weight", "steer")(rollouts([1.0], [0], [1], entropy=torch.ones(1, 1)), torch.ones(1, 1))
