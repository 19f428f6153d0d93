import math

import pytest
import torch

import tokencredit as tc
from helpers import rollouts
from tokencredit.inspect import credit_concentration, credit_report
from tokencredit.inspect.report import token_pieces


@pytest.mark.parametrize(
    ("credit", "mask", "expected"),
    [
        ([[1.0, 1.0], [1.0, -5.0]], [[1, 1], [1, 1]], {"tokens_with_credit": 1.0, "top_share": 5 / 8}),
        ([[0.0, 0.0], [0.0, 3.0]], [[1, 1], [1, 1]], {"tokens_with_credit": 0.25, "top_share": 1.0}),
        # uniform credit: the top 10% of 20 tokens (2) carry 10%; a masked-out 9 is not read
        ([[2.0] * 10, [2.0] * 9 + [9.0]], [[1] * 10, [1] * 9 + [0]], {"tokens_with_credit": 1.0, "top_share": 2 / 19}),
        ([[1.0, 2.0]], [[0, 0]], {"tokens_with_credit": 0.0, "top_share": 0.0}),  # no tokens
        ([[0.0, 0.0]], [[1, 1]], {"tokens_with_credit": 0.0, "top_share": 0.0}),  # no credit
    ],
)
def test_credit_concentration_by_hand(credit, mask, expected):
    got = credit_concentration(torch.tensor(credit), torch.tensor(mask, dtype=torch.bool))
    assert got == pytest.approx(expected)


def test_credit_concentration_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="top"):
        credit_concentration(torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), top=0.0)


def _batch():
    # group 0: rewards 1, 0 (GRPO advantage ±1/√2); group 7: all 0 (zero variance: DAPO drops it)
    entropy = torch.tensor([[0.1, 0.2, 0.0], [0.3, 2.0, 0.1], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    return rollouts([1.0, 0.0, 0.0, 0.0], [0, 0, 7, 7], [2, 3, 1, 0], width=3, entropy=entropy, budget=8,
                    truncated=torch.zeros(4, dtype=torch.bool))


def _text():
    return [["<a>", "\n"], ["x", "y", "z"], ["&"], []]


def test_credit_report_values_summary_and_escaping():
    recipes = [tc.recipe("grpo"), tc.recipe("dapo"), tc.recipe("forking")]
    page, summary = credit_report(_batch(), recipes, _text(), ["p0"] * 2 + ["p7"] * 2, title="t<1>")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<title>t&lt;1&gt;</title>" in page and "&lt;a&gt;" in page and "&amp;" in page and "<a>" not in page
    assert page.count("<section>") == 2 and page.count("class='response") == 4
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert f"credit {a:+.4g}" in page and f"credit {-a:+.4g}" in page
    assert 'credit -0"' not in page  # forking's zero weights on the negative response's tokens show as 0
    assert page.count("dapo (dropped)") == 2  # the zero-variance group's two responses
    tokens = 6  # response tokens in the batch; 5 of them in group 0
    assert summary["grpo"] == pytest.approx({"kept": 1.0, "tokens_with_credit": 5 / tokens, "top_share": a / (5 * a),
                                             "largest": a})
    assert summary["dapo"]["kept"] == 0.5 and summary["dapo"]["tokens_with_credit"] == pytest.approx(5 / tokens)
    assert summary["forking"]["tokens_with_credit"] < summary["dapo"]["tokens_with_credit"]


@pytest.mark.parametrize(
    ("text", "prompts", "recipes", "message"),
    [
        (_text()[:3], ["p"] * 4, ["grpo"], "token_text, prompts"),
        ([["a"], ["x", "y", "z"], ["&"], []], ["p"] * 4, ["grpo"], r"token_text\[0\]: expected 2"),
        (_text(), ["p"] * 4, ["grpo", "grpo"], "recipes: names must differ"),
    ],
)
def test_credit_report_bad_input_names_the_field(text, prompts, recipes, message):
    with pytest.raises(ValueError, match=message):
        credit_report(_batch(), [tc.recipe(n) for n in recipes], text, prompts)


def test_report_marks_colour_opacity_outcome_truncation_and_columns():
    # response 0 has a hole at column 1; response 1 (reward 0) is truncated
    mask = torch.tensor([[True, False, True], [True, True, True]])
    r = tc.Rollouts(group=torch.tensor([0, 0]), mask=mask, reward=torch.tensor([1.0, 0.0]),
                    truncated=torch.tensor([False, True]))
    page, _ = credit_report(r, [tc.recipe("grpo")], [["a", "\n"], ["x", "y", "z"]], ["<b>2+2</b>"] * 2)
    assert "<pre>&lt;b&gt;2+2&lt;/b&gt;</pre>" in page
    assert page.count("class='response correct'") == 1 and page.count("· truncated") == 1
    assert "rgba(0,150,80,1.00)' title=\"t=0 &#x27;a&#x27;" in page  # the largest |credit|: full opacity
    assert "rgba(210,40,40,1.00)' title=\"t=2 &#x27;z&#x27;" in page  # negative credit is red
    assert "title=\"t=2 &#x27;\\n&#x27; credit" in page and ">↵\n</span>" in page  # column 2, newline shown as ↵


def test_report_of_zero_width_rollouts():
    r = tc.Rollouts(group=torch.tensor([0, 0]), mask=torch.zeros(2, 0, dtype=torch.bool),
                    reward=torch.tensor([1.0, 0.0]))
    page, summary = credit_report(r, [tc.recipe("grpo")], [[], []], ["p", "p"])
    assert page.count("class='response") == 2 and summary["grpo"]["tokens_with_credit"] == 0.0


def test_token_pieces_keep_multibyte_characters_whole():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["café ok", "hello world"], trainers.BpeTrainer(
        vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    text = "café 🙂 ok"
    ids = tokenizer.encode(text)
    assert "\ufffd" in "".join(tokenizer.decode([t]) for t in ids)  # one token at a time breaks 🙂 (4 bytes)
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text and "🙂" in pieces
