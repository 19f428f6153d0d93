import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokencredit as tc
from helpers import rollouts
from tokencredit.weight import steer as steer_module
from tokencredit.weight.steer import MODES, entropy_change

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
    assert torch.equal(steer(_batch(), torch.tensor(A), keep=torch.ones(2, 3, dtype=torch.bool)), w)  # all kept
    nothing_kept = steer(_batch(), torch.tensor(A), keep=torch.zeros_like(_batch().mask))
    torch.testing.assert_close(nothing_kept, _batch().mask.float())
    empty = rollouts([1.0, 0.0], [0, 0], [0, 0], width=3, logprob=torch.tensor(P).log(), entropy=torch.tensor(H))
    for params in ({}, {"mode": "linear", "w_max": 1.2}):  # no token at all: no count taken, 0 everywhere
        assert torch.equal(steer(empty, torch.tensor(A), **params), torch.zeros(2, 3))


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


# ------------------------------------------------------------------------------------------------ exactness
# `steer` computes in place, block by block, with the mask applied as an integer AND and the maximum taken per
# row; its output must be the formula's as written before (copied here verbatim as the reference).


def _steer_reference(r, advantage, w_min=0.8, w_max=1.0, mode="exp", keep=None, omega=None):
    """The formula as written; with `omega` (|Ω| [B,T]) only the weights' half of it, from that |Ω|."""
    if omega is None:
        p = r.logprob.float().exp().clamp(1e-8, 1.0 - 1e-8)
        omega = torch.where(r.mask, advantage.float() * (1.0 - p) * (p.log() + r.entropy.float()), 0.0).abs()
    candidates = omega[r.mask if keep is None else r.mask & keep]
    if candidates.numel() == 0:
        return r.mask.float()
    largest = candidates.max()
    if mode == "exp":
        rate = -math.log(w_min) / largest.clamp(min=0.02)
        weight = torch.exp(-rate * omega)
    else:
        smallest = candidates.min()
        spread = largest - smallest
        ranked = w_max - (omega - smallest) * ((w_max - w_min) / spread.clamp(min=torch.finfo(omega.dtype).tiny))
        weight = torch.where(spread > 0, ranked, (w_min + w_max) / 2)
    return torch.where(r.mask, weight.clamp(w_min, w_max), 0.0)


_LOGPROB = st.one_of(st.sampled_from([0.0, -1e-9, -0.5, -18.42, -18.43, -30.0, -math.inf, 0.3]),
                     st.floats(-25.0, 0.0))
_ENTROPY = st.one_of(st.sampled_from([0.0, 0.5, 18.42, 1e-30]), st.floats(0.0, 12.0))
_ADVANTAGE = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-6]), st.floats(-5.0, 5.0))


@st.composite
def _steer_case(draw):
    rows, width = draw(st.integers(0, 6)), draw(st.integers(0, 9))
    size = rows * width

    def field(elements):
        return torch.tensor(draw(st.lists(elements, min_size=size, max_size=size)), dtype=torch.float32).reshape(
            rows, width)

    logprob, entropy, advantage = field(_LOGPROB), field(_ENTROPY), field(_ADVANTAGE)
    if draw(st.booleans()):  # padding may hold anything, NaN and inf included
        junk = torch.tensor([math.nan, math.inf, -math.inf, 7.0])
        pick = torch.arange(size).reshape(rows, width) % 4
        logprob, entropy = (torch.where(torch.rand(rows, width) < 0.5, junk[pick], x) for x in (logprob, entropy))
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=torch.bool)
    r = tc.Rollouts(group=torch.zeros(rows, dtype=torch.long), mask=mask.reshape(rows, width),
                    reward=torch.zeros(rows), logprob=logprob, entropy=entropy)
    keep = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=size, max_size=size).map(
        lambda k: torch.tensor(k, dtype=torch.bool).reshape(rows, width))))  # the tokens in the loss
    mode = draw(st.sampled_from(MODES))
    w_min = draw(st.sampled_from([0.8, 0.5, 1.0, 0.01]))
    w_max = 1.0 if mode == "exp" else draw(st.sampled_from([w_min, 1.0, 1.2]))
    return r, advantage, {"w_min": w_min, "w_max": w_max, "mode": mode, "keep": keep}


