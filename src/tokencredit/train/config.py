"""Training configuration: pydantic models, loadable from YAML, with `key.sub=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tokencredit.recipes import PRESETS


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


class EvalConfig(_Strict):
    every: int = Field(10, ge=1)
    size: int = Field(200, ge=1)
    pass_k: int = Field(4, ge=1, description="samples per prompt for pass@k (at the RL temperature)")
    pass_k_size: int = Field(100, ge=1, description="held-out examples (the first ones) that pass@k samples")


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
    recipe: str = "grpo"
    recipe_overrides: dict[str, Any] = Field(default_factory=dict)
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    checkpoint_every: int = Field(20, ge=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; presets: {sorted(PRESETS)}")
        return value


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


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
        node[leaf] = _parse_value(text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A validated `TrainConfig` from an optional YAML file plus overrides; errors name the bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config {path}: expected a mapping at the top level")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ValueError("invalid training config:\n" + "\n".join(lines)) from None
