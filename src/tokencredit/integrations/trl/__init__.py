"""tokencredit inside TRL (`pip install 'tokencredit[trl]'`): `TokenCreditGRPOTrainer` (recipes) and
`TokenCreditDPOTrainer` (preference losses with per-token weights)."""

from tokencredit.integrations.trl.dpo import TokenCreditDPOTrainer, check_loss
from tokencredit.integrations.trl.grpo import TokenCreditGRPOTrainer, check_recipe

__all__ = ["TokenCreditDPOTrainer", "TokenCreditGRPOTrainer", "check_loss", "check_recipe"]
