import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencredit.masked import (
    as_float,
    last_index,
    masked_mean,
    masked_sum,
    masked_whiten,
    masked_whiten_,
    masked_whiten_rows,
    pack,
    packing,
    rows_kept,
    token_count,
    true_positions,
    unpack,
    zero_outside,
)

MASK = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])


def test_pack_moves_each_rows_tokens_to_its_front_and_unpack_puts_them_back():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    where = packing(MASK)  # row 2 has a hole
    assert torch.equal(pack(x, where), torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [7.0, 9.0, 0.0]]))
    assert torch.equal(unpack(pack(x, where), where), torch.where(MASK, x, 0.0))
    assert packing(torch.tensor([[True, True, False], [False, False, False]])) is None  # no holes: nothing to do
    assert packing(torch.zeros(0, 3, dtype=torch.bool)) is None and packing(torch.zeros(2, 0, dtype=torch.bool)) is None


def test_token_count_per_row_and_total():
    assert token_count(MASK, -1).tolist() == [2, 0, 2] and token_count(MASK, -1).dtype == torch.int64
    assert token_count(MASK).item() == 4
    assert token_count(torch.zeros(0, 5, dtype=torch.bool), -1).shape == (0,)
    assert token_count(torch.zeros(3, 0, dtype=torch.bool)).item() == 0
    with pytest.raises(ValueError, match="dim"):
        token_count(MASK, 0)


@pytest.mark.parametrize("words_per_sum", [1, 255])
def test_token_count_word_sums_never_carry_between_bytes(monkeypatch, words_per_sum):
    monkeypatch.setattr("tokencredit.masked._WORDS_PER_SUM", words_per_sum)
    full = torch.ones(2, 8 * 255 * 3 + 5, dtype=torch.bool)  # 765 words: each byte lane would hold 765 > 255
    full[1, ::3] = False
    assert token_count(full, -1).tolist() == full.sum(-1).tolist()


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 6), width=st.integers(0, 40), start=st.integers(0, 9), p=st.floats(0, 1),
       seed=st.integers(0, 2**16))
def test_word_counts_and_last_index_for_any_layout(rows, width, start, p, seed):
    """Odd widths, row and column slices (unaligned or strided storage) count like `mask.sum` and find the last
    true entry like a scan over positions."""
    base = torch.rand(rows + 2, width + start, generator=torch.Generator().manual_seed(seed)) < p
    for mask in (base, base[1:], base[:, start:], base[:, start:][1:, ::2], base.t()):
        assert token_count(mask, -1).tolist() == mask.sum(-1).tolist()
        assert token_count(mask).item() == mask.sum().item()
        positions = torch.arange(mask.shape[1])
        expected = torch.where(mask, positions, -1).amax(-1) if mask.shape[1] else torch.full((mask.shape[0],), -1)
        assert last_index(mask).tolist() == expected.tolist()


