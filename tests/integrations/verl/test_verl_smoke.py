"""verl lane smoke test: the registries a tokencredit plug-in fills, GRPO advantages on a small batch, and
`verl.plugins` entry-point loading (the way a plug-in is found on `import verl`), all on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import verl
from verl.trainer.ppo import core_algos


def test_verl_version():
    assert verl.__version__ == "0.9.1"  # the `verl` extra's pin; change both together


def test_registries_are_reachable():
    assert core_algos.get_adv_estimator_fn("grpo") is core_algos.compute_grpo_outcome_advantage
    assert "grpo" in core_algos.ADV_ESTIMATOR_REGISTRY
    assert callable(core_algos.get_policy_loss_fn("vanilla"))
    assert "vanilla" in core_algos.POLICY_LOSS_REGISTRY


def _batch():
    # 4 responses, 2 groups (a: rewards 1, 0; b: rewards 2, 2), outcome reward on each response's last token
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    rewards = torch.zeros(4, 5)
    last = mask.sum(-1).long() - 1
    rewards[torch.arange(4), last] = torch.tensor([1.0, 0.0, 2.0, 2.0])
    uid = np.array(["a", "a", "b", "b"], dtype=object)
    return rewards, mask, uid


def test_compute_grpo_outcome_advantage_on_a_small_batch():
    rewards, mask, uid = _batch()
    adv, returns = core_algos.compute_grpo_outcome_advantage(token_level_rewards=rewards, response_mask=mask, index=uid)
    # group a: mean 0.5, unbiased std sqrt(0.5); group b: all equal -> 0
    a = 0.5 / (0.5**0.5 + 1e-6)
    expected = torch.tensor([a, -a, 0.0, 0.0]).unsqueeze(-1) * mask
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(returns, expected)


_seen: dict = {}


@core_algos.register_adv_est("lane_smoke_estimator")
def _estimator(token_level_rewards, response_mask, config=None, index=None, **kwargs):
    _seen.update(kwargs, config=config, index=index)
    return token_level_rewards * 2, token_level_rewards


@pytest.mark.parametrize("dispatch", ["legacy", "v1"])
def test_trainer_dispatch_calls_a_registered_estimator(dispatch):
    """The legacy trainer's `ray_trainer.compute_advantage` and the V1 (default in 0.9.1) trainer's
    `v1.utils.compute_advantage_for_multi_trajectories` both reach a registered estimator, with the raw
    `algorithm` config (so `+algorithm.tokencredit.*` settings arrive)."""
    from omegaconf import OmegaConf
    from verl import DataProto

    rewards, mask, uid = _batch()
    tensors = {"token_level_rewards": rewards, "response_mask": mask}
    data = DataProto.from_dict(tensors=tensors, non_tensors={"uid": uid})
    cfg = OmegaConf.create({"tokencredit": {"mode": "x"}})
    _seen.clear()
    if dispatch == "legacy":
        from verl.trainer.ppo.ray_trainer import compute_advantage

        out = compute_advantage(data, adv_estimator="lane_smoke_estimator", config=cfg)
    else:
        from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

        keys = [f"{u}_0_0" for u in uid]
        out = compute_advantage_for_multi_trajectories(
            data, batch_keys=keys, adv_estimator="lane_smoke_estimator", config=cfg
        )
    torch.testing.assert_close(out.batch["advantages"], rewards * 2)
    assert _seen["config"].tokencredit.mode == "x"
    assert list(_seen["index"]) == list(uid)


PLUGIN = textwrap.dedent(
    """
    from verl.trainer.ppo.core_algos import register_adv_est, register_policy_loss

    @register_adv_est("lane_smoke_plugin_adv")
    def adv(token_level_rewards, response_mask, config=None, index=None, **kwargs):
        return token_level_rewards, token_level_rewards

    @register_policy_loss("lane_smoke_plugin_loss")
    def loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
             rollout_is_weights=None):
        raise NotImplementedError
    """
)

CHECK = textwrap.dedent(
    """
    import verl
    from verl.trainer.ppo import core_algos
    print("adv", "lane_smoke_plugin_adv" in core_algos.ADV_ESTIMATOR_REGISTRY)
    print("loss", "lane_smoke_plugin_loss" in core_algos.POLICY_LOSS_REGISTRY)
    """
)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A folder holding an installed-looking distribution with a `verl.plugins` entry point (no pip needed)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "lane_smoke_plugin.py").write_text(PLUGIN)
    info = root / "lane_smoke_plugin-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lane-smoke-plugin\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[verl.plugins]\nlane_smoke = lane_smoke_plugin\n")
    return root


def _import_verl(plugin_path, policy):
    env = {**os.environ, "PYTHONPATH": str(plugin_path), "VERL_USE_EXTERNAL_PLUGINS": policy}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize(("policy", "loaded"), [("auto", "True"), ("lane_smoke", "True"), ("none", "False")])
def test_verl_plugins_entry_point_loads_on_import(plugin_path, policy, loaded):
    assert _import_verl(plugin_path, policy) == ["adv", loaded, "loss", loaded]
