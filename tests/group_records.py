"""Synthetic group records for the inspector's tests: groups whose responses share prefixes, every channel, and
token texts that try to break out of the page."""

from __future__ import annotations

import torch

from tokencredit.inspect.records import StepRecord, records_from_tensors

MALICIOUS = "</script><img src=x onerror=\"document.title='pwned'\">"
PIECES = ["a", " b", "\n", "\t", "", "ç", "<|eos|>", MALICIOUS, "12", " +", "=", "\u2028"]


def synthetic_step(step: int = 1, *, groups: int = 2, size: int = 4, length: int = 12, vocab: int = 50,
                   seed: int = 0, recipe: str = "grpo", pieces: list[str] | None = None) -> StepRecord:
    """`groups` groups of `size` responses of up to `length` tokens; responses of a group share prefixes (each
    copies a random-length prefix of the one before it), rewards 0/1, every channel present."""
    g = torch.Generator().manual_seed(seed)
    b = groups * size
    tokens = torch.randint(0, vocab, (b, length), generator=g)
    for i in range(b):
        if i % size:
            cut = int(torch.randint(0, length, (1,), generator=g))
            tokens[i, :cut] = tokens[i - 1, :cut]
    lengths = torch.randint(length // 2, length + 1, (b,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    group = torch.arange(b) // size
    reward = torch.randint(0, 2, (b,), generator=g).float()
    table = pieces or PIECES
    text = [[table[t % len(table)] for t in row[m].tolist()] for row, m in zip(tokens, mask)]
    adv = (reward - 0.5)[:, None].expand(b, length) * mask
    channels = {
        "logprob": -torch.rand(b, length, generator=g) * 3 * mask,
        "ref_logprob": -torch.rand(b, length, generator=g) * 3 * mask,
        "entropy": torch.rand(b, length, generator=g) * 2 * mask,
        "advantage": adv + torch.randn(b, length, generator=g) * 0.1 * mask,
        "weight": (torch.rand(b, length, generator=g) > 0.3).float() * mask,
        "value": torch.rand(b, length, generator=g) * mask,
    }
    return records_from_tensors(step=step, recipe=recipe, prompts=[f"prompt <b>{i // size}</b> & co" for i in range(b)],
                                group=group, mask=mask, tokens=tokens, reward=reward, token_text=text,
                                truncated=lengths == length, keep=torch.arange(b) != 1, **channels)
