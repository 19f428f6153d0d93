"""`safe_score`: score a batch with a task's verifier so that no response can crash or stall training.

A verifier that raises gives reward 0.0 (counted as "exception"); one that runs past `timeout_s` is
interrupted and gives 0.0 (counted as "timeout"). The time-out is a SIGALRM real-time timer, so it works on
POSIX in the main thread only; elsewhere verifiers run without a time-out. It interrupts Python code (e.g.
sympy inside math-verify), not a single long call into C.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tokencredit.tasks.base import Example, Task

FAILURE_REASONS = ("exception", "timeout")


class VerifierTimeout(BaseException):
    """Raised in a verifier by the alarm; a BaseException, so `except Exception` in verifiers lets it by."""


def _raise_timeout(signum: int, frame: object) -> None:
    raise VerifierTimeout


def timeouts_available() -> bool:
    """Whether `safe_score` can enforce time-outs here (POSIX, main thread)."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def _alarm_handler(enabled: bool) -> Iterator[bool]:
    """Install the time-out handler for the duration of a batch; restore the previous handler and timer."""
    if not enabled:
        yield False
        return
    previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, 0)
    started = time.monotonic()
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:  # someone else's timer was running: give back what is left of it
            remaining = max(previous_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


def safe_score(
    task: Task,
    responses: Sequence[str],
    examples: Sequence[Example],
    timeout_s: float = 2.0,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Rewards `[N]` float32 from `task.score(responses[i], examples[i])`, and failure counts by reason.

    Failures (keys of the dict: "exception", "timeout") score 0.0; so does a non-finite or non-numeric
    score (counted as "exception"). `timeout_s <= 0` disables the time-out.
    """
    if len(responses) != len(examples):
        raise ValueError(f"responses: expected one per example ({len(examples)}), got {len(responses)}")
    rewards = torch.zeros(len(responses), dtype=torch.float32)
    failures = dict.fromkeys(FAILURE_REASONS, 0)
    with _alarm_handler(timeout_s > 0 and timeouts_available()) as armed:
        for i, (response, example) in enumerate(zip(responses, examples)):
            try:
                try:
                    if armed:
                        signal.setitimer(signal.ITIMER_REAL, timeout_s)
                    value = float(task.score(response, example))
                finally:
                    if armed:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except VerifierTimeout:
                failures["timeout"] += 1
                continue
            except Exception:
                failures["exception"] += 1
                continue
            if not math.isfinite(value):
                failures["exception"] += 1
                continue
            rewards[i] = value
    return rewards, failures
