"""Verifiable tasks: procedural ones for the embedded default, reasoning-gym datasets and JSONL files.

`make_task(spec)` builds one; `examples(task, n, seed)` draws a fixed set; every task answers with a final
line `answer: <value>` that `extract_answer` reads back.
"""

from tokencredit.tasks.base import (
    ANSWER_PREFIX,
    HELD_OUT_SEED_OFFSET,
    Example,
    Task,
    exact_answer_score,
    examples,
    extract_answer,
    format_answer,
)
from tokencredit.tasks.base_convert import BaseConvert
from tokencredit.tasks.chain_sum import ChainSum
from tokencredit.tasks.digit_sort import DigitSort
from tokencredit.tasks.registry import BUILTIN_TASKS, DEFAULT_TASK, make_task, task_names

__all__ = [
    "ANSWER_PREFIX",
    "BUILTIN_TASKS",
    "DEFAULT_TASK",
    "HELD_OUT_SEED_OFFSET",
    "BaseConvert",
    "ChainSum",
    "DigitSort",
    "Example",
    "Task",
    "exact_answer_score",
    "examples",
    "extract_answer",
    "format_answer",
    "make_task",
    "task_names",
]
