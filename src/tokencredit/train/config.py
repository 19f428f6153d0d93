"""Training configuration: pydantic models, loadable from YAML, with `key.sub=value` overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tokencredit.recipes import PRESETS, recipe, validation_messages


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    path: str | None = Field(None, description="local transformers folder; None builds the tiny default")
    tiny: dict[str, Any] = Field(default_factory=dict, description="overrides for the tiny Llama config")


class SFTConfig(_Strict):
    steps: int = Field(300, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(20, ge=0)


class RLConfig(_Strict):
    steps: int = Field(60, ge=0)
    prompts_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    ppo_epochs: int = Field(1, ge=1)
    sampler: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers: generate with the training model; vllm: a vLLM engine that "
                                    "mirrors it (settings in the `vllm` section; docs/training.md)")
    minibatch_size: int = Field(128, ge=1, description="responses per optimizer step")
    micro_batch_size: int = Field(64, ge=1, description="responses per forward/backward (and per no-grad pass of the "
                                  "reference model and the critic)")
    lr: float = Field(1e-4, gt=0)
    warmup: int = Field(3, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class CriticConfig(_Strict):
    """The value model of recipes with advantage `gae` (preset `ppo`); every other recipe ignores this section."""

    target: Literal["return", "tvm"] = Field(
        "return", description="return: GAE returns A_t + V_t; tvm: success rate of the group's responses sharing "
                              "the prefix before token t (TVM labels, Monte-Carlo)")
    lr: float = Field(1e-3, gt=0, description="1e-4 left the new head near 0 after 10 steps on the tiny default")
    warmup: int = Field(3, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class VLLMConfig(_Strict):
    """Engine settings of `rl.sampler: vllm` (`tokencredit.sampling.vllm.VLLMSampler`); ignored otherwise."""

    dtype: str = Field("float32", description="the engine's dtype; float32 matches the trainer's model")
    enforce_eager: bool = Field(True, description="no torch.compile / CUDA graphs: fast start (CPU); False on GPU")
    kv_cache_memory_bytes: int | None = Field(
        64 * 2**20, ge=1, description="KV cache size; null sizes it by gpu_memory_utilization (on CPU: of RAM)")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=1, description="null: the model's context length")
    seed: int | None = Field(None, description="the engine's seed; null: the run's seed")
    in_process: bool = Field(True, description="run the engine core in the trainer's process")
    check_update: float | None = Field(
        1e-3, gt=0, description="max |Δ log-prob| between engine and model after the first weight update; "
                                "null: no check")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="other vllm.LLM keyword arguments")

    def engine(self, run_seed: int) -> dict[str, Any]:
        """`VLLMSampler`'s engine keyword arguments, the seed defaulting to the run's."""
        return {**self.model_dump(), "seed": run_seed if self.seed is None else self.seed}


class PairsConfig(_Strict):
    """Pair training (`mode: pairs`): a preference loss over pairs of responses, from the warm-started policy (the
    frozen reference); every other mode ignores this section."""

    data: str = Field("on_policy", description="on_policy: pairs sampled from the start policy on the task "
                      "(a verified-correct and a verified-wrong response to one prompt); jsonl:PATH: "
                      "{prompt, chosen, rejected} per line")
    loss: str = Field("dpo", description="a preference loss (tc.names('preference'))")
    loss_params: dict[str, Any] = Field(default_factory=dict, description="the loss's keyword parameters")
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1, description="pairs per optimizer step")
    micro_batch_size: int = Field(16, ge=1, description="pairs per forward/backward")
    lr: float = Field(1e-4, gt=0)
    warmup: int = Field(3, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    prompts: int = Field(256, ge=1, description="on_policy: prompts drawn from the task")
    samples: int = Field(8, ge=2, description="on_policy: responses sampled per prompt (at rl.temperature)")
    critical_k: int = Field(8, ge=1, description="continuations per probed prefix of the critical-token search "
                            "(run on the rejected responses when the loss reads critical tokens)")
    critical_mode: Literal["scan", "binary"] = "binary"
    guide: str | None = Field(None, description="model folder whose implicit token rewards supply token_reward")

    @field_validator("data")
    @classmethod
    def _known_data(cls, value: str) -> str:
        if value != "on_policy" and not (value.startswith("jsonl:") and len(value) > 6):
            raise ValueError(f"expected on_policy or jsonl:PATH, got {value!r}")
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        import tokencredit.preference  # noqa: F401  (registers the losses)
        from tokencredit.registry import names

        if value not in names("preference"):
            raise ValueError(f"unknown preference loss {value!r}; losses: {names('preference')}")
        return value

    @field_validator("loss_params")
    @classmethod
    def _known_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from tokencredit.registry import needs_of, parameters

        loss = info.data.get("loss")
        if loss is None:  # the loss itself was refused
            return value
        known, any_keyword = parameters("preference", loss)
        known -= {"pairs", "chosen_logprob", "rejected_logprob", "num_pairs"}  # what the trainer passes
        unknown = sorted(set(value) - known) if not any_keyword else []
        if unknown:
            raise ValueError(f"{unknown} are not parameters of preference {loss!r} (it takes {sorted(known)})")
        needs_of("preference", loss, value)  # a value given as data (a mask spec) is checked where it is read
        return value


class EvalConfig(_Strict):
    every: int = Field(10, ge=1)
    size: int = Field(200, ge=1)
    pass_k: int = Field(4, ge=1, description="samples per prompt for pass@k (at the RL temperature)")
    pass_k_size: int = Field(100, ge=1, description="held-out examples (the first ones) that pass@k samples")


class RecordsConfig(_Strict):
    """Group records for `tokencredit inspect RUN` (docs/inspect.md): every `every` RL steps, `groups` sampled
    groups of the batch with every per-token quantity, in `out/records/` (a file at most `max_bytes`)."""

    every: int = Field(0, ge=0, description="RL steps between records; 0: none")
    groups: int = Field(2, ge=1, description="groups recorded per recorded step")
    max_bytes: int = Field(1_000_000, ge=1000, description="largest record file; groups are left out to fit")


class LogConfig(_Strict):
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "tokencredit"
    progress: bool = True


class TrainConfig(_Strict):
    seed: int = 0
    out: str = "runs/train"
    task: str = "chain_sum"
    task_params: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["rl", "pairs"] = Field("rl", description="after the warm start: rl (the recipe) or pairs (a "
                                         "preference loss, the `pairs` section)")
    recipe: str = "grpo"
    recipe_overrides: dict[str, Any] = Field(default_factory=dict)
    verifier_timeout: float = Field(2.0, ge=0, description="seconds a verifier may take per response before it "
                                    "scores 0 (counted as verifier_timeouts); 0: no limit")
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    checkpoint_every: int = Field(20, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; presets: {sorted(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _valid_recipe(self) -> TrainConfig:
        """The recipe with its overrides is made now, so an unknown field or a bad parameter value is a config
        error naming it, before anything runs."""
        try:
            recipe(self.recipe, **self.recipe_overrides)
        except ValidationError as err:
            raise ValueError("recipe_overrides: " + "; ".join(validation_messages(err))) from None
        return self


def _yaml_error(where: str, err: yaml.YAMLError) -> ValueError:
    mark = getattr(err, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return ValueError(f"{where}: not valid YAML{at} ({problem})")


def _parse_value(text: str, key: str = "") -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise _yaml_error(f"--set {key}", err) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML scalars) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
        node[leaf] = _parse_value(text, key.strip())
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A validated `TrainConfig` from an optional YAML file plus overrides; errors name the bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise _yaml_error(f"config {path}", err) from None
        except UnicodeDecodeError as err:
            raise ValueError(f"config {path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config {path}: expected a mapping at the top level")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError("invalid training config: " + "; ".join(validation_messages(err))) from None


# ---------------------------------------------------------------------------------------------- run record
RUN_RECORD = "run_config.json"  # in every run folder and checkpoint: the resolved config and the version
# fields a resumed run may change: where the run lives, how it is logged, how fast it runs, when it checkpoints,
# rl.steps (to extend a finished run or stop earlier) and what it records for inspect. Everything else defines
# the experiment.
SAFE_TO_CHANGE = ("out", "rl.steps", "log", "threads", "device", "checkpoint_every", "records")


def run_record(cfg: TrainConfig) -> dict[str, Any]:
    """What a run folder and each checkpoint record: the full resolved config and the tokencredit version."""
    from tokencredit import __version__

    return {"tokencredit_version": __version__, "config": cfg.model_dump(mode="json")}


def write_run_record(folder: Path, cfg: TrainConfig) -> None:
    path = Path(folder) / RUN_RECORD
    tmp = path.with_name(f".{RUN_RECORD}.tmp")
    tmp.write_text(json.dumps(run_record(cfg), indent=2) + "\n")
    tmp.replace(path)


def read_run_record(folder: Path) -> dict[str, Any] | None:
    """The record `write_run_record` wrote in `folder`, or None where there is none; a ValueError naming the file
    when it is unreadable."""
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a run record ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ValueError(f"{path}: not a run record (no 'config' mapping)")
    return record


def recorded_config(record: dict[str, Any], where: Path | str) -> TrainConfig:
    """The `TrainConfig` of a run record."""
    try:
        return TrainConfig.model_validate(record["config"])
    except (ValidationError, ValueError) as err:
        detail = "; ".join(validation_messages(err)) if isinstance(err, ValidationError) else str(err)
        raise ValueError(f"{where}: the recorded config is not valid here ({detail})") from None


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested mappings by dotted key (an empty mapping has none)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _normalized(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with today's defaults for fields it predates (so a newer version's new field is not a
    difference); as recorded when it no longer validates."""
    try:
        return TrainConfig.model_validate(config).model_dump(mode="json")
    except (ValidationError, ValueError):
        return config


def config_differences(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = SAFE_TO_CHANGE
                       ) -> dict[str, tuple[Any, Any]]:
    """`{dotted key: (old, new)}` for every leaf where two config dumps differ, except keys in (or under) `ignore`.
    Fields a recorded config predates count as their defaults; a key only one side has is compared with
    `<absent>`. The `vllm` section counts only where a side samples with vLLM (`rl.sampler`)."""
    a, b = _flat(_normalized(old)), _flat(_normalized(new))
    ignored = tuple(ignore)
    if a.get("rl.sampler") == b.get("rl.sampler") == "transformers":
        ignored += ("vllm",)  # the engine settings of a run that never starts an engine
    out = {}
    for key in sorted(set(a) | set(b)):
        if any(key == i or key.startswith(i + ".") for i in ignored):
            continue
        left, right = a.get(key, "<absent>"), b.get(key, "<absent>")
        if left != right:
            out[key] = (left, right)
    return out


def describe_differences(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} ({left!r} → {right!r})" for key, (left, right) in diff.items())
