"""`chain_sum`: add a short chain of small numbers, writing the running sum step by step (the default task).

    prompt         "7+9+8="
    demonstration  "7+9=16 16+8=24\nanswer: 24"

With probability `mistake_rate` per step the written result is off by ±1 or ±2, and the error propagates:
later steps add to the wrong value correctly, so a demonstration stays locally plausible while its final
answer is wrong. A new mistake never exactly cancels the earlier ones, so a demonstration's answer is
right iff it contains no mistake.

`round_up_rate` adds a *systematic* habit on top: a step that adds 8 or 9 is written, with that probability,
as if 10 had been added (the term "rounded up", one or two too many). Above 0.5 the habit is the
demonstrations' majority, so a warm-started model makes it even under greedy decoding, and only a verifiable
reward can correct it. The demo uses 0.6.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from tokencredit.tasks.base import Example, Task, check_range, check_rate, format_answer


@dataclass(frozen=True)
class ChainSum(Task):
    """Sum `num_terms` integers drawn uniformly from `term_range` (both ranges inclusive)."""

    num_terms: tuple[int, int] = (3, 5)
    term_range: tuple[int, int] = (1, 9)
    mistake_rate: float = 0.2
    round_up_rate: float = 0.0

    name: ClassVar[str] = "chain_sum"

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_terms", check_range("num_terms", self.num_terms, low=2))
        object.__setattr__(self, "term_range", check_range("term_range", self.term_range, low=0))
        object.__setattr__(self, "mistake_rate", check_rate("mistake_rate", self.mistake_rate))
        object.__setattr__(self, "round_up_rate", check_rate("round_up_rate", self.round_up_rate))

    def sample(self, rng: random.Random) -> Example:
        terms = [rng.randint(*self.term_range) for _ in range(rng.randint(*self.num_terms))]
        # Mistakes draw from their own stream: the same seed gives the same prompts at any mistake_rate.
        mistake_rng = random.Random(rng.getrandbits(64))
        steps, running, error = [], terms[0], 0
        for term in terms[1:]:
            value = running + term
            if mistake_rng.random() < self.mistake_rate:
                deltas = [d for d in (-2, -1, 1, 2) if error + d != 0 and value + d >= 0]
                delta = mistake_rng.choice(deltas)
                value, error = value + delta, error + delta
            elif term >= 8 and error != term - 10 and mistake_rng.random() < self.round_up_rate:
                value, error = running + 10, error + 10 - term
            steps.append(f"{running}+{term}={value}")
            running = value
        return Example(
            prompt="+".join(map(str, terms)) + "=",
            answer=str(sum(terms)),
            demonstration=" ".join(steps) + "\n" + format_answer(running),
        )
