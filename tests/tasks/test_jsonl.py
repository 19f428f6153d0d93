import json
import random

import pytest

from tokencredit.tasks import examples, make_task


def write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def task(tmp_path):
    path = write(
        tmp_path / "data.jsonl",
        [
            {"prompt": "What is 1/2 as a decimal?", "answer": "1/2", "id": 7},
            "",
            {"prompt": "2+2?", "answer": 4, "demonstration": "2+2=4\nanswer: 4"},
            {"prompt": "Name?", "answer": "hello world"},
        ],
    )
    return make_task(f"jsonl:{path}")


def test_records_loaded(task):
    assert [r.answer for r in task.records] == ["1/2", "4", "hello world"]
    assert task.records[1].demonstration == "2+2=4\nanswer: 4"
    assert [r.source_index for r in task.records] == [0, 1, 2]


@pytest.mark.parametrize(
    ("response", "reward"),
    [
        ("answer: 0.5", 1.0),
        ("answer: \\frac{1}{2}", 1.0),
        ("answer: $\\frac{1}{2}$", 1.0),
        ("answer: 2/4", 1.0),
        ("answer: 1/2", 1.0),
        ("answer: 0.6", 0.0),
        ("answer: banana", 0.0),
        ("0.5", 0.0),  # no answer line
    ],
)
def test_math_equivalence(task, response, reward):
    assert task.score(response, task.records[0]) == reward


def test_string_fallback(task):
    assert task.score("answer: hello world", task.records[2]) == 1.0
    assert task.score("answer: hello", task.records[2]) == 0.0
    assert task.score("answer: 4.0", task.records[1]) == 1.0


def test_sampling_and_instruction(tmp_path, task):
    assert examples(task, 30, seed=0) == examples(task, 30, seed=0)
    assert {e.prompt for e in examples(task, 60, seed=0)} == {r.prompt for r in task.records}
    with_instruction = make_task(f"jsonl:{task.path}", instruction="End with answer: X")
    ex = with_instruction.sample(random.Random(0))
    assert ex.prompt.endswith("\nEnd with answer: X")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], r"data.jsonl:2: missing field 'answer'"),
        ([{"answer": "1"}], r"data.jsonl:1: missing field 'prompt'"),
        ([{"prompt": "a", "answer": "1"}, "", "{oops"], r"data.jsonl:3: invalid JSON"),
        ([[1, 2]], r"data.jsonl:1: expected a JSON object"),
        ([{"prompt": 3, "answer": "1"}], r":1: field 'prompt' must be a string"),
        ([{"prompt": "a", "answer": None}], r":1: field 'answer' must be a string or a number"),
        ([""], r"holds no records"),
    ],
)
def test_bad_files(tmp_path, lines, message):
    path = write(tmp_path / "data.jsonl", lines)
    with pytest.raises(ValueError, match=message):
        make_task(f"jsonl:{path}")


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        make_task(f"jsonl:{tmp_path / 'absent.jsonl'}")
