import pytest
import torch

from tokencredit.masked import last_index, masked_mean, masked_sum, masked_whiten, token_count, zero_outside

MASK = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])


def test_token_count_per_row_and_total_across_chunks(monkeypatch):
    monkeypatch.setattr("tokencredit.masked._COUNT_ROWS", 2)  # three rows: two chunks
    assert token_count(MASK, -1).tolist() == [2, 0, 2] and token_count(MASK, -1).dtype == torch.int64
    assert token_count(MASK).item() == 4
    assert token_count(torch.zeros(0, 5, dtype=torch.bool), -1).shape == (0,)
    assert token_count(torch.zeros(3, 0, dtype=torch.bool)).item() == 0
    with pytest.raises(ValueError, match="dim"):
        token_count(MASK, 0)


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
