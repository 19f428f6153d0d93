import json

import pytest
from typer.testing import CliRunner

from tokencredit.cli import app

FIELDS = {"prompt", "answer", "response", "tokens", "critical_token", "mode", "k", "index", "prompt_rate", "probed",
          "rates", "samples", "rate_before", "rate_after"}


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
