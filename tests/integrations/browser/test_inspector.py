"""The inspector page in Chromium (Debian's, driven by playwright): one test per feature. Runs only in the
browser lane (`bash .ci/lanes/browser.sh`); a missing browser fails the lane."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch
from playwright.sync_api import Page, sync_playwright

from group_records import MALICIOUS, synthetic_step
from tokencredit.inspect.page import render_pages
from tokencredit.inspect.records import Critical, StepRecord
from tokencredit.inspect.trie import build_trie
from tokencredit.weight.forking import top_fraction_mask

RECORDS = [synthetic_step(1, groups=2, size=5, length=14), synthetic_step(6, groups=2, size=5, length=14, seed=3)]


@pytest.fixture(scope="module")
def browser():
    path = os.environ.get("TOKENCREDIT_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError("no chromium: the browser lane installs Debian's (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


class Watched:
    """A page with every page error, console error and network request recorded."""

    def __init__(self, browser, path: Path, hash_: str = "") -> None:
        self.page: Page = browser.new_page()
        self.url = path.as_uri()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(self.url + hash_)

    def clean(self) -> bool:
        return not self.errors and all(r.split("#")[0] == self.url for r in self.requests)


@pytest.fixture
def page(browser, tmp_path):
    [path] = render_pages(RECORDS, tmp_path / "run.html", title="synthetic",
                          critical=Critical({(1, 0, 2): 3}))
    watched = Watched(browser, path)
    yield watched
    assert watched.clean(), (watched.errors, watched.requests)
    watched.page.close()


def _colours(p: Page) -> list[str]:
    return p.eval_on_selector_all(".responses .tok", "els => els.map(e => e.style.background)")


def test_loads_without_errors_or_requests(page):
    page.page.select_option(".nav-step", "1")
    page.page.select_option(".channel", "overlay")
    assert page.clean() and page.requests == [page.url]


def test_one_span_per_token(page):
    group = RECORDS[0].groups[0]
    assert page.page.locator(".responses .tok").count() == sum(len(r.ids) for r in group.responses)
    page.page.select_option(".nav-group", "1")
    assert page.page.locator(".responses .tok").count() == sum(len(r.ids) for r in RECORDS[0].groups[1].responses)


def test_channel_switch_changes_colours(page):
    before = _colours(page.page)
    page.page.select_option(".channel", "entropy")
    after = _colours(page.page)
    assert len(before) == len(after) and before != after
    assert page.page.locator(".legend-low").inner_text() != ""


def test_hover_shows_the_records_values(page):
    group = RECORDS[0].groups[0]
    order = sorted(range(len(group.responses)), key=lambda i: (-group.responses[i].reward, i))
    shown, t = 1, 4
    r = group.responses[order[shown]]
    page.page.locator(".response").nth(shown).locator(".tok").nth(t).hover()
    card = page.page.locator(".card")
    assert card.is_visible()
    values = {name: float(card.locator(f"tr[data-channel='{name}'] td.value").inner_text())
              for name in ("advantage", "weight", "entropy", "logprob", "ref_logprob", "value")}
    assert values == {name: r.channels[name][t] for name in values}
    keep = r.keep and (r.token_keep is None or r.token_keep[t])
    credit = float(card.locator("tr[data-channel='credit'] td.value").inner_text())
    assert credit == pytest.approx(r.channels["advantage"][t] * r.channels["weight"][t] * keep, rel=1e-3, abs=1e-12)
    trie = build_trie(group)
    node = next(n for n in trie.paths[order[shown]] if trie.nodes[n].start <= t < trie.nodes[n].end)
    assert f"t={t} " in card.inner_text() and f"tree node {node} " in card.inner_text()
    assert f"token {r.ids[t]} " in card.inner_text()


def test_tree_click_highlights_the_shared_prefix(page):
    group = RECORDS[0].groups[0]
    trie = build_trie(group)
    node = max(range(1, len(trie.nodes)), key=lambda n: (trie.nodes[n].count > 1, trie.nodes[n].end))
    n = trie.nodes[node]
    assert n.count > 1
    page.page.locator(f".tree .node[data-node='{node}'] circle").click()
    assert page.page.locator(".responses .tok.hl").count() == n.count * n.end
    texts = page.page.eval_on_selector_all(
        ".response", "rs => rs.map(r => Array.from(r.querySelectorAll('.tok.hl')).map(e => e.textContent).join(''))")
    highlighted = [x for x in texts if x]
    assert len(highlighted) == n.count and len(set(highlighted)) == 1
    assert "n=" in page.page.locator(".tree svg").text_content()


@pytest.mark.parametrize(("percent", "score"), [(20, "entropy"), (37, "absadv"), (100, "entropy")])
def test_slider_counts_equal_the_python_selection(page, percent, score):
    page.page.select_option(".channel", "overlay")
    page.page.select_option(".score", score)
    page.page.eval_on_selector(".slider", f"e => {{ e.value = {percent}; e.dispatchEvent(new Event('input')); }}")
    text = page.page.locator(".overlay-counts").inner_text()
    rows = [r for g in RECORDS[0].groups for r in g.responses]
    width = max(len(r.ids) for r in rows)
    values = torch.zeros(len(rows), width, dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    a = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r.ids)
        x = torch.tensor(r.channels["entropy" if score == "entropy" else "advantage"], dtype=torch.float64)
        values[i, :n] = x if score == "entropy" else x.abs()
        mask[i, :n] = r.keep
        tk = torch.tensor(r.token_keep) if r.token_keep is not None else torch.ones(n, dtype=torch.bool)
        a[i, :n] = r.keep & tk & (torch.tensor(r.channels["weight"]) != 0)
    b = top_fraction_mask(values, mask, percent / 100).bool()
    expected = (f"A only {int((a & ~b).sum())} · B only {int((b & ~a).sum())} · both {int((a & b).sum())} "
                f"(of {int(mask.sum())} candidate tokens)")
    assert text == expected


def test_diff_mode_shows_the_difference(browser, tmp_path):
    other = copy.deepcopy(RECORDS)
    changed = other[0].groups[0].responses[0]
    changed.channels["advantage"] = [float(f"{v - 0.25:.4g}") for v in changed.channels["advantage"]]
    other = [StepRecord(r.step, "tempo", r.groups) for r in other]
    [path] = render_pages(RECORDS, tmp_path / "diff.html", title="diff", other=other, other_name="tempo-run")
    w = Watched(browser, path)
    w.page.select_option(".channel", "advantage")
    w.page.check(".diff")
    group = RECORDS[0].groups[0]
    order = sorted(range(len(group.responses)), key=lambda i: (-group.responses[i].reward, i))
    for k, i in enumerate(order):
        colours = set(w.page.locator(".response").nth(k).locator(".tok").evaluate_all(
            "els => els.map(e => e.style.background)"))
        white = colours == {"rgb(255, 255, 255)"}  # identical values: zero difference
        assert white == (i != 0), (k, i, colours)
    w.page.locator(".response").nth(order.index(0)).locator(".tok").nth(2).hover()
    row = w.page.locator(".card tr[data-channel='advantage']").inner_text()
    assert "Δ 0.25" in row
    assert w.page.locator(".other-name").inner_text() == "tempo-run"
    assert w.clean(), w.errors


def test_a_malicious_token_is_text(page):
    shown = MALICIOUS.replace(" ", "·")  # spaces are drawn as glyphs
    texts = []
    for g in range(2):
        page.page.select_option(".nav-group", str(g))
        texts += page.page.eval_on_selector_all(".responses .tok", "els => els.map(e => e.textContent)")
    assert shown in texts
    assert page.page.locator("img").count() == 0 and page.page.title() == "synthetic"
    assert page.page.locator(".prompt").inner_text() == "prompt <b>1</b> & co"  # the last group selected


def test_view_state_survives_a_reload_through_the_hash(page):
    page.page.select_option(".nav-step", "1")
    page.page.select_option(".channel", "entropy")
    url = page.page.url
    assert "c=entropy" in url and "s=1" in url
    page.page.goto("about:blank")
    page.page.goto(url)
    assert page.page.locator(".channel").input_value() == "entropy"
    assert page.page.locator(".nav-step").input_value() == "1"


def test_navigator_filters_and_critical_mark(page):
    total = page.page.locator(".response").count()
    page.page.check(".filter-failed")
    failed = sum(r.reward <= 0.5 for r in RECORDS[0].groups[0].responses)
    assert page.page.locator(".response").count() == failed < total
    page.page.uncheck(".filter-failed")
    group = RECORDS[0].groups[0]
    order = sorted(range(len(group.responses)), key=lambda i: (-group.responses[i].reward, i))
    k = order.index(2)
    crit = page.page.locator(".response").nth(k).locator(".tok.crit")
    assert crit.count() == 1 and crit.get_attribute("data-t") == "3"
