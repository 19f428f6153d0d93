"""A character-level tokenizer: one token per character, exact round trip, saved like any HF tokenizer."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
PUNCTUATION = "+-*/=()[],.:;?!<>_'\"#%&|{}^\\$@~`"
DEFAULT_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + " \n\t" + PUNCTUATION


def build_char_tokenizer(
    alphabet: str | None = None, *, add_bos: bool = False, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` with one token per character of `alphabet` (default `DEFAULT_ALPHABET`).

    Ids 0-3 are `<pad>`, `<bos>`, `<eos>`, `<unk>`; characters follow in alphabet order (duplicates
    dropped). Any other character encodes as `<unk>`. Decoding concatenates characters, so
    `decode(encode(s)) == s` for text within the alphabet, spaces and newlines included. Padding is on the
    left (ready for batched generation). `add_bos=True` prepends `<bos>` to every encoded text.
    """
    chars = list(dict.fromkeys(DEFAULT_ALPHABET if alphabet is None else alphabet))
    if not chars:
        raise ValueError("alphabet: expected at least one character")
    if any(len(c) != 1 for c in chars):  # pragma: no cover - str iteration yields single characters
        raise ValueError("alphabet: expected single characters")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    backend.decoder = decoders.Fuse()  # join tokens with nothing in between
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
