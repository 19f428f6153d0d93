"""Pair data and the pair update of the reference trainer's pairs mode (`mode: pairs`, docs/training.md).

    data         `jsonl:PATH` (one {prompt, chosen, rejected} per line) or `on_policy`: responses sampled from the
                 start policy on the run's task, a verified-correct one paired with a verified-wrong one to the
                 same prompt; a rollout critical-token search on each rejected response when the loss needs it
    batch        `PairBatch`: prompts (left-padded), both sides' response ids (EOS appended where the response
                 ended) and the `tokencredit.Pairs` the preference loss reads
    inputs       the loss's needs (`tc.registry.needs_of("preference", ...)`) from the pair providers
                 (`register_provider("pair_input", name)`): `ref_logprob` (the frozen reference), `hidden` and
                 `last_hidden` (its hidden states, from the same forward pass), `token_reward` (a guide model's
                 implicit token rewards), `critical` (from the data)
    modules      the loss's trained modules (`Needs.modules`, e.g. learned token masks), built once per run by
                 `register_provider("pair_module", name)`, trained with the policy, saved in every checkpoint
    update       micro-batches of one batch of pairs, each called with the whole batch's `num_pairs`, so the
                 summed gradient is the whole batch's

Nothing here names a loss: the loss says what it needs, the providers supply it.

The JSONL pair format (one object per line; blank lines skipped):

| field | required | meaning |
|---|---|---|
| `prompt` | yes | the prompt string exactly as the model sees it |
| `chosen_ids` / `chosen` | one of the two | the preferred response: token ids after the prompt, or text |
| `rejected_ids` / `rejected` | one of the two | the dispreferred response, likewise |
| `answer` | no | string or number, kept with the prompt |
| `chosen_critical`, `rejected_critical` | no | int, the critical-token index (−1, null: none); see below |

`rejected_critical` is what a loss that reads critical tokens needs (cDPO with `weights: critical`, T-REG with
`source: critical`): e.g. the `index` of the response's line in `tokencredit critical`'s output.

A text response ends with EOS (as the warm start's demonstrations do); a response given as ids ends with EOS when
its ids do, so a truncated sample stays truncated.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tokencredit.analysis.recorded import response_tokens
from tokencredit.needs import Needs, Request
from tokencredit.pairs import SIDES, Pairs
from tokencredit.preference.masks import MASK_REQUEST, token_masks
from tokencredit.rewards import safe_score
from tokencredit.sampling.hf import (
    TransformersSampler,
    gathered,
    prompt_response_inputs,
    response_logits,
    tempered_logprobs,
)
from tokencredit.tasks import Example, Task
from tokencredit.tasks.jsonl import jsonl_records
from tokencredit.train.providers import provider, register_provider

PAIRS_FILE = "pairs.jsonl"  # the run's pair data, in every checkpoint of a pairs-mode run


@dataclass(frozen=True)
class PairRecord:
    """One preference pair: the prompt's `example`, both responses' content token ids (no EOS), whether each
    ended with EOS (`*_end`), and each response's critical-token index (−1: none; None: not searched)."""

    example: Example
    chosen: list[int]
    rejected: list[int]
    chosen_end: bool = True
    rejected_end: bool = True
    chosen_critical: int | None = None
    rejected_critical: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.example.prompt, "answer": self.example.answer}
        for side in SIDES:
            ids = getattr(self, side)
            out[f"{side}_ids"] = ids + ([_EOS] if getattr(self, f"{side}_end") else [])
            if getattr(self, f"{side}_critical") is not None:
                out[f"{side}_critical"] = getattr(self, f"{side}_critical")
        return out


_EOS = -1  # placeholder in `to_json`, replaced by the tokenizer's EOS id in `write_pairs`


