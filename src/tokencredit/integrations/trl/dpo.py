"""`TokenCreditDPOTrainer`: TRL's `DPOTrainer` with any tokencredit preference loss and per-token weights.

TRL sums each completion's per-token log-probs at once; this subclass (TRL 1.16) replaces `_compute_loss` and
keeps everything else (tokenisation, the reference model or PEFT adapter, accelerate/DeepSpeed, logging):

    collator      TRL's `DataCollatorForPreference` (rows [chosen…; rejected…]), wrapped to also pad the per-token
                  dataset columns `chosen_<x>`/`rejected_<x>` (x = weight, token_reward: one float per completion
                  token as TRL tokenises it, `chosen_ids`/`rejected_ids`) and the per-pair `<side>_critical`
    _compute_loss the policy's and the reference's per-token log-probs of both completions (TRL's fused LM head),
                  moved to `tokencredit.Pairs` (each side right-padded), then `tc.get("preference", loss)`

The loss is the mean over this process's pairs, as TRL's is, so DDP's gradient average is the whole batch's mean
for equal per-process batches. Per-token weights align with the completion from its first token, so truncation
must keep the start (`truncation_mode="keep_start"`, TRL's default).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from tokencredit.masked import front_positions, pack
from tokencredit.pairs import SIDES, Pairs
from tokencredit.registry import get, needs_of, parameters

ENGINE = "TRL's DPOTrainer"
TOKEN_FIELDS = ("weight", "token_reward")  # per-token dataset columns `<side>_<x>`
PAIR_FIELDS = ("critical",)  # per-pair dataset columns `<side>_<x>`
SUPPLIED = frozenset({"ref_logprob", "tokens", *TOKEN_FIELDS, *PAIR_FIELDS})
COLUMNS = tuple(f"{side}_{x}" for side in SIDES for x in (*TOKEN_FIELDS, *PAIR_FIELDS))


def check_loss(loss: str, params: dict[str, Any], args: Any) -> None:
    """A `ValueError` listing every reason preference loss `loss` with `params` cannot run in TRL with `args`."""
    get("preference", loss)
    known, _ = parameters("preference", loss)
    problems = []
    unknown = sorted(set(params) - (known - {"pairs", "chosen_logprob", "rejected_logprob", "num_pairs"}))
    if unknown:
        problems.append(f"loss_params {unknown} are not parameters of preference {loss!r}")
    else:
        needs = needs_of("preference", loss, params)
        problems += [f"preference {loss!r} needs input {name!r}, which {ENGINE} cannot supply (give it as dataset "
                     f"columns chosen_{name}/rejected_{name} only for {sorted(TOKEN_FIELDS + PAIR_FIELDS)})"
                     for name in sorted(needs.inputs - SUPPLIED)]
        problems += [f"preference {loss!r} needs the current policy's {name!r}, which {ENGINE} cannot supply"
                     for name in sorted(needs.policy)]
        problems += [f"loss_params {name!r} given as data is a module to build and train, which {ENGINE} does not"
                     for name in sorted(needs.modules)]
    if args.precompute_ref_log_probs:
        problems.append("precompute_ref_log_probs=True stores only sequence sums: token-level losses need the "
                        "reference's per-token log-probs (set it False)")
    if args.truncation_mode != "keep_start":
        problems.append("truncation_mode must be 'keep_start': per-token weights align from the completion's start")
    if args.ld_alpha is not None or args.use_weighting:
        problems.append("ld_alpha and use_weighting are TRL's own token/sequence weightings; give the weights to the "
                        "loss instead")
    if problems:
        raise ValueError("TokenCreditDPOTrainer: " + "; ".join(problems))


def completion_only(x: Tensor, mask: Tensor) -> Tensor:
    """`[N,T]` right-padded completion values from `[N,L]` values aligned with the sequence, `mask [N,L]` marking
    each row's completion positions (in order); `T` the longest completion, 0 beyond a row's."""
    mask = mask.bool()
    width = int(mask.sum(-1).max()) if mask.numel() else 0
    return pack(x, front_positions(mask))[:, :width].contiguous()


class TokenFieldCollator:
    """TRL's preference collator plus `tc_<side>_<x>`: the per-token columns right-padded to the longest completion
    of the batch (0 beyond), the per-pair ones as `[B]` ints."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        extra = {c: [e.pop(c) for e in examples] for c in COLUMNS if examples and c in examples[0]}
        out = self.inner(examples)
        for column, values in extra.items():
            if column.endswith(PAIR_FIELDS):
                out[f"tc_{column}"] = torch.tensor([-1 if v is None else v for v in values], dtype=torch.long)
                continue
            side = column.split("_", 1)[0]
            lengths = [len(e[f"{side}_ids"]) for e in examples]
            for i, (value, n) in enumerate(zip(values, lengths)):
                if len(value) != n:
                    raise ValueError(f"{column}: example {i} has {len(value)} values for its {n} {side} completion "
                                     "tokens (one per token of the tokenised completion, EOS included)")
            width = max(lengths, default=0)
            out[f"tc_{column}"] = torch.tensor([list(v) + [0.0] * (width - len(v)) for v in values],
                                               dtype=torch.float32)
        return out


