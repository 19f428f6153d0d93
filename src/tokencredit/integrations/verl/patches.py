"""Where the plug-in hooks into verl 0.9.1 without forking it: wrappers around verl functions, applied when their
module is imported (a post-import hook, so a process that never imports a trainer pays nothing for it).

* `verl.utils.config.validate_config`: then the start-up check (`settings.check_config`), in the launching
  process, before Ray starts;
* `verl.trainer.ppo.v1.trainer_base.PPOTrainer` (the V1 trainer, verl's default):
  `init`: the check, then `actor_rollout_wg.set_loss_fn(TokenCreditLoss(...))`;
  `_compute_advantage`: the batch's TransferQueue keys for the estimator (its fields and, for the group records,
  its prompts), then the credit fields written back to TransferQueue;
* `verl.trainer.ppo.ray_trainer` (the legacy trainer, `trainer.use_v1=false`):
  `compute_advantage`: the `DataProto` for the estimator, then the credit fields written into it (the V1
  trainer calls it too, through `v1.utils`);
  `RayPPOTrainer.init_workers`: the check, then `set_loss_fn(TokenCreditLoss(...))`;
  `RayPPOTrainer.fit`: the trainer (config, step counters) for the estimator;
  `RayPPOTrainer._compute_old_log_prob`: keeps the old policy's entropies as the batch field `entropy` (the
  legacy `fit` drops `entropys` before the advantages);
* `verl.workers.engine.base.BaseEngine.train_batch` (every engine: FSDP, Megatron, ...; once per mini-batch on
  every rank): `TokenCreditLoss.prepare`, the global mini-batch's aggregation coefficients.

Each wrapper does nothing more than call the original unless `algorithm.adv_estimator` is `tc_<name>` (the engine
wrapper: unless the worker loss is a `TokenCreditLoss`).

Names bound elsewhere by `from module import name` before a wrapper is applied would keep the original; the
hook applies each wrapper right after its module's body runs, before any importer binds the name, and `import
verl` (which loads this plug-in) always runs before any of these modules is imported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import sys
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType
from typing import Any

from tokencredit.integrations.verl.credit import SOURCE, Source
from tokencredit.integrations.verl.loss import TokenCreditLoss
from tokencredit.integrations.verl.settings import check_config, is_tokencredit, read_settings

MARK = "__tokencredit_wrapped__"


def _wrap(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace `owner.name` by `make(original)` once (keeping the original's attributes, e.g. verl's dispatch
    registration)."""
    original = getattr(owner, name)
    if getattr(original, MARK, False):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, MARK, True)
    setattr(owner, name, wrapper)


def _ours(trainer: Any) -> bool:
    return is_tokencredit(trainer.config.algorithm.get("adv_estimator"))


def _install_loss(trainer: Any) -> None:
    s = read_settings(trainer.config.algorithm, trainer_config=trainer.config)
    trainer.actor_rollout_wg.set_loss_fn(TokenCreditLoss(s.recipe, s.budget))


def _checked_start(original: Callable) -> Callable:
    """Wrap the trainer method that starts the workers (V1 `init`, legacy `init_workers`): check the config first,
    then install the plug-in's loss on the started workers; a run without a tokencredit estimator is untouched."""

    def start(self, *args, **kwargs):
        if not _ours(self):
            return original(self, *args, **kwargs)
        check_config(self.config)
        result = original(self, *args, **kwargs)
        _install_loss(self)
        return result

    return start


# ------------------------------------------------------------------------------------------------ verl.utils.config
def patch_config(module: ModuleType) -> None:
    def make(original):
        def validate_config(config, *args, **kwargs):
            result = original(config, *args, **kwargs)
            check_config(config)
            return result

        return validate_config

    _wrap(module, "validate_config", make)
    utils = sys.modules.get("verl.utils")
    if utils is not None and hasattr(utils, "validate_config"):
        utils.validate_config = module.validate_config


# ------------------------------------------------------------------------------------------------ V1 trainer
def patch_v1(module: ModuleType) -> None:
    trainer_cls = module.PPOTrainer

    def make_compute_advantage(original):
        def _compute_advantage(self, batch, metrics):
            if not _ours(self):
                return original(self, batch, metrics)
            _single_output_sessions(batch.keys)
            source = Source(trainer=self, fetch=functools.partial(_tq_fetch, batch),
                            prompt_ids=functools.partial(_tq_prompt_ids, batch))
            token = SOURCE.set(source)
            try:
                batch = original(self, batch, metrics)
            finally:
                SOURCE.reset(token)
            if source.result is None:
                raise RuntimeError("tokencredit (verl): the tc_ estimator was not called by _compute_advantage")
            batch = _tq_put_credit(batch, source.result)
            metrics.update(source.result.metrics())
            return batch

        return _compute_advantage

    _wrap(trainer_cls, "init", _checked_start)
    _wrap(trainer_cls, "_compute_advantage", make_compute_advantage)


