"""Runs inside vLLM's worker: the in-place weight update of `VLLMSampler` (a `worker_extension_cls`, so the method
is reachable by name through `LLM.collective_rpc` whether the engine core runs in this process or in its own)."""

from __future__ import annotations

import logging
from typing import Any

# vLLM's in-place reload warns "<layer>: Failed to load weights" for a layer that has tensors but received none in
# the update, and keeps that layer's tensors. Two are expected on every update and dropped from the log: the rotary
# embedding (its cos/sin cache is computed by vLLM, never part of a checkpoint) and, with tied embeddings, the
# `lm_head` (its weight is the embedding's, which the update loads; the head is processed again below). The
# first-load check and the lane's weight-update tests confirm the log-probs.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
FAILED_LOAD = "%s: Failed to load weights"


class _DropExpected(logging.Filter):
    """Drops `FAILED_LOAD` records for the layer classes in `expected`."""

    def __init__(self) -> None:
        super().__init__()
        self.expected: frozenset[str] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == FAILED_LOAD and bool(record.args) and record.args[0] in self.expected)


_EXPECTED = _DropExpected()


def expect_unloaded(layers: set[str]) -> None:
    """Drop the reload warning for these layer classes (and only these) from now on."""
    logger = logging.getLogger(RELOAD_LOGGER)
    if _EXPECTED not in logger.filters:
        logger.addFilter(_EXPECTED)
    _EXPECTED.expected = frozenset(layers)


class WeightSync:
    """Mixed into vLLM's `Worker` (`LLM(worker_extension_cls="tokencredit.sampling.vllm_worker.WeightSync")`)."""

    def tokencredit_load_weights(self, weights: list[tuple[str, Any]]) -> None:
        """Load `(name, tensor)` pairs in checkpoint (transformers) naming into the running model, in place.

        vLLM's layerwise `reload_weights` re-runs each layer's post-load processing, but a tied parameter is
        processed for one of its owners only (limitation 2 in `vllm/model_executor/model_loader/reload`): with
        tied embeddings the CPU backend's `lm_head` keeps a GEMM handle prepacked from the *old* embedding, and
        the update fails silently (log-probs off by up to 3.6 nats, measured). So the head is processed again
        here; on GPU that processing is a no-op."""
        model = self.get_model()
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        expect_unloaded({"RotaryEmbedding", *(["ParallelLMHead"] if tied else [])})
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        head = getattr(model, "lm_head", None)
        method = getattr(head, "quant_method", None)
        if tied and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)
