import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokencredit.models import DEFAULT_ALPHABET, SPECIAL_TOKENS, build_char_tokenizer
from tokencredit.tasks import examples, make_task


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_special_tokens_and_vocab(tok):
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == list(SPECIAL_TOKENS)
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert len(tok) == len(SPECIAL_TOKENS) + len(set(DEFAULT_ALPHABET)) == 101
    assert tok.padding_side == "left"


TEXTS = ["3+5=8 8+2=10\nanswer: 10", "  two  spaces\n\nand\ttabs ", "a", "", "(x)/[y]?"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text


@given(st.text(alphabet=DEFAULT_ALPHABET))
def test_round_trip_any_text(text):
    tok = _TOK
    assert tok.decode(tok(text)["input_ids"]) == text


_TOK = build_char_tokenizer()


def test_unknown_characters(tok):
    ids = tok("a€b")["input_ids"]
    assert ids[1] == tok.unk_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_custom_alphabet_and_bos():
    tok = build_char_tokenizer("0123456789+= \n", add_bos=True)
    assert len(tok) == 4 + 14
    ids = tok("1+2=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 5
    assert tok.decode(ids, skip_special_tokens=True) == "1+2="
    with pytest.raises(ValueError, match="alphabet"):
        build_char_tokenizer("")


def test_left_padding(tok):
    batch = tok(["12", "3"], padding=True)
    assert batch["input_ids"][1][0] == tok.pad_token_id
    assert batch["attention_mask"] == [[1, 1], [0, 1]]


@pytest.mark.parametrize("name", ["chain_sum", "digit_sort", "base_convert"])
def test_builtin_tasks_need_no_unknown_token(tok, name):
    for ex in examples(make_task(name), 200, seed=0):
        for text in (ex.prompt, ex.demonstration):
            assert tok.unk_token_id not in tok(text)["input_ids"]
