"""The plug-in's settings (`algorithm.tokencredit`) and its start-up check of a verl config.

    algorithm.adv_estimator=tc_<advantage>           a tokencredit advantage (`tc.names("advantage")`)
    +algorithm.tokencredit.recipe=<preset>           the recipe (default: the preset named <advantage> if its
                                                     advantage is <advantage>, else a recipe with that advantage)
    +algorithm.tokencredit.<Recipe field>=...        any Recipe field (`kl_coef`, `agg`, `weight`, ...); a
                                                     `*_params` mapping is merged into the preset's
    +algorithm.tokencredit.budget=<int>              the generation budget (default: the rollout's
                                                     `response_length`)
    +algorithm.tokencredit.records_every=<int>       group records for `tokencredit inspect` every that many
                                                     global steps (default 0: none); `records_groups` (2) groups
                                                     per record, `records_max_bytes` (1 MB) per file, in
                                                     `records_dir` (default: `trainer.default_local_dir`)

Nothing here imports verl: the settings are read from an OmegaConf (or plain) mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tokencredit.integrations.common import unsupported_needs
from tokencredit.needs import INPUTS as INPUT_TEXT
from tokencredit.recipes import PRESETS, Recipe, recipe, validation_messages

PREFIX = "tc_"
ENGINE = "verl"
# what the plug-in supplies from verl's batch: the response token ids (`responses`), the behaviour log-probs
# (`old_log_probs`), the old policy's entropies (`entropy`, computed with the old log-probs), the reference
# log-probs (`ref_log_prob`, when verl computes them), truncation (length reached the budget) and the budget
INPUTS = ("tokens", "logprob", "entropy", "ref_logprob", "truncated", "budget")
# the verl batch field that carries each supplied per-token input
FIELDS = {"tokens": "responses", "logprob": "old_log_probs", "entropy": "entropy", "ref_logprob": "ref_log_prob",
          "value": "values"}
PLUGIN_KEYS = ("recipe", "budget", "records_every", "records_groups", "records_max_bytes", "records_dir")
# verl's kl_loss_type -> the tokencredit kl estimator that computes the same quantity
VERL_KL = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


@dataclass(frozen=True)
class Records:
    """Group records (docs/inspect.md): every `every` global steps (0: never), `groups` sampled groups of the
    batch in `folder/records/`, a file at most `max_bytes`."""

    every: int = 0
    groups: int = 2
    max_bytes: int = 1_000_000
    folder: str | None = None

    def due(self, step: int) -> bool:
        """Whether global step `step` (the first is 1) is recorded: steps 1, 1 + every, ..."""
        return self.every > 0 and (step - 1) % self.every == 0


@dataclass(frozen=True)
class Settings:
    """What `algorithm.tokencredit` (and the estimator's name) select: the recipe, the generation budget and the
    group records."""

    recipe: Recipe
    budget: int | None = None
    records: Records = Records()


def is_tokencredit(estimator: Any) -> bool:
    """Whether an `algorithm.adv_estimator` value names a tokencredit estimator (`tc_<advantage>`)."""
    return isinstance(estimator, str) and estimator.startswith(PREFIX)


def read_settings(algorithm: Mapping | None, estimator: str | None = None, trainer_config: Any = None) -> Settings:
    """The settings in `algorithm` (verl's `algorithm` config: `adv_estimator` and `tokencredit`) for the estimator
    `estimator` (default: `algorithm.adv_estimator`); the budget defaults to `trainer_config`'s rollout
    `response_length`. A `ValueError` names what is wrong."""
    algorithm = {} if algorithm is None else algorithm
    estimator = estimator or _get(algorithm, "adv_estimator")
    if not is_tokencredit(estimator):
        raise ValueError(f"algorithm.adv_estimator: expected tc_<advantage>, got {estimator!r}")
    raw = _plain(_get(algorithm, "tokencredit")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"algorithm.tokencredit: expected a mapping of settings, got {raw!r}")
    rcp = recipe_for(estimator[len(PREFIX):], raw)
    budget = raw.get("budget")
    if budget is None and trainer_config is not None:
        budget = _select(trainer_config, "actor_rollout_ref.rollout.response_length")
        if budget is None:
            budget = _select(trainer_config, "data.max_response_length")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"algorithm.tokencredit.budget: expected a positive int (max new tokens), got {budget!r}")
    return Settings(recipe=rcp, budget=budget, records=_records(raw, trainer_config))


def _records(raw: Mapping[str, Any], trainer_config: Any) -> Records:
    """The `records_*` settings; the folder defaults to verl's `trainer.default_local_dir` (the run's checkpoint
    folder: the records sit next to its `global_step_N` checkpoints, and verl's checkpoint rotation removes only
    those)."""
    counts = {}
    for key, default, least in (("records_every", Records.every, 0), ("records_groups", Records.groups, 1),
                                ("records_max_bytes", Records.max_bytes, 1000)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"algorithm.tokencredit.{key}: expected an int >= {least}, got {value!r}")
        counts[key.removeprefix("records_")] = value
    folder = raw.get("records_dir")
    if folder is None and trainer_config is not None:
        folder = _select(trainer_config, "trainer.default_local_dir")
    return Records(**counts, folder=None if folder is None else str(folder))


def recipe_for(advantage: str, raw: Mapping[str, Any]) -> Recipe:
    """The recipe `raw` selects for the estimator `tc_<advantage>` (see the module docstring). Making it runs the
    `Recipe`'s validation, including every stage's registered parameter check (`register(..., check=)`); a bad
    field or value is a one-line `ValueError` starting `algorithm.tokencredit: <field>: ...`."""
    fields = {k: v for k, v in raw.items() if k not in PLUGIN_KEYS}
    name = raw.get("recipe")
    if name is None and advantage in PRESETS and recipe(advantage).advantage == advantage:
        name = advantage
    try:
        if name is None:
            rcp = Recipe(**{"name": f"{PREFIX}{advantage}", "advantage": advantage, **fields})
        else:
            preset = PRESETS.get(name, {})
            merged = {k: {**preset[k], **v} if k.endswith("_params") and isinstance(v, dict) and k in preset else v
                      for k, v in fields.items()}
            rcp = recipe(name, **merged)
    except ValidationError as err:
        raise ValueError("algorithm.tokencredit: " + "; ".join(validation_messages(err))) from None
    except ValueError as err:  # an unknown preset
        raise ValueError(f"algorithm.tokencredit.{err}") from None
    if rcp.advantage != advantage:
        raise ValueError(f"algorithm.adv_estimator=tc_{advantage}, but recipe {rcp.name!r} computes the advantage "
                         f"{rcp.advantage!r}: set algorithm.adv_estimator=tc_{rcp.advantage}")
    return rcp


def check_config(config: Any) -> None:
    """At start-up: a `ValueError` listing every reason the trainer config `config` cannot run its tokencredit recipe
    exactly in verl (nothing when `algorithm.adv_estimator` is not a tokencredit estimator)."""
    estimator = _select(config, "algorithm.adv_estimator")
    if not is_tokencredit(estimator):
        if _select(config, "algorithm.tokencredit") is not None:
            raise ValueError(f"tokencredit (verl): algorithm.tokencredit is set but algorithm.adv_estimator="
                             f"{estimator} is verl's own estimator: set algorithm.adv_estimator=tc_<the recipe's "
                             "advantage> (e.g. tc_grpo)")
        return
    try:
        s = read_settings(_select(config, "algorithm"), trainer_config=config)
    except ValueError as err:
        raise ValueError(f"tokencredit (verl): {err}") from None
    rcp, needs = s.recipe, s.recipe.needs()
    problems = unsupported_needs(rcp, ENGINE, inputs=INPUTS, values=("critic",), policy=("entropy",))
    if needs.values is not None and needs.values.name == "critic" and not _select(config, "critic.enable"):
        problems.append(f"recipe {rcp.name!r} needs values from 'critic': set critic.enable=True, so that verl's "
                        "critic supplies them (it trains on the recipe's returns)")
    actor = "actor_rollout_ref.actor"
    bypass = bool(_select(config, "algorithm.rollout_correction.bypass_mode"))
    if "entropy" in needs.inputs and bypass:
        problems.append(f"recipe {rcp.name!r} needs {INPUT_TEXT['entropy']}, which verl computes with the old "
                        "log-probs, skipped by algorithm.rollout_correction.bypass_mode=True")
    use_kl_loss = bool(_select(config, f"{actor}.use_kl_loss"))
    if "ref_logprob" in needs.inputs and not (use_kl_loss or _select(config, "algorithm.use_kl_in_reward")):
        problems.append(f"recipe {rcp.name!r} needs {INPUT_TEXT['ref_logprob']}: set {actor}.use_kl_loss=True so "
                        "that verl computes them (the recipe's kl and kl_coef replace verl's KL loss)")
    if use_kl_loss:
        coef, kind = _select(config, f"{actor}.kl_loss_coef"), _select(config, f"{actor}.kl_loss_type")
        if rcp.kl_coef == 0:
            problems.append(f"{actor}.use_kl_loss=True but recipe {rcp.name!r} has kl_coef=0: the recipe's KL term "
                            "replaces verl's; set +algorithm.tokencredit.kl=<k1|k2|k3|abs> and "
                            "+algorithm.tokencredit.kl_coef=<coef> (or use_kl_loss=False)")
        elif coef != rcp.kl_coef or VERL_KL.get(kind) != rcp.kl:
            problems.append(f"{actor}.kl_loss_coef={coef}, kl_loss_type={kind!r} but the recipe's kl_coef="
                            f"{rcp.kl_coef}, kl={rcp.kl!r}: the KL term is the recipe's (set them equal)")
    entropy_coeff = _select(config, f"{actor}.entropy_coeff") or 0.0
    if entropy_coeff != rcp.entropy_coef:
        problems.append(f"{actor}.entropy_coeff={entropy_coeff} but the recipe's entropy_coef={rcp.entropy_coef}: "
                        "the entropy term is the recipe's (set them equal, so that verl computes the current "
                        "policy's entropies exactly when the recipe needs them)")
    loss_mode = _select(config, f"{actor}.policy_loss.loss_mode") or "vanilla"
    if loss_mode != "vanilla":
        problems.append(f"{actor}.policy_loss.loss_mode={loss_mode!r}: the recipe's objective ({rcp.objective!r}) "
                        "replaces verl's policy loss; choose it with +algorithm.tokencredit.objective=... and leave "
                        "loss_mode=vanilla")
    if _select(config, "distillation.enabled"):
        problems.append("distillation.enabled=True: its loss would be replaced by the recipe's")
    if "budget" in needs.inputs and s.budget is None:
        problems.append(f"recipe {rcp.name!r} needs {INPUT_TEXT['budget']}: set +algorithm.tokencredit.budget")
    if problems:
        raise ValueError("tokencredit (verl): " + "; ".join(problems))


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if hasattr(mapping, "get") else getattr(mapping, key, None)


def _select(config: Any, path: str) -> Any:
    """`config.a.b.c` for `path="a.b.c"`, None where a key is missing."""
    node = config
    for key in path.split("."):
        if node is None:
            return None
        node = _get(node, key)
    return node


def _plain(value: Any) -> Any:
    """An OmegaConf node as plain Python containers (interpolations resolved); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - verl depends on omegaconf
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
