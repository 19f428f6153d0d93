"""tokencredit: token-level credit assignment for RL post-training of language models.

    import tokencredit as tc
    r = tc.recipe("grpo")
    credit = r.credit(rollouts)
    loss, stats = r.loss(logprob, rollouts, credit)
    tc.get("advantage", "grpo")(rollouts)      # any stage, without a recipe
    tc.get("preference", "dpo")(pairs, chosen_logprob, rejected_logprob)   # preference losses on tc.Pairs
"""

from tokencredit import advantage, objective, preference, select, shape, weight  # noqa: F401  (register the stages)
from tokencredit.pairs import Pairs
from tokencredit.recipes import PRESETS, Recipe, recipe, register_preset
from tokencredit.registry import STAGES, get, names, register
from tokencredit.rollouts import Credit, Rollouts, group_ids, pad_right

__version__ = "0.1.0"


def methods() -> dict[str, list[str]]:
    """Every registered function name per stage, plus the preset recipes under `"presets"`."""
    return {stage: names(stage) for stage in STAGES} | {"presets": sorted(PRESETS)}


__all__ = [
    "PRESETS", "STAGES", "Credit", "Pairs", "Recipe", "Rollouts", "get", "group_ids", "methods", "names",
    "pad_right", "recipe", "register", "register_preset",
]
