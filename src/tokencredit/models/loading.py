"""Load any local `transformers` causal-LM folder (the tiny default or a real checkpoint) for generation."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`(model, tokenizer)` from the local folder `path`, never from the network; the model is in eval mode.

    The tokenizer pads on the left (for batched generation); a tokenizer without a pad token reuses EOS.
    The model's generation config gets the tokenizer's pad/eos ids where it has none.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"path: {str(path)!r} is not a local model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.to(device).eval()
    generation = model.generation_config
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