def test_masked_reductions_ignore_what_lies_outside_the_mask():
    x = torch.tensor([[1.0, 2.0, float("nan")], [5.0, 6.0, 7.0], [3.0, float("inf"), 4.0]])
    assert zero_outside(x, MASK).tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]]
    assert masked_sum(x, MASK, -1).tolist() == [3.0, 0.0, 7.0] and masked_mean(x, MASK).item() == 2.5
    white = masked_whiten(x, MASK)
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (kept - kept.mean()) / torch.sqrt(kept.var() + 1e-8)  # unbiased variance, as verl
    torch.testing.assert_close(white[MASK], expected)
    assert (white[~MASK] == 0).all()
    assert last_index(MASK).tolist() == [1, -1, 2]
    assert last_index(torch.zeros(2, 0, dtype=torch.bool)).tolist() == [-1, -1]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 6), width=st.integers(0, 12), p=st.floats(0, 1), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_whitening_variants_agree(rows, width, p, scale, seed):
    """In place, per-row closed form and the plain version give the same result, including empty masks. The
    closed form works in float64, so it is compared with the float64 plain version."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, width, generator=gen) < p
    values = torch.randn(rows, generator=gen) * scale + scale
    broadcast = values[:, None].expand(rows, width)
    exact = masked_whiten(broadcast.double(), mask).float()
    torch.testing.assert_close(masked_whiten_rows(values, mask), exact, rtol=1e-5, atol=1e-5)
    x = broadcast.clone()
    assert masked_whiten_(x, mask).data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, masked_whiten(broadcast, mask))


@pytest.mark.parametrize("value", [0.1, 123456.7, 1677722.5, 3.3e7])
def test_an_all_equal_batch_whitens_to_exact_zeros(value):
    """The mean is summed in float64, so `x − mean` is exactly 0: a float32 sum's rounding (≈ 1e-7·|x|) divided by
    sqrt(0 + eps) made this up to ±0.9 for some widths, and `masked_whiten_rows` (float64) disagreed."""
    for width in range(1, 40):
        mask = torch.ones(2, width, dtype=torch.bool)
        mask[1, width // 2 :] = False
        x = torch.full((2, width), value)
        assert torch.count_nonzero(masked_whiten(x, mask)) == 0, width
        assert torch.count_nonzero(masked_whiten_rows(torch.full((2,), value), mask)) == 0, width


def test_zero_outside_broadcasts_a_column_and_masks_in_place():
    column = torch.tensor([[1.0], [2.0], [3.0]])
    assert zero_outside(column, MASK).tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 3.0]]
    x = torch.ones(3, 3)
    assert zero_outside(x, MASK, out=x) is x and x.sum().item() == 4


def test_masks_must_be_bool_and_empty_rows_cannot_spread_nan():
    with pytest.raises(ValueError, match="mask: expected a bool tensor"):
        token_count(MASK.float())
    with pytest.raises(ValueError, match="mask: expected a bool tensor"):
        last_index(MASK.int())
    white = masked_whiten_rows(torch.tensor([1.0, float("nan"), 3.0]), MASK)  # row 1 has no tokens
    assert torch.isfinite(white).all() and white[1].abs().sum() == 0
    assert masked_whiten_rows(torch.tensor([1, 5, 3]), MASK).dtype == torch.float32
    assert masked_sum(MASK, MASK).dtype == torch.float32  # integer inputs are promoted, as before


_SPECIAL = [0.0, -0.0, 1.5, -2.25, float("nan"), float("inf"), -float("inf"), 1e-40, -3e38]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 6), width=st.integers(0, 20), p=st.floats(0, 1), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_a_column_broadcast_over_the_mask_is_where_bit_for_bit(rows, width, p, seed, dtype):
    """`zero_outside(column, mask)` (one value per row, the grpo broadcast) takes an integer path on CPU: the
    bits must be `torch.where`'s, NaN payloads, −0.0 and infinities included, for every float width."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(rows + 1, width + 2, generator=gen) < p
    for mask in (base, base[1:, 2:], base.t()):
        picks = torch.randint(len(_SPECIAL), (mask.shape[0] * 2,), generator=gen)
        column = torch.tensor(_SPECIAL)[picks].to(dtype)[::2, None]  # a strided view, as `x[:, None]` may be
        got = zero_outside(column, mask)
        expected = torch.where(mask, column, torch.zeros((), dtype=dtype))
        assert got.dtype == dtype and got.shape == mask.shape
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
        assert torch.equal(got.contiguous().view(bits), expected.contiguous().view(bits))
        assert torch.equal(as_float(mask), mask.float())
        keep = torch.rand(mask.shape[0], generator=gen) < 0.5
        assert torch.equal(rows_kept(mask, keep), mask & keep[:, None])


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 6), width=st.integers(0, 40), start=st.integers(0, 9), p=st.floats(0, 1),
       seed=st.integers(0, 2**16))
def test_true_positions_for_any_layout(rows, width, start, p, seed):
    base = torch.rand(rows + 2, width + start, generator=torch.Generator().manual_seed(seed)) < p
    for mask in (base, base[1:], base[:, start:], base[:, start:][1:, ::2], base.t(), base.reshape(-1)[start:]):
        assert torch.equal(true_positions(mask), mask.reshape(-1).nonzero().squeeze(1))


def test_a_column_that_requires_grad_keeps_its_gradient():
    column = torch.tensor([[2.0], [3.0], [5.0]], requires_grad=True)
    zero_outside(column, MASK).sum().backward()
    assert column.grad.tolist() == [[2.0], [0.0], [2.0]]
