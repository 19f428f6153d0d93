import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokencredit.tasks import Example, exact_answer_score, examples, extract_answer, format_answer, make_task


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("3+5=8\nanswer: 8", "8"),
        ("answer: 8", "8"),
        ("answer:8", "8"),
        ("  Answer :  12  \n", "12"),
        ("answer: 1\nmore work\nanswer: 2\ntrailing garbage", "2"),  # the last answer line wins
        ("answer: 1\nanswer:", None),  # the last answer line is the answer, and it is empty
        ("the answer: 5", None),  # must start the line
        ("no answer here", None),
        ("", None),
        ("answer:\n", None),
        ("answer: a b c", "a b c"),
        ("x\r\nanswer: 7\r\n", "7"),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_extract_answer_non_string_is_none():
    assert extract_answer(None) is None  # type: ignore[arg-type]


@given(st.text())
def test_extract_answer_never_raises_and_roundtrips(text):
    value = extract_answer(text)
    assert value is None or (value == value.strip() and value)
    # appending a well-formed final line always wins
    assert extract_answer(text + "\n" + format_answer("42")) == "42"


def test_exact_answer_score():
    assert exact_answer_score("1+1=2\nanswer: 2", "2") == 1.0
    assert exact_answer_score("answer: 02", "2") == 0.0
    assert exact_answer_score("2", "2") == 0.0


def test_examples_deterministic_by_seed():
    task = make_task("chain_sum")
    assert examples(task, 20, seed=3) == examples(task, 20, seed=3)
    assert examples(task, 20, seed=3) != examples(task, 20, seed=4)
    assert examples(task, 0, seed=0) == []
    with pytest.raises(ValueError, match="n:"):
        examples(task, -1, seed=0)


def test_example_is_frozen_and_hashable():
    ex = Example("1+2=", "3", "1+2=3\nanswer: 3")
    with pytest.raises(AttributeError):
        ex.answer = "4"  # type: ignore[misc]
    assert len({ex, Example("1+2=", "3", "1+2=3\nanswer: 3")}) == 1


def test_task_sample_uses_only_the_given_rng():
    task = make_task("digit_sort")
    random.seed(0)
    a = task.sample(random.Random(7))
    random.seed(1)
    assert task.sample(random.Random(7)) == a
