"""One registry shared by every stage: `register(stage, name, needs=...)` to add, `get(stage, name)` to look up,
`needs_of(stage, name, params)` for what the function needs from its caller (`tokencredit.needs`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tokencredit.needs import Needs

STAGES = ("shape", "advantage", "select", "token_select", "weight", "objective", "aggregate", "kl", "preference")
_REGISTRY: dict[str, dict[str, Callable]] = {stage: {} for stage in STAGES}
_NEEDS: dict[tuple[str, str], Needs | Callable[..., Needs]] = {}
_CHECKS: dict[tuple[str, str], Callable[..., None]] = {}

F = TypeVar("F", bound=Callable)
NeedsSpec = Needs | Callable[..., Needs] | None


def _stage(stage: str) -> dict[str, Callable]:
    if stage not in _REGISTRY:
        raise ValueError(f"stage: unknown stage {stage!r}; expected one of {list(STAGES)}")
    return _REGISTRY[stage]


def register(stage: str, name: str, needs: NeedsSpec = None, check: Callable[..., None] | None = None
             ) -> Callable[[F], F]:
    """Decorator that registers a stage function under `name`, with what it needs from its caller: a `Needs`,
    or a function of the stage's parameters returning one (its keyword parameters count as the stage's
    parameters too: a recipe accepts them and passes each to whichever of the two takes it).

    `check`: the stage's validation of its parameter values, a function of (some of) its keyword parameters
    that raises `ValueError` naming the bad one; a recipe calls it when it is made (`check_params`), so a bad
    value is an error then, not at the first call. The stage function should call it too."""
    table = _stage(stage)

    def decorate(fn: F) -> F:
        if name in table and table[name] is not fn:
            raise ValueError(f"{stage} {name!r} is already registered")
        table[name] = fn
        _NEEDS[(stage, name)] = needs if needs is not None else Needs()
        if check is not None:
            _CHECKS[(stage, name)] = check
        return fn

    return decorate


def unregister(stage: str, name: str) -> None:
    """Remove `name` from `stage` (a method registered for one experiment or test)."""
    _stage(stage).pop(name, None)
    _NEEDS.pop((stage, name), None)
    _CHECKS.pop((stage, name), None)


def get(stage: str, name: str) -> Callable:
    """The function registered as `name` in `stage`; a clear error lists the known names otherwise."""
    table = _stage(stage)
    if name not in table:
        raise ValueError(f"{stage}: unknown name {name!r}; registered: {sorted(table)}")
    return table[name]


def names(stage: str) -> list[str]:
    return sorted(_stage(stage))


def needs_of(stage: str, name: str, params: Mapping[str, Any] | None = None) -> Needs:
    """What `name` in `stage` needs with (resolved) `params`."""
    get(stage, name)
    spec = _NEEDS[(stage, name)]
    if isinstance(spec, Needs):
        return spec
    return spec(**accepted(spec, params or {}))


def check_params(stage: str, name: str, params: Mapping[str, Any]) -> None:
    """Run the `check` registered with `name` in `stage` (if any) on `params` (resolved: no schedules), the
    function's own defaults filling the parameters not given; its `ValueError` propagates."""
    check = _CHECKS.get((stage, name))
    if check is None:
        return
    defaults = {p.name: p.default for p in inspect.signature(get(stage, name)).parameters.values()
                if p.default is not inspect.Parameter.empty}
    check(**accepted(check, {**defaults, **params}))


def parameters(stage: str, name: str) -> tuple[set[str], bool]:
    """The keyword parameters `name` in `stage` takes (its function's and its needs function's), and whether its
    function takes any keyword (`**kwargs`), in which case no parameter name is unknown."""
    fn, spec = get(stage, name), _NEEDS[(stage, name)]
    known = _keywords(fn) | (set() if isinstance(spec, Needs) else _keywords(spec))
    return known, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _keywords(fn: Callable) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds}


def accepted(fn: Callable, params: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `params` that `fn` takes as keyword arguments (all of them if it takes `**kwargs`)."""
    signature = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
        return dict(params)
    return {k: v for k, v in params.items() if k in signature}
