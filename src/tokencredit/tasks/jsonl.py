"""`jsonl:<path>`: a fixed dataset of `{"prompt": ..., "answer": ...}` records, scored with math-verify.

One JSON object per line (UTF-8); blank lines are skipped. `prompt` (string) and `answer` (string or number) are
required; `demonstration` (string) is optional; other fields are ignored. A fixed share of the records
(`held_out`, 10% by default, chosen by a fixed shuffle) is the held-out set: training never samples it.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokencredit.rewards.verifiers import math_match, warm_up_math_verify
from tokencredit.tasks.base import Example, Task, extract_answer


def jsonl_records(path: str | Path, what: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """`(where, line number, record)` for each JSON object of the JSONL file `path` (UTF-8, blank lines skipped),
    `where` being `path:line` for messages. The one reader of every JSONL input (tasks, recorded responses,
    preference pairs): a ValueError starting with `what` (the input's name) for a missing or empty file, and
    naming the file and line for a line that is not UTF-8 or not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {str(path)!r}")
    count = 0
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{where}: not UTF-8 text (byte {err.start} of the line: {err.reason}); save the "
                                 "file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            count += 1
            yield where, lineno, record
    if not count:
        raise ValueError(f"{what}: {path} holds no records")


def read_jsonl_examples(path: str | Path) -> list[Example]:
    """Parse and validate the records of `path`; a ValueError names the file, line and problem."""
    out: list[Example] = []
    for where, _, record in jsonl_records(path, "jsonl"):
        for field in ("prompt", "answer"):
            if field not in record:
                raise ValueError(f"{where}: missing field {field!r}")
        prompt, answer, demo = record["prompt"], record["answer"], record.get("demonstration")
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: field 'prompt' must be a string")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise ValueError(f"{where}: field 'answer' must be a string or a number")
        if demo is not None and not isinstance(demo, str):
            raise ValueError(f"{where}: field 'demonstration' must be a string")
        out.append(Example(prompt, str(answer), demo, source_index=len(out)))
    return out


class JsonlTask(Task):
    """Samples the training records uniformly (with replacement); `instruction`, if given, is appended to each
    prompt. `held_out`: the fraction of records kept for evaluation (at least one when it is > 0; chosen by a
    fixed shuffle, so every run on the file holds out the same records). With 0, or a single record, training uses
    every record and evaluation uses training records: there is no held-out set, and `held_out()` warns."""

    def __init__(self, path: str | Path, *, instruction: str | None = None, held_out: float = 0.1) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{path}"
        self.instruction = instruction
        self.records = read_jsonl_examples(self.path)
        if isinstance(held_out, bool) or not isinstance(held_out, int | float) or not 0.0 <= held_out < 1.0:
            raise ValueError(f"jsonl: held_out: expected a fraction of the records in [0, 1), got {held_out!r}")
        n = len(self.records)
        count = max(1, round(held_out * n)) if held_out > 0 else 0
        self._no_held_out = ("task_params.held_out=0" if held_out == 0 else
                             f"{n} record(s) are too few to hold any out" if count >= n else None)
        count = count if count < n else 0
        chosen = set(random.Random(0).sample(range(n), count))
        self.train_records = [r for i, r in enumerate(self.records) if i not in chosen]
        self.held_out_records = [r for i, r in enumerate(self.records) if i in chosen]
        warm_up_math_verify()

    def _prompted(self, record: Example) -> Example:
        if not self.instruction:
            return record
        return Example(record.prompt + "\n" + self.instruction, record.answer, record.demonstration,
                       record.source_index)

    def sample(self, rng: random.Random) -> Example:
        return self._prompted(self.train_records[rng.randrange(len(self.train_records))])

    def held_out(self, n: int, seed: int) -> list[Example]:
        """The first `n` held-out records (all of them when there are fewer), in file order. Without held-out
        records: `n` draws from the training records, with a warning."""
        if not self.held_out_records:
            warnings.warn(f"{self.name}: no held-out set ({self._no_held_out}); evaluating on training records",
                          stacklevel=2)
            return super().held_out(n, seed)
        return [self._prompted(r) for r in self.held_out_records[:n]]

    def score(self, response: str, example: Example) -> float:
        """1.0 iff the final `answer:` value is mathematically equal to the gold answer (see `math_match`)."""
        return math_match(extract_answer(response), example.answer)