def _single_output_sessions(keys: list[str]) -> None:
    """V1 keys are `{uid}_{session}_{output}`; an agent loop with several outputs per session would make one
    response several rows of a group."""
    several = [k for k in keys if k.rsplit("_", 2)[-1] != "0"]
    if several:
        raise ValueError(f"tokencredit (verl): agent loops with several outputs per session (keys such as "
                         f"{several[0]!r}) are not supported: each row must be one whole response")


def _tq_fetch(batch: Any, fields: list[str]) -> dict[str, Any]:
    """Fields of the V1 batch from TransferQueue, right-padded `[B,T]` in `batch.keys` order (missing: left out)."""
    import transfer_queue as tq

    found = {}
    for field in fields:
        try:
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[field])
        except (KeyError, ValueError, RuntimeError):
            continue
        if field in data:  # a field no row has comes back as an empty TensorDict
            found[field] = data.to_padded_tensor()[field]
    return found


def _tq_prompt_ids(batch: Any, rows: list[int]) -> list[list[int]]:
    """The prompt token ids of rows `rows` of the V1 batch (stored unpadded per row), for the group records."""
    import transfer_queue as tq

    data = tq.kv_batch_get(keys=[batch.keys[i] for i in rows], partition_id=batch.partition_id,
                           select_fields=["prompts"])
    return [ids.tolist() for ids in data["prompts"].unbind()]


def _tq_put_credit(batch: Any, result: Any) -> Any:
    """Write the credit fields of `result` to the V1 batch's TransferQueue rows (per-token ones nested like
    `response_mask`); returns the updated batch meta."""
    import transfer_queue as tq
    from tensordict import TensorDict
    from verl.workers.utils.padding import response_to_nested

    mask = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
    nested = mask["response_mask"]
    fields = {k: response_to_nested(v, nested) if v.dim() == 2 else v
              for k, v in result.fields(nested.dtype).items()}
    return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                           fields=TensorDict(fields, batch_size=len(batch.keys)))


# ------------------------------------------------------------------------------------------------ legacy trainer
def patch_legacy(module: ModuleType) -> None:
    def make_compute_advantage(original):
        def compute_advantage(data, adv_estimator, *args, **kwargs):
            if not is_tokencredit(adv_estimator):
                return original(data, adv_estimator, *args, **kwargs)
            parent = SOURCE.get()
            source = Source(data=data) if parent is None else replace(parent, data=data, result=None)
            token = SOURCE.set(source)
            try:
                out = original(data, adv_estimator, *args, **kwargs)
            finally:
                SOURCE.reset(token)
            if source.result is not None:
                for key, value in source.result.fields(data.batch["response_mask"].dtype).items():
                    out.batch[key] = value
                if parent is not None:
                    parent.result = source.result
            return out

        return compute_advantage

    def make_fit(original):
        def fit(self, *args, **kwargs):
            token = SOURCE.set(Source(trainer=self))
            try:
                return original(self, *args, **kwargs)
            finally:
                SOURCE.reset(token)

        return fit

    def make_old_log_prob(original):
        def _compute_old_log_prob(self, batch, *args, **kwargs):
            out = original(self, batch, *args, **kwargs)
            if _ours(self):
                old_log_prob = out[0] if isinstance(out, tuple) else out
                if "entropys" in old_log_prob.batch:  # fit pops "entropys" before the advantages
                    old_log_prob.batch["entropy"] = old_log_prob.batch["entropys"]
            return out

        return _compute_old_log_prob

    _wrap(module, "compute_advantage", make_compute_advantage)
    trainer_cls = module.RayPPOTrainer
    _wrap(trainer_cls, "fit", make_fit)
    _wrap(trainer_cls, "init_workers", _checked_start)
    _wrap(trainer_cls, "_compute_old_log_prob", make_old_log_prob)


# ------------------------------------------------------------------------------------------------ workers
def patch_engine(module: ModuleType) -> None:
    def make(original):
        def train_batch(self, data, loss_function, *args, **kwargs):
            if isinstance(loss_function, TokenCreditLoss):
                loss_function.prepare(data, self.get_data_parallel_group())
            return original(self, data, loss_function, *args, **kwargs)

        return train_batch

    _wrap(module.BaseEngine, "train_batch", make)


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "verl.utils.config": patch_config,
    "verl.trainer.ppo.v1.trainer_base": patch_v1,
    "verl.trainer.ppo.ray_trainer": patch_legacy,
    "verl.workers.engine.base": patch_engine,
}


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it returns the spec the other finders give, with a loader that
    applies the module's patch right after the module body runs."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[ModuleType], None]) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)


_FINDER = _PostImportFinder()


def install() -> None:
    """Apply every wrapper now to the watched modules already imported, and when it is imported to the others
    (idempotent)."""
    for name, patch in PATCHES.items():
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None) is not None and hasattr(module, "__spec__"):
            with contextlib.suppress(AttributeError):  # still being imported: patched by its loader when done
                patch(module)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
