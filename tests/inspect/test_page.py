import json
import re

import pytest
import torch

from group_records import MALICIOUS, synthetic_step
from tokencredit.inspect.page import GroupRecords, decode_floats, encode_floats, render_pages
from tokencredit.inspect.records import records_from_tensors, round_significant
from tokencredit.inspect.trie import build_trie


def _group(rows: list[list[int]], rewards: list[float]):
    tokens, mask = torch.zeros(len(rows), 8, dtype=torch.long), torch.zeros(len(rows), 8, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return records_from_tensors(step=1, recipe="grpo", prompts=["p"] * len(rows), group=torch.zeros(len(rows),
                                dtype=torch.long), mask=mask, tokens=tokens, reward=torch.tensor(rewards),
                                token_text=[[str(t) for t in row] for row in rows]).groups[0]


def test_trie_merges_unary_chains_and_counts_values():
    trie = build_trie(_group([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3], [7]], [1.0, 0.0, 1.0, 0.0]))
    spans = [(n.parent, n.start, n.end, n.count) for n in trie.nodes]
    # root; "1 2 3" shared by three (one ends there: a fork with END); "4"; "5 6"; "7"
    assert spans == [(-1, 0, 0, 4), (0, 0, 3, 3), (1, 3, 4, 1), (1, 3, 5, 1), (0, 0, 1, 1)]
    assert trie.nodes[1].value == pytest.approx(2 / 3) and trie.nodes[1].delta == pytest.approx(2 / 3 - 0.5)
    assert trie.nodes[3].delta == pytest.approx(-2 / 3)
    assert trie.paths == [[1, 2], [1, 3], [1], [4]]
    ys = [n.y for n in trie.nodes]
    assert ys[1] == (ys[2] + ys[3]) / 2 and len({ys[2], ys[3], ys[4]}) == 3  # leaves on their own rows
    assert trie.nodes[2].x > trie.nodes[1].x > trie.nodes[0].x


def test_float_channels_come_back_as_the_records_values():
    values = round_significant(torch.randn(5000, dtype=torch.float64) * 10.0 ** torch.randint(-7, 5, (5000,))).tolist()
    values += [9.999, 1.001e-6, -0.0001234, 12340.0]
    encoded = encode_floats(values)
    assert len(encoded) == 4 * len(values) and decode_floats(encoded, len(values)) == values
    assert encode_floats([0.5, 0.5, 0.5]) == 0.5 and decode_floats(0.5, 3) == [0.5] * 3
    assert encode_floats([0.0, 1.0, 1.0]) == "~011" and decode_floats("~011", 3) == [0.0, 1.0, 1.0]


def _data(page: str) -> dict:
    raw = re.search(r'<script type="application/json" class="tc-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(raw)


def test_every_text_is_escaped(tmp_path):
    [path] = render_pages([synthetic_step(1)], tmp_path / "r.html", title="run <i>x</i>")
    page = path.read_text(encoding="utf-8")
    assert "<i>x</i>" not in page and "run &lt;i&gt;x&lt;/i&gt;" in page
    assert MALICIOUS not in page and "<img" not in page and page.count("</script>") == 2
    data = _data(page)
    assert [MALICIOUS in [t for _, t in data["strings"]]] == [True]  # carried as data, shown with textContent
    assert data["steps"][0]["groups"][0]["prompt"] == "prompt <b>0</b> & co"
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "").replace("http-equiv", "")


def test_pages_are_deterministic_and_carry_every_token(tmp_path):
    records = [synthetic_step(1), synthetic_step(6, seed=1)]
    a = render_pages(records, tmp_path / "a.html", title="t")[0].read_bytes()
    b = render_pages(records, tmp_path / "b.html", title="t")[0].read_bytes()
    assert a == b
    data = _data(a.decode())
    shown = sum(r["n"] for s in data["steps"] for g in s["groups"] for r in g["responses"])
    assert shown == sum(len(r.ids) for rec in records for g in rec.groups for r in g.responses)
    rewards = [r["r"] for r in data["steps"][0]["groups"][0]["responses"]]
    assert rewards == sorted(rewards, reverse=True)


def test_a_large_run_is_split_into_linked_files_under_the_limit(tmp_path):
    records = [synthetic_step(s, groups=3, length=300, seed=s) for s in (1, 6, 11)]
    paths = render_pages(records, tmp_path / "run.html", title="t", max_bytes=100_000)
    assert len(paths) > 1 and paths[1].name == "run-2.html"
    for p in paths:
        page = p.read_text(encoding="utf-8")
        assert len(page.encode()) <= 100_000
        assert all(f'href="{q.name}"' in page for q in paths if q != p)
    steps = [s["step"] for p in paths for s in _data(p.read_text(encoding="utf-8"))["steps"]]
    assert steps == sorted(steps) and set(steps) == {1, 6, 11}
    groups = sum(len(s["groups"]) for p in paths for s in _data(p.read_text(encoding="utf-8"))["steps"])
    assert groups == 9


def test_real_scale_groups_fit_2_mb_files(tmp_path):
    """Two steps of one group each: 16 responses of 4096 tokens drawn Zipf-like from a 150k vocabulary (as text
    is), a shared opening, and per-token log-prob, reference log-prob, entropy and advantage that vary at every
    token, a 0/1 weight (forking-style): each step's group gets a file of its own, within 2 MB."""
    g = torch.Generator().manual_seed(0)
    b, t, vocab = 16, 4096, 150_000
    rank = torch.arange(1, vocab + 1, dtype=torch.float64)
    tokens = torch.multinomial(rank.pow(-1.1), b * t, replacement=True, generator=g).view(b, t)
    tokens[1:, :200] = tokens[0, :200]
    mask = torch.ones(b, t, dtype=torch.bool)
    logprob = -torch.distributions.Exponential(2.0).sample((b, t))
    text = [[f"w{x}" for x in row.tolist()] for row in tokens]
    steps = [records_from_tensors(
        step=step, recipe="tempo", prompts=["p"] * b, group=torch.zeros(b, dtype=torch.long), mask=mask,
        tokens=tokens, reward=(torch.arange(b) % 2).float(), token_text=text, logprob=logprob,
        ref_logprob=logprob - 0.01 * torch.rand(b, t, generator=g), entropy=torch.rand(b, t, generator=g) * 4,
        advantage=torch.randn(b, t, generator=g), weight=(torch.rand(b, t, generator=g) < 0.2).float())
        for step in (1, 6)]
    paths = render_pages(steps, tmp_path / "big.html", title="t")
    sizes = [p.stat().st_size for p in paths]
    assert len(paths) == 2 and all(s <= 2_000_000 for s in sizes), sizes
    assert sum(_data(p.read_text(encoding="utf-8"))["steps"][0]["groups"][0]["responses"][0]["n"] for p in paths) \
        == 2 * t


def test_notebook_repr_is_a_fragment_with_the_data():
    html = GroupRecords([synthetic_step(1)])._repr_html_()
    assert "<!doctype" not in html and 'class="tc-data"' in html and '"full":false' in html
