"""The critic of advantage `gae` (preset `ppo`): a value model, its targets and its loss.

    V(s_t)      the value of the state before response token t (prompt + o_{<t}), read at the position whose
                hidden state predicts o_t, with the policy's inputs and position ids (`prompt_response_inputs`)
    target      `return`: the GAE return A_t + V(s_t) (Schulman et al., 2016; PPO as in verl)
                `tvm`: the success rate of the group's responses that pass through s_t, i.e. the TVM token
                label (Lee et al., arXiv 2407.12863) shifted to the state-before-token convention
    loss        masked MSE (V − target)², the token mean over a minibatch
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from transformers import AutoModelForTokenClassification, PreTrainedModel
from transformers.utils import logging as hf_logging

from tokencredit.advantage.gae import gae_advantage_and_return
from tokencredit.masked import masked_mean, masked_sum
from tokencredit.recipes import Recipe, at_progress
from tokencredit.rollouts import Rollouts
from tokencredit.sampling.hf import prompt_response_inputs
from tokencredit.tree import prefix_tree, require_tokens

ValueTarget = Literal["return", "tvm"]


def load_critic(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A value model from the local causal-LM (or critic) folder `path`, never from the network: the same body
    with a scalar head (`AutoModelForTokenClassification`, `num_labels=1`, e.g. `LlamaForTokenClassification`).

    A head the folder lacks starts at exactly 0 (V ≡ 0: the first advantages are the plain discounted
    returns, not noise), and loading leaves the global RNG untouched (a resumed run must draw the same
    numbers as the uninterrupted one). The model stays in eval mode: dropout off (the token-classification
    head has dropout 0.1 by default), so the values that enter GAE are the function the loss fits.
    """
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head's "MISSING" load report is expected: do not print it
    try:
        with torch.random.fork_rng(devices=[]):
            critic, info = AutoModelForTokenClassification.from_pretrained(
                path, num_labels=1, dtype=dtype, local_files_only=True, output_loading_info=True
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    new = set(info["missing_keys"])
    with torch.no_grad():
        for name, param in critic.named_parameters():
            if name in new:
                param.zero_()
    return critic.to(device).eval()


def critic_values(critic: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor) -> Tensor:
    """`V(s_t)` `[N,T]` float32 for every response position t: the head's output at position `P − 1 + t`, which
    sees the prompt and `o_{<t}` only (causal attention). Not masked; with grad if grad is enabled."""
    t = response_ids.shape[1]
    out = critic(**prompt_response_inputs(prompt_ids, prompt_mask, response_ids)).logits
    return out[:, out.shape[1] - t - 1 : -1, 0].float()


def tvm_value_target(rollouts: Rollouts) -> Tensor:
    """TVM labels as values of the state before each token, `[B,T]` float32, 0 outside mask.

    `target[i,t] = v_{i,t−1}` for t ≥ 1, with `v = tvm_labels(rollouts)` (the success rate of the group's
    responses sharing `o_{i,≤t−1}`), and `target[i,0]` = the group's mean reward (the prompt state).
    This is `PrefixTree.value_before` (`V(s_{i,t})`, the root for t = 0) with the sequence rewards as
    scores; unlike a shifted `tvm_labels` it also holds after a mask hole. It is a Monte-Carlo estimate of
    the undiscounted success probability: `gamma`/`lam` do not enter it.
    Source: "Token-Supervised Value Models" (Lee et al., arXiv 2407.12863), the token label.
    """
    tokens = require_tokens(rollouts, "tvm_value_target")
    return prefix_tree(tokens, rollouts.mask, rollouts.group, rollouts.sequence_reward()).value_before


def gae_return_target(rollouts: Rollouts, rcp: Recipe, progress: float = 0.0) -> Tensor:
    """The GAE returns `A_t + V(s_t)` `[B,T]` of `gae_advantage_and_return`, with the recipe's shaped token
    rewards and its `gamma`/`lam` (at `progress`), i.e. the targets of the advantages the policy trains on."""
    params = at_progress(rcp.advantage_params, progress)
    gae_params = {k: params[k] for k in ("gamma", "lam") if k in params}
    return gae_advantage_and_return(rcp.shaped(rollouts, progress), **gae_params)[1]


def value_target(rollouts: Rollouts, rcp: Recipe, kind: ValueTarget, progress: float = 0.0) -> Tensor:
    """The critic's regression target `[B,T]` (0 outside mask): `gae_return_target` or `tvm_value_target`."""
    if kind == "tvm":
        return tvm_value_target(rollouts)
    return gae_return_target(rollouts, rcp, progress)


def value_loss(value: Tensor, target: Tensor, mask: Tensor, tokens: int | Tensor) -> Tensor:
    """`Σ_mask (V − target)² / tokens`: the masked MSE with the normaliser of the whole minibatch, so the
    micro-batch losses add up to the minibatch's token mean."""
    return masked_sum((value - target).square(), mask) / tokens


def explained_variance(value: Tensor, target: Tensor, mask: Tensor) -> float:
    """`1 − Var[target − V] / Var[target]` over the masked tokens: 1 is a perfect critic, 0 one no better than
    the mean target, < 0 worse. 0 when the targets are constant (nothing to explain)."""
    var_target = masked_mean((target - masked_mean(target, mask)).square(), mask)
    if var_target <= 0:
        return 0.0
    residual = target - value
    var_residual = masked_mean((residual - masked_mean(residual, mask)).square(), mask)
    return (1 - var_residual / var_target).item()
