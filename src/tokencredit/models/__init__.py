"""The embedded default: a character tokenizer and a tiny Llama model, plus a loader for any local model."""

from tokencredit.models.loading import load_model
from tokencredit.models.tiny import (
    config_for_tokenizer,
    count_parameters,
    create_tiny_model,
    tiny_llama_config,
)
from tokencredit.models.tokenizer import DEFAULT_ALPHABET, SPECIAL_TOKENS, build_char_tokenizer

__all__ = [
    "DEFAULT_ALPHABET",
    "SPECIAL_TOKENS",
    "build_char_tokenizer",
    "config_for_tokenizer",
    "count_parameters",
    "create_tiny_model",
    "load_model",
    "tiny_llama_config",
]
