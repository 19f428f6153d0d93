"""The embedded default model: a ≈1M-parameter Llama-architecture `transformers` model, built from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from tokencredit.models.tokenizer import build_char_tokenizer


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 512,
    max_position_embeddings: int = 512,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    **overrides: Any,
) -> LlamaConfig:
    """A small `LlamaConfig` (≈1.0M parameters with the default character vocabulary), tied embeddings.

    Special-token ids default to those of `build_char_tokenizer`; `overrides` go to `LlamaConfig` as is.
    """
    if hidden_size % heads or heads % kv_heads:
        sizes = f"hidden_size={hidden_size}, heads={heads}, kv_heads={kv_heads}"
        raise ValueError(f"heads: expected hidden_size % heads == heads % kv_heads == 0, got {sizes}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        **overrides,
    )


def config_for_tokenizer(tokenizer: PreTrainedTokenizerBase, **config_overrides: Any) -> LlamaConfig:
    """`tiny_llama_config` sized for `tokenizer`, with its pad/bos/eos ids."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return tiny_llama_config(len(tokenizer), **{**ids, **config_overrides})


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def create_tiny_model(
    out_dir: str | Path, *, seed: int = 0, alphabet: str | None = None, **config_overrides: Any
) -> Path:
    """Build the character tokenizer and a randomly initialised `LlamaForCausalLM`; save both to `out_dir`.

    The folder then loads offline with `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(out_dir)`
    (or `load_model`). Initialisation is seeded by `seed` without touching the global RNG state.
    `config_overrides` go to `tiny_llama_config` (e.g. `hidden_size=64, layers=2`).
    """
    out = Path(out_dir)
    tokenizer = build_char_tokenizer(alphabet)
    config = config_for_tokenizer(tokenizer, **config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
