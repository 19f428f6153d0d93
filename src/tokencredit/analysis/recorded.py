"""Recorded responses from a JSONL file, rebuilt as `(Example, token ids)` for the critical-token search.

One JSON object per line; blank lines are skipped. Fields:

| field | required | meaning |
|---|---|---|
| `prompt` | yes | the prompt string exactly as the model saw it (the sampler tokenizes it as `sample` does) |
| `response_ids` | one of the two | the response's token ids after the prompt (used when both are given) |
| `response` | one of the two | the response text, tokenized with the checkpoint's tokenizer (no special tokens) |
| `answer` | when the verifier needs it | string or number, the ground truth the task's verifier compares with |
| `demonstration` | no | string, kept on the Example |
| `source_index` | no | non-negative integer: the item's index in the task's dataset (reasoning-gym) |

Other fields are ignored, so a file of recorded training responses can carry its own bookkeeping.

Choices:

* Trailing EOS and padding ids are removed from `response_ids` (the search works on content tokens); an EOS or
  pad id before the end is an error, since nothing can follow it.
* Every verifier needs `answer`, except a `reasoning_gym:` task given `source_index`: its verifier regenerates
  the item, and the answer is taken from it.
* A response longer than `max_tokens` (the response budget) is an error: its continuations would have no budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokencredit.tasks import Example, Task
from tokencredit.tasks.jsonl import jsonl_records


@dataclass(frozen=True)
class RecordedResponse:
    """One line of a responses file: `line` (1-based line number), the rebuilt `example`, and `tokens`, the
    response's content token ids (no EOS)."""

    line: int
    example: Example
    tokens: list[int]


def read_responses(path: str | Path, tokenizer: Any, task: Task, *, max_tokens: int | None = None
                   ) -> list[RecordedResponse]:
    """Parse and validate the responses file `path` (see the module docstring); a ValueError names the file,
    the line and the problem. `tokenizer` encodes `response` texts and bounds `response_ids`; `task` says
    whether a line needs an `answer`; `max_tokens` bounds a response's length."""
    return [_parse(record, where, lineno, tokenizer, task, max_tokens)
            for where, lineno, record in jsonl_records(path, "responses")]


def _parse(record: dict[str, Any], where: str, lineno: int, tokenizer: Any, task: Task, max_tokens: int | None
           ) -> RecordedResponse:
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: " + ("missing field 'prompt'" if "prompt" not in record
                                          else "field 'prompt' must be a string"))
    demonstration = record.get("demonstration")
    if demonstration is not None and not isinstance(demonstration, str):
        raise ValueError(f"{where}: field 'demonstration' must be a string")
    source_index = record.get("source_index")
    if source_index is not None and (isinstance(source_index, bool) or not isinstance(source_index, int)
                                     or source_index < 0):
        raise ValueError(f"{where}: field 'source_index' must be a non-negative integer")
    answer = answer_of(record, where, task, source_index)
    tokens = response_tokens(record, where, tokenizer)
    if max_tokens is not None and len(tokens) > max_tokens:
        raise ValueError(f"{where}: the response has {len(tokens)} tokens, more than the response budget "
                         f"({max_tokens}, --max-new-tokens)")
    return RecordedResponse(lineno, Example(prompt, answer, demonstration, source_index), tokens)


def answer_of(record: dict[str, Any], where: str, task: Task, source_index: int | None) -> str:
    """The record's `answer` as text, or the reasoning-gym item's answer of its `source_index`; a ValueError
    naming the line when the task's verifier needs one and there is none."""
    from tokencredit.tasks.gym import ReasoningGymTask

    if "answer" in record:
        answer = record["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise ValueError(f"{where}: field 'answer' must be a string or a number")
        return str(answer)
    if isinstance(task, ReasoningGymTask) and source_index is not None:  # the verifier regenerates the item
        try:
            return str(task.item(source_index)["answer"])
        except (IndexError, KeyError):
            raise ValueError(f"{where}: field 'source_index' {source_index} is not an item of {task.name}") from None
    raise ValueError(f"{where}: missing field 'answer' (the {task.name} verifier compares the response with it)")


def response_tokens(record: dict[str, Any], where: str, tokenizer: Any, field: str = "response", *,
                    pad_ends: bool = True) -> list[int]:
    """The content token ids of a record's response `field`: `<field>_ids` (checked against the tokenizer's
    vocabulary) or else the text `<field>` tokenized without special tokens; trailing EOS (and, with `pad_ends`,
    pad) ids removed, an earlier one an error naming the line. `pad_ends=False` keeps pad ids as tokens (a
    sampled response may contain the pad id: only EOS ends it)."""
    if f"{field}_ids" in record:
        ids = record[f"{field}_ids"]
        vocab = len(tokenizer)
        if not isinstance(ids, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise ValueError(f"{where}: field '{field}_ids' must be a list of integer token ids")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{where}: field '{field}_ids' has ids outside the tokenizer's [0, {vocab}): {bad[:5]}")
    elif field in record:
        if not isinstance(record[field], str):
            raise ValueError(f"{where}: field '{field}' must be a string")
        ids = tokenizer(record[field], add_special_tokens=False)["input_ids"]
    else:
        raise ValueError(f"{where}: missing field '{field}_ids' or '{field}'")
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id if pad_ends else None} - {None}
    content = len(ids)
    while content and ids[content - 1] in ends:
        content -= 1
    early = [i for i in range(content) if ids[i] in ends]
    if early:
        raise ValueError(f"{where}: the {field} has an EOS or pad token at position {early[0]}, before its end")
    return list(ids[:content])
