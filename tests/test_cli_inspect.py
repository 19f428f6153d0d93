import pytest
from typer.testing import CliRunner

from tokencredit.cli import app


def test_inspect_writes_the_report_and_prints_the_summary(small_checkpoint, tmp_path):
    out = tmp_path / "nested" / "report.html"
    args = ["inspect", "--checkpoint", str(small_checkpoint), "--recipes", "grpo, tempo,spo_chain", "--prompts", "2",
            "--group-size", "3", "--max-new-tokens", "4", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and page.count("<section>") == 2
    assert page.count("class='response") == 6 and page.count("<span class='recipe'>spo_chain") == 6
    for name in ("grpo", "tempo", "spo_chain"):
        assert f"<td>{name}</td>" in page and name in result.output
    assert "credit over 6 responses to 2 prompts" in result.output and "wrote" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recipes", "grpo,no_such"], "--recipes: unknown ['no_such']"),
        (["--recipes", " , "], "--recipes: unknown"),
        (["--recipes", "grpo,tempo,grpo"], "--recipes: each preset once"),
        (["--recipes", "ppo"], "values 'critic': "),
        (["--recipes", "ppo,spo_chain"], "values: recipe 'spo_chain' needs 'monte_carlo', but 'critic' is needed"),
        (["--task", "no_such_task"], "unknown task"),
    ],
)
def test_inspect_bad_input_exits_2(small_checkpoint, extra, message):
    result = CliRunner().invoke(app, ["inspect", "--checkpoint", str(small_checkpoint), *extra], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.output


def test_inspect_resolves_schedules_at_the_given_progress(small_checkpoint, tmp_path):
    out = tmp_path / "d3s.html"
    args = ["inspect", "--checkpoint", str(small_checkpoint), "--recipes", "d3s", "--prompts", "2", "--group-size", "2",
            "--max-new-tokens", "3", "--progress", "0.5", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "at progress 0.5" in out.read_text(encoding="utf-8")
    assert "75%" in result.output  # d3s keeps 0.5 → 1.0 of the batch: 3 of 4 responses at progress 0.5


def test_inspect_samples_what_the_recipes_need(small_checkpoint, tmp_path):
    """spo_tree asks for a segment tree per prompt: inspect samples one (as training does), and grpo, which asks for
    no rollout shape, is computed on the same leaves."""
    out = tmp_path / "tree.html"
    args = ["inspect", "--checkpoint", str(small_checkpoint), "--recipes", "spo_tree,grpo", "--prompts", "2",
            "--max-new-tokens", "3", "--out", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "credit over 12 responses to 2 prompts" in result.output  # 6 first-level segments per prompt
