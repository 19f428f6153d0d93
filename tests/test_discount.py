import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencredit.discount import discounted_reverse_cumsum


def loop_reference(x, gamma):
    out = torch.zeros_like(x)
    running = torch.zeros(x.shape[0], dtype=x.dtype)
    for t in reversed(range(x.shape[1])):
        running = x[:, t] + gamma * running
        out[:, t] = running
    return out


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(0, 200), gamma=st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]))
def test_matches_loop(b, t, gamma):
    x = torch.randn(b, t, dtype=torch.float64)
    expected = loop_reference(x, gamma)
    torch.testing.assert_close(discounted_reverse_cumsum(x, gamma), expected)
    out = torch.full_like(x, float("nan"))  # written in full, whether T is a whole number of chunks or not
    assert discounted_reverse_cumsum(x, gamma, out=out) is out
    torch.testing.assert_close(out, expected)


def test_long_sequence_small_gamma_stays_finite():
    x = torch.ones(2, 5000)
    y = discounted_reverse_cumsum(x, 0.5)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, 0], torch.full((2,), 2.0))


def test_out_must_not_share_memory_with_the_input():
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="out"):
        discounted_reverse_cumsum(x, 0.9, out=x)
