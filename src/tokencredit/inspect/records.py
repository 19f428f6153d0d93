"""Group records: a size-bounded, versioned JSON record of a few sampled groups of one RL step, per token.

One file per recorded step, `RUN/records/step-000010.json` (docs/inspect.md describes every field):

    {"format": "tokencredit.records", "version": 1, "step": 10, "recipe": "grpo", "source": "tokencredit train",
     "groups": [{"group": 3, "prompt": "...", "responses": [
         {"ids": [...], "text": [...], "reward": 1.0, "truncated": false, "keep": true, "token_keep": null,
          "node": [...], "logprob": [...], "ref_logprob": null, "entropy": [...], "advantage": [...],
          "weight": [...], "value": null}]}]}

Per-token numbers are rounded to 4 significant digits (the file stays small; the page shows these numbers).
`node[t]` is the prefix-tree node after token t: two tokens of a group share a node iff their responses share
the prefix up to and including t (ids 0, 1, ... in order of first appearance within the group). Any engine's
rollouts can be written in this format with `records_from_tensors`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokencredit.tree import prefix_node_ids

FORMAT = "tokencredit.records"
VERSION = 1
CHANNELS = ("logprob", "ref_logprob", "entropy", "advantage", "weight", "value")
RECORDS_DIR = "records"
DIGITS = 4  # significant digits of every per-token number


@dataclass
class ResponseRecord:
    """One response: token `ids`, their `text` (what each token adds to the decoded response), the scalar
    `reward`, `truncated`, `keep` (the select stage kept it), `token_keep` (the token-select stage's mask, None:
    every token), `node` (prefix-tree node after each token) and the per-token `channels` it has."""

    ids: list[int]
    text: list[str]
    reward: float
    truncated: bool
    keep: bool
    node: list[int]
    token_keep: list[bool] | None = None
    channels: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class GroupRecord:
    """One group: its id in the batch, the prompt, the responses, and the verifier's ground truth (`answer`,
    `source_index`; None where unknown) so that `tokencredit critical --records` can score continuations."""

    group: int
    prompt: str
    responses: list[ResponseRecord]
    answer: str | None = None
    source_index: int | None = None


@dataclass
class StepRecord:
    step: int
    recipe: str
    groups: list[GroupRecord]
    source: str = "tokencredit train"

    def to_json(self) -> dict[str, Any]:
        groups = []
        for g in self.groups:
            responses = []
            for r in g.responses:
                row = {k: v for k, v in asdict(r).items() if k != "channels"}
                row.update({name: r.channels.get(name) for name in CHANNELS})
                responses.append(row)
            groups.append({"group": g.group, "prompt": g.prompt, "answer": g.answer, "source_index": g.source_index,
                           "responses": responses})
        return {"format": FORMAT, "version": VERSION, "step": self.step, "recipe": self.recipe,
                "source": self.source, "groups": groups}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, data: Any, where: str = "record") -> StepRecord:
        """A record from its JSON form; a `ValueError` naming `where` and the field on any mismatch."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{where}: not a {FORMAT} file")
        if data.get("version") != VERSION:
            raise ValueError(f"{where}: {FORMAT} version {data.get('version')!r}; this tokencredit reads version "
                             f"{VERSION}")
        try:
            groups = [GroupRecord(int(g["group"]), str(g["prompt"]),
                                  [_response(r, f"{where}: groups[{i}].responses[{j}]")
                                   for j, r in enumerate(g["responses"])],
                                  None if g.get("answer") is None else str(g["answer"]),
                                  None if g.get("source_index") is None else int(g["source_index"]))
                      for i, g in enumerate(data["groups"])]
            return cls(int(data["step"]), str(data["recipe"]), groups, str(data.get("source", "")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where}: missing or malformed field ({err})") from None


def _response(r: dict[str, Any], where: str) -> ResponseRecord:
    n = len(r["ids"])
    channels = {name: [float(x) for x in r[name]] for name in CHANNELS if r.get(name) is not None}
    lists = {"text": r["text"], "node": r["node"], **channels}
    if r.get("token_keep") is not None:
        lists["token_keep"] = r["token_keep"]
    for name, values in lists.items():
        if len(values) != n:
            raise ValueError(f"{where}.{name}: expected {n} entries (one per token), got {len(values)}")
    return ResponseRecord(ids=[int(x) for x in r["ids"]], text=[str(x) for x in r["text"]],
                          reward=float(r["reward"]), truncated=bool(r["truncated"]), keep=bool(r["keep"]),
                          node=[int(x) for x in r["node"]],
                          token_keep=None if r.get("token_keep") is None else [bool(x) for x in r["token_keep"]],
                          channels=channels)


def round_significant(x: Tensor, digits: int = DIGITS) -> Tensor:
    """`x` rounded to `digits` significant digits, float64 (each value the double nearest its decimal form, so
    JSON writes it in at most `digits` digits); 0, NaN and ±inf unchanged."""
    x = x.double()
    finite = torch.isfinite(x) & (x != 0)
    exponent = torch.where(finite, torch.floor(torch.log10(x.abs().clamp_min(1e-300))), torch.zeros_like(x))
    shift = (digits - 1) - exponent  # x · 10^shift has `digits` integer digits
    up = torch.pow(10.0, shift.clamp_min(0))
    down = torch.pow(10.0, (-shift).clamp_min(0))
    rounded = torch.where(shift >= 0, torch.round(x * up) / up, torch.round(x / down) * down)
    return torch.where(finite, rounded, x)


def records_from_tensors(
    *,
    step: int,
    recipe: str,
    prompts: Sequence[str],
    group: Tensor,
    mask: Tensor,
    tokens: Tensor,
    reward: Tensor,
    token_text: Sequence[Sequence[str]],
    groups: Sequence[int] | None = None,
    answers: Sequence[str | None] | None = None,
    source_indices: Sequence[int | None] | None = None,
    truncated: Tensor | None = None,
    keep: Tensor | None = None,
    token_keep: Tensor | None = None,
    source: str = "",
    **channels: Tensor | None,
) -> StepRecord:
    """The record of one batch's groups `groups` (integer ids from `group`; default: every group), from plain
    tensors any engine has (verl: `responses`, `response_mask`, the `uid` groups via `tokencredit.group_ids`,
    the sequence scores, `old_log_probs`, `ref_log_prob`, `entropys`, `advantages`, ...).

    `group [B]`, `mask [B,T]` bool, `tokens [B,T]`, `reward [B]` (or `[B,T]`, summed), `prompts[i]` the prompt of
    row i, `token_text[i]` the text of row i's masked tokens (`token_pieces`). `channels` are per-token `[B,T]`
    tensors named as in `CHANNELS` (None: absent). `keep [B]` and `token_keep [B,T]` default to all kept;
    `answers[i]` and `source_indices[i]` are row i's ground truth for the verifier (optional)."""
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise ValueError(f"records_from_tensors: unknown channels {unknown}; expected names from {list(CHANNELS)}")
    mask = mask.bool().cpu()
    b = mask.shape[0]
    group, tokens = group.cpu(), tokens.cpu()
    lengths = mask.sum(-1).tolist()
    if len(prompts) != b or len(token_text) != b:
        raise ValueError(f"records_from_tensors: prompts and token_text need one entry per row (B = {b}), got "
                         f"{len(prompts)} and {len(token_text)}")
    for i, (text, n) in enumerate(zip(token_text, lengths)):
        if len(text) != n:
            raise ValueError(f"records_from_tensors: token_text[{i}] has {len(text)} strings for {n} masked tokens")
    reward = reward.detach().float().cpu()
    if reward.dim() == 2:
        reward = (reward * mask).sum(-1)
    chosen = sorted(set(group.tolist())) if groups is None else list(groups)
    wanted = torch.isin(group, torch.tensor(chosen, dtype=group.dtype))
    node = prefix_node_ids(tokens * mask, mask, group)
    values = {name: round_significant(torch.nan_to_num(x.detach().cpu().float()))
              for name, x in channels.items() if x is not None}
    out = []
    for g in chosen:
        rows = (group == g) & wanted
        members = rows.nonzero().squeeze(-1).tolist()
        if not members:
            raise ValueError(f"records_from_tensors: group {g} is not in the batch")
        local: dict[int, int] = {}  # canonical node id -> 0, 1, ... in order of first appearance
        responses = []
        for i in members:
            m = mask[i]
            nodes = [local.setdefault(n, len(local)) for n in node[i][m].tolist()]
            responses.append(ResponseRecord(
                ids=tokens[i][m].tolist(), text=list(token_text[i]), reward=float(round_significant(reward[i])),
                truncated=bool(truncated[i]) if truncated is not None else False,
                keep=bool(keep[i]) if keep is not None else True, node=nodes,
                token_keep=None if token_keep is None else token_keep[i].cpu()[m].tolist(),
                channels={name: x[i][m].tolist() for name, x in values.items()}))
        first = members[0]
        out.append(GroupRecord(int(g), prompts[first], responses, answers[first] if answers is not None else None,
                               source_indices[first] if source_indices is not None else None))
    return StepRecord(step=step, recipe=recipe, groups=out, source=source)


def sample_groups(group: Tensor, count: int, seed: int) -> list[int]:
    """`count` distinct group ids of `group [B]` drawn with a generator of its own (training's random streams are
    not touched), in increasing order."""
    ids = torch.unique(group.cpu())
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:count]
    return sorted(ids[order].tolist())