# ---------------------------------------------------------------------------------------------- reading, writing
def read_pairs(path: str | Path, tokenizer: Any) -> list[PairRecord]:
    """The pairs of the JSONL file `path` (format in the module docstring); a ValueError names the file, the line
    and the field."""
    out = []
    for where, _, record in jsonl_records(path, "pairs.data"):
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: " + ("missing field 'prompt'" if "prompt" not in record
                                              else "field 'prompt' must be a string"))
        answer = record.get("answer", "")
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise ValueError(f"{where}: field 'answer' must be a string or a number")
        fields: dict[str, Any] = {}
        for side in SIDES:
            ids = response_tokens(record, where, tokenizer, side, pad_ends=False)
            given = record.get(f"{side}_ids")
            fields[side] = ids
            # a text ends with EOS; ids end with it when they did
            fields[f"{side}_end"] = given is None or len(given) > len(ids)
            critical = record.get(f"{side}_critical", None)
            if f"{side}_critical" in record and critical is None:
                critical = -1
            if critical is not None and (isinstance(critical, bool) or not isinstance(critical, int)
                                         or not -1 <= critical < len(ids)):
                raise ValueError(f"{where}: field '{side}_critical' must be -1 (none) or a token index of the {side} "
                                 f"response (0 … {len(ids) - 1}), got {critical!r}")
            fields[f"{side}_critical"] = critical
        out.append(PairRecord(Example(prompt, str(answer)), **fields))
    return out


def write_pairs(path: Path, records: Sequence[PairRecord], tokenizer: Any) -> None:
    """`records` as the JSONL pair format (ids, so `read_pairs` gives them back exactly), written atomically."""
    eos = tokenizer.eos_token_id
    lines = []
    for r in records:
        row = r.to_json()
        for side in SIDES:
            row[f"{side}_ids"] = [eos if t == _EOS else t for t in row[f"{side}_ids"]]
        lines.append(json.dumps(row) + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(lines))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- on-policy pairs
def sample_pairs(sampler: TransformersSampler, task: Task, examples: Sequence[Example], samples: int, *,
                 verifier_timeout: float = 2.0) -> list[PairRecord]:
    """On-policy pairs: `samples` responses to each of `examples` from `sampler`, scored by the task's verifier
    (correct: reward > 0.5); a prompt with at least one correct and one wrong response gives the pair (its first
    correct, its first wrong), a prompt without both gives none."""
    prompts = [e.prompt for e in examples for _ in range(samples)]
    if not prompts:
        return []
    drawn = sampler.sample(prompts)
    expanded = [e for e in examples for _ in range(samples)]
    reward, _ = safe_score(task, drawn.texts, expanded, timeout_s=verifier_timeout)
    correct = (reward > 0.5).view(len(examples), samples)
    eos = sampler.tokenizer.eos_token_id
    out = []
    for i, example in enumerate(examples):
        good, bad = correct[i].nonzero(), (~correct[i]).nonzero()
        if len(good) and len(bad):
            sides = {}
            for side, row in (("chosen", int(good[0]) + i * samples), ("rejected", int(bad[0]) + i * samples)):
                ids = drawn.response_ids[row][drawn.response_mask[row]].tolist()
                ended = bool(ids) and ids[-1] == eos
                sides[side], sides[f"{side}_end"] = (ids[:-1] if ended else ids), ended
            out.append(PairRecord(example, **sides))
    return out


def with_critical_tokens(records: Sequence[PairRecord], scorer: Any, *, k: int, mode: str) -> list[PairRecord]:
    """`records` with `rejected_critical` set by the rollout critical-token search (`analysis.critical_tokens`,
    k continuations per probed prefix, `mode` scan or binary) on every rejected response."""
    from dataclasses import replace

    from tokencredit.analysis import critical_tokens

    found = critical_tokens(scorer, [r.example for r in records], [r.rejected for r in records], k=k, mode=mode)
    return [replace(r, rejected_critical=-1 if f.index is None else f.index) for r, f in zip(records, found)]


def searched(records: Sequence[PairRecord], side: str = "rejected") -> bool:
    """Whether the records carry critical-token indices of `side` (every record)."""
    return bool(records) and all(getattr(r, f"{side}_critical") is not None for r in records)


