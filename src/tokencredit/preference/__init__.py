"""Preference stage: DPO-family losses on `tokencredit.Pairs`, one family per module, registered as
`tc.get("preference", name)`:

    fn(pairs, chosen_logprob [B,T_c], rejected_logprob [B,T_r], *, beta=..., num_pairs=None, **params)
        -> (loss scalar, stats)

Every loss is a mean of per-pair losses over `num_pairs` (the whole batch's pair count; default: this call's
B), so micro-batches called with the whole batch's `num_pairs` sum to the full loss and gradient exactly.
See docs/preference.md.
"""

from tokencredit.preference import cdpo, dpo, sparsepo, t_reg, tab_po, tgdpo  # noqa: F401  (registers)
from tokencredit.preference.common import implicit_token_reward
from tokencredit.preference.masks import ActivationMasks, SparseTokenMasks
from tokencredit.preference.sparsepo import token_kl
from tokencredit.preference.tab_po import tab_po_weights
from tokencredit.preference.token_rewards import (
    ContrastivePromptRewards,
    CriticalTokenRewards,
    TokenRewardSource,
    contrastive_prompt_reward,
)

__all__ = [
    "ActivationMasks", "ContrastivePromptRewards", "CriticalTokenRewards", "SparseTokenMasks", "TokenRewardSource",
    "contrastive_prompt_reward", "implicit_token_reward", "tab_po_weights", "token_kl",
]
