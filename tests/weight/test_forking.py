import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tokencredit as tc
from helpers import rollouts
from tokencredit.masked import token_count
from tokencredit.weight import forking
from tokencredit.weight.forking import top_count, top_fraction_mask


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



# ------------------------------------------------------------------------------------------------ exactness
# `top_fraction_mask` ranks by a sampled bracket, counts and a small exact `kthvalue` instead of a `topk` over
# every candidate; its output must be today's, bit for bit. The reference is today's implementation.


def _topk_reference(score, candidates, top, within):
    """The `topk`-threshold selection as it was: the top `top_count(n, top)` candidate scores and every score
    tied with the last of them pass, on `within`."""
    if top == 1.0:
        return within.float()
    values = score[candidates]
    if values.numel() == 0:
        return torch.zeros(within.shape)
    threshold = torch.topk(values, top_count(values.numel(), top)).values[-1]
    return ((score >= threshold) & within).float()


_POOLS = {
    "ties": st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    "signed zeros and infinities": st.sampled_from([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf]),
    "wide": st.floats(-1e4, 1e4, allow_nan=False),
    "tiny": st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 1e-38, 5e-45]),
    "with NaN": st.sampled_from([0.0, 1.0, -1.0, math.nan]),
}
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# the bracketing path on small inputs: no compacting shortcut, a sample of a few candidates, and (margin 0) a
# bracket that misses often, so the widening retry runs too
_PATHS = {
    "as configured": {},
    "bracket": {"_SMALL": 0, "_SAMPLE": 4, "_MIN_SAMPLE": 1},
    "bracket, ties at its ends split off": {"_SMALL": 0, "_SAMPLE": 4, "_MIN_SAMPLE": 1, "_WIDE": 0.0},
    "bracket, ranked whole": {"_SMALL": 0, "_SAMPLE": 4, "_MIN_SAMPLE": 1, "_WIDE": math.inf},
    "bracket that misses": {"_SMALL": 0, "_SAMPLE": 2, "_MIN_SAMPLE": 1, "_MARGIN": 0.0},
}


@st.composite
def _selection_case(draw):
    rows, width = draw(st.integers(0, 7)), draw(st.integers(0, 13))
    pool = draw(st.sampled_from(sorted(_POOLS)))
    dtype = draw(st.sampled_from(_DTYPES))
    values = draw(st.lists(_POOLS[pool], min_size=rows * width, max_size=rows * width))
    score = torch.tensor(values, dtype=torch.float64).reshape(rows, width).to(dtype)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=rows * width, max_size=rows * width)),
                        dtype=torch.bool).reshape(rows, width)
    keep = torch.tensor(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), dtype=torch.bool)
    top = draw(st.one_of(st.sampled_from([1e-9, 0.01, 0.2, 0.5, 0.999, 1.0]),
                         st.floats(0.0, 1.0, exclude_min=True)))
    return score, mask, keep, top


@pytest.mark.parametrize("path", sorted(_PATHS))
@settings(max_examples=100, deadline=None)
@given(case=_selection_case())
def test_top_fraction_mask_is_the_topk_threshold_selection(path, case):
    score, mask, keep, top = case
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _PATHS[path].items():
            patch.setattr(forking, name, value)
        candidates = mask & keep[:, None]
        for ranked, within in ((mask, None), (candidates, mask), (candidates, None)):
            expected = _topk_reference(score, ranked, top, ranked if within is None else within)
            out = top_fraction_mask(score, ranked, top, within=within)
            assert out.dtype == torch.float32 and out.shape == score.shape
            assert torch.equal(out, expected), (score, ranked, top)
            strided = score.t().contiguous().t()  # the same scores, not contiguous
            assert torch.equal(top_fraction_mask(strided, ranked, top, within=within), expected)
            # into a buffer, which may be the score itself
            buffer = torch.full(score.shape, 7.0)
            assert top_fraction_mask(score, ranked, top, within=within, out=buffer) is buffer
            assert torch.equal(buffer, expected)
            if score.dtype == torch.float32:
                overwritten = score.clone()
                top_fraction_mask(overwritten, ranked, top, within=within, out=overwritten)
                assert torch.equal(overwritten, expected)


@settings(max_examples=40, deadline=None)
@given(case=_selection_case(), d3s=st.booleans(), seed=st.integers(0, 2**16))
def test_forking_and_d3s_give_the_topk_weights(case, d3s, seed):
    """The registered stages with `keep [B,T]` (kept responses, and tokens dropped within them): the quantile
    over the mask's tokens in the loss, the output on the whole mask, as the `topk` selection gave."""
    score, mask, keep, top = case
    score = score.float().abs() if d3s else score.float()
    rows, width = mask.shape
    r = tc.Rollouts(group=torch.zeros(rows, dtype=torch.long), mask=mask, reward=torch.zeros(rows),
                    entropy=score)
    advantage = torch.ones(rows, width)
    name = "d3s_tokens" if d3s else "forking_tokens"
    tokens = torch.rand(rows, width, generator=torch.Generator().manual_seed(seed)) < 0.8
    for kept in (None, mask & keep[:, None], keep[:, None] & tokens):
        ranked = mask if kept is None else mask & kept
        expected = _topk_reference(score, ranked, top, mask)
        assert torch.equal(tc.get("weight", name)(r, advantage, top=top, keep=kept), expected)


def test_beyond_2_to_the_24_elements_exact_without_ranking_every_candidate(monkeypatch):
    """16.8M elements (`torch.quantile` refuses more than 2^24): 1009 distinct scores in a scrambled order, so
    every threshold is tied thousands of times; the expected threshold comes from exact per-value counts. The
    ranking calls (`topk`, `kthvalue`, `sort`) only ever see a small fraction of the candidates."""
    rows, width = 4100, 4096
    positions = torch.arange(width, dtype=torch.int32)
    value = (torch.arange(rows, dtype=torch.int32)[:, None] * 389 + positions * 7919) % 1009
    score = value.float()
    mask = positions < (1 + (torch.arange(rows, dtype=torch.int32) * 37) % width)[:, None]
    n = int(token_count(mask))
    per_value = torch.bincount(torch.where(mask, value, 1009).reshape(-1), minlength=1010)[:1009]
    at_least = per_value.flip(0).cumsum(0).flip(0)  # at_least[v] = #candidates with score ≥ v
    ranked_sizes = []

    def recorded(fn):
        def wrapper(x, *args, **kwargs):
            ranked_sizes.append(x.numel())
            return fn(x, *args, **kwargs)

        return wrapper

    for name in ("topk", "kthvalue", "sort"):
        monkeypatch.setattr(torch, name, recorded(getattr(torch, name)))
    for top in (0.2, 0.9):
        k = top_count(n, top)
        threshold = int((at_least >= k).nonzero().max())  # the largest value with at least k candidates ≥ it
        out = top_fraction_mask(score, mask, top)
        assert torch.equal(out, ((score >= threshold) & mask).float())
        assert int(out.sum()) == int(at_least[threshold]) >= k > int(at_least[threshold + 1])
    assert ranked_sizes and max(ranked_sizes) < n // 20
