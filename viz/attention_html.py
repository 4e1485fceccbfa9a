"""The attention page: one self-contained HTML file (inline CSS, JS and data; no network, opens from disk).

What it shows, for one text (prompt + generated):

- the text as tokens (whitespace made visible, generated tokens underlined);
- hover or click a token: every earlier token is shaded by how much the chosen token attends
  to it, for the selected layer and head, or averaged over heads and/or layers; the panel
  lists the strongest links and a canvas draws the whole T x T map with the row highlighted;
- for a generated token: the sampler's top-5 candidates, each with its probability in the
  distribution actually drawn from (temperature, top-k, top-p, min-p applied) and in the
  model's plain softmax, and which one was drawn.

The data sits in a ``<script type="application/json">`` tag with ``<``, ``>`` and ``&`` escaped,
so no token can close the tag or inject markup; the script writes tokens with ``textContent``
only. Weights are stored as integers in units of 1/10000 (``SCALE``), lower triangle only.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np

SCALE = 10_000  # weights are stored as round(w * SCALE)

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       background: #f6f7f9; color: #1f2328; }
header { padding: 12px 20px; background: #1f2937; color: #f9fafb; }
header h1 { font-size: 18px; margin: 0 0 4px; font-weight: 600; }
header p { margin: 2px 0; font-size: 13px; color: #d1d5db; }
main { display: flex; gap: 16px; padding: 14px 20px; align-items: flex-start; flex-wrap: wrap; }
#left { flex: 1 1 560px; min-width: 320px; }
#right { flex: 0 0 400px; max-width: 100%; }
.controls { display: flex; gap: 14px; align-items: center; margin-bottom: 10px; font-size: 14px; flex-wrap: wrap; }
select { font-size: 14px; padding: 2px 4px; }
#text { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 14px; line-height: 1.9;
        background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px; }
.tok { display: inline-block; padding: 0 2px; margin: 1px 1px 1px 0; border-radius: 3px; cursor: pointer;
       white-space: pre; border-bottom: 2px solid transparent; }
.tok.prompt { border-bottom-color: #c7ccd1; }
.tok.gen { border-bottom-color: #f59e0b; }
.tok.sel { outline: 2px solid #dc2626; outline-offset: 0; }
.tok.future { color: #b0b6bd; }
.panel { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px; margin-bottom: 12px;
         font-size: 13px; }
.panel h2 { font-size: 14px; margin: 0 0 8px; font-weight: 600; }
.mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; white-space: pre; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 2px 6px; text-align: left; vertical-align: middle; white-space: nowrap; }
th { font-weight: 600; color: #57606a; border-bottom: 1px solid #d0d7de; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen { background: #fef3c7; font-weight: 600; }
tr.cut td { color: #8c959f; }
.barcell { width: 35%; }
.bar { height: 9px; background: #2563eb; border-radius: 2px; }
#map-panel { max-width: 520px; margin-top: 12px; }
#map { width: 100%; image-rendering: pixelated; border: 1px solid #d0d7de; background: #fff; cursor: crosshair; }
.note { font-size: 12px; color: #57606a; margin: 6px 0 0; line-height: 1.5; }
</style>
</head>
<body>
<header>
<h1>{{TITLE}}</h1>
<p id="summary"></p>
<p id="settings"></p>
</header>
<main>
<section id="left">
<div class="controls">
<label>Layer <select id="layer"></select></label>
<label>Head <select id="head"></select></label>
<span class="note">Hover or click a token (arrow keys move). Shade = how much it attends to each earlier token.</span>
</div>
<div id="text" tabindex="0"></div>
<p class="note">Row i of a map is softmax(q<sub>i</sub>&middot;k<sub>j</sub>/&radic;d) over the tokens j &le; i:
token i's query meets every earlier key; the weights (summing to 1) mix those tokens' values.
Later tokens are masked (causal attention), so they get nothing. Underlined in orange: generated tokens.</p>
<div class="panel" id="map-panel"><h2>The whole map: row = query token, column = key token it attends to</h2>
<canvas id="map"></canvas><p class="note">Click a row to select that token.</p></div>
</section>
<section id="right">
<div class="panel"><h2 id="attn-title">Attention</h2><table id="attn-table"></table></div>
<div class="panel"><h2 id="cand-title">Next-token choice</h2><div id="cand"></div></div>
</section>
</main>
<script type="application/json" id="attention-data">{{DATA}}</script>
<script>
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("attention-data").textContent);
  const T = D.tokens.length, L = D.n_layer, H = D.n_head;
  const el = (id) => document.getElementById(id);
  const make = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  };
  const pct = (p) => (100 * p).toFixed(p >= 0.0995 || p === 0 ? 1 : 2) + "%";
  let layer = "avg", head = "avg", selected = T - 1, shown = -1, matrix = null;

  function fillSelect(select, n, word) {
    select.appendChild(new Option("average of all " + word + "s", "avg"));
    for (let i = 0; i < n; i++) select.appendChild(new Option(word + " " + i, String(i)));
  }
  fillSelect(el("layer"), L, "layer");
  fillSelect(el("head"), H, "head");

  function pairs() {
    const ls = layer === "avg" ? [...Array(L).keys()] : [Number(layer)];
    const hs = head === "avg" ? [...Array(H).keys()] : [Number(head)];
    const out = [];
    for (const l of ls) for (const h of hs) out.push(D.attn[l][h]);
    return out;
  }

  function row(i) {  // weights of token i over tokens 0..i, for the chosen layer/head (or their average)
    const maps = pairs(), out = new Float64Array(i + 1);
    for (const m of maps) { const r = m[i]; for (let j = 0; j <= i; j++) out[j] += r[j]; }
    const n = maps.length * D.scale;
    for (let j = 0; j <= i; j++) out[j] /= n;
    return out;
  }

  const spans = [];
  const text = el("text");
  for (let i = 0; i < T; i++) {
    const s = make("span", D.tokens[i], "tok " + (i < D.first_generated ? "prompt" : "gen"));
    s.dataset.i = String(i);
    s.title = "#" + i + "  id " + D.ids[i] + "  " + JSON.stringify(D.texts[i]);
    s.addEventListener("mouseenter", () => show(i));
    s.addEventListener("mouseleave", () => show(selected));
    s.addEventListener("click", () => select(i));
    text.appendChild(s);
    spans.push(s);
    if (D.texts[i].includes("\\n")) text.appendChild(document.createElement("br"));
  }

  function select(i) { selected = Math.max(0, Math.min(T - 1, i)); show(selected); }

  function show(i) {
    shown = i;
    const w = row(i);
    for (let j = 0; j < T; j++) {
      const s = spans[j];
      s.classList.toggle("sel", j === i);
      s.classList.toggle("future", j > i);
      if (j <= i) {
        const a = Math.sqrt(w[j]);
        s.style.background = "rgba(37, 99, 235, " + (0.85 * a).toFixed(3) + ")";
        s.style.color = a > 0.6 ? "#fff" : "";
        s.dataset.w = w[j].toFixed(4);
      } else {
        s.style.background = "";
        s.style.color = "";
        s.dataset.w = "";
      }
    }
    showAttention(i, w);
    showCandidates(i);
    drawMap();
  }

  function showAttention(i, w) {
    const which = (layer === "avg" ? "all layers" : "layer " + layer) + ", " +
                  (head === "avg" ? "all heads" : "head " + head);
    el("attn-title").textContent = "Token #" + i + " \\u201c" + D.tokens[i] + "\\u201d attends to (" + which + ")";
    const table = el("attn-table");
    table.replaceChildren();
    const hdr = make("tr");
    for (const h of ["#", "token", "weight", ""]) hdr.appendChild(make("th", h));
    table.appendChild(hdr);
    const order = [...w.keys()].sort((a, b) => w[b] - w[a]).slice(0, 10);
    for (const j of order) {
      const tr = make("tr");
      tr.appendChild(make("td", String(j), "num"));
      tr.appendChild(make("td", D.tokens[j], "mono"));
      tr.appendChild(make("td", w[j].toFixed(4), "num"));
      const bar = make("div", null, "bar");
      bar.style.width = (100 * w[j]).toFixed(1) + "%";
      const td = make("td", null, "barcell");
      td.appendChild(bar);
      tr.appendChild(td);
      table.appendChild(tr);
    }
  }

  function showCandidates(i) {
    const box = el("cand"), c = D.candidates[i];
    box.replaceChildren();
    if (!c) {
      el("cand-title").textContent = "Next-token choice";
      const why = i < D.first_generated ? "Token #" + i + " is part of the prompt: it was given, not sampled."
                                        : "No record of how token #" + i + " was sampled.";
      box.appendChild(make("p", why, "note"));
      return;
    }
    el("cand-title").textContent = "How token #" + i + " was chosen";
    const table = make("table");
    const hdr = make("tr");
    for (const h of ["rank", "candidate", "p sampled", "p model", ""]) hdr.appendChild(make("th", h));
    table.appendChild(hdr);
    let listed = false;
    c.ids.forEach((id, k) => {
      const tr = make("tr", null, (id === c.chosen ? "chosen" : "") + (c.p[k] === 0 ? " cut" : ""));
      tr.appendChild(make("td", String(k + 1), "num"));
      tr.appendChild(make("td", c.labels[k], "mono"));
      tr.appendChild(make("td", pct(c.p[k]), "num"));
      tr.appendChild(make("td", pct(c.p_model[k]), "num"));
      tr.appendChild(make("td", id === c.chosen ? "\\u2190 drawn" : (c.p[k] === 0 ? "cut" : "")));
      if (id === c.chosen) listed = true;
      table.appendChild(tr);
    });
    if (!listed) {
      const tr = make("tr", null, "chosen");
      tr.appendChild(make("td", String(c.chosen_rank), "num"));
      tr.appendChild(make("td", c.chosen_label, "mono"));
      tr.appendChild(make("td", pct(c.chosen_p), "num"));
      tr.appendChild(make("td", pct(c.chosen_p_model), "num"));
      tr.appendChild(make("td", "\\u2190 drawn"));
      table.appendChild(tr);
    }
    box.appendChild(table);
    box.appendChild(make("p", "p sampled: the distribution the token was drawn from (temperature, top-k, " +
      "top-p, min-p applied). p model: the model's own softmax (temperature 1, nothing cut). " +
      "\\u201ccut\\u201d: removed by the filters.", "note"));
  }

  function computeMatrix() {  // the T x T map for the chosen layer/head (or average), as canvas pixels
    const maps = pairs(), n = maps.length * D.scale;
    const img = new ImageData(T, T);
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        const o = 4 * (i * T + j);
        if (j > i) { img.data[o] = 246; img.data[o + 1] = 247; img.data[o + 2] = 249; img.data[o + 3] = 255; continue; }
        let s = 0;
        for (const m of maps) s += m[i][j];
        const a = Math.sqrt(s / n);
        img.data[o] = Math.round(255 - a * (255 - 30));
        img.data[o + 1] = Math.round(255 - a * (255 - 64));
        img.data[o + 2] = Math.round(255 - a * (255 - 175));
        img.data[o + 3] = 255;
      }
    }
    return img;
  }

  const canvas = el("map");
  canvas.width = T; canvas.height = T;
  function drawMap() {
    if (matrix === null) matrix = computeMatrix();
    const ctx = canvas.getContext("2d");
    ctx.putImageData(matrix, 0, 0);
    ctx.fillStyle = "rgba(220, 38, 38, 0.35)";
    ctx.fillRect(0, shown, shown + 1, 1);  // the selected row, up to the diagonal
  }
  canvas.addEventListener("click", (e) => {
    const r = canvas.getBoundingClientRect();
    select(Math.floor((e.clientY - r.top) / r.height * T));
  });

  el("layer").addEventListener("change", (e) => { layer = e.target.value; matrix = null; show(selected); });
  el("head").addEventListener("change", (e) => { head = e.target.value; matrix = null; show(selected); });
  text.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight") { select(selected + 1); e.preventDefault(); }
    if (e.key === "ArrowLeft") { select(selected - 1); e.preventDefault(); }
  });

  const g = T - D.first_generated;
  el("summary").textContent = T + " tokens (" + D.first_generated + " prompt, " + g + " generated)" +
    (D.cut ? ", the last " + T + " of " + (T + D.cut) : "") + "; " + L + " layers \\u00d7 " + H + " heads";
  const st = D.settings, parts = [];
  if (st.temperature !== undefined && st.temperature !== null) {
    parts.push(st.temperature === 0 ? "greedy (temperature 0)" : "temperature " + st.temperature);
  }
  if (st.top_k) parts.push("top-k " + st.top_k);
  if (st.top_p !== undefined && st.top_p !== null && st.top_p < 1) parts.push("top-p " + st.top_p);
  if (st.min_p) parts.push("min-p " + st.min_p);
  el("settings").textContent = parts.length ? "Sampling: " + parts.join(", ") : "";
  show(selected);
})();
</script>
</body>
</html>
"""


