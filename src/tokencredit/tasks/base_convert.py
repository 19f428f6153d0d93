"""`base_convert`: write a number in binary by repeated halving, one `number:remainder` step per bit.

    prompt         "bin 13="
    demonstration  "13:1 6:0 3:1 1:1\nanswer: 1101"

The answer is the remainders read backwards. With probability `mistake_rate` per halving the next number
is off by one (never at the last step, smaller than the number halved and no longer in bits than the right
value, so a response never gains a step); later steps halve the wrong number correctly. An off-by-one at
step k shifts the result by ±2^(k+1), and such shifts cannot cancel, so a demonstration's answer is right
iff it contains no mistake.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from tokencredit.tasks.base import Example, Task, check_range, check_rate, format_answer


@dataclass(frozen=True)
class BaseConvert(Task):
    """Convert an integer drawn uniformly from `number_range` (inclusive, >= 1) to binary."""

    number_range: tuple[int, int] = (2, 63)
    mistake_rate: float = 0.2

    name: ClassVar[str] = "base_convert"

    def __post_init__(self) -> None:
        object.__setattr__(self, "number_range", check_range("number_range", self.number_range, low=1))
        object.__setattr__(self, "mistake_rate", check_rate("mistake_rate", self.mistake_rate))

    def sample(self, rng: random.Random) -> Example:
        number = rng.randint(*self.number_range)
        mistake_rng = random.Random(rng.getrandbits(64))
        steps, bits, n = [], [], number
        while n > 0:
            bits.append(n % 2)
            steps.append(f"{n}:{n % 2}")
            half = n // 2
            if half > 0 and mistake_rng.random() < self.mistake_rate:
                # Off by one, but never longer (in bits) than the right value: the response stays short.
                wrong = [h for h in (half - 1, half + 1) if h < n and h.bit_length() <= half.bit_length()]
                half = mistake_rng.choice(wrong)
            n = half
        return Example(
            prompt=f"bin {number}=",
            answer=format(number, "b"),
            demonstration=" ".join(steps) + "\n" + format_answer("".join(map(str, reversed(bits)))),
        )
