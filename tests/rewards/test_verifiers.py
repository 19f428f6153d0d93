import threading

import pytest

from tokencredit.rewards import exact_match, math_match


@pytest.mark.parametrize(
    ("predicted", "gold", "expected"),
    [
        ("0.5", "1/2", 1.0),
        ("\\frac{1}{2}", "1/2", 1.0),
        ("$\\frac{1}{2}$", "0.5", 1.0),
        ("3", "3.0", 1.0),
        ("$x+1$", "$1+x$", 1.0),
        ("x+1", "1+x", 0.0),  # bare symbolic expressions are not parsed: string comparison
        ("0.51", "1/2", 0.0),
        ("hello", "hello", 1.0),  # unparseable: string comparison
        (" hello ", "hello", 1.0),
        ("hell", "hello", 0.0),
        (None, "1", 0.0),
        ("", "1", 0.0),
        ("(((", "1", 0.0),
    ],
)
def test_math_match(predicted, gold, expected):
    assert math_match(predicted, gold) == expected


def test_math_match_in_worker_thread():
    out = []
    thread = threading.Thread(target=lambda: out.append(math_match("0.5", "1/2")))
    thread.start()
    thread.join()
    assert out == [1.0]


def test_exact_match():
    assert exact_match(" 12\n", "12") == 1.0
    assert exact_match("12", "012") == 0.0
    assert exact_match(None, "1") == 0.0
