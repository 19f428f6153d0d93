from typer.testing import CliRunner

from tokencredit.cli import app


def test_methods_command_lists_presets():
    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("grpo", "dr_grpo", "gae", "balanced", "k3", "dynamic_filter"):
        assert name in result.output