# ---------------------------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class PairBatch:
    """B pairs ready for a forward pass: `prompt_ids`/`prompt_mask` `[B,P]` (left-padded), `chosen_ids [B,T_c]`
    and `rejected_ids [B,T_r]` (right-padded; EOS included where the response ended) and `pairs`, their
    `tokencredit.Pairs` (masks, tokens, and `extra["<side>_critical"]` `[B]`)."""

    prompt_ids: Tensor
    prompt_mask: Tensor
    pairs: Pairs

    def ids(self, side: str) -> Tensor:
        return getattr(self.pairs, f"{side}_tokens")

    def select(self, rows: Tensor) -> PairBatch:
        """Pairs `rows`, each side narrowed to its longest response (at least one column)."""
        pairs = self.pairs.select(rows)
        width = [max(int(m.sum(-1).max()) if len(rows) else 0, 1) for m in (pairs.chosen_mask, pairs.rejected_mask)]
        return PairBatch(self.prompt_ids[rows], self.prompt_mask[rows], pairs.narrow(*width))


def collate(records: Sequence[PairRecord], sampler: TransformersSampler) -> PairBatch:
    """The `PairBatch` of `records` on the sampler's model's device (prompts encoded as sampling encodes them);
    a side's critical-token indices (`extra["<side>_critical"]`) when every record carries them."""
    prompt_ids, prompt_mask = sampler.encode_prompts([r.example.prompt for r in records])
    device, eos, pad = prompt_ids.device, sampler.tokenizer.eos_token_id, sampler.tokenizer.pad_token_id
    fields: dict[str, Tensor] = {}
    for side in SIDES:
        rows = [getattr(r, side) + ([eos] if getattr(r, f"{side}_end") else []) for r in records]
        width = max([len(row) for row in rows] + [1])
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        fields[f"{side}_tokens"], fields[f"{side}_mask"] = ids.to(device), mask.to(device)
    extra = {f"{side}_critical": torch.tensor([getattr(r, f"{side}_critical") for r in records], dtype=torch.long,
                                              device=device) for side in SIDES if searched(records, side)}
    return PairBatch(prompt_ids, prompt_mask, Pairs(**fields, extra=extra))


# ---------------------------------------------------------------------------------------------- providers
@dataclass
class PairContext:
    """What pair providers may use: the frozen `reference` model, an optional `guide` model (token rewards), and
    the loss's resolved parameters (`beta`)."""

    reference: torch.nn.Module
    params: dict[str, Any]
    guide: torch.nn.Module | None = None


def side_logits(model: torch.nn.Module, batch: PairBatch, side: str) -> Tensor:
    """`[B,T,V]` logits that predict each response token of `side`."""
    return response_logits(model, batch.prompt_ids, batch.prompt_mask, batch.ids(side))


def side_logprob(model: torch.nn.Module, batch: PairBatch, side: str) -> Tensor:
    """`[B,T]` log-probs (temperature 1) of the response tokens of `side`, 0 outside its mask."""
    return _response_logprob(side_logits(model, batch, side), batch, side)


def _response_logprob(logits: Tensor, batch: PairBatch, side: str) -> Tensor:
    logprob = gathered(tempered_logprobs(logits, 1.0), batch.ids(side))
    return logprob * getattr(batch.pairs, f"{side}_mask")


@register_provider("pair_input", "ref_logprob")
@torch.no_grad()
def reference_logprob(ctx: PairContext, batch: PairBatch) -> dict[str, Tensor]:
    """The frozen reference policy's log-probs of both responses (`Pairs.<side>_ref_logprob`)."""
    return {f"{side}_ref_logprob": side_logprob(ctx.reference, batch, side) for side in SIDES}


