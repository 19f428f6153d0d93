"""The task interface shared by every prompt source: `Example`, `Task`, the answer-line format, `examples`.

Every task asks the model to end its response with a final line `answer: <value>`; `extract_answer` reads it
back. A task samples examples from a `random.Random` (so a seed fixes a whole data stream) and scores a
response against an example with a verifier (1.0 correct, 0.0 wrong, or partial credit where the source
defines it).
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

ANSWER_PREFIX = "answer:"
HELD_OUT_SEED_OFFSET = 1_000_003  # the default held-out set is drawn from a stream disjoint from training's
_ANSWER_LINE = re.compile(r"^[ \t]*answer[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Example:
    """One prompt with its ground truth.

    `demonstration` is a full worked response for a supervised warm start; it may contain mistakes on
    purpose (procedural tasks) and is None where the source has none. `source_index` is the item's position
    in the task's underlying dataset (reasoning-gym, JSONL) so its verifier can find the item again; None
    for procedural tasks.
    """

    prompt: str
    answer: str
    demonstration: str | None = None
    source_index: int | None = None


class Task(ABC):
    """A source of verifiable examples: `sample` one from an RNG, `score` a response against it."""

    name: str

    @abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """One example drawn with `rng` (the only source of randomness, so streams are reproducible)."""

    def score(self, response: str, example: Example) -> float:
        """1.0 iff the response's final `answer:` line equals the example's answer exactly (after strip)."""
        return exact_answer_score(response, example.answer)

    def held_out(self, n: int, seed: int) -> list[Example]:
        """The evaluation set of a run with seed `seed`: `n` examples kept apart from training. Default: `n` draws
        from the stream of seed `seed + HELD_OUT_SEED_OFFSET`, not the training stream (`random.Random(seed)`);
        right for generated tasks with a large example space. Dataset-backed tasks override it with records
        that training never draws (and may return fewer than `n`)."""
        return examples(self, n, seed + HELD_OUT_SEED_OFFSET)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def format_answer(value: object) -> str:
    """The final line of a response: `answer: <value>`."""
    return f"{ANSWER_PREFIX} {value}"


def extract_answer(response: str) -> str | None:
    """The value of the last line that starts with `answer:` (case-insensitive, surrounding blanks ignored).

    None when there is no such line or its value is empty. Never raises on garbage input.
    """
    if not isinstance(response, str):
        return None
    matches = _ANSWER_LINE.findall(response)
    if not matches:
        return None
    value = matches[-1].strip()
    return value or None


def exact_answer_score(response: str, answer: str) -> float:
    """1.0 iff `extract_answer(response)` equals `answer` (both stripped), else 0.0."""
    predicted = extract_answer(response)
    return 1.0 if predicted is not None and predicted == answer.strip() else 0.0


def examples(task: Task, n: int, seed: int) -> list[Example]:
    """`n` examples drawn from `task` with `random.Random(seed)`: a fixed, reproducible (held-out) set."""
    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    rng = random.Random(seed)
    return [task.sample(rng) for _ in range(n)]


def check_range(name: str, value: tuple[int, int], *, low: int) -> tuple[int, int]:
    """Validate an inclusive integer range `(lo, hi)` with `low <= lo <= hi`; returns it as a tuple."""
    try:
        lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a pair (lo, hi) of integers, got {value!r}") from None
    if not low <= lo <= hi:
        raise ValueError(f"{name}: expected {low} <= lo <= hi, got {value!r}")
    return lo, hi


def check_rate(name: str, value: float) -> float:
    """Validate a probability in [0, 1]."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")
    return value
