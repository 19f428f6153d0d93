"""What a method needs from its caller, as data: the vocabulary every stage declares its inputs in.

A stage registers its needs beside itself (`register(stage, name, needs=...)`); a `Recipe` merges the needs of
its stages and answers "what do you need?"; the reference trainer, `inspect` and the engine plug-ins read the
answer and supply each need through a provider. Nothing outside a method's own module names the method.

    inputs    per-token data on the batch, by name: the `Rollouts` fields (`tokens`, `logprob`, `entropy`,
              `ref_logprob`, `value`, `truncated`), the generation budget `budget` (`Rollouts.budget`, the
              most tokens a response may have), or any other name, carried in `Rollouts.extra` as `[B,T,...]`
              (e.g. `hidden`, the sampling policy's hidden states, or `topk_logprob`, next-token distributions)
    values    the source that fills `Rollouts.value` (V of the state before each token): a `Request` such as
              `Request("monte_carlo", at=..., samples=9)` (mean reward of sampled continuations of the states
              `at(rollouts)` marks) or `Request("critic", returns=...)` (a learned value model)
    rollout   how responses are sampled: `Request("independent")` (G samples per prompt, the default) or
              `Request("segment_tree", branching=..., segment_tokens=...)`
    policy    per-token quantities of the *current* policy that the loss needs, computed in the training forward
              pass with gradient (e.g. `entropy`); passed to `Recipe.loss` as keyword arguments
    signals   training signals a stage reads, passed to it as keyword arguments of the same name: `progress`
              (p ∈ [0,1]; schedules use it without declaring it), `accuracy` (the latest held-out accuracy)
    prompts   which prompts the next step samples: `Request("uniform")` (the task's stream, the default) or a
              data curriculum
    modules   trained modules that the stage takes as parameters, given in a config as plain data, by parameter
              name: `{name: Request(kind, **options)}` (e.g. learned token masks built on the reference model).
              The caller builds each with its provider, trains its parameters with the policy's optimizer (AdamW
              weight decay: the option `weight_decay`, default 0), saves it in every checkpoint, restores it on
              resume, and passes the module as the parameter

`Needs` are values: a stage may declare a constant or a function of its (resolved) parameters.

The `preference` stage (losses on `tokencredit.Pairs`) uses the same vocabulary per side. An input names a `Pairs`
field stem, read as `chosen_<name>` and `rejected_<name>` (`ref_logprob`, `weight`, `token_reward`, `tokens`), or a
per-side extra (`hidden` is `extra["chosen_hidden"]` and `extra["rejected_hidden"]`). A policy need `q` is passed
to the loss as `chosen_q=` and `rejected_q=` tensors with gradient (SparsePO's `kl`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# what each known input is, for error messages; any other name is a per-token extra
INPUTS: dict[str, str] = {
    "tokens": "the response token ids [B,T]",
    "logprob": "the sampling policy's log-probs of the sampled tokens [B,T]",
    "entropy": "the sampling policy's token entropies [B,T]",
    "ref_logprob": "the reference policy's log-probs of the sampled tokens [B,T]",
    "value": "values of the state before each token [B,T]",
    "truncated": "which responses hit the generation budget [B]",
    "budget": "the generation budget (the most tokens a response may have), an int",
}
SIGNALS = ("progress", "accuracy")


@dataclass(frozen=True)
class Request:
    """A named choice of provider with its parameters, e.g. `Request("segment_tree", branching=(6, 6, 6))`."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, **params: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", dict(params))

    def __hash__(self) -> int:
        return hash(self.name)


INDEPENDENT = Request("independent")
UNIFORM = Request("uniform")


@dataclass(frozen=True)
class Needs:
    """What one stage (or a whole recipe) needs; see the module docstring for each entry."""

    inputs: frozenset[str] = frozenset()
    values: Request | None = None
    rollout: Request = INDEPENDENT
    policy: frozenset[str] = frozenset()
    signals: frozenset[str] = frozenset()
    prompts: Request = UNIFORM
    modules: Mapping[str, Request] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("inputs", "policy", "signals"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ValueError(f"Needs.{name}: expected a set of names, got {value!r}")
            object.__setattr__(self, name, frozenset(value))
        unknown = self.signals - set(SIGNALS)
        if unknown:
            raise ValueError(f"Needs.signals: unknown {sorted(unknown)}; known signals: {list(SIGNALS)}")

    def merged(self, other: Needs, what: str = "") -> Needs:
        """The needs of both. Two different value sources, rollout shapes or prompt schedulers cannot both be
        met by one batch: a `ValueError` names them (and `what`, the stage that asked second)."""
        return Needs(
            inputs=self.inputs | other.inputs,
            values=_one("values", self.values, other.values, what),
            rollout=_one("rollout", self.rollout, other.rollout, what, default=INDEPENDENT),
            policy=self.policy | other.policy,
            signals=self.signals | other.signals,
            prompts=_one("prompts", self.prompts, other.prompts, what, default=UNIFORM),
            modules=self.modules | {name: _one(f"modules.{name}", self.modules.get(name), request, what)
                                    for name, request in other.modules.items()},
        )


def _one(kind: str, a: Request | None, b: Request | None, what: str, default: Request | None = None):
    if a == default or a is None:
        return b
    if b == default or b is None or a == b:
        return a
    show = (lambda r: f"{r.name!r} {_params(r)}") if a.name == b.name else (lambda r: repr(r.name))
    raise ValueError(f"{kind}: {what or 'a stage'} needs {show(b)}, but {show(a)} is needed too; one batch cannot "
                     "have both")


def _params(request: Request) -> str:
    return "(" + ", ".join(f"{k}={getattr(v, 'func', v)!r}" for k, v in request.params.items()) + ")"


def merge(needs: Iterable[tuple[str, Needs]]) -> Needs:
    """The needs of several callers merged, each given as `(who, needs)` (see `Needs.merged`)."""
    out = Needs()
    for who, n in needs:
        out = out.merged(n, who)
    return out
