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


def _run_folder(tmp_path):
    import json

    from group_records import synthetic_step
    from tokencredit.inspect.records import write_records

    run = tmp_path / "run"
    for step in (1, 6):
        write_records(run, synthetic_step(step, seed=step), max_bytes=10**7)
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"phase": "rl", "step": s, "reward": s / 10, "accuracy": s / 20, "kept_frac": 1.0, "entropy": 0.5})
        + "\n" for s in range(1, 7)))
    return run


def test_inspect_run_writes_the_inspector_page(tmp_path):
    run = _run_folder(tmp_path)
    out = tmp_path / "pages" / "run.html"
    result = CliRunner().invoke(app, ["inspect", str(run), "--out", str(out), "--diff", str(run)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and '"diff":true' in page and "<polyline" in page
    assert "2 recorded steps, 4 groups; wrote" in result.output and "MB)" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a run folder (RUN) or --checkpoint, exactly one"),
        (["RUN", "--checkpoint", "RUN"], "give a run folder (RUN) or --checkpoint, exactly one"),
        (["--checkpoint", "RUN", "--diff", "RUN"], "--diff and --critical go with a run folder"),
        (["EMPTY"], "has no group records"),
        (["MISSING"], "is not a folder"),
    ],
)
def test_inspect_run_bad_input_exits_2(tmp_path, args, message):
    run = _run_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    names = {"RUN": str(run), "EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "nope")}
    result = CliRunner().invoke(app, ["inspect", *[names.get(a, a) for a in args]], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
