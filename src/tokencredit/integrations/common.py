"""What the engine plug-ins share: checking a recipe's needs against what an engine can supply, and writing the
group records of `tokencredit inspect RUN` from a step's batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokencredit.needs import INDEPENDENT, UNIFORM
from tokencredit.recipes import Recipe
from tokencredit.rollouts import Credit, Rollouts


def unsupported_needs(recipe: Recipe, engine: str, inputs: Iterable[str], values: Iterable[str] = (),
                      policy: Iterable[str] = (), signals: Iterable[str] = ("progress",)) -> list[str]:
    """One line per need of `recipe` that `engine` cannot supply, given the inputs, value sources, current-policy
    quantities and signals it can (independent samples and its own prompt order are assumed)."""
    needs = recipe.needs()
    problems = [f"input {name!r}" for name in sorted(needs.inputs - set(inputs))]
    if needs.values is not None and needs.values.name not in set(values):
        problems.append(f"values from {needs.values.name!r}")
    if needs.rollout != INDEPENDENT:
        problems.append(f"rollouts sampled as {needs.rollout.name!r}")
    problems += [f"the current policy's {name!r}" for name in sorted(needs.policy - set(policy))]
    problems += [f"the training signal {name!r}" for name in sorted(needs.signals - set(signals))]
    if needs.prompts != UNIFORM:
        problems.append(f"prompts scheduled by {needs.prompts.name!r}")
    return [f"recipe {recipe.name!r} needs {p}, which {engine} cannot supply" for p in problems]


def write_group_records(run: Path, rollouts: Rollouts, credit: Credit, *, step: int, recipe: str, source: str,
                        tokenizer: Any, prompts: Callable[[Sequence[int]], list[str]], groups: int,
                        max_bytes: int, candidates: Tensor | None = None) -> Path | None:
    """Write `groups` groups of one step's batch, drawn with seed `step`, with every per-token quantity that
    `rollouts` (it must carry `tokens`) and `credit` hold, to `run/records/step-NNNNNN.json` (docs/inspect.md).

    `prompts(rows)` gives the prompt texts of those batch rows; only the recorded rows are detokenized (a step's
    batch can hold thousands of long responses). `candidates [B]` bool: the rows whose groups may be drawn (None:
    every row). Returns the file, or None when not even one group fits `max_bytes`."""
    from tokencredit.inspect.records import records_from_tensors, sample_groups, write_records
    from tokencredit.inspect.report import token_pieces

    group = rollouts.group if candidates is None else rollouts.group[candidates]
    chosen = torch.tensor(sample_groups(group, groups, seed=step), device=rollouts.group.device)
    rows = torch.isin(rollouts.group, chosen).nonzero().squeeze(-1)
    r, c = rollouts.select(rows), credit.select(rows)
    text = [token_pieces(tokenizer, ids[keep].tolist()) for ids, keep in zip(r.tokens, r.mask)]
    record = records_from_tensors(
        step=step, recipe=recipe, prompts=prompts(rows.tolist()), group=r.group, mask=r.mask, tokens=r.tokens,
        reward=r.reward, token_text=text, truncated=r.truncated, keep=c.keep, token_keep=c.token_keep,
        source=source, logprob=r.logprob, ref_logprob=r.ref_logprob, entropy=r.entropy, value=r.value,
        advantage=c.advantage, weight=c.weight)
    return write_records(run, record, max_bytes)
