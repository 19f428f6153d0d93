"""`make_task(spec)`: one string names any task (built-in, `reasoning_gym:<name>`, `jsonl:<path>`)."""

from __future__ import annotations

from typing import Any

from tokencredit.tasks.base import Task
from tokencredit.tasks.base_convert import BaseConvert
from tokencredit.tasks.chain_sum import ChainSum
from tokencredit.tasks.digit_sort import DigitSort

BUILTIN_TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (ChainSum, DigitSort, BaseConvert)}
SOURCE_PREFIXES = ("reasoning_gym:", "jsonl:")
DEFAULT_TASK = "chain_sum"


def task_names() -> list[str]:
    """The built-in task names plus the source patterns `make_task` understands."""
    return [*BUILTIN_TASKS, "reasoning_gym:<dataset>", "jsonl:<path>"]


def make_task(spec: str = DEFAULT_TASK, **kwargs: Any) -> Task:
    """The task named by `spec`, constructed with `kwargs` (task options, e.g. `mistake_rate=0.1`).

    `spec` is a built-in name (`chain_sum`, `digit_sort`, `base_convert`), `reasoning_gym:<dataset>`
    (kwargs: seed, size, instruction, answer_demonstrations, dataset config) or `jsonl:<path>` (kwargs:
    instruction). Unknown names and options raise ValueError.
    """
    if spec.startswith("reasoning_gym:"):
        from tokencredit.tasks.gym import ReasoningGymTask

        return ReasoningGymTask(spec.removeprefix("reasoning_gym:"), **kwargs)
    if spec.startswith("jsonl:"):
        from tokencredit.tasks.jsonl import JsonlTask

        try:
            return JsonlTask(spec.removeprefix("jsonl:"), **kwargs)
        except TypeError as err:
            raise ValueError(f"{spec}: invalid options {kwargs!r} ({err})") from err
    if spec not in BUILTIN_TASKS:
        raise ValueError(f"task: unknown task {spec!r}; known: {', '.join(task_names())}")
    try:
        return BUILTIN_TASKS[spec](**kwargs)
    except TypeError as err:
        raise ValueError(f"{spec}: invalid options {kwargs!r} ({err})") from err
