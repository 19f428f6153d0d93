"""Advantage stage: `Rollouts` → per-token advantages `[B,T]` (0 outside mask)."""

from tokencredit.advantage import gae, group, reinforce, spo, tempo  # noqa: F401  (registers)