# eager with blocks as configured (one block here) or of 7 elements; or fused=True's kernels, run uncompiled
@pytest.mark.parametrize("path", ["eager", "blocks of 7", "fused"])  # (compiled in the test after this one)
@settings(max_examples=120, deadline=None)
@given(case=_steer_case())
def test_steer_is_the_formula_as_written(path, case):
    r, advantage, params = case
    with pytest.MonkeyPatch.context() as patch:
        if path == "fused":
            patch.setattr(steer_module, "_compiled", lambda kernel: kernel)
        elif path == "blocks of 7":
            patch.setattr(steer_module, "_CHUNK", 7)
        w = tc.get("weight", "steer")(r, advantage, **params, fused=path == "fused")
        omega = entropy_change(r, advantage)
    assert w.dtype == torch.float32 and w.shape == r.mask.shape
    # float32 rounding apart: log p is the clamped log-prob (not log(exp(·))) and exponentials are exp2, so Ω
    # may differ by a few ulp of its terms A·(1 − p)·log p and A·(1 − p)·H (more than of Ω itself where they cancel)
    p = r.logprob.exp().clamp(1e-8, 1.0 - 1e-8)
    expected_omega = torch.where(r.mask, advantage * (1.0 - p) * (p.log() + r.entropy), 0.0)
    scale = torch.where(r.mask, advantage.abs() * (p.log().abs() + r.entropy), 0.0)
    close = (omega - expected_omega).abs() <= 1e-6 * scale + 1e-30
    assert (close | (omega == expected_omega) | (omega.isnan() & expected_omega.isnan())).all()
    # the weights are the formula's function of that Ω (exp2 for exp: ≤ 2e-6 relative). Against the verbatim
    # float32 formula they can differ more where log p + H cancels: a 1e-6 error of Ω times a rate up to
    # −ln(w_min)/0.02, or over a tiny spread in linear mode (2% measured) — the formula's conditioning, not steer's
    torch.testing.assert_close(w, _steer_reference(r, advantage, **params, omega=omega.abs()), rtol=2e-6, atol=0.0,
                               equal_nan=True)


def test_fused_kernels_compile_to_the_eager_weights():
    # one torch.compile per kernel variant (20–30 s the first time on a machine, a few seconds with inductor's cache)
    gen = torch.Generator().manual_seed(0)
    rows, width = 48, 37
    mask = torch.rand(rows, width, generator=gen) < 0.7
    logprob = torch.where(mask, -torch.rand(rows, width, generator=gen) * 4, math.nan)  # junk in the padding
    entropy = torch.where(mask, torch.rand(rows, width, generator=gen) * 2, math.inf)
    r = tc.Rollouts(group=torch.zeros(rows, dtype=torch.long), mask=mask, reward=torch.zeros(rows), logprob=logprob,
                    entropy=entropy)
    advantage = torch.randn(rows, width, generator=gen)
    keep = mask & (torch.rand(rows, width, generator=gen) < 0.5)
    steer = tc.get("weight", "steer")
    linear = {"mode": "linear", "w_max": 1.2}
    for params in ({}, {"keep": keep}, linear, {**linear, "keep": keep}):
        eager, fused = steer(r, advantage, **params), steer(r, advantage, **params, fused=True)
        torch.testing.assert_close(fused, eager, rtol=2e-6, atol=0.0)
        assert torch.equal(fused == 0, ~mask)


def test_fused_names_the_option_when_compilation_fails(monkeypatch):
    def broken(kernel, **options):
        def run(*args):
            raise OSError("no C++ compiler")
        return run

    steer_module._compiled.cache_clear()
    monkeypatch.setattr(torch, "compile", broken)
    try:
        with pytest.raises(RuntimeError, match=r"fused: .*no C\+\+ compiler.*set fused: false"):
            tc.get("weight", "steer")(_batch(), torch.tensor(A), fused=True)
    finally:
        steer_module._compiled.cache_clear()
