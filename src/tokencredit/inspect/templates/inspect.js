// The token-credit inspector page. Hand-written, no dependencies; reads the JSON embedded next to it and draws
// the navigator, the group view, the hover card, the prefix tree and the overlay. Every text from the data goes
// through textContent (never HTML). View state lives in the URL hash.
(function () {
  "use strict";
  const root = document.currentScript.closest(".tc-root");
  const DATA = JSON.parse(root.querySelector(".tc-data").textContent);
  const $ = (sel) => root.querySelector(sel);
  const SVG = "http://www.w3.org/2000/svg";
  const DIVERGING = { credit: 1, advantage: 1, ratio: 1, value: 0 };
  const LABELS = { credit: "credit (advantage × weight × kept)", advantage: "advantage", weight: "weight",
    entropy: "entropy", logprob: "log-prob", ratio: "ratio π_behaviour / π_ref", ref_logprob: "reference log-prob",
    value: "value", overlay: "overlay A/B" };
  const state = { s: 0, g: 0, c: "credit", q: 20, sc: "entropy", d: 0, n: -1, f: 0, z: 0 };

  // ------------------------------------------------------------------ data
  // a channel: one number (constant), "~" + 0/1 characters, or base64 of each float32's top three bytes, read
  // back to the record's 4 significant digits (page.py: encode_floats)
  function floats(enc, n) {
    if (typeof enc === "number") return new Float64Array(n).fill(enc);
    if (enc[0] === "~") return Float64Array.from(enc.slice(1), (c) => (c === "1" ? 1 : 0));
    const bin = atob(enc), bytes = new Uint8Array(4 * n);
    for (let i = 0; i < n; i++) for (let b = 0; b < 3; b++) bytes[4 * i + 1 + b] = bin.charCodeAt(3 * i + b);
    return Float64Array.from(new Float32Array(bytes.buffer), (v) => Number(v.toPrecision(4)));
  }
  function indices(enc, n) {  // string-table indices: base64 of 24-bit little-endian integers
    const bin = atob(enc), out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = bin.charCodeAt(3 * i) | (bin.charCodeAt(3 * i + 1) << 8) | (bin.charCodeAt(3 * i + 2) << 16);
    return out;
  }
  function decoded(resp) {  // per-token channels of a response, computed once
    if (resp._ch) return resp._ch;
    const n = resp.n, ch = {};
    for (const name in resp.c) ch[name] = floats(resp.c[name], n);
    const keep = (tk, k) => Float64Array.from({ length: n }, (_, i) => (k && (!tk || tk[i] === "1")) ? 1 : 0);
    ch.kept = keep(resp.tk, resp.k);
    if (ch.advantage) ch.credit = ch.advantage.map((a, i) => a * (ch.weight ? ch.weight[i] : 1) * ch.kept[i]);
    if (ch.logprob && ch.ref_logprob) ch.ratio = ch.logprob.map((l, i) => Math.exp(l - ch.ref_logprob[i]));
    if (resp.d) {
      const o = {};
      for (const name in resp.d) o[name] = floats(resp.d[name], n);
      o.kept = keep(resp.dtk, resp.dk);
      if (o.advantage) o.credit = o.advantage.map((a, i) => a * (o.weight ? o.weight[i] : 1) * o.kept[i]);
      if (o.logprob && o.ref_logprob) o.ratio = o.logprob.map((l, i) => Math.exp(l - o.ref_logprob[i]));
      ch._other = o;
    }
    resp._ch = ch;
    return ch;
  }
  const step = () => DATA.steps[state.s];
  function toks(resp) { if (!resp._t) resp._t = indices(resp.t, resp.n); return resp._t; }
  function currentGroup() { return step().groups[state.g]; }
  function channels() {
    const out = [];
    const has = (c) => DATA.channels.includes(c);
    if (has("advantage")) out.push("credit");
    for (const c of ["advantage", "weight", "entropy", "logprob"]) if (has(c)) out.push(c);
    if (has("logprob") && has("ref_logprob")) out.push("ratio");
    for (const c of ["ref_logprob", "value"]) if (has(c)) out.push(c);
    out.push("overlay");
    return out;
  }
  function fmt(v) {
    if (v === undefined || v === null || Number.isNaN(v)) return "–";
    return String(Number(v.toPrecision(4)));
  }
  function nodeOf(resp, t) {  // the trie node of token t: the node on the response's path covering t
    const nodes = currentGroup().nodes;
    for (const id of resp.p) if (nodes[id][1] <= t && t < nodes[id][2]) return id;
    return -1;
  }

  // ------------------------------------------------------------------ colours
  function mix(a, b, f) { return a.map((x, i) => Math.round(x + (b[i] - x) * f)); }
  const WHITE = [255, 255, 255], NEG = [192, 57, 43], POS = [42, 138, 74], SEQ = [84, 39, 143];
  function scaleFor(values, diverging) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (!Number.isFinite(lo)) { lo = 0; hi = 0; }
    if (diverging) { const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1; return { diverging, lo: -m, hi: m }; }
    return { diverging, lo, hi: hi > lo ? hi : lo + 1 };
  }
  function colour(v, sc) {
    if (!Number.isFinite(v)) return "transparent";
    let rgb;
    if (sc.diverging) rgb = v >= 0 ? mix(WHITE, POS, Math.min(1, v / sc.hi)) : mix(WHITE, NEG, Math.min(1, v / sc.lo));
    else rgb = mix(WHITE, SEQ, Math.max(0, Math.min(1, (v - sc.lo) / (sc.hi - sc.lo))));
    return `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
  }
  function legend(sc, label) {
    const bar = $(".legend-bar");
    if (!sc) {
      bar.style.background = "linear-gradient(90deg, #4a7bd0 0 33%, #e08a2a 33% 66%, #8e44ad 66%)";
      $(".legend-low").textContent = "A only";
      $(".legend-high").textContent = "B only · both";
      return;
    }
    bar.style.background = sc.diverging
      ? `linear-gradient(90deg, ${colour(sc.lo, sc)}, #fff, ${colour(sc.hi, sc)})`
      : `linear-gradient(90deg, #fff, ${colour(sc.hi, sc)})`;
    $(".legend-low").textContent = `${label} ${fmt(sc.lo)}`;
    $(".legend-high").textContent = fmt(sc.hi);
  }

  // the value coloured for token t: the channel, its log for the ratio, or this run − the other in diff mode
  function shown(ch, name, t) {
    const v = name === "ratio" ? Math.log(ch.ratio[t]) : ch[name] ? ch[name][t] : NaN;
    if (!state.d) return v;
    const o = ch._other;
    if (!o || !o[name]) return NaN;
    const w = name === "ratio" ? Math.log(o.ratio[t]) : o[name][t];
    return v - w;
  }

  // ------------------------------------------------------------------ overlay (A: recipe's tokens, B: top q%)
  function topCount(n, top) {  // Python's max(1, round(top * n)): round half to even
    const x = top * n, r = Math.round(x);
    const even = (Math.abs(x % 1) === 0.5) ? 2 * Math.round(x / 2) : r;
    return Math.max(1, even);
  }
  function overlaySets() {
    const scores = [];
    const q = state.q / 100;
    for (const g of step().groups) for (const resp of g.responses) {
      if (!resp.k) continue;
      const ch = decoded(resp);
      const s = state.sc === "entropy" ? ch.entropy : ch.advantage;
      if (!s) continue;
      for (let t = 0; t < resp.n; t++) scores.push(state.sc === "entropy" ? s[t] : Math.abs(s[t]));
    }
    let tau = Infinity;
    if (scores.length) {
      const sorted = Float64Array.from(scores).sort().reverse();
      tau = sorted[topCount(scores.length, q) - 1];
    }
    const counts = { a: 0, b: 0, both: 0, n: scores.length };
    const which = (resp, t) => {
      const ch = decoded(resp);
      const a = ch.kept[t] > 0 && (!ch.weight || ch.weight[t] !== 0);
      let b = false;
      if (resp.k) {
        const s = state.sc === "entropy" ? ch.entropy : ch.advantage;
        if (s) b = (state.sc === "entropy" ? s[t] : Math.abs(s[t])) >= tau;
      }
      return (a ? 1 : 0) + (b ? 2 : 0);
    };
    for (const g of step().groups) for (const resp of g.responses)
      for (let t = 0; t < resp.n; t++) {
        const w = which(resp, t);
        if (w === 1) counts.a++; else if (w === 2) counts.b++; else if (w === 3) counts.both++;
      }
    return { which, counts, tau };
  }
  const OVERLAY = ["transparent", "#a9c4ee", "#f3c48f", "#c39bd3"];

  // ------------------------------------------------------------------ token text as shown
  function glyphs(text) {
    if (text === "") return ["◌", true];
    let out = "", glyph = false;
    for (const c of text) {
      const code = c.codePointAt(0);
      if (c === "\n") { out += "↵\n"; glyph = true; }
      else if (c === "\t") { out += "⇥"; glyph = true; }
      else if (c === " ") { out += "·"; glyph = true; }
      else if (code < 32) { out += String.fromCodePoint(0x2400 + code); glyph = true; }
      else if (code === 127) { out += "␡"; glyph = true; }
      else out += c;
    }
    return [out, glyph && text.trim() === ""];
  }

  // ------------------------------------------------------------------ drawing
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function drawNavigator() {
    const ss = $(".nav-step");
    clear(ss);
    DATA.steps.forEach((s, i) => {
      const o = el("option", "", `step ${s.step} (${s.recipe})`);
      o.value = i;
      ss.appendChild(o);
    });
    ss.value = state.s;
    const gs = $(".nav-group");
    clear(gs);
    step().groups.forEach((g, i) => {
      if (state.z && g.zv && i !== state.g) return;
      const mean = g.responses.reduce((a, r) => a + r.r, 0) / g.responses.length;
      const o = el("option", "", `group ${g.group} · mean reward ${fmt(mean)}${g.zv ? " · zero variance" : ""}`);
      o.value = i;
      gs.appendChild(o);
    });
    gs.value = state.g;
    const ch = $(".channel");
    clear(ch);
    for (const c of channels()) { const o = el("option", "", LABELS[c] || c); o.value = c; ch.appendChild(o); }
    ch.value = state.c;
    $(".diff-control").hidden = !DATA.diff;
    $(".other-name").textContent = DATA.otherName;
    $(".diff").checked = !!state.d;
    $(".filter-failed").checked = !!state.f;
    $(".filter-zv").checked = !!state.z;
    $(".slider").value = state.q;
    $(".slider-value").textContent = state.q;
    $(".score").value = state.sc;
  }

  function drawGroup() {
    const g = currentGroup();
    $(".prompt").textContent = g.prompt;
    const box = $(".responses"), jump = $(".jump");
    clear(box);
    clear(jump);
    const overlay = state.c === "overlay" ? overlaySets() : null;
    let sc = null;
    if (!overlay) {
      const all = [];
      for (const resp of g.responses) { const ch = decoded(resp); for (let t = 0; t < resp.n; t++) all.push(shown(ch, state.c, t)); }
      sc = scaleFor(all, state.d || DIVERGING[state.c] === 1);
    }
    legend(sc, state.d ? "Δ" : "");
    $(".overlay-counts").textContent = overlay
      ? `A only ${overlay.counts.a} · B only ${overlay.counts.b} · both ${overlay.counts.both} (of ${overlay.counts.n} candidate tokens)`
      : "";
    const shared = state.n >= 0 ? g.nodes[state.n] : null;
    g.responses.forEach((resp, k) => {
      if (state.f && resp.r > 0.5) return;
      const ch = decoded(resp);
      const pass = resp.r > 0.5;
      const div = el("div", `response ${pass ? "pass" : "fail"}${resp.k ? "" : " dropped"}`);
      div.id = `tc-r-${state.s}-${state.g}-${k}`;
      div.dataset.index = k;
      const flags = [pass ? "pass" : "fail", `reward ${fmt(resp.r)}`, `${resp.n} tokens`];
      if (!resp.k) flags.push("dropped");
      if (resp.x) flags.push("truncated");
      if (resp.cr !== undefined) flags.push(`critical token t=${resp.cr}`);
      if (state.d && !ch._other) flags.push("not in the other run");
      div.appendChild(el("div", "meta", `response ${resp.i} · ${flags.join(" · ")}`));
      const line = el("div", "tokens");
      const through = shared && resp.p.includes(state.n);
      for (let t = 0; t < resp.n; t++) {
        const [text, glyph] = glyphs(DATA.strings[toks(resp)[t]][1]);
        const span = el("span", "tok", text);
        if (glyph) span.classList.add("glyph");
        span.dataset.t = t;
        const v = overlay ? null : shown(ch, state.c, t);
        span.style.background = overlay ? OVERLAY[overlay.which(resp, t)] : colour(v, sc);
        if (!overlay && !Number.isFinite(v)) span.classList.add("none");
        if (through && t < shared[2]) span.classList.add("hl");
        if (resp.cr === t) span.classList.add("crit");
        line.appendChild(span);
      }
      div.appendChild(line);
      box.appendChild(div);
      const a = el("a", "", `#${resp.i} ${pass ? "✓" : "✗"}`);
      a.href = "#" + hashOf();
      a.addEventListener("click", (e) => { e.preventDefault(); div.scrollIntoView(); });
      jump.appendChild(a);
    });
  }

  function drawTree() {
    const g = currentGroup(), box = $(".tree");
    clear(box);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", g.w);
    svg.setAttribute("height", g.h);
    const first = g.responses;
    g.nodes.forEach((n, id) => {
      if (n[0] < 0) return;
      const p = g.nodes[n[0]];
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", `M${p[7]},${p[8]} V${n[8]} H${n[7]}`);
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", "#999");
      svg.appendChild(path);
      const resp = first[n[6]];
      let label = "";
      for (let t = n[1]; t < n[2] && label.length < 14; t++) label += glyphs(DATA.strings[toks(resp)[t]][1])[0].replace("\n", "");
      if (n[2] - n[1] > 0 && label.length >= 14) label = label.slice(0, 14) + "…";
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", p[7] + 4);
      text.setAttribute("y", n[8] - 3);
      text.textContent = `${label} (${n[2] - n[1]})`;
      svg.appendChild(text);
    });
    g.nodes.forEach((n, id) => {
      const node = document.createElementNS(SVG, "g");
      node.setAttribute("class", "node" + (id === state.n ? " selected" : ""));
      node.dataset.node = id;
      const c = document.createElementNS(SVG, "circle");
      c.setAttribute("cx", n[7]);
      c.setAttribute("cy", n[8]);
      c.setAttribute("r", 3 + Math.sqrt(n[3]) * 1.5);
      c.setAttribute("fill", colour(n[4] * 2 - 1, { diverging: true, lo: -1, hi: 1 }));
      c.setAttribute("stroke", "#555");
      node.appendChild(c);
      // the node's numbers under its edge (the root's beside it): n responses, mean reward v, Δ at a fork
      const t = document.createElementNS(SVG, "text");
      const parent = n[0] >= 0 ? g.nodes[n[0]] : null;
      t.setAttribute("x", parent ? parent[7] + 4 : n[7] + 8);
      t.setAttribute("y", n[8] + 11);
      const delta = parent && countChildren(g, n[0]) > 1 ? ` Δ${n[5] >= 0 ? "+" : ""}${fmt(n[5])}` : "";
      t.textContent = `n=${n[3]} v=${fmt(n[4])}${delta}`;
      if (delta) t.setAttribute("class", n[5] >= 0 ? "pos" : "neg");
      node.appendChild(t);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `node ${id}: tokens ${n[1]}–${n[2] - 1}, ${n[3]} responses, value ${fmt(n[4])}`;
      node.appendChild(title);
      node.addEventListener("click", () => { state.n = state.n === id ? -1 : id; update(); });
      svg.appendChild(node);
    });
    box.appendChild(svg);
  }
  function countChildren(g, id) {
    if (!g._kids) { g._kids = new Array(g.nodes.length).fill(0); for (const n of g.nodes) if (n[0] >= 0) g._kids[n[0]]++; }
    return g._kids[id];
  }

  // ------------------------------------------------------------------ hover card
  function hover(e) {
    const span = e.target.closest(".tok");
    const card = $(".card");
    if (!span) { card.hidden = true; return; }
    const div = span.closest(".response");
    const resp = currentGroup().responses[Number(div.dataset.index)];
    const t = Number(span.dataset.t);
    const ch = decoded(resp);
    const [id, text] = DATA.strings[toks(resp)[t]];
    const node = nodeOf(resp, t);
    const n = currentGroup().nodes[node];
    clear(card);
    card.appendChild(el("div", "", `t=${t} · token ${id} · ${JSON.stringify(text)}`));
    card.appendChild(el("div", "", `tree node ${node} (tokens ${n[1]}–${n[2] - 1}, ${n[3]} responses, value ${fmt(n[4])})`));
    const table = el("table");
    const row = (name, v, w) => {
      const tr = el("tr");
      tr.dataset.channel = name;
      tr.appendChild(el("td", "", name));
      tr.appendChild(el("td", "value", fmt(v)));
      if (w !== undefined) { tr.appendChild(el("td", "", `other ${fmt(w)}`)); tr.appendChild(el("td", "", `Δ ${fmt(v - w)}`)); }
      table.appendChild(tr);
    };
    for (const name of ["credit", "advantage", "weight", "entropy", "logprob", "ref_logprob", "ratio", "value"]) {
      if (!ch[name]) continue;
      const o = ch._other && ch._other[name] ? ch._other[name][t] : undefined;
      row(name, ch[name][t], state.d ? o : undefined);
    }
    row("kept", ch.kept[t]);
    card.appendChild(table);
    card.hidden = false;
    card.style.left = Math.min(e.clientX + 12, window.innerWidth - 320) + "px";
    card.style.top = (e.clientY + 14) + "px";
  }

  // ------------------------------------------------------------------ state
  function hashOf() {
    return Object.entries(state).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
  }
  function readHash() {
    for (const part of location.hash.slice(1).split("&")) {
      const [k, v] = part.split("=");
      if (!(k in state) || v === undefined) continue;
      state[k] = typeof state[k] === "number" ? Number(decodeURIComponent(v)) || 0 : decodeURIComponent(v);
    }
    state.s = Math.min(Math.max(0, state.s), DATA.steps.length - 1);
    state.g = Math.min(Math.max(0, state.g), step().groups.length - 1);
    if (!channels().includes(state.c)) state.c = channels()[0];
    if (!DATA.diff) state.d = 0;
    state.q = Math.min(100, Math.max(1, state.q));
    if (state.n >= currentGroup().nodes.length) state.n = -1;
  }
  function update() {
    if (state.z && currentGroup().zv) {
      const other = step().groups.findIndex((g) => !g.zv);
      if (other >= 0) { state.g = other; state.n = -1; }
    }
    drawNavigator();
    drawGroup();
    drawTree();
    if (DATA.full) history.replaceState(null, "", "#" + hashOf());
  }

  $(".nav-step").addEventListener("change", (e) => { state.s = Number(e.target.value); state.g = 0; state.n = -1; update(); });
  $(".nav-group").addEventListener("change", (e) => { state.g = Number(e.target.value); state.n = -1; update(); });
  $(".channel").addEventListener("change", (e) => { state.c = e.target.value; update(); });
  $(".diff").addEventListener("change", (e) => { state.d = e.target.checked ? 1 : 0; update(); });
  $(".filter-failed").addEventListener("change", (e) => { state.f = e.target.checked ? 1 : 0; update(); });
  $(".filter-zv").addEventListener("change", (e) => { state.z = e.target.checked ? 1 : 0; update(); });
  $(".slider").addEventListener("input", (e) => { state.q = Number(e.target.value); update(); });
  $(".score").addEventListener("change", (e) => { state.sc = e.target.value; update(); });
  $(".responses").addEventListener("mouseover", hover);
  $(".responses").addEventListener("mouseleave", () => { $(".card").hidden = true; });
  if (DATA.full) readHash();
  update();
})();
