"""Every mistake is one clear line and exit code 2 (tracebacks only with `--debug`); `eval`, `inspect` and
`critical` use the run's recorded settings; every option says what it does."""

import errno
import json
import shutil

import pytest
import typer
from typer.testing import CliRunner

from tokencredit.cli import app

TINY = ["model.tiny.hidden_size=32", "model.tiny.layers=1", "model.tiny.heads=2", "model.tiny.kv_heads=1",
        "model.tiny.intermediate=64"]
SMALL = ["sft.steps=2", "sft.batch_size=4", "rl.steps=1", "rl.prompts_per_step=2", "rl.group_size=2",
         "rl.max_new_tokens=6", "eval.size=5", "eval.pass_k=2", "eval.pass_k_size=3", "checkpoint_every=1",
         "log.progress=false", "log.tensorboard=false", *TINY]


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"}, **kwargs)


def train_args(out, *extra):
    args = ["train", "--set", f"out={out}"]
    for item in [*SMALL, *extra]:
        args += ["--set", item]
    return args


def one_clear_line(result, message):
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run trained on the demo's task with task parameters and a seed other than the defaults."""
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke(*train_args(out, "seed=3", "task_params.mistake_rate=0.2", "rl.temperature=0.9"))
    assert result.exit_code == 0, result.output
    return out


def test_a_yaml_syntax_error_is_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("rl:\n  steps: [1, 2\n")
    one_clear_line(invoke("train", "--config", config), f"config {config}: not valid YAML at line 3")


@pytest.mark.parametrize(("extra", "message"), [
    (["task=no_such_task"], "task: unknown task 'no_such_task'"),
    (["task_params.no_such_option=1"], "chain_sum: invalid options {'no_such_option': 1}"),
    (["recipe_overrides.advantag=grpo"], "recipe_overrides: advantag: unknown field"),
    (["recipe_overrides.objective_params.clip_low=-0.2"], "objective 'ppo_clip': clip_low, clip_high: expected"),
    (["model.path={tmp}/modle"], "model.path: '{tmp}/modle' is not a local model folder"),
])
def test_bad_training_input_is_one_line(tmp_path, extra, message):
    extra = [item.replace("{tmp}", str(tmp_path)) for item in extra]
    one_clear_line(invoke(*train_args(tmp_path / "run", *extra)), message.replace("{tmp}", str(tmp_path)))
    assert not (tmp_path / "run").exists() and not (tmp_path / "modle").exists()  # refused before anything written


def test_cuda_without_cuda_is_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_clear_line(invoke(*train_args(tmp_path / "run", "device=cuda")), "device: 'cuda' asked for, but CUDA is not "
                                                                          "available here")


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    one_clear_line(invoke(*train_args(tmp_path / "file" / "run")), "out: cannot create the output folder")


def test_a_jsonl_file_that_is_not_utf8_is_named(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes('{"prompt": "café?", "answer": "1"}\n'.encode("latin-1"))
    one_clear_line(invoke(*train_args(tmp_path / "run", f"task=jsonl:{data}", "sft.steps=0")),
                   f"{data}:1: not UTF-8 text")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_resume_continues(tmp_path, monkeypatch):
    import tokencredit.train.checkpoint as checkpoint

    save_file, calls = checkpoint.save_file, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    args = train_args(tmp_path / "run")
    one_clear_line(invoke(*args), "(No space left on device); the last good checkpoint is ")
    monkeypatch.setattr(checkpoint, "save_file", save_file)
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0 and '"finished": true' in resumed.output, resumed.output


def test_resume_with_another_config_names_the_keys(run):
    result = invoke(*train_args(run, "seed=3", "task_params.mistake_rate=0.2", "rl.temperature=0.9",
                                "rl.group_size=4", "recipe=dapo"), "--resume")
    one_clear_line(result, "holds a run with another config (recipe ('grpo' → 'dapo'), rl.group_size (2 → 4))")


def damaged(tmp_path, run, how):
    folder = tmp_path / "ckpt"
    shutil.copytree(run / "checkpoints" / "step-3", folder)
    how(folder)
    return folder


@pytest.mark.parametrize(("how", "message"), [
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:500]),
     "cannot load the model weights (SafetensorError"),
    (lambda f: (f / "model.safetensors").write_bytes(b""), "cannot load the model weights (SafetensorError"),
    (lambda f: (f / "config.json").write_text("{garbage"), "config.json is not valid JSON"),
    (lambda f: [p.unlink() for p in f.glob("tokenizer*")], "no tokenizer files"),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_folder(tmp_path, run, how, message):
    folder = damaged(tmp_path, run, how)
    for command in ("eval", "inspect", "critical"):
        one_clear_line(invoke(command, "--checkpoint", folder), f"{folder}: {message}")