class TokenCreditDPOTrainer(DPOTrainer):
    """`DPOTrainer(model, args=..., train_dataset=..., loss="cdpo", loss_params={...})`: every other argument is
    TRL's. The tokencredit preference loss replaces TRL's `loss_type` (β is `loss_params["beta"]`, else TRL's
    `args.beta`). Per-token inputs come from the dataset columns `chosen_weight`/`rejected_weight`,
    `chosen_token_reward`/`rejected_token_reward` (one value per tokenised completion token) and
    `chosen_critical`/`rejected_critical` (an index, −1: none); reference log-probs from TRL's reference model."""

    def __init__(self, *args: Any, loss: str = "dpo", loss_params: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        config = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        params = dict(loss_params or {})
        if config is not None:
            check_loss(loss, params, config)
        super().__init__(*args, **kwargs)
        check_loss(loss, params, self.args)
        self.tc_loss, self.tc_params = get("preference", loss), {"beta": self.beta, **params}
        self.data_collator = TokenFieldCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *COLUMNS]

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        fields = {k.removeprefix("tc_"): inputs.pop(k) for k in list(inputs) if k.startswith("tc_")}
        kwargs = {k: v for k, v in inputs.items() if k not in {"completion_mask", "ref_chosen_logps",
                                                                  "ref_rejected_logps"}}
        kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:].bool()
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        seq_len = shift_mask.size(1)
        outputs = model(**kwargs, labels=labels, fused_lm_head=True)
        logprob = completion_only(outputs.log_probs[:, -seq_len:], shift_mask)
        ref_kwargs = {k: v for k, v in kwargs.items() if k != "output_router_logits"}
        adapter = contextlib.nullcontext()
        reference = self.ref_model
        if reference is None:  # PEFT: the base model (or the initial adapter "ref") is the reference
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            reference = self.model
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), \
                adapter:
            ref = reference(**ref_kwargs, labels=labels, fused_lm_head=True).log_probs[:, -seq_len:]
        ref = completion_only(ref, shift_mask)
        tokens = completion_only(inputs["input_ids"][:, 1:], shift_mask)
        mask = completion_only(torch.ones_like(shift_mask), shift_mask).bool()
        b = len(mask) // 2
        sides: dict[str, Any] = {}
        for i, side in enumerate(SIDES):
            rows = slice(i * b, (i + 1) * b)
            width = int(mask[rows].sum(-1).max()) if b else 0
            sides[side] = (logprob[rows, :width], mask[rows, :width])
            sides[f"{side}_ref_logprob"] = ref[rows, :width]
            sides[f"{side}_tokens"] = tokens[rows, :width]
            for x in TOKEN_FIELDS:
                if f"{side}_{x}" in fields:
                    sides[f"{side}_{x}"] = fields[f"{side}_{x}"][:, :width].to(ref.device) * sides[side][1]
        pairs = Pairs(chosen_mask=sides["chosen"][1], rejected_mask=sides["rejected"][1],
                      **{k: v for k, v in sides.items() if k not in SIDES},
                      extra={f"{side}_critical": fields[f"{side}_critical"].to(ref.device) for side in SIDES
                             if f"{side}_critical" in fields})
        loss, stats = self.tc_loss(pairs, sides["chosen"][0], sides["rejected"][0], **self.tc_params)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        for key, value in stats.items():
            self._metrics[mode][f"tokencredit/{key}"].append(self.accelerator.gather(value.reshape(1)).mean().item())
        return (loss, outputs) if return_outputs else loss
