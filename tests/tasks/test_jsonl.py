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
    assert {e.prompt for e in examples(task, 60, seed=0)} == {r.prompt for r in task.train_records}
    with_instruction = make_task(f"jsonl:{task.path}", instruction="End with answer: X")
    ex = with_instruction.sample(random.Random(0))
    assert ex.prompt.endswith("\nEnd with answer: X")
    assert all(e.prompt.endswith("\nEnd with answer: X") for e in with_instruction.held_out(5, seed=0))


def test_held_out_records_are_never_trained_on(tmp_path):
    path = write(tmp_path / "data.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(40)])
    task = make_task(f"jsonl:{path}")
    held_out = task.held_out(200, seed=0)
    assert len(held_out) == 4 and held_out == task.held_out(200, seed=7)  # 10%, fixed by the file, not the seed
    trained = {e.prompt for e in examples(task, 2000, seed=0)}
    assert len(trained) == 36 and not trained & {e.prompt for e in held_out}
    assert len(make_task(f"jsonl:{path}", held_out=0.25).held_out(200, seed=0)) == 10
    everything = make_task(f"jsonl:{path}", held_out=0)
    with pytest.warns(UserWarning, match="no held-out set"):
        assert len(everything.held_out(5, seed=0)) == 5
    with pytest.raises(ValueError, match=r"held_out: expected a fraction"):
        make_task(f"jsonl:{path}", held_out=1.0)


def test_one_record_has_no_room_for_a_held_out_set(tmp_path):
    task = make_task(f"jsonl:{write(tmp_path / 'data.jsonl', [{'prompt': 'q', 'answer': '1'}])}")
    assert len(task.train_records) == 1
    with pytest.warns(UserWarning, match=r"no held-out set \(1 record\(s\) are too few to hold any out\)"):
        assert task.held_out(2, seed=0) == task.train_records * 2


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"prompt": "a", "answer": "1"}).encode() + b"\n" +
                     '{"prompt": "café", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 text"):
        make_task(f"jsonl:{path}")


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