def test_a_damaged_checkpoint_stops_resume_with_one_line(tmp_path, run):
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    (out / "checkpoints" / "step-3" / "trainer_state.safetensors").write_bytes(b"")
    one_clear_line(invoke(*train_args(out, "seed=3", "task_params.mistake_rate=0.2", "rl.temperature=0.9",
                                      "rl.steps=2"), "--resume"), "step-3: the trainer state")


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("--debug", *train_args(tmp_path / "run", "task=no_such_task"))
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)


def test_eval_uses_the_run_s_recorded_settings(run, monkeypatch):
    import tokencredit.train.evaluate as evaluate_module
    from tokencredit.tasks import make_task

    seen = {}
    real = evaluate_module.evaluate

    def spy(sampler, task, examples, **kwargs):
        seen.update(task=task, examples=examples, temperature=sampler.temperature, **kwargs)
        return real(sampler, task, examples, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    for checkpoint in (run, run / "checkpoints" / "latest", run / "checkpoints" / "step-3"):
        result = invoke("eval", "--checkpoint", checkpoint)
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout)
        assert metrics["checkpoint"] == str(run / "checkpoints" / "step-3") and metrics["examples"] == 5
        assert metrics["accuracy"] == logged["eval_accuracy"]  # the run's greedy evaluation, exactly
        assert seen["task"].mistake_rate == 0.2 and seen["temperature"] == 0.9
        assert seen["pass_k"] == 2 and seen["pass_k_size"] == 3 and seen["verifier_timeout"] == 2.0
        assert seen["examples"] == make_task("chain_sum", mistake_rate=0.2).held_out(5, seed=3)
    overridden = invoke("eval", "--checkpoint", run, "--size", "2", "--seed", "0", "--task-param", "mistake_rate=0.1")
    assert overridden.exit_code == 0, overridden.output
    assert seen["examples"] == make_task("chain_sum", mistake_rate=0.1).held_out(2, seed=0)


def test_inspect_and_critical_use_the_run_s_recorded_settings(run, tmp_path, monkeypatch):
    from tokencredit.cli import _held_out_sampler

    seen = []

    def spy(settings, prompts):
        seen.append(settings.cfg)
        return _held_out_sampler(settings, prompts)

    monkeypatch.setattr("tokencredit.cli._held_out_sampler", spy)
    result = invoke("inspect", "--checkpoint", run, "--recipes", "grpo", "--prompts", "1", "--out",
                    tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    result = invoke("critical", "--checkpoint", run, "--prompts", "1", "--k", "1", "--out", tmp_path / "c.jsonl")
    assert result.exit_code == 0, result.output
    for cfg in seen:
        assert (cfg.seed, cfg.task_params, cfg.rl.temperature, cfg.rl.max_new_tokens, cfg.rl.group_size) == \
            (3, {"mistake_rate": 0.2}, 0.9, 6, 2)


def test_a_checkpoint_argument_that_is_nothing_is_one_line(tmp_path):
    one_clear_line(invoke("eval", "--checkpoint", tmp_path), "is not a model folder (no config.json), a run folder")
    one_clear_line(invoke("eval", "--checkpoint", tmp_path / "absent"), "does not exist")


def test_every_option_has_help():
    command = typer.main.get_command(app)
    missing = [f"{name} {p.name}" for name, sub in command.commands.items() for p in sub.params
               if not getattr(p, "help", None)]
    missing += [f"tokencredit {p.name}" for p in command.params if not getattr(p, "help", None)]
    assert not missing
