"""The token-credit report: which tokens of each sampled response get the credit, under several recipes.

A token's credit is what multiplies its log-probability gradient in the policy loss: `Credit.folded()` =
`advantage · weight`, and 0 for a response the select stage drops. The report shows the same responses once per
recipe, each token coloured by its credit (green positive, red negative, opacity |credit| / the recipe's largest
|credit|), with the exact numbers in a tooltip, and a summary of how concentrated each recipe's credit is.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from tokencredit.masked import token_count
from tokencredit.recipes import Recipe
from tokencredit.rollouts import Rollouts
from tokencredit.weight.forking import top_count


def credit_concentration(credit: Tensor, mask: Tensor, top: float = 0.1) -> dict[str, float]:
    """How a batch's credit `[B,T]` spreads over its response tokens (`mask`):

    * `tokens_with_credit`: fraction of response tokens whose credit is non-zero;
    * `top_share`: share of the total |credit| carried by the `top` fraction of response tokens with the largest
      |credit| (round(top·n) tokens, at least one, as `forking_tokens` counts). Uniform credit gives `top`;
      credit on a few tokens gives close to 1.
    An empty mask or zero credit everywhere gives 0 for both.
    """
    if not 0 < top <= 1:
        raise ValueError(f"top: expected a fraction in (0, 1], got {top}")
    magnitude = credit.abs()[mask]
    n = magnitude.numel()
    total = magnitude.sum()
    if n == 0 or total == 0:
        return {"tokens_with_credit": 0.0, "top_share": 0.0}
    k = top_count(n, top)
    return {"tokens_with_credit": (magnitude > 0).float().mean().item(),
            "top_share": (magnitude.topk(k).values.sum() / total).item()}


def credit_report(
    rollouts: Rollouts,
    recipes: Sequence[Recipe],
    token_text: Sequence[Sequence[str]],
    prompts: Sequence[str],
    *,
    title: str = "token credit",
    progress: float = 0.0,
) -> tuple[str, dict[str, dict[str, float]]]:
    """Credit of every recipe on `rollouts`, as a self-contained HTML page and a summary per recipe.

    `token_text[i]` are the strings of response i's masked tokens in order, as many as `mask[i]` is true (see
    `token_pieces`), and `prompts[i]` is the prompt of response i. Responses are shown by group, in order of
    first appearance. The summary holds `credit_concentration`, `kept` (fraction of responses the select stage
    keeps) and `largest` (the largest |credit|, which sets the colour scale).
    """
    mask = rollouts.mask
    lengths = token_count(mask, -1).tolist()
    if len(token_text) != len(lengths) or len(prompts) != len(lengths):
        raise ValueError(f"token_text, prompts: expected one entry per response (B = {len(lengths)}), got "
                         f"{len(token_text)} and {len(prompts)}")
    for i, (text, n) in enumerate(zip(token_text, lengths)):
        if len(text) != n:
            raise ValueError(f"token_text[{i}]: expected {n} strings (the response's masked tokens), got {len(text)}")
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise ValueError(f"recipes: names must differ to tell the rows apart, got {names}")

    credits, kept, summary = {}, {}, {}
    for recipe in recipes:
        credit = recipe.credit(rollouts, progress=progress)
        credits[recipe.name] = credit.folded()
        kept[recipe.name] = credit.keep.tolist()
        folded = credits[recipe.name]
        summary[recipe.name] = {"kept": credit.keep.float().mean().item(), **credit_concentration(folded, mask),
                                "largest": folded.abs().max().item() if folded.numel() else 0.0}
    page = _page(title, rollouts, credits, kept, summary, token_text, prompts)
    return page, summary


# ------------------------------------------------------------------------------------------------ HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.summary { border-collapse: collapse; margin-bottom: 1.5em; }
table.summary td, table.summary th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
section { margin-bottom: 2em; }
.response { border-left: 3px solid #ddd; padding-left: 0.8em; margin: 0.8em 0; }
.response.correct { border-left-color: #2a8; }
.meta { color: #666; font-size: 0.85em; }
.line { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.7; }
.recipe { display: inline-block; width: 9em; color: #555; }
.dropped { color: #aaa; }
.tok { border-radius: 2px; }
"""