def lower_triangle(maps: np.ndarray) -> list[list[list[list[int]]]]:
    """(L, H, T, T) weights -> nested lists [l][h][i] = row i's first i + 1 weights, as round(w * SCALE)."""
    q = np.rint(np.asarray(maps, dtype=np.float64) * SCALE).astype(np.int64)
    T = q.shape[-1]
    return [[[q[l, h, i, :i + 1].tolist() for i in range(T)] for h in range(q.shape[1])] for l in range(q.shape[0])]


def safe_json(obj: Any) -> str:
    """JSON that can sit inside a <script> tag: no "</script>", no "<!--", no markup."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_data(view: Any) -> dict[str, Any]:
    """What the page's script reads (see the module docstring)."""
    L, H = view.maps.shape[:2]
    return {"tokens": view.labels, "texts": view.texts, "ids": view.ids, "first_generated": view.first_generated,
            "n_layer": int(L), "n_head": int(H), "scale": SCALE, "attn": lower_triangle(view.maps),
            "candidates": view.candidates or [None] * len(view.ids), "settings": view.settings, "cut": view.cut}


def attention_page(view: Any) -> str:
    """The whole page for a ``viz.picture.AttentionView``."""
    title = html.escape(view.title or "Attention")
    return PAGE.replace("{{TITLE}}", title).replace("{{DATA}}", safe_json(page_data(view)))
