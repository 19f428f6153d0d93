"""Built-in procedural tasks: formats, hand-checked mistakes, determinism, lengths."""

import itertools
import random
import re

import pytest

from tokencredit.tasks import BaseConvert, ChainSum, DigitSort, examples, extract_answer, make_task

N = 300


def split_demo(demo: str) -> tuple[list[str], str]:
    work, last = demo.split("\n")
    assert last.startswith("answer: ")
    return work.split(" "), extract_answer(demo)


# ---- chain_sum -------------------------------------------------------------------------------------------


def test_chain_sum_hand_checked():
    ex = ChainSum().sample(random.Random(0))
    assert ex.prompt == "7+1+5+9="
    assert ex.answer == "22"
    assert ex.demonstration == "7+1=8 8+5=13 13+9=23\nanswer: 23"  # a mistake (12→13) that propagates


def chain_steps(ex):
    terms = [int(t) for t in ex.prompt.rstrip("=").split("+")]
    steps, written = split_demo(ex.demonstration)
    parsed = [tuple(map(int, re.fullmatch(r"(\d+)\+(\d+)=(\d+)", s).groups())) for s in steps]
    assert [b for _, b, _ in parsed] == terms[1:]
    assert parsed[0][0] == terms[0]
    for (_, _, c), (a, _, _) in itertools.pairwise(parsed):
        assert a == c  # each step starts from the previous written result
    assert written == str(parsed[-1][2])
    return terms, parsed


def test_chain_sum_without_mistakes_is_always_right():
    task = ChainSum(mistake_rate=0.0)
    for ex in examples(task, N, seed=1):
        terms, parsed = chain_steps(ex)
        assert all(a + b == c for a, b, c in parsed)
        assert ex.answer == str(sum(terms))
        assert task.score(ex.demonstration, ex) == 1.0


def test_chain_sum_mistakes_propagate_and_answer_is_wrong():
    task = ChainSum(mistake_rate=1.0)
    for ex in examples(task, N, seed=2):
        _, parsed = chain_steps(ex)
        assert all(1 <= abs(c - (a + b)) <= 2 for a, b, c in parsed)
        assert task.score(ex.demonstration, ex) == 0.0


def test_chain_sum_demo_is_right_iff_no_mistake():
    task = ChainSum()
    for ex in examples(task, N, seed=3):
        _, parsed = chain_steps(ex)
        clean = all(a + b == c for a, b, c in parsed)
        assert task.score(ex.demonstration, ex) == float(clean)


def test_chain_sum_ranges_respected():
    task = ChainSum(num_terms=(2, 2), term_range=(10, 12))
    for ex in examples(task, 50, seed=0):
        terms = [int(t) for t in ex.prompt.rstrip("=").split("+")]
        assert len(terms) == 2 and all(10 <= t <= 12 for t in terms)


# ---- digit_sort ------------------------------------------------------------------------------------------


def test_digit_sort_hand_checked():
    ex = DigitSort(mistake_rate=0.0).sample(random.Random(5))
    digits = ex.prompt.removeprefix("sort ").rstrip("=")
    assert ex.answer == "".join(sorted(digits))
    steps, _ = split_demo(ex.demonstration)
    assert steps[-1] == ex.answer
    assert DigitSort(mistake_rate=0.0).sample(random.Random(0)).demonstration == (
        "06 046 0467 03467 034567\nanswer: 034567"
    )


def sort_steps(ex):
    digits = ex.prompt.removeprefix("sort ").rstrip("=")
    assert len(set(digits)) == len(digits)
    steps, written = split_demo(ex.demonstration)
    assert len(steps) == len(digits) - 1 and written == steps[-1]
    previous = digits[0]
    for digit, step in zip(digits[1:], steps):
        assert step.replace(digit, "") == previous  # exactly the new digit inserted, nothing reordered
        previous = step
    return steps


def test_digit_sort_without_mistakes_is_always_right():
    task = DigitSort(mistake_rate=0.0)
    for ex in examples(task, N, seed=1):
        steps = sort_steps(ex)
        assert all(list(s) == sorted(s) for s in steps)
        assert task.score(ex.demonstration, ex) == 1.0


def test_digit_sort_mistakes_are_adjacent_and_answer_is_wrong():
    task = DigitSort(mistake_rate=1.0)
    for ex in examples(task, N, seed=2):
        digits = ex.prompt.removeprefix("sort ").rstrip("=")
        steps = [digits[0], *sort_steps(ex)]
        for digit, before, after in zip(digits[1:], steps, steps[1:]):
            right = next((i for i, d in enumerate(before) if d > digit), len(before))
            assert abs(after.index(digit) - right) == 1
        assert task.score(ex.demonstration, ex) == 0.0


# ---- base_convert ----------------------------------------------------------------------------------------


