"""tokencredit recipes inside TRL (`pip install 'tokencredit[trl]'`): `TokenCreditGRPOTrainer`."""

from tokencredit.integrations.trl.grpo import TokenCreditGRPOTrainer, check_recipe

__all__ = ["TokenCreditGRPOTrainer", "check_recipe"]
