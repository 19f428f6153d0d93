"""The run inspector page: a run's group records as self-contained HTML files (no request of any kind).

Python prepares everything that needs no interaction (the tries and their layout, the curves, the file split);
the page's hand-written script (`templates/inspect.js`) draws the tokens and the trie from the embedded data.
Per-token channels travel as base64 float32 (a constant channel as one number); token texts as indices into one
string table per file. A run too large for one file of `MAX_BYTES` gives several, by step range, linked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader

from tokencredit.inspect.records import CHANNELS, DIGITS, Critical, GroupRecord, ResponseRecord, StepRecord
from tokencredit.inspect.trie import build_trie

MAX_BYTES = 2_000_000
CURVES = ("reward", "accuracy", "kept_frac", "entropy")
_ENV = Environment(loader=PackageLoader("tokencredit.inspect", "templates"), autoescape=True)


def encode_floats(values: Sequence[float]) -> str | float:
    """A channel of one response as the page carries it: one number when every value is equal (or none);
    `~` and one 0/1 character per value when every value is 0 or 1; else base64 of the top three bytes of each
    little-endian float32 (rounded to nearest: 16 mantissa bits, relative error ≤ 2⁻¹⁷, so the 4 significant
    digits of a record's value come back exactly; `decode_floats`)."""
    if not values:
        return 0.0
    if all(v == values[0] for v in values):
        return float(np.float32(values[0]))
    if all(v in (0.0, 1.0) for v in values):
        return "~" + "".join("1" if v else "0" for v in values)
    bits = np.asarray(values, dtype="<f4").view("<u4").astype(np.uint64)
    top = ((bits + 0x80) >> 8).astype("<u4")  # carry into the exponent is the correct rounding
    return base64.b64encode(top.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()).decode("ascii")


def decode_floats(encoded: str | float, n: int) -> list[float]:
    """The values of `encode_floats(values)` (`n` of them) as the page reads them: each rounded to `DIGITS`
    significant digits."""
    if isinstance(encoded, float | int):
        return [float(encoded)] * n
    if encoded.startswith("~"):
        return [float(c == "1") for c in encoded[1:]]
    raw = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8).reshape(n, 3)
    full = np.zeros((n, 4), dtype=np.uint8)
    full[:, 1:] = raw
    return [float(f"{v:.{DIGITS}g}") for v in full.reshape(-1).view("<f4").astype(float).tolist()]


