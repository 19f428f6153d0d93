"""The shipped launch config and scripts (examples/verl/) compose with hydra exactly as a user runs them, and the
start-up check (wrapped into verl's own `validate_config`, run by `main_ppo` before Ray starts) accepts every preset
verl can feed and refuses the others, and the settings that would break the recipe, with one message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

import tokencredit as tc

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "verl"
REFUSED = {
    "spo_chain": "recipe 'spo_chain' needs values from 'monte_carlo', which verl cannot supply",
    "spo_tree": "recipe 'spo_tree' needs rollouts sampled as 'segment_tree', which verl cannot supply",
}


def config(recipe: str, *overrides: str):
    """The shipped config with the launch scripts' overrides for `recipe` (and more `overrides`)."""
    estimator = f"tc_{tc.recipe(recipe).advantage}"
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        return compose(config_name="tokencredit_qwen05b", overrides=[
            f"algorithm.adv_estimator={estimator}", f"algorithm.tokencredit.recipe={recipe}", *overrides])


def start(cfg) -> None:
    """What `python -m verl.trainer.main_ppo` runs first, in the launching process."""
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


@pytest.mark.parametrize("script", ["run_qwen05b_1gpu.sh", "run_qwen05b_multinode.sh"])
def test_the_launch_scripts_compose(script):
    """`bash <script> --cfg job`: the script's own command line, composed by verl's hydra main and printed."""
    env = {**os.environ, "RECIPE": "forking", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NNODES": "2", "GPUS_PER_NODE": "8"}
    out = subprocess.run(["bash", str(EXAMPLES / script), "--cfg", "job"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("adv_estimator: tc_grpo", "recipe: forking", "name: vllm", "path: Qwen/Qwen2.5-0.5B-Instruct"):
        assert line in out.stdout, line
    if "multinode" in script:
        assert "nnodes: 2" in out.stdout and "n_gpus_per_node: 8" in out.stdout and "address: auto" in out.stdout


@pytest.mark.parametrize("name", sorted(tc.PRESETS))
def test_every_preset_starts_or_is_refused_with_its_reason(name, tiny_model):
    # ppo takes its values from verl's critic (verl reads the critic model's config here: the local tiny model)
    critic = ["critic.enable=True", f"critic.model.path={tiny_model}"]
    overrides = critic if tc.recipe(name).needs().values is not None and name not in REFUSED else []
    cfg = config(name, *overrides)
    if name in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[name]):
            start(cfg)
    else:
        start(cfg)


@pytest.mark.parametrize(("recipe", "overrides", "message"), [
    ("ppo", [], "recipe 'ppo' needs values from 'critic': set critic.enable=True"),
    ("grpo", ["algorithm.adv_estimator=tc_tempo"], "set algorithm.adv_estimator=tc_grpo"),
    ("grpo", ["algorithm.adv_estimator=grpo"], "algorithm.tokencredit is set but algorithm.adv_estimator=grpo"),
    ("grpo", ["actor_rollout_ref.actor.use_kl_loss=True"], "the recipe's KL term replaces verl's"),
    ("grpo", ["actor_rollout_ref.actor.use_kl_loss=True", "+algorithm.tokencredit.kl=k3",
              "+algorithm.tokencredit.kl_coef=0.01"], "kl_loss_coef=0.001, kl_loss_type='low_var_kl' but"),
    ("grpo", ["+algorithm.tokencredit.kl=k3", "+algorithm.tokencredit.kl_coef=0.001"],
     "set actor_rollout_ref.actor.use_kl_loss=True"),
    ("grpo", ["actor_rollout_ref.actor.entropy_coeff=0.01"], "entropy_coeff=0.01 but the recipe's entropy_coef=0.0"),
    ("grpo", ["actor_rollout_ref.actor.policy_loss.loss_mode=gspo"], "objective=... and leave loss_mode=vanilla"),
    ("forking", ["algorithm.rollout_correction.bypass_mode=True"], "skipped by algorithm.rollout_correction.bypass"),
    ("grpo", ["+algorithm.tokencredit.weight=nonsense"], "algorithm.tokencredit: weight: unknown name 'nonsense'"),
    ("grpo", ["+algorithm.tokencredit.bogus=1"], "algorithm.tokencredit: bogus: unknown field"),
    ("grpo", ["algorithm.tokencredit.recipe=nonsense"], "algorithm.tokencredit.recipe: unknown preset 'nonsense'"),
    # the stages' registered parameter checks (register(..., check=)) run when the recipe is made, at start-up
    ("grpo", ["+algorithm.tokencredit.objective_params.clip_low=-0.1"],
     "algorithm.tokencredit: objective_params: objective 'ppo_clip': clip_low, clip_high: expected ranges ≥ 0, got "
     "-0.1, 0.2"),
    ("dr_grpo", ["+algorithm.tokencredit.agg_params.budget=0"],
     "algorithm.tokencredit: agg_params: aggregate 'seq_mean_token_sum_norm': budget: expected a positive length "
     "normaliser, got 0"),
    ("grpo", ["+algorithm.tokencredit.budget=0"], "algorithm.tokencredit.budget: expected a positive int"),
    ("grpo", ["+algorithm.tokencredit.records_every=-1"],
     "algorithm.tokencredit.records_every: expected an int >= 0, got -1"),
])
def test_settings_that_would_break_the_recipe_are_refused_at_start(recipe, overrides, message):
    """Refused by verl's own start-up check, on one line that starts with `tokencredit (verl): `."""
    with pytest.raises(ValueError) as refused:
        start(config(recipe, *overrides))
    text = str(refused.value)
    assert text.startswith("tokencredit (verl): ") and message in text, text
    assert "\n" not in text and "pydantic" not in text, text


def test_matching_kl_settings_start():
    start(config("grpo", "actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.01",
                 "+algorithm.tokencredit.kl=k3", "+algorithm.tokencredit.kl_coef=0.01"))


def test_the_data_script_writes_verl_rows():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from gsm8k_to_parquet import record
    finally:
        sys.path.remove(str(EXAMPLES))
    row = record({"question": "2+3?", "answer": "2+3=5\n#### 1,005"}, 7, "train")
    assert row["data_source"] == "openai/gsm8k" and row["reward_model"]["ground_truth"] == "1005"
    from verl.utils.reward_score import default_compute_score

    assert default_compute_score("openai/gsm8k", "so #### 1005", "1005") == 1.0
