"""The `critic` value source (asked for by advantage `gae`, preset `ppo`): a value model, its targets, its loss,
and the provider that gathers them for the reference trainer.

    V(s_t)      the value of the state before response token t (prompt + o_{<t}), read at the position whose
                hidden state predicts o_t, with the policy's inputs and position ids (`prompt_response_inputs`)
    target      `return`: the request's `returns` of the shaped rollouts, for GAE the return A_t + V(s_t)
                (Schulman et al., 2016; PPO as in verl)
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

from tokencredit.masked import masked_mean, masked_sum, token_count, zero_outside
from tokencredit.needs import Request
from tokencredit.rollouts import Rollouts
from tokencredit.sampling.hf import prompt_response_inputs
from tokencredit.train.batch import Batch
from tokencredit.train.checkpoint import load_optimizer, save_optimizer
from tokencredit.train.providers import Provider, RunContext, register_provider
from tokencredit.train.schedule import lr_at, make_optimizer
from tokencredit.tree import prefix_tree, require_tokens

ValueTarget = Literal["return", "tvm"]
CRITIC = "critic"  # the checkpoint subfolder of the critic model and its optimizer state
TARGET = "value_target"  # the per-token extra that carries the critic's regression target through a batch


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


def value_loss(value: Tensor, target: Tensor, mask: Tensor, tokens: int | Tensor) -> Tensor:
    """`Σ_mask (V − target)² / tokens`: the masked MSE with the normaliser of the whole minibatch, so the
    micro-batch losses add up to the minibatch's token mean."""
    return masked_sum((value - target).square(), mask) / tokens


def accumulate_value_gradient(critic: PreTrainedModel, batch: Batch, rows: Tensor, micro_batch_size: int) -> float:
    """Backward the critic's masked MSE against the batch's `value_target` over minibatch `rows` (token mean over
    the minibatch) in micro-batches; returns the minibatch loss. Every micro-batch divides by the minibatch's
    token count, so the summed gradient equals the one-pass gradient exactly."""
    tokens = token_count(batch.rollouts.mask[rows]).clamp(min=1)
    total = 0.0
    for _, micro in batch.micro_batches(rows, micro_batch_size):
        r = micro.rollouts
        loss = value_loss(critic_values(critic, *micro.model_inputs()), r.extra[TARGET], r.mask, tokens)
        loss.backward()
        total += loss.item()
    return total


def explained_variance(value: Tensor, target: Tensor, mask: Tensor) -> float:
    """`1 − Var[target − V] / Var[target]` over the masked tokens: 1 is a perfect critic, 0 one no better than
    the mean target, < 0 worse. 0 when the targets are constant (nothing to explain)."""
    var_target = masked_mean((target - masked_mean(target, mask)).square(), mask)
    if var_target <= 0:
        return 0.0
    residual = target - value
    var_residual = masked_mean((residual - masked_mean(residual, mask)).square(), mask)
    return (1 - var_residual / var_target).item()


@register_provider("values", "critic")
class Critic(Provider):
    """A learned value model, gathered: built from the policy RL starts from (or restored from `ctx.resume`),
    its values `V(s_t)` for each batch, its regression targets (`critic.target`), and one optimizer step on each
    minibatch the policy trains on (micro-batched like the policy, with the minibatch's token count as the
    normaliser so the summed gradient is the one-pass gradient). Saved in each checkpoint's `critic/`."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        saved = ctx.resume / CRITIC if ctx.resume is not None else None
        has_saved = saved is not None and (saved / "config.json").is_file()
        if not has_saved and not ctx.learn:
            raise ValueError(f"values 'critic': {ctx.resume} holds no trained critic ({CRITIC}/), which only a run "
                             "of a recipe with a critic saves")
        self.cfg = ctx.cfg.critic
        self.model = load_critic(saved if has_saved else ctx.start, device=ctx.cfg.device)
        self.optimizer = make_optimizer(self.model, self.cfg.lr, self.cfg.weight_decay) if ctx.learn else None
        if self.optimizer is not None and has_saved and (saved / "optimizer.json").is_file():
            load_optimizer(self.optimizer, saved)

    def provide(self, batch: Batch, request: Request) -> Batch:
        """`value` (V(s_t), 0 outside the mask) and, when learning, the regression target as the extra `value_target`
        with how well the values explain it."""
        mask = batch.rollouts.mask
        value = zero_outside(batch.per_token(lambda micro: critic_values(self.model, *micro.model_inputs()),
                                             self.ctx.cfg.rl.micro_batch_size), mask)
        batch = batch.with_inputs(value=value)
        batch.metrics["value_mean"] = masked_mean(value, mask).item()
        if not self.ctx.learn:
            return batch
        if self.cfg.target == "tvm":
            target = tvm_value_target(batch.rollouts)
        else:
            shaped = self.ctx.recipe.shaped(batch.rollouts, batch.signals.get("progress", 0.0))
            target = request.params["returns"](shaped)
        batch.metrics["explained_variance"] = explained_variance(value, target, mask)
        return batch.with_inputs(**{TARGET: target})

    def learn(self, batch: Batch, rows: Tensor, step: int) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.ctx.cfg.rl.steps, self.cfg.lr, self.cfg.warmup)
        total = accumulate_value_gradient(self.model, batch, rows, self.ctx.cfg.rl.micro_batch_size)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"value_loss": total, "value_grad_norm": grad_norm.item()}

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder / CRITIC)
        save_optimizer(self.optimizer, folder / CRITIC)