@register_provider("pair_input", "hidden")
@register_provider("pair_input", "last_hidden")
@torch.no_grad()
def reference_hidden(ctx: PairContext, batch: PairBatch) -> dict[str, Tensor]:
    """The frozen reference's hidden states at the positions that predict each response token (where its logits
    are read): every layer's output `extra["<side>_hidden"] [B,T,L,d]` (L = num_hidden_layers; not the
    embeddings) and the last `extra["<side>_last_hidden"] [B,T,d]`, with its log-probs `<side>_ref_logprob` from
    the same forward pass."""
    out = {}
    for side in SIDES:
        ids = batch.ids(side)
        t = ids.shape[1]
        result = ctx.reference(**prompt_response_inputs(batch.prompt_ids, batch.prompt_mask, ids),
                               logits_to_keep=t + 1, output_hidden_states=True)
        layers = torch.stack([h[:, -t - 1:-1] for h in result.hidden_states[1:]], dim=2)
        out[f"{side}_hidden"], out[f"{side}_last_hidden"] = layers, layers[:, :, -1]
        out[f"{side}_ref_logprob"] = _response_logprob(result.logits[:, :-1], batch, side)
    return out


@register_provider("pair_input", "token_reward")
@torch.no_grad()
def guide_token_reward(ctx: PairContext, batch: PairBatch) -> dict[str, Tensor]:
    """Implicit token rewards `β (log π_guide − log π_ref)` of both responses (`Pairs.<side>_token_reward`) from
    the guide model (`pairs.guide`, e.g. a DPO-trained checkpoint), β the loss's."""
    from tokencredit.preference import implicit_token_reward

    if ctx.guide is None:
        raise ValueError("pairs.guide: the loss needs per-token rewards (token_reward); set pairs.guide to a model "
                         "folder (e.g. a pair-trained checkpoint) whose implicit token rewards supply them")
    out = {}
    for side in SIDES:
        mask = getattr(batch.pairs, f"{side}_mask")
        out[f"{side}_token_reward"] = implicit_token_reward(
            side_logprob(ctx.guide, batch, side), side_logprob(ctx.reference, batch, side), mask,
            ctx.params.get("beta", 0.1))
    return out


@register_provider("pair_input", "critical")
def data_critical(ctx: PairContext, batch: PairBatch) -> dict[str, Tensor]:
    """Critical-token indices come with the data (`collate`); reached only when the data has none."""
    raise ValueError("pairs.data: the loss needs each rejected response's critical-token index, and the pair data "
                     "has none: use pairs.data=on_policy (searched with pairs.critical_k, pairs.critical_mode), or "
                     "give rejected_critical on every line of the JSONL (e.g. the index of a tokencredit critical "
                     "line)")


@register_provider("pair_policy", "kl")
def policy_token_kl(ctx: PairContext, batch: PairBatch, side: str, logits: Tensor) -> Tensor:
    """The per-token `KL(π_ref ‖ π_θ)` `[B,T]` of `side` with gradient (from the policy's logits)."""
    from tokencredit.preference import token_kl

    with torch.no_grad():
        ref = side_logits(ctx.reference, batch, side)
    return token_kl(ref, logits) * getattr(batch.pairs, f"{side}_mask")


def pair_inputs(ctx: PairContext, batch: PairBatch, needs: Needs) -> PairBatch:
    """`batch` with every input `needs.inputs` names that its `Pairs` lacks, from the pair providers."""
    pairs = batch.pairs
    # in name order, so `hidden` comes before `ref_logprob` and the one reference pass supplies both
    for name in sorted(needs.inputs):
        chosen, rejected = pairs.side(name)
        if rejected is None or (chosen is None and name != "critical"):  # a chosen side has no critical token
            pairs = pairs.with_inputs(**provider("pair_input", name)(ctx, PairBatch(batch.prompt_ids,
                                                                                     batch.prompt_mask, pairs)))
    return PairBatch(batch.prompt_ids, batch.prompt_mask, pairs)


