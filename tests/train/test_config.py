import pytest

from tokencredit.train import load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: dapo\nrl:\n  steps: 7\n  temperature: 0.9\n")
    cfg = load_config(path, ["rl.steps=9", "recipe_overrides.agg=balanced", "task_params.mistake_rate=0.1"])
    assert cfg.recipe == "dapo" and cfg.rl.steps == 9 and cfg.rl.temperature == 0.9
    assert cfg.recipe_overrides == {"agg": "balanced"} and cfg.task_params == {"mistake_rate": 0.1}


@pytest.mark.parametrize("override, field", [
    ("rl.steps=-1", "rl.steps"), ("rl.tempreature=1", "rl.tempreature"), ("recipe=nope", "recipe"),
    ("rl.top_p=2", "rl.top_p"),
])
def test_errors_name_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_a_recipe_error_is_one_line_naming_its_field_once():
    """`validation_messages`: a validator's message that already names its field is not prefixed with it again."""
    with pytest.raises(ValueError) as err:
        load_config(None, ["recipe_overrides.weight=nonsense"])
    assert str(err.value).startswith("invalid training config: recipe_overrides: weight: unknown name 'nonsense';")
    assert "weight: weight" not in str(err.value) and "\n" not in str(err.value)


def test_override_needs_key_value():
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["rl.steps"])


def test_a_field_a_recorded_config_predates_is_its_default():
    from tokencredit.train.config import config_differences

    new = load_config(None, []).model_dump(mode="json")
    old = {k: v for k, v in new.items() if k != "verifier_timeout"}  # recorded before the field existed
    assert config_differences(old, new) == {}
    assert config_differences(old, {**new, "verifier_timeout": 5.0}) == {"verifier_timeout": (2.0, 5.0)}