def _page(
    title: str,
    rollouts: Rollouts,
    credits: Mapping[str, Tensor],
    kept: Mapping[str, list[bool]],
    summary: Mapping[str, Mapping[str, float]],
    token_text: Sequence[Sequence[str]],
    prompts: Sequence[str],
) -> str:
    mask = rollouts.mask
    reward = rollouts.sequence_reward().tolist()
    truncated = rollouts.truncated.tolist() if rollouts.truncated is not None else [False] * len(reward)
    scale = {name: s["largest"] or 1.0 for name, s in summary.items()}
    columns = [row.nonzero().squeeze(-1).tolist() for row in mask]  # a token's position in its padded row
    values = {name: [c[i][mask[i]].tolist() for i in range(len(reward))] for name, c in credits.items()}
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(rollouts.group.tolist()):
        groups.setdefault(g, []).append(i)

    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
           "<p>A token's credit is <code>advantage × weight</code> (0 for a response the recipe drops): what "
           "multiplies its log-probability gradient. Green is positive, red negative; opacity is |credit| over "
           "the recipe's largest |credit| in the batch. Hover a token for its value.</p>",
           _summary_table(summary)]
    for number, rows in enumerate(groups.values(), 1):
        out.append(f"<section><h2>prompt {number}</h2><pre>{html.escape(prompts[rows[0]])}</pre>")
        for i in rows:
            flags = " · truncated" if truncated[i] else ""
            correct = " correct" if reward[i] > 0.5 else ""
            out.append(f"<div class='response{correct}'><div class='meta'>response {i} · reward {reward[i]:g} · "
                       f"{len(token_text[i])} tokens{flags}</div>")
            for name in credits:
                out.append(_credit_line(name, token_text[i], columns[i], values[name][i], scale[name], kept[name][i]))
            out.append("</div>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def _summary_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    head = ("<table class='summary'><tr><th>recipe</th><th>responses kept</th><th>tokens with credit</th>"
            "<th>|credit| share of the top 10% tokens</th><th>largest |credit|</th></tr>")
    rows = [f"<tr><td>{html.escape(name)}</td><td>{s['kept']:.0%}</td><td>{s['tokens_with_credit']:.0%}</td>"
            f"<td>{s['top_share']:.0%}</td><td>{s['largest']:.3g}</td></tr>" for name, s in summary.items()]
    return head + "".join(rows) + "</table>"


def _credit_line(name: str, tokens: Sequence[str], columns: Sequence[int], values: Sequence[float], scale: float,
                 kept: bool) -> str:
    spans = []
    for t, token, value in zip(columns, tokens, values):
        value += 0.0  # −0.0 (a zero advantage times a negative weight, or the reverse) shows as 0
        alpha = min(1.0, abs(value) / scale)
        colour = "0,150,80" if value > 0 else "210,40,40"
        shown = html.escape(token.replace("\n", "↵\n"))
        tip = html.escape(f"t={t} {token!r} credit {value:+.4g}", quote=True)
        spans.append(f"<span class='tok' style='background:rgba({colour},{alpha:.2f})' title=\"{tip}\">{shown}</span>")
    label = html.escape(name) + ("" if kept else " (dropped)")
    return f"<div class='line{'' if kept else ' dropped'}'><span class='recipe'>{label}</span>{''.join(spans)}</div>"


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """The text each token of `ids` adds to the decoded response (special tokens included), as a streaming
    detokenizer computes it. Decoding tokens one at a time would break byte-level BPE characters into U+FFFD
    and drop SentencePiece's leading spaces. Each token is decoded after the one or two before it, and a token
    that ends inside a multi-byte character shows nothing until the character is complete."""
    pieces: list[str] = []
    prefix, read = 0, 0  # decode from `prefix`; the text of ids[prefix:read] is already shown
    for end in range(1, len(ids) + 1):
        before = tokenizer.decode(ids[prefix:read])
        text = tokenizer.decode(ids[prefix:end])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            pieces.append(text[len(before):])
            prefix, read = read, end
        else:
            pieces.append("")
    return pieces