@register_provider("pair_module", MASK_REQUEST)
def reference_token_masks(ctx: PairContext, request: Request) -> torch.nn.Module:
    """Token masks (`preference.masks.token_masks`) sized to the frozen reference, whose hidden states they read."""
    config = ctx.reference.config
    options = {k: v for k, v in request.params.items() if k != "weight_decay"}  # the optimizer's, not the module's
    return token_masks(hidden_size=config.hidden_size, num_layers=config.num_hidden_layers, **options)


def build_modules(ctx: PairContext, needs: Needs, seed: int) -> dict[str, torch.nn.Module]:
    """The loss's trained modules (`needs.modules`) from the pair module providers, by parameter name, on the
    reference's device, in train mode. Initialised from their own generator (`seed`), so a run and its resume
    build the same modules and the global RNG is not drawn from."""
    device = next(ctx.reference.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {name: provider("pair_module", request.name)(ctx, request).to(device).train()
                for name, request in sorted(needs.modules.items())}


def module_groups(modules: dict[str, torch.nn.Module], needs: Needs) -> list[dict[str, Any]]:
    """Optimizer parameter groups of `modules`: each its own, with its request's `weight_decay` (default 0)."""
    groups = [{"params": list(module.parameters()), "weight_decay": needs.modules[name].params.get("weight_decay", 0.0)}
              for name, module in modules.items()]
    return [group for group in groups if group["params"]]


def _module_file(folder: Path, name: str) -> Path:
    return folder / f"loss_{name}.safetensors"


def save_modules(folder: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Each module's `state_dict` as `folder/loss_<parameter>.safetensors` (modules without state: none)."""
    for name, module in modules.items():
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        if state:
            save_file(state, str(_module_file(folder, name)))


def load_modules(folder: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Restore what `save_modules` wrote into `modules`; a ValueError names a missing or mismatched file."""
    for name, module in modules.items():
        if not module.state_dict():
            continue
        path = _module_file(folder, name)
        if not path.is_file():
            raise ValueError(f"{folder}: the checkpoint has no {path.name} (the loss's trained {name!r}); resume "
                             "from a checkpoint of this run")
        try:
            module.load_state_dict(load_file(str(path), device=str(next(module.parameters()).device)))
        except RuntimeError as err:
            raise ValueError(f"{path}: does not fit the loss's {name!r} ({str(err).splitlines()[0]})") from None


def accumulate_pair_gradient(model: torch.nn.Module, loss_fn: Callable, params: dict[str, Any], ctx: PairContext,
                             batch: PairBatch, needs: Needs, micro_batch_size: int) -> dict[str, float]:
    """Backward the loss of `batch` in micro-batches of `micro_batch_size` pairs, each called with the whole
    batch's `num_pairs`, so the summed gradient is the one-pass gradient. Returns the loss and the loss's stats
    (pair-weighted means over the micro-batches)."""
    quantities = {name: provider("pair_policy", name) for name in sorted(needs.policy)}
    n = batch.pairs.num_pairs
    totals: dict[str, float] = defaultdict(float)
    for part in torch.arange(n, device=batch.prompt_ids.device).split(micro_batch_size):
        micro = pair_inputs(ctx, batch.select(part), needs)
        logprob, policy = {}, {}
        for side in SIDES:
            logits = side_logits(model, micro, side)
            logprob[side] = gathered(tempered_logprobs(logits, 1.0), micro.ids(side))
            for name, fn in quantities.items():
                policy[f"{side}_{name}"] = fn(ctx, micro, side, logits)
        loss, stats = loss_fn(micro.pairs, logprob["chosen"], logprob["rejected"], num_pairs=n, **params, **policy)
        loss.backward()
        totals["loss"] += loss.item()
        for key, value in stats.items():
            totals[key] += len(part) / n * float(value)
    return dict(totals)


def steps_per_epoch(pairs: int, batch_size: int) -> int:
    return math.ceil(pairs / batch_size)


def epoch_order(pairs: int, seed: int, epoch: int) -> Tensor:
    """The pair order of `epoch`: a permutation drawn from its own generator (seed, epoch), so a resumed run
    visits the pairs in the same order without restoring any RNG."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(pairs, generator=generator)
