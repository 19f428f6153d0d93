"""Analyses of trained policies: where in a response does credit belong (critical tokens by rollout)."""

from tokencredit.analysis.critical_tokens import PAPER_RECOVER, CriticalToken, critical_tokens

__all__ = ["PAPER_RECOVER", "CriticalToken", "critical_tokens"]
