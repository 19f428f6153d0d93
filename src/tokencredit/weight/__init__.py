"""Weight stage: `Rollouts` + advantage → per-token weight or mask `[B,T]` multiplying the per-token loss."""

from tokencredit.weight import forking, steer  # noqa: F401  (registers)
