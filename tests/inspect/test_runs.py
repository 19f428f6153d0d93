import json

import pytest
from typer.testing import CliRunner

from tokencredit.cli import app
from tokencredit.inspect.runs import eval_history, load_metrics, run_summary


def _write(folder, records):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    return folder


def _rl(step, reward, **extra):
    return {"phase": "rl", "step": step, "global_step": step, "reward": reward, "sampled_tokens_per_s": 100.0 * step,
            **extra}


RECORDS = [
    {"phase": "sft", "step": 1, "global_step": 1, "loss": 2.0},
    {"phase": "eval", "step": 0, "global_step": 1, "accuracy": 0.25, "pass@4": 0.5},
    *[_rl(s, 0.1 * s) for s in range(1, 12)],
    _rl(12, 1.2, eval_accuracy=0.75, **{"eval_pass@4": 0.875}),
]


def test_history_and_summary_by_hand(tmp_path):
    records = load_metrics(_write(tmp_path / "run", RECORDS))
    assert records == RECORDS  # blank lines are skipped
    assert eval_history(records) == [{"step": 0, "accuracy": 0.25, "pass@4": 0.5},
                                     {"step": 12, "accuracy": 0.75, "pass@4": 0.875}]
    assert run_summary(records) == pytest.approx({
        "start_accuracy": 0.25, "final_accuracy": 0.75, "best_accuracy": 0.75, "rl_steps": 12,
        "recent_reward": sum(0.1 * s for s in range(3, 13)) / 10,  # the last 10 RL steps: 3..12
        "sampled_tokens_per_s": 100.0 * sum(range(1, 13)) / 12,
    })


def test_summary_of_a_run_without_rl_or_evaluations():
    assert run_summary([{"phase": "sft", "step": 1, "loss": 1.0}]) == {
        "start_accuracy": None, "final_accuracy": None, "best_accuracy": None, "rl_steps": 0,
        "recent_reward": None, "sampled_tokens_per_s": None}


def test_load_metrics_errors_name_the_run_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"has no metrics\.jsonl"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{not json\n{"step": 1}\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object"):
        load_metrics(tmp_path)


def test_a_cut_off_last_line_is_left_out(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "rew')  # killed while writing
    assert load_metrics(tmp_path) == [{"step": 1}]


def test_compare_prints_the_table_and_writes_plot_and_json(tmp_path):
    a = _write(tmp_path / "a", RECORDS)
    b = _write(tmp_path / "b", RECORDS[:2])  # warm start only
    out = tmp_path / "nested" / "cmp.png"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(out.with_suffix(".json").read_text())
    assert list(summary) == [str(a), str(b)] and summary[str(b)]["rl_steps"] == 0
    assert "+0.500" in result.output and "+0.000" in result.output  # the gains of a and b


def test_compare_without_metrics_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "has no metrics.jsonl" in result.output


def test_compare_plots_runs_whose_pass_at_k_changed(tmp_path):
    records = [*RECORDS[:2], _rl(1, 0.5, eval_accuracy=0.5, **{"eval_pass@8": 0.75})]  # resumed with pass_k 8
    run = _write(tmp_path / "a", records)
    result = CliRunner().invoke(app, ["compare", str(run), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.png").is_file() and (tmp_path / "c.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--out", "table.json"], "--out: the plot's path"), (["{a}/"], "runs: each folder once")],
)
def test_compare_bad_arguments_exit_2(tmp_path, args, message):
    run = _write(tmp_path / "a", RECORDS)
    args = [a.format(a=run) for a in args]
    result = CliRunner().invoke(app, ["compare", str(run), *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.output
