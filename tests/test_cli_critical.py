import json

import pytest
from typer.testing import CliRunner

from tokencredit.cli import app

FIELDS = {"line", "prompt", "answer", "response", "tokens", "critical_token", "mode", "k", "index", "prompt_rate",
          "probed", "rates", "samples", "fallback", "rate_before", "rate_after", "counterfactual_rate",
          "counterfactual_rises"}


@pytest.mark.parametrize("mode", ["scan", "binary"])
def test_critical_writes_one_line_per_failed_response(small_checkpoint, tmp_path, mode):
    out = tmp_path / "nested" / "critical.jsonl"
    args = ["critical", "--checkpoint", str(small_checkpoint), "--task-param", "round_up_rate=0.6", "--task-param",
            "mistake_rate=0.1", "--prompts", "3", "--k", "2", "--max-new-tokens", "5", "--mode", mode,
            "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3  # a random model fails every prompt
    assert "3 of 3 responses failed" in result.output and "critical tokens" in result.output
    for row in rows:
        assert set(row) == FIELDS and row["mode"] == mode and row["k"] == 2
        assert 0 <= len(row["tokens"]) <= 5 and set(row["probed"]) <= set(range(len(row["tokens"])))
        assert row["samples"] == 2 * (len(row["probed"]) + 1)
        assert (row["critical_token"] is None) == (row["index"] is None)
        assert row["line"] is None and row["counterfactual_rate"] is None and row["counterfactual_rises"] is None


def test_critical_counterfactual_reports_each_critical_token(small_checkpoint, tmp_path):
    out = tmp_path / "critical.jsonl"
    args = ["critical", "--checkpoint", str(small_checkpoint), "--prompts", "2", "--k", "2", "--max-new-tokens", "4",
            "--counterfactual", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and any(row["index"] is not None for row in rows)  # a random model collapses somewhere
    for row in rows:
        found = row["index"] is not None
        assert row["samples"] == 2 * (len(row["probed"]) + 1 + found)
        assert (row["counterfactual_rate"] is None) == (not found)
        assert row["counterfactual_rises"] == (None if not found else row["counterfactual_rate"] > row["rate_after"])
    assert "c replaced" in result.output and "replacing the critical token raised the success rate at" in result.output


def write_lines(path, *lines):
    def raw(line):
        return line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()

    path.write_bytes(b"".join(raw(line) + b"\n" for line in lines))
    return path


def test_critical_searches_the_failed_responses_of_a_file(small_checkpoint, tmp_path):
    """Lines give token ids (trailing EOS dropped) or text; the correct response (answer 5) is not searched."""
    from tokencredit.models import load_model

    _, tok = load_model(small_checkpoint)
    ids = tok("1+2=4\nanswer: 4", add_special_tokens=False)["input_ids"]
    path = write_lines(tmp_path / "responses.jsonl",
                       {"prompt": "1+2=?", "answer": "3", "response_ids": [*ids, tok.eos_token_id], "step": 7},
                       "",
                       {"prompt": "2+3=?", "answer": 5, "response": "2+3=5\nanswer: 5"},
                       {"prompt": "1+1=?", "answer": "2", "response": "1+1=3\nanswer: 3"})
    out = tmp_path / "critical.jsonl"
    args = ["critical", "--checkpoint", str(small_checkpoint), "--responses", str(path), "--k", "2",
            "--max-new-tokens", "16", "--mode", "binary", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["line"] for row in rows] == [1, 4]
    assert rows[0]["tokens"] == ids and rows[0]["response"] == "1+2=4\nanswer: 4" and rows[0]["answer"] == "3"
    assert rows[1]["tokens"] == tok("1+1=3\nanswer: 3", add_special_tokens=False)["input_ids"]
    assert all(set(row) == FIELDS and row["mode"] == "binary" for row in rows)
    assert f"read 3 responses from {path}" in result.output and "2 of 3 responses failed" in result.output


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], ":1: invalid JSON"),
        (["", "[1, 2]"], ":2: expected a JSON object, got list"),
        ([{"answer": "3", "response": "x"}], ":1: missing field 'prompt'"),
        ([{"prompt": "q", "answer": "3"}], ":1: missing field 'response_ids' or 'response'"),
        ([{"prompt": "q", "answer": "3", "response": "x"}, {"prompt": "q", "response": "x"}],
         ":2: missing field 'answer' (the chain_sum verifier compares the response with it)"),
        ([{"prompt": "q", "answer": [3], "response": "x"}], ":1: field 'answer' must be a string or a number"),
        ([{"prompt": "q", "answer": "3", "response_ids": [5, "6"]}], ":1: field 'response_ids' must be a list"),
        ([{"prompt": "q", "answer": "3", "response_ids": [5, 100_000]}], ":1: field 'response_ids' has ids outside"),
        ([{"prompt": "q", "answer": "3", "response_ids": [5, 2, 6]}], ":1: the response has an EOS or pad token at "
                                                                      "position 1"),
        ([{"prompt": "q", "answer": "3", "response": "x" * 9}], ":1: the response has 9 tokens, more than the "
                                                                "response budget (8, --max-new-tokens)"),
        ([{"prompt": "q", "answer": "3", "response": "x", "source_index": -1}],
         ":1: field 'source_index' must be a non-negative integer"),
        (["", "  "], "holds no records"),
        ([b'{"prompt": "caf\xe9", "answer": "3", "response": "x"}'], ":1: not UTF-8 text"),
    ],
)
def test_critical_bad_responses_file_exits_2_naming_the_line(small_checkpoint, tmp_path, lines, message):
    path = write_lines(tmp_path / "responses.jsonl", *lines)
    args = ["critical", "--checkpoint", str(small_checkpoint), "--responses", str(path), "--max-new-tokens", "8"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    assert message in result.output and ("holds no records" in message or f"{path}:" in result.output)
    assert "Traceback" not in result.output


def test_critical_default_output_is_in_the_current_folder(small_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["critical", "--checkpoint", str(small_checkpoint), "--prompts", "1", "--k", "1", "--max-new-tokens", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "critical_tokens.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task-param", "round_up_rate"], "--task-param"),
        (["--task-param", "no_such_option=1"], "chain_sum: invalid options"),
        (["--task", "no_such_task"], "unknown task"),
        (["--mode", "linear"], "--mode"),
    ],
)
def test_critical_bad_input_exits_2(small_checkpoint, extra, message):
    args = ["critical", "--checkpoint", str(small_checkpoint), *extra]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.output


def test_critical_without_a_model_folder_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["critical", "--checkpoint", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "config.json" in result.output


def test_eval_accepts_task_params(small_checkpoint):
    args = ["eval", "--checkpoint", str(small_checkpoint), "--size", "2", "--pass-k", "1", "--max-new-tokens", "4",
            "--task-param", "mistake_rate=0.1", "--task-param", "num_terms=[2, 3]"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert '"accuracy"' in result.output
    bad = CliRunner().invoke(app, [*args[:-1], "num_terms"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "--task-param" in bad.output