def write_records(run: Path, record: StepRecord, max_bytes: int) -> Path | None:
    """Write `record` to `run/records/step-NNNNNN.json`, leaving out its last groups until the file is at most
    `max_bytes`; None (and a warning) when not even one group fits."""
    while record.groups:
        text = record.dumps()
        if len(text.encode()) <= max_bytes:
            folder = Path(run) / RECORDS_DIR
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"step-{record.step:06d}.json"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            return path
        record = StepRecord(record.step, record.recipe, record.groups[:-1], record.source)
    warnings.warn(f"records: step {record.step}: one group is larger than records.max_bytes = {max_bytes}; "
                  "nothing recorded", stacklevel=2)
    return None


def read_records(run: Path) -> list[StepRecord]:
    """Every record of run folder `run` (its `records/` folder), by step; a `ValueError` naming a bad file."""
    folder = Path(run) / RECORDS_DIR
    files = sorted(folder.glob("step-*.json")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"run: {run} has no group records ({RECORDS_DIR}/step-*.json); `tokencredit train` writes "
                         "them with records.every > 0, the demo always")
    out = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        out.append(StepRecord.from_json(data, str(path)))
    return sorted(out, key=lambda r: r.step)


@dataclass
class Critical:
    """Critical tokens of recorded responses: `(step, group, response index in the group) -> token index`."""

    index: dict[tuple[int, int, int], int]


def responses_jsonl(records: Sequence[StepRecord]) -> list[dict[str, Any]]:
    """Every recorded response as a line of `tokencredit critical --responses` (prompt, response_ids, answer,
    source_index) with its place in the records (`step`, `group`, `response`)."""
    rows = []
    for record in records:
        for g in record.groups:
            for i, r in enumerate(g.responses):
                row: dict[str, Any] = {"prompt": g.prompt, "response_ids": r.ids, "step": record.step,
                                       "group": g.group, "response": i}
                if g.answer is not None:
                    row["answer"] = g.answer
                if g.source_index is not None:
                    row["source_index"] = g.source_index
                rows.append(row)
    return rows


def read_critical(path: Path) -> Critical:
    """The critical tokens of a `tokencredit critical --records` output (JSONL: `step`, `group`, `response`,
    `index` per failed response; `index` null where none was found)."""
    index = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key = (int(row["step"]), int(row["group"]), int(row["response"]))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"--critical: {path} line {number} is not a row of `tokencredit critical --records` "
                             "(step, group, response, index)") from None
        if row.get("index") is not None:
            index[key] = int(row["index"])
    return Critical(index)