def test_base_convert_hand_checked():
    ex = BaseConvert(mistake_rate=0.0).sample(random.Random(0))
    assert ex.prompt == "bin 56="
    assert ex.demonstration == "56:0 28:0 14:0 7:1 3:1 1:1\nanswer: 111000"
    assert ex.answer == "111000"


def convert_steps(ex):
    number = int(ex.prompt.removeprefix("bin ").rstrip("="))
    steps, written = split_demo(ex.demonstration)
    pairs = [tuple(map(int, s.split(":"))) for s in steps]
    assert pairs[0][0] == number
    assert all(r == n % 2 for n, r in pairs)  # remainders are always computed right
    assert written == "".join(str(r) for _, r in reversed(pairs))
    return number, pairs


def test_base_convert_without_mistakes_is_always_right():
    task = BaseConvert(mistake_rate=0.0)
    for ex in examples(task, N, seed=1):
        number, pairs = convert_steps(ex)
        assert [n for n, _ in pairs[1:]] == [n // 2 for n, _ in pairs[:-1]]
        assert pairs[-1][0] == 1
        assert ex.answer == bin(number)[2:]
        assert task.score(ex.demonstration, ex) == 1.0


def test_base_convert_mistakes_propagate_and_answer_is_wrong():
    task = BaseConvert(mistake_rate=1.0, number_range=(1, 200))
    for ex in examples(task, N, seed=2):
        number, pairs = convert_steps(ex)
        for (n, _), (m, _) in itertools.pairwise(pairs):
            assert abs(m - n // 2) == 1 and m < n
        assert len(pairs) <= number.bit_length()  # a mistake never adds a step
        # 1 needs no halving, so there is nothing to get wrong; any other number ends up wrong
        assert task.score(ex.demonstration, ex) == float(number == 1)


# ---- all built-in tasks -----------------------------------------------------------------------------------

BUILTIN = ["chain_sum", "digit_sort", "base_convert"]
MAX_PROMPT = {"chain_sum": 10, "digit_sort": 12, "base_convert": 7}
MAX_RESPONSE = {"chain_sum": 41, "digit_sort": 39, "base_convert": 41}


@pytest.mark.parametrize("name", BUILTIN)
def test_lengths_are_short(name):
    sample = examples(make_task(name), 2000, seed=0)
    assert max(len(e.prompt) for e in sample) <= MAX_PROMPT[name]
    assert max(len(e.demonstration) for e in sample) <= MAX_RESPONSE[name]
    clean = examples(make_task(name, mistake_rate=0.0), 2000, seed=0)
    assert max(len(e.demonstration) for e in clean) <= MAX_RESPONSE[name]


@pytest.mark.parametrize("name", BUILTIN)
def test_same_prompts_at_any_mistake_rate(name):
    a = examples(make_task(name, mistake_rate=0.0), 50, seed=9)
    b = examples(make_task(name, mistake_rate=1.0), 50, seed=9)
    assert [(e.prompt, e.answer) for e in a] == [(e.prompt, e.answer) for e in b]


@pytest.mark.parametrize("name", BUILTIN)
def test_default_mistakes_happen_at_a_sensible_rate(name):
    task = make_task(name)
    wrong = sum(task.score(e.demonstration, e) == 0.0 for e in examples(task, 1000, seed=0))
    assert 0.2 < wrong / 1000 < 0.8


@pytest.mark.parametrize("name", BUILTIN)
def test_score_rejects_wrong_and_missing_answers(name):
    task = make_task(name)
    ex = task.sample(random.Random(0))
    assert task.score(f"junk\nanswer: {ex.answer}", ex) == 1.0
    assert task.score(f"answer: {ex.answer}9", ex) == 0.0
    assert task.score(ex.answer, ex) == 0.0  # no answer line
    assert task.score("", ex) == 0.0


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (ChainSum, {"num_terms": (1, 3)}),
        (ChainSum, {"term_range": (5, 2)}),
        (ChainSum, {"mistake_rate": 1.5}),
        (DigitSort, {"num_digits": (3, 11)}),
        (BaseConvert, {"number_range": (0, 5)}),
        (BaseConvert, {"number_range": "ab"}),
    ],
)
def test_invalid_options(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_list_ranges_are_accepted():  # e.g. from YAML
    assert ChainSum(num_terms=[2, 3]).num_terms == (2, 3)


def test_chain_sum_round_up_habit_is_systematic():
    task = ChainSum(mistake_rate=0.0, round_up_rate=1.0, num_terms=(3, 3), term_range=(8, 8))
    ex = task.sample(random.Random(0))
    assert ex.prompt == "8+8+8=" and ex.demonstration == "8+8=18 18+8=28\nanswer: 28" and ex.answer == "24"
    clean = ChainSum(mistake_rate=0.0, round_up_rate=1.0, term_range=(1, 7))
    for e in examples(clean, 50, seed=1):
        assert e.demonstration.endswith(f"answer: {e.answer}")
