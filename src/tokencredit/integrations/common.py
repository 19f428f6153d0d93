"""What the engine plug-ins share: checking a recipe's needs against what an engine can supply."""

from __future__ import annotations

from collections.abc import Iterable

from tokencredit.needs import INDEPENDENT, UNIFORM
from tokencredit.recipes import Recipe


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
