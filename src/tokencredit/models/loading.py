"""Load any local `transformers` causal-LM folder (the tiny default or a real checkpoint) for generation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`(model, tokenizer)` from the local folder `path`, never from the network; the model is in eval mode.

    The tokenizer pads on the left (for batched generation); a tokenizer without a pad token reuses EOS.
    The model's generation config gets the tokenizer's pad/eos ids where it has none.
    A folder that is not a loadable model (no or garbage config.json, no tokenizer files, truncated or empty
    weights) raises `FileNotFoundError` or `ValueError` naming the folder and what is wrong.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"path: {str(path)!r} is not a local model folder (no config.json)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: config.json is not valid JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: config.json is not a JSON object; the checkpoint is damaged")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); a model folder needs "
                         "its tokenizer (save it with tokenizer.save_pretrained into the same folder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError or TypeError, depending on what is missing
        raise ValueError(f"{path}: cannot load its tokenizer ({_first_line(err)}); a model folder needs its "
                         "tokenizer files (e.g. tokenizer.json, tokenizer_config.json)") from err
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except Exception as err:  # safetensors' SafetensorError (truncated, empty), OSError (no weights), ...
        raise ValueError(f"{path}: cannot load the model weights ({_first_line(err)}); the weights file may be "
                         "missing, truncated or empty") from err
    model.to(device).eval()
    generation = model.generation_config
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
