"""Answer verifiers: exact string match and mathematical equivalence (math-verify, with a string fallback)."""

from __future__ import annotations

import functools
import signal
import threading

# Imported eagerly: an import interrupted by `safe_score`'s time-out would leave a half-initialised module.
from math_verify import parse, verify

MATH_VERIFY_TIMEOUT_S = 5


def exact_match(predicted: str | None, gold: str) -> float:
    """1.0 iff `predicted` equals `gold` after stripping surrounding whitespace."""
    return 1.0 if predicted is not None and predicted.strip() == gold.strip() else 0.0


def _own_timeout() -> int | None:
    """math-verify's own SIGALRM time-out, or None where it cannot or must not use one.

    It arms `signal.alarm` (main thread only) and cancels it when done, which would silently disarm an
    enclosing timer such as `safe_score`'s; so it is switched off whenever a real-time timer is running.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "getitimer"):
        return None
    return None if signal.getitimer(signal.ITIMER_REAL)[0] > 0 else MATH_VERIFY_TIMEOUT_S


@functools.cache
def warm_up_math_verify() -> None:
    """Run math-verify once so its lazy imports and caches happen outside any time-out.

    The first call takes ~0.3 s of one-off initialisation; a time-out in the middle of it could leave
    modules half-imported. Tasks that score with `math_match` call this in their constructor.
    """
    math_match("1/2", "0.5")


def math_match(predicted: str | None, gold: str) -> float:
    """1.0 iff `predicted` and `gold` are equal as strings or as mathematical objects, else 0.0.

    Mathematical equality is math-verify's `verify(parse(gold), parse(predicted))`, so `1/2`, `0.5`,
    `\\frac{1}{2}` and `$\\frac{1}{2}$` all match. When math-verify cannot parse either side the string
    comparison alone decides (a bare `x+1` is not parsed; `$x+1$` is). math-verify catches its own errors;
    time-outs belong to `safe_score`.
    """
    if predicted is None:
        return 0.0
    if exact_match(predicted, gold):
        return 1.0
    timeout = _own_timeout()
    gold_parsed = parse(gold, parsing_timeout=timeout)
    predicted_parsed = parse(predicted, parsing_timeout=timeout)
    if not gold_parsed or not predicted_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, predicted_parsed, timeout_seconds=timeout) else 0.0
