"""Runs inside vLLM's worker: the in-place weight update of `VLLMSampler` (a `worker_extension_cls`, so the method
is reachable by name through `LLM.collective_rpc` whether the engine core runs in this process or in its own)."""

from __future__ import annotations

import logging
from typing import Any

# vLLM's in-place reload warns "<layer>: Failed to load weights" for a layer that has tensors but received none,
# and then keeps that layer's tensors. For the rotary embedding that is expected on every update: its cos/sin
# cache is computed by vLLM, never part of a checkpoint (the first-load check confirms the log-probs).
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
COMPUTED_LAYERS = ("RotaryEmbedding",)


def _expected_reload_warning(record: logging.LogRecord) -> bool:
    return record.msg == "%s: Failed to load weights" and bool(record.args) and record.args[0] in COMPUTED_LAYERS


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _expected_reload_warning(record)


def quiet_expected_reload_warnings() -> None:
    """Drop the reload warning for layers whose tensors vLLM computes itself (`COMPUTED_LAYERS`); once."""
    logger = logging.getLogger(RELOAD_LOGGER)
    if not any(isinstance(f, _DropExpected) for f in logger.filters):
        logger.addFilter(_DropExpected())


class WeightSync:
    """Mixed into vLLM's `Worker` (`LLM(worker_extension_cls="tokencredit.sampling.vllm_worker.WeightSync")`)."""

    def tokencredit_load_weights(self, weights: list[tuple[str, Any]]) -> None:
        """Load `(name, tensor)` pairs in checkpoint (transformers) naming into the running model, in place.

        vLLM's layerwise `reload_weights` re-runs each layer's post-load processing, but a tied parameter is
        processed for one of its owners only (limitation 2 in `vllm/model_executor/model_loader/reload`): with
        tied embeddings the CPU backend's `lm_head` keeps a GEMM handle prepacked from the *old* embedding, and
        the update fails silently (log-probs off by up to 3.6 nats, measured). So the head is processed again
        here; on GPU that processing is a no-op."""
        quiet_expected_reload_warnings()
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        model = self.get_model()
        config = getattr(model, "config", None)
        head = getattr(model, "lm_head", None)
        method = getattr(head, "quant_method", None)
        if getattr(config, "tie_word_embeddings", False) and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)
