"""Checkpoints: model (safetensors via `save_pretrained`), optimizer and RNG state (safetensors), step and small
state (JSON), and whatever the run's providers save (a critic in `critic/`), written to a temporary folder and
renamed into place so a kill never leaves half a checkpoint. `latest` names the newest complete one."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
_OPTIM = "optim"  # tensor-name prefix of the optimizer state in trainer_state.safetensors


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {
        f"{prefix}.{idx}.{name}": value.detach().clone().contiguous()
        for idx, entry in state["state"].items()
        for name, value in entry.items()
        if isinstance(value, torch.Tensor)
    }
    return tensors, {"param_groups": state["param_groups"], "state_keys": sorted(state["state"])}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, prefix: str
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {int(k): {} for k in meta["state_keys"]}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, name = key.split(".", 2)
            state[int(idx)][name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path, name: str = "optimizer") -> None:
    """`optimizer`'s state as `folder/{name}.safetensors` (tensors) and `folder/{name}.json` (the rest)."""
    tensors, meta = _optimizer_tensors(optimizer, _OPTIM)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(meta))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, name: str = "optimizer") -> None:
    """Restore what `save_optimizer` wrote."""
    meta = json.loads((folder / f"{name}.json").read_text())
    _restore_optimizer(optimizer, load_file(str(folder / f"{name}.safetensors")), meta, _OPTIM)


def save_checkpoint(
    root: Path,
    name: str,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None,
    task_rng: random.Random,
    state: dict[str, Any],
    keep: int = 2,
    *,
    save_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `root/name` atomically and point `root/latest` at it; `save_extra(folder)` adds files
    (the run's providers: a critic)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if save_extra is not None:
        save_extra(tmp)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"state": state, "task_rng": _rng_to_json(task_rng.getstate()), "optimizer": None}
    if optimizer is not None:
        optim_tensors, meta["optimizer"] = _optimizer_tensors(optimizer, _OPTIM)
        tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "trainer_state.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(meta))
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / LATEST)
    _prune(root, keep, protect={name, "sft"})
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_trainer_state(path: Path, optimizer: torch.optim.Optimizer | None, task_rng: random.Random) -> dict[str, Any]:
    """Restore the optimizer (if given and the checkpoint has its state), torch RNG and task RNG from checkpoint
    `path`; returns the saved `state` dict. Providers restore their own files."""
    tensors = load_file(str(path / "trainer_state.safetensors"))
    meta = json.loads((path / "trainer_state.json").read_text())
    if optimizer is not None and meta.get("optimizer") is not None:
        _restore_optimizer(optimizer, tensors, meta["optimizer"], _OPTIM)
    torch.set_rng_state(tensors["rng.torch"])
    task_rng.setstate(_rng_from_json(meta["task_rng"]))
    return meta["state"]


def _prune(root: Path, keep: int, protect: set[str]) -> None:
    steps = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in steps[:-keep]:
        if old.name not in protect:
            shutil.rmtree(old, ignore_errors=True)


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return version, tuple(internal), gauss
