import json

import pytest

from tokencredit.analysis.recorded import RecordedResponse, read_responses
from tokencredit.models import build_char_tokenizer
from tokencredit.tasks import Example, make_task

TOK = build_char_tokenizer()


def ids(text):
    return TOK(text, add_special_tokens=False)["input_ids"]


def write(tmp_path, *records):
    path = tmp_path / "responses.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_ids_and_text_rebuild_examples_and_content_tokens(tmp_path):
    path = write(tmp_path,
                 {"prompt": "p1", "answer": 12, "response_ids": [*ids("ab"), TOK.eos_token_id, TOK.pad_token_id],
                  "demonstration": "d", "reward": 0.0},
                 "",
                 {"prompt": "p2", "answer": "x", "response": "cd"},
                 {"prompt": "p3", "answer": "y", "response_ids": ids("ef"), "response": "ignored"})
    records = read_responses(path, TOK, make_task("chain_sum"))
    assert records == [
        RecordedResponse(1, Example("p1", "12", "d", None), ids("ab")),  # trailing EOS and pad dropped
        RecordedResponse(3, Example("p2", "x"), ids("cd")),
        RecordedResponse(4, Example("p3", "y"), ids("ef")),  # response_ids win over response
    ]


def test_reasoning_gym_takes_the_answer_from_its_item(tmp_path):
    task = make_task("reasoning_gym:basic_arithmetic", seed=1, size=20)
    path = write(tmp_path, {"prompt": "q", "response": "answer: 1", "source_index": 3})
    [record] = read_responses(path, TOK, task)
    assert record.example == Example("q", str(task.item(3)["answer"]), None, 3)
    with pytest.raises(ValueError, match=r"responses.jsonl:1: missing field 'answer' \(the reasoning_gym:basic"):
        read_responses(write(tmp_path, {"prompt": "q", "response": "a"}), TOK, task)


def test_length_bound_and_missing_file(tmp_path):
    path = write(tmp_path, {"prompt": "q", "answer": "1", "response": "abcd"})
    assert read_responses(path, TOK, make_task("chain_sum"), max_tokens=4)[0].tokens == ids("abcd")
    with pytest.raises(ValueError, match=r":1: the response has 4 tokens, more than the response budget \(3"):
        read_responses(path, TOK, make_task("chain_sum"), max_tokens=3)
    with pytest.raises(ValueError, match="responses: no such file"):
        read_responses(tmp_path / "none.jsonl", TOK, make_task("chain_sum"))
