"""One registry shared by every stage: `register(stage, name)` to add, `get(stage, name)` to look up."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

STAGES = ("shape", "advantage", "weight", "select", "objective", "aggregate", "kl")
_REGISTRY: dict[str, dict[str, Callable]] = {stage: {} for stage in STAGES}

F = TypeVar("F", bound=Callable)


def _stage(stage: str) -> dict[str, Callable]:
    if stage not in _REGISTRY:
        raise ValueError(f"stage: unknown stage {stage!r}; expected one of {list(STAGES)}")
    return _REGISTRY[stage]


def register(stage: str, name: str) -> Callable[[F], F]:
    """Decorator that registers a stage function under `name`."""
    table = _stage(stage)

    def decorate(fn: F) -> F:
        if name in table and table[name] is not fn:
            raise ValueError(f"{stage} {name!r} is already registered")
        table[name] = fn
        return fn

    return decorate


def get(stage: str, name: str) -> Callable:
    """The function registered as `name` in `stage`; a clear error lists the known names otherwise."""
    table = _stage(stage)
    if name not in table:
        raise ValueError(f"{stage}: unknown name {name!r}; registered: {sorted(table)}")
    return table[name]


def names(stage: str) -> list[str]:
    return sorted(_stage(stage))