def encode_indices(indices: Sequence[int]) -> str:
    """String-table indices as base64 of little-endian 24-bit integers (4 characters a token)."""
    return base64.b64encode(np.asarray(indices, dtype="<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
                            ).decode("ascii")


class _Strings:
    """One file's string table: each distinct (token id, text) once."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, str], int] = {}

    def refs(self, r: ResponseRecord) -> list[int]:
        return [self.index.setdefault(key, len(self.index)) for key in zip(r.ids, r.text)]

    def table(self) -> list[list[Any]]:
        return [[i, text] for i, text in self.index]


def _response_data(r: ResponseRecord, strings: _Strings, path: list[int], other: ResponseRecord | None,
                   critical: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "r": r.reward, "k": int(r.keep), "x": int(r.truncated), "n": len(r.ids), "t": encode_indices(strings.refs(r)),
        "p": path,
        "c": {name: encode_floats(v) for name, v in r.channels.items()},
    }
    if r.token_keep is not None:
        out["tk"] = "".join("1" if k else "0" for k in r.token_keep)
    if other is not None:
        out["d"] = {name: encode_floats(v) for name, v in other.channels.items()}
        out["dk"] = int(other.keep)
        if other.token_keep is not None:
            out["dtk"] = "".join("1" if k else "0" for k in other.token_keep)
    if critical is not None:
        out["cr"] = critical
    return out


def _group_data(step: int, g: GroupRecord, strings: _Strings, other: GroupRecord | None,
                critical: Critical | None) -> dict[str, Any]:
    trie = build_trie(g)
    twins = _twins(g, other)
    order = sorted(range(len(g.responses)), key=lambda i: (-g.responses[i].reward, i))
    responses = []
    for i in order:
        mark = critical.index.get((step, g.group, i)) if critical is not None else None
        data = _response_data(g.responses[i], strings, trie.paths[i], twins[i], mark)
        data["i"] = i
        responses.append(data)
    nodes = [[n.parent, n.start, n.end, n.count, round(n.value, 4), round(n.delta, 4), order.index(n.label_response),
              round(n.x, 1), round(n.y, 1)] for n in trie.nodes]
    rewards = [r.reward for r in g.responses]
    return {"group": g.group, "prompt": g.prompt, "responses": responses, "nodes": nodes,
            "w": round(trie.width, 1), "h": round(trie.height, 1), "zv": int(len(set(rewards)) <= 1)}


def _twins(g: GroupRecord, other: GroupRecord | None) -> list[ResponseRecord | None]:
    """For each response of `g`, the response of `other` with the same token ids (each used once), or None."""
    if other is None:
        return [None] * len(g.responses)
    free: dict[tuple[int, ...], list[ResponseRecord]] = {}
    for r in other.responses:
        free.setdefault(tuple(r.ids), []).append(r)
    return [free[key].pop(0) if free.get(key := tuple(r.ids)) else None for r in g.responses]


def _step_data(record: StepRecord, groups: list[GroupRecord], strings: _Strings, other: StepRecord | None,
               critical: Critical | None) -> dict[str, Any]:
    others = {(g.group, g.prompt): g for g in other.groups} if other is not None else {}
    return {"step": record.step, "recipe": record.recipe, "other": other.recipe if other is not None else None,
            "groups": [_group_data(record.step, g, strings, others.get((g.group, g.prompt)), critical)
                       for g in groups]}


def curves(metrics: Sequence[dict[str, Any]], width: float = 260, height: float = 70) -> list[dict[str, Any]]:
    """The run's curves (`CURVES` of its RL records) as SVG polyline points in a `width` × `height` box."""
    rl = [m for m in metrics if m.get("phase") == "rl"]
    out = []
    for name in CURVES:
        points = [(m["step"], m[name]) for m in rl if isinstance(m.get(name), int | float)]
        if len(points) < 2:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        sx = width / ((x1 - x0) or 1)
        sy = height / ((y1 - y0) or 1)
        line = " ".join(f"{(x - x0) * sx:.1f},{height - (y - y0) * sy:.1f}" for x, y in points)
        out.append({"name": name, "points": line, "low": f"{y0:.3g}", "high": f"{y1:.3g}", "first": x0, "last": x1,
                    "final": f"{ys[-1]:.3g}"})
    return out


def render_pages(records: Sequence[StepRecord], out: Path, *, title: str, metrics: Sequence[dict[str, Any]] = (),
                 other: Sequence[StepRecord] | None = None, other_name: str = "", critical: Critical | None = None,
                 max_bytes: int = MAX_BYTES) -> list[Path]:
    """Write the pages of `records` to `out` (and `out`'s stem + `-2`, `-3`, ... when one file would exceed
    `max_bytes`), each self-contained and linked to the others; returns their paths. `other` (records of the
    same groups from another run: another recipe or checkpoint) turns on diff mode where steps and responses
    match; `critical` marks critical tokens."""
    curve = curves(metrics)
    reserved = _overhead() + len(json.dumps(curve)) + 3 * len(title.encode()) + 100 * len(records)  # links
    chunks = _chunks(records, other, critical, max_bytes - reserved)
    paths = [out if n == 0 else out.with_name(f"{out.stem}-{n + 1}{out.suffix}") for n in range(len(chunks))]
    links = [{"href": p.name, "label": _label(chunk)} for p, chunk in zip(paths, chunks)]
    others = {r.step: r for r in other} if other is not None else {}
    for n, (path, chunk) in enumerate(zip(paths, chunks)):
        text = _render(chunk, others, critical, title, curve, links, n, other_name, full=True)
        size = len(text.encode())
        if size > max_bytes:
            raise ValueError(f"inspect: the page of {_label(chunk)} needs {size} bytes, more than the {max_bytes} a "
                             "page may have (one group alone is too large: record fewer or shorter responses)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return paths


Chunk = list[tuple[StepRecord, list[GroupRecord]]]


def _label(chunk: Chunk) -> str:
    first, last = chunk[0][0].step, chunk[-1][0].step
    return f"step {first}" if first == last else f"steps {first}–{last}"


def _render(chunk: Chunk, others: dict[int, StepRecord], critical: Critical | None, title: str,
            curve: list[dict[str, Any]], links: list[dict[str, str]], current: int, other_name: str, *,
            full: bool) -> str:
    """One page (`full`: a whole HTML document that keeps its view in the URL hash; else a fragment for a
    notebook cell)."""
    strings = _Strings()
    steps = [_step_data(record, groups, strings, others.get(record.step), critical) for record, groups in chunk]
    present = [c for c in CHANNELS if any(c in r.channels for record, groups in chunk for g in groups
                                          for r in g.responses)]
    data = {"strings": strings.table(), "steps": steps, "channels": present, "otherName": other_name,
            "diff": bool(others), "full": full}
    payload = _json(data)
    script, style = _assets()
    return _ENV.get_template("page.html.j2").render(title=title, data=payload, curves=curve, links=links,
                                                    current=current, script=script, style=style, full=full)


def _json(data: Any) -> str:
    """JSON as the page embeds it: inside <script type="application/json">, "<" never appears raw, so no token
    text can close the element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _chunks(records: Sequence[StepRecord], other: Sequence[StepRecord] | None, critical: Critical | None,
            budget: int) -> list[Chunk]:
    """Steps (and, for a step too large alone, its groups) packed in order into files whose data is at most
    `budget` bytes, by the size of each group's data in the page (measured; its strings counted in full)."""
    others = {r.step: r for r in other} if other is not None else {}
    chunks: list[Chunk] = [[]]
    used = 0
    for record in records:
        for g in record.groups:
            one = StepRecord(record.step, record.recipe, [g], record.source)
            strings = _Strings()
            size = len(_json(_step_data(one, [g], strings, others.get(record.step), critical)).encode())
            size += len(_json(strings.table()).encode())  # shared with other groups in a file: at most this
            if chunks[-1] and used + size > budget:
                chunks.append([])
                used = 0
            used += size
            if chunks[-1] and chunks[-1][-1][0] is record:
                chunks[-1][-1][1].append(g)
            else:
                chunks[-1].append((record, [g]))
    if not chunks[-1]:
        raise ValueError("inspect: the run's records hold no groups")
    return chunks


def _overhead() -> int:
    """Bytes of a page around its data and curves: the template, script and style, and a margin."""
    folder = resources.files("tokencredit.inspect").joinpath("templates")
    return sum(len(folder.joinpath(name).read_bytes()) for name in ("page.html.j2", "inspect.js", "inspect.css")) \
        + 10_000


def report_html(records: Sequence[StepRecord], *, title: str = "token credit") -> str:
    """One page of `records` as a string (for notebooks: `GroupRecords._repr_html_`)."""
    chunk = _chunks(records, None, None, 1 << 60)[0]
    return _render(chunk, {}, None, title, [], [], 0, "", full=False)


def _assets() -> tuple[str, str]:
    folder = resources.files("tokencredit.inspect").joinpath("templates")
    return (folder.joinpath("inspect.js").read_text(encoding="utf-8"),
            folder.joinpath("inspect.css").read_text(encoding="utf-8"))


@dataclass
class GroupRecords:
    """A run's records in a notebook: displays as the inspector page."""

    records: list[StepRecord]
    title: str = "token credit"

    def _repr_html_(self) -> str:
        return report_html(self.records, title=self.title)
