"""Verifiers and the safe batch scorer that turns responses into rewards without ever crashing training."""

from tokencredit.rewards.safe import FAILURE_REASONS, VerifierTimeout, safe_score, timeouts_available
from tokencredit.rewards.verifiers import exact_match, math_match

__all__ = [
    "FAILURE_REASONS",
    "VerifierTimeout",
    "exact_match",
    "math_match",
    "safe_score",
    "timeouts_available",
]
