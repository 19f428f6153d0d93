"""`digit_sort`: sort distinct digits ascending by insertion, writing the sorted prefix after each insertion.

    prompt         "sort 3914="
    demonstration  "39 139 1349\nanswer: 1349"

Each step inserts the next digit before the first larger digit of the prefix. With probability
`mistake_rate` per step the digit lands one place off (an adjacent swap). Insertion never reorders earlier
digits, so the inversion survives to the final answer while every later step stays locally correct.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from tokencredit.tasks.base import Example, Task, check_range, check_rate, format_answer


@dataclass(frozen=True)
class DigitSort(Task):
    """Sort `num_digits` distinct decimal digits (range inclusive, at most 10)."""

    num_digits: tuple[int, int] = (3, 6)
    mistake_rate: float = 0.2

    name: ClassVar[str] = "digit_sort"

    def __post_init__(self) -> None:
        lo, hi = check_range("num_digits", self.num_digits, low=2)
        if hi > 10:
            raise ValueError(f"num_digits: digits are distinct, so at most 10; got {self.num_digits!r}")
        object.__setattr__(self, "num_digits", (lo, hi))
        object.__setattr__(self, "mistake_rate", check_rate("mistake_rate", self.mistake_rate))

    def sample(self, rng: random.Random) -> Example:
        digits = rng.sample(range(10), rng.randint(*self.num_digits))
        mistake_rng = random.Random(rng.getrandbits(64))
        prefix, steps = [digits[0]], []
        for digit in digits[1:]:
            pos = next((i for i, d in enumerate(prefix) if d > digit), len(prefix))
            if mistake_rng.random() < self.mistake_rate:
                # Every digit before `pos` is smaller and the one at `pos` is larger (digits are distinct), so
                # one place left or right makes an inversion. The prefix is never empty: one always exists.
                pos = mistake_rng.choice([p for p in (pos - 1, pos + 1) if 0 <= p <= len(prefix)])
            prefix.insert(pos, digit)
            steps.append("".join(map(str, prefix)))
        written = "".join(map(str, prefix))
        return Example(
            prompt="sort " + "".join(map(str, digits)) + "=",
            answer="".join(map(str, sorted(digits))),
            demonstration=" ".join(steps) + "\n" + format_answer(written),
        )
