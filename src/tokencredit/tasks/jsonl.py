"""`jsonl:<path>`: a fixed dataset of `{"prompt": ..., "answer": ...}` records, scored with math-verify.

One JSON object per line; blank lines are skipped. `prompt` (string) and `answer` (string or number) are
required; `demonstration` (string) is optional; other fields are ignored.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokencredit.rewards.verifiers import math_match, warm_up_math_verify
from tokencredit.tasks.base import Example, Task, extract_answer


def read_jsonl_examples(path: str | Path) -> list[Example]:
    """Parse and validate the records of `path`; a ValueError names the file, line and problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"jsonl: no such file {str(path)!r}")
    out: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
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
    if not out:
        raise ValueError(f"jsonl: {path} holds no records")
    return out


class JsonlTask(Task):
    """Samples records uniformly (with replacement); `instruction`, if given, is appended to each prompt."""

    def __init__(self, path: str | Path, *, instruction: str | None = None) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{path}"
        self.instruction = instruction
        self.records = read_jsonl_examples(self.path)
        warm_up_math_verify()

    def sample(self, rng: random.Random) -> Example:
        record = self.records[rng.randrange(len(self.records))]
        if self.instruction:
            record = Example(
                record.prompt + "\n" + self.instruction,
                record.answer,
                record.demonstration,
                record.source_index,
            )
        return record

    def score(self, response: str, example: Example) -> float:
        """1.0 iff the final `answer:` value is mathematically equal to the gold answer (see `math_match`)."""
        return math_match(extract_answer(response), example.answer)
