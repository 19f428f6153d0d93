"""Shape stage: `Rollouts` → per-token rewards `[B,T]`."""

from tokencredit.shape import outcome, overlong  # noqa: F401  (registers)
