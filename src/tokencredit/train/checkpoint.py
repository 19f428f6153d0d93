"""Checkpoints: model (safetensors via `save_pretrained`), optimizer and RNG state (safetensors), step and small
state (JSON), the run's resolved config (`run_config.json`), and whatever the run's providers save (a critic in
`critic/`), written to a temporary folder and renamed into place so a kill never leaves half a checkpoint.
`latest` names the newest complete one."""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
STATE = "trainer_state.json"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a lost mount); the message names the last good one."""
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
    record: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `root/name` atomically and point `root/latest` at it; `save_extra(folder)` adds files
    (the run's providers: a critic); `record` (the run's config and version) goes to `run_config.json`. On any
    error the temporary folder is removed and the previous checkpoints are untouched."""
    from tokencredit.train.config import RUN_RECORD

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if save_extra is not None:
            save_extra(tmp)
        if record is not None:
            (tmp / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"state": state, "task_rng": _rng_to_json(task_rng.getstate()), "optimizer": None}
        if optimizer is not None:
            optim_tensors, meta["optimizer"] = _optimizer_tensors(optimizer, _OPTIM)
            tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "trainer_state.safetensors"))
        (tmp / STATE).write_text(json.dumps(meta))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / LATEST)
    _prune(root, keep, protect={name, "sft"})
    return final


def checkpoint_state(path: Path) -> dict[str, Any] | None:
    """The trainer's state recorded in checkpoint `path` (phase, step, global step, …), or None when it is not a
    complete, readable checkpoint."""
    try:
        state = json.loads((path / STATE).read_text())["state"]
        int(state["global_step"])
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_step(path: Path) -> int | None:
    """The global step recorded in checkpoint `path`, or None when it is not a complete, readable checkpoint."""
    state = checkpoint_state(path)
    return None if state is None else int(state["global_step"])


def newest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint in `root` with the highest recorded global step (None when there is none)."""
    found = [(step, p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
             and (step := checkpoint_step(p)) is not None] if root.is_dir() else []
    return max(found, key=lambda item: item[0])[1] if found else None


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `root/latest` names. When it names a folder that is missing (deleted, or lost with a disk),
    or is itself missing while checkpoints exist (a kill between writing a checkpoint and its pointer), the newest
    complete checkpoint in `root` instead, with a warning; None when `root` holds no checkpoint."""
    pointer = root / LATEST
    name = pointer.read_text().strip() if pointer.is_file() else None
    if name and (root / name).is_dir():
        return root / name
    fallback = newest_checkpoint(root)
    if fallback is not None:
        what = f"names {name!r}, which is missing" if name is not None else "is missing"
        warnings.warn(f"{pointer} {what}; using the newest complete checkpoint {fallback}", stacklevel=2)
    return fallback


def resolve_checkpoint(path: Path) -> Path:
    """The model folder that `path` means: a model folder itself (it has config.json), a run folder (its newest
    checkpoint), a run's `checkpoints` folder or its `latest` file (the checkpoint it names). A ValueError says
    what `path` is not."""
    path = Path(path)
    if path.is_file() and path.name == LATEST:
        root = path.parent
    elif path.is_dir() and (path / "config.json").is_file():
        return path
    elif path.is_dir() and (path / "checkpoints").is_dir():
        root = path / "checkpoints"
    elif path.is_dir() and (path / LATEST).is_file():
        root = path
    elif not path.exists():
        raise ValueError(f"--checkpoint: {path} does not exist")
    else:
        raise ValueError(f"--checkpoint: {path} is not a model folder (no config.json), a run folder (no "
                         "checkpoints/) or a checkpoints/latest file")
    found = latest_checkpoint(root)
    if found is None:
        raise ValueError(f"--checkpoint: {root} holds no checkpoint yet")
    return found


def load_trainer_state(path: Path, optimizer: torch.optim.Optimizer | None, task_rng: random.Random) -> dict[str, Any]:
    """Restore the optimizer (if given and the checkpoint has its state), torch RNG and task RNG from checkpoint
    `path`; returns the saved `state` dict. Providers restore their own files. A damaged state is a ValueError
    naming the checkpoint."""
    try:
        tensors = load_file(str(path / "trainer_state.safetensors"))
        meta = json.loads((path / STATE).read_text())
        if not isinstance(meta, dict) or "state" not in meta or "task_rng" not in meta:
            raise ValueError("no 'state' or 'task_rng' entry")
    except Exception as err:  # SafetensorError (truncated, empty), OSError (missing), JSON errors
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path}: the trainer state (trainer_state.safetensors, {STATE}) is missing or damaged "
                         f"({type(err).__name__}: {detail}); resume from an earlier checkpoint by writing its "
                         "name into checkpoints/latest") from err
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
