from typer.testing import CliRunner

from tokencredit.cli import app


def test_methods_command_lists_presets():
    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("grpo", "dr_grpo", "gae", "balanced", "k3", "dynamic_filter"):
        assert name in result.output


def test_train_resume_and_eval_commands(tmp_path):
    tiny = ["model.tiny.hidden_size=32", "model.tiny.layers=1", "model.tiny.heads=2", "model.tiny.kv_heads=1",
            "model.tiny.intermediate=64"]
    args = ["train", "--set", f"out={tmp_path / 'run'}", "--set", "sft.steps=2", "--set", "sft.batch_size=4",
            "--set", "rl.steps=1", "--set", "rl.prompts_per_step=2", "--set", "rl.group_size=2",
            "--set", "rl.max_new_tokens=8", "--set", "eval.size=4", "--set", "eval.pass_k=1",
            "--set", "log.progress=false", "--set", "log.tensorboard=false"]
    for item in tiny:
        args += ["--set", item]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert '"finished": true' in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    evaluated = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--size", "3", "--pass-k", "2",
                                    "--max-new-tokens", "8"])
    assert evaluated.exit_code == 0, evaluated.output
    assert '"accuracy"' in evaluated.output and '"pass@2"' in evaluated.output


def test_train_reports_config_errors_with_the_field():
    result = CliRunner().invoke(app, ["train", "--set", "rl.steps=-3"])
    assert result.exit_code == 2 and "rl.steps" in result.output
