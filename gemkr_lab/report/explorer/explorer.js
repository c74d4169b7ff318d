// Clue explorer: filters and pages through window.GEMKR_EXPLORER (data.js) and the runs it loads (runs/<i>.js).
// Only one page of queries is in the document at a time, so thousands of queries stay responsive.
"use strict";

const D = window.GEMKR_EXPLORER;
const loaded = {}; // run index -> {cell, seed, queries, passages}
const passages = Object.assign({}, D.passages);
const $ = (id) => document.getElementById(id);
const state = { page: 0, shown: [] };

// runs/<i>.js calls this when the page includes it
window.gemkrExplorerRun = function (i, data) {
  loaded[i] = data;
  Object.assign(passages, data.passages);
};

function loadRun(i) {
  if (loaded[i]) return Promise.resolve(loaded[i]);
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = D.runs[i].file;
    s.onload = () => resolve(loaded[i]);
    s.onerror = () => reject(new Error("could not load " + D.runs[i].file));
    document.head.appendChild(s);
  });
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function option(select, value, label, selected) {
  select.append(el("option", { value: value, selected: selected ? "selected" : null, text: label }));
}

// ---- runs of the chosen seed -------------------------------------------------------------------------------

function seed() { return Number($("seed").value); }
function k() { return Number($("k").value); }

function runOf(cell) {
  const i = D.runs.findIndex((r) => r.cell === cell && r.seed === seed());
  return i < 0 ? null : loaded[i] || null;
}

function hitAt(run, qid, kk) {
  const q = run && run.queries[qid];
  if (!q) return null;
  return q.h.slice(0, kk).some((x) => x === 1);
}

// ---- filters -----------------------------------------------------------------------------------------------

const searchText = {}; // seed -> qid -> lower-cased text searched
function haystack(q) {
  const cache = (searchText[seed()] = searchText[seed()] || {});
  if (!(q.qid in cache)) {
    const parts = [q.qid, q.question, q.caption, ...q.answers, ...q.gold];
    for (const cell of D.cells) {
      const r = runOf(cell);
      const rq = r && r.queries[q.qid];
      if (rq) for (const c of rq.c) parts.push(c[0]);
    }
    cache[q.qid] = parts.join("\n").toLowerCase();
  }
  return cache[q.qid];
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function filtered() {
  const a = runOf($("cell-a").value), b = runOf($("cell-b").value);
  const compare = $("compare").value, hit = $("hit").value, uniq = $("uniq").value, kk = k();
  const lo = number("len-min"), hi = number("len-max");
  const term = $("search").value.trim().toLowerCase();
  return D.queries.filter((q) => {
    const ha = hitAt(a, q.qid, kk), hb = hitAt(b, q.qid, kk);
    if (compare === "a-not-b" && !(ha === true && hb === false)) return false;
    if (compare === "b-not-a" && !(hb === true && ha === false)) return false;
    if (compare === "both" && !(ha === true && hb === true)) return false;
    if (compare === "neither" && !(ha === false && hb === false)) return false;
    if (hit === "hit" && ha !== true) return false;
    if (hit === "miss" && ha !== false) return false;
    if (lo !== null || hi !== null || uniq !== "any") {
      const top = a && a.queries[q.qid] && a.queries[q.qid].c[0];
      if (!top) return false;
      if (lo !== null && top[1] < lo) return false;
      if (hi !== null && top[1] > hi) return false;
      if (uniq === "unique" && top[3] !== 1) return false;
      if (uniq === "ambiguous" && !(top[3] > 1)) return false;
      if (uniq === "absent" && top[3] !== 0) return false;
    }
    if (term && !haystack(q).includes(term)) return false;
    return true;
  });
}

// ---- summary panel -----------------------------------------------------------------------------------------

function summarize(run, queries, kk) {
  const lengths = {}, byObjects = {};
  let clues = 0, unique = 0, duplicates = 0, n = 0, hits = 0;
  for (const q of queries) {
    const rq = run.queries[q.qid];
    if (!rq) continue;
    for (const c of rq.c) {
      clues += 1;
      lengths[c[1]] = (lengths[c[1]] || 0) + 1;
      if (c[3] === 1) unique += 1;
      if (c[7] === 1) duplicates += 1; // the same tokens as an earlier clue of this query
    }
    const h = hitAt(run, q.qid, kk) ? 1 : 0;
    const cell = (byObjects[q.n_objects] = byObjects[q.n_objects] || [0, 0]);
    cell[0] += h; cell[1] += 1;
    n += 1; hits += h;
  }
  return { queries: n, hits, clues, lengths, unique, duplicates, byObjects };
}

function pct(x, n) { return n ? (100 * x / n).toFixed(1) + "%" : "–"; }

function renderSummary(queries) {
  const box = $("summary");
  box.replaceChildren();
  const kk = k();
  const cells = D.cells.filter((c) => runOf(c));
  const table = el("table", { class: "summary-table" });
  const head = el("tr", {}, el("th", { text: `over the ${queries.length} queries shown` }));
  for (const c of cells) head.append(el("th", { class: cellClass(c), text: c }));
  table.append(head);
  const sums = Object.fromEntries(cells.map((c) => [c, summarize(runOf(c), queries, kk)]));
  const rows = [
    ["R@" + kk, "queries right at k", (s) => `${pct(s.hits, s.queries)} (${s.hits}/${s.queries})`],
    ["unique", "clues found exactly once in the KB", (s) => `${pct(s.unique, s.clues)} of ${s.clues} clues`],
    ["duplicates", "clues repeating an earlier clue of the same query (beam groups ending alike)",
      (s) => `${pct(s.duplicates, s.clues)} (${s.duplicates})`],
    ["lengths", "clue length in tokens: clues", lengthBars],
    ["objects", "right at k by object count of the image", objectTable],
  ];
  for (const [stat, label, render] of rows) {
    const tr = el("tr", {}, el("th", { text: label }));
    for (const c of cells) {
      const value = render(sums[c]);
      tr.append(el("td", { "data-cell": c, "data-stat": stat }, value));
    }
    table.append(tr);
  }
  box.append(table);
}

function lengthBars(s) {
  const keys = Object.keys(s.lengths).map(Number).sort((x, y) => x - y);
  const max = Math.max(1, ...keys.map((x) => s.lengths[x]));
  const wrap = el("div", { class: "bars" });
  for (const key of keys) {
    const bar = el("span", { class: "bar", title: `${key} tokens: ${s.lengths[key]} clues` });
    bar.style.height = Math.max(2, Math.round(40 * s.lengths[key] / max)) + "px";
    wrap.append(el("span", { class: "bar-col" }, bar, el("span", { class: "bar-label", text: String(key) })));
  }
  return wrap;
}

function objectTable(s) {
  const parts = Object.keys(s.byObjects).map(Number).sort((x, y) => x - y)
    .map((n) => `${n}: ${s.byObjects[n][0]}/${s.byObjects[n][1]}`);
  return parts.join(", ") || "–";
}

// ---- one query ---------------------------------------------------------------------------------------------

function cellClass(c) {
  return c === $("cell-a").value ? "cell-a" : c === $("cell-b").value ? "cell-b" : "";
}

function highlight(text, answers) {
  const frag = document.createDocumentFragment();
  const lower = D.match === "lower";
  const hay = lower ? text.toLowerCase() : text;
  const spans = [];
  for (const a of answers) {
    if (!a) continue; // an empty answer matches everywhere: nothing to mark
    const needle = lower ? a.toLowerCase() : a;
    for (let i = hay.indexOf(needle); i >= 0; i = hay.indexOf(needle, i + 1)) spans.push([i, i + needle.length]);
  }
  spans.sort((x, y) => x[0] - y[0]);
  let at = 0;
  for (const [s, e] of spans) {
    if (e <= at) continue;
    const start = Math.max(s, at);
    frag.append(text.slice(at, start), el("mark", { text: text.slice(start, e) }));
    at = e;
  }
  frag.append(text.slice(at));
  return frag;
}

function snippet(text, answers) {
  const lower = D.match === "lower";
  const hay = lower ? text.toLowerCase() : text;
  let first = -1;
  for (const a of answers) {
    if (!a) continue;
    const i = hay.indexOf(lower ? a.toLowerCase() : a);
    if (i >= 0 && (first < 0 || i < first)) first = i;
  }
  const start = first < 0 ? 0 : Math.max(0, first - 120);
  const end = Math.min(text.length, start + 280);
  return (start > 0 ? "… " : "") + text.slice(start, end) + (end < text.length ? " …" : "");
}

function passage(id, q, relevant, rank) {
  const text = passages[id];
  const li = el("li", { class: relevant ? "relevant" : "", "data-doc": id });
  const label = el("span", { class: "doc-id", text: (rank ? rank + ". " : "") + "[" + id + "]" + (relevant ? " ✓" : "") });
  if (text === undefined) {
    li.append(label, " (text not in the corpus)");
    return li;
  }
  const full = el("div", { class: "full" });
  const details = el("details", {}, el("summary", {}, label, " ", highlight(snippet(text, q.answers), q.answers)), full);
  // the whole text only when opened: a page holds hundreds of passages
  details.addEventListener("toggle", () => {
    if (details.open && !full.firstChild) full.append(highlight(text, q.answers));
  });
  li.append(details);
  return li;
}

function imageBlock(q) {
  const side = el("div", { class: "q-side" });
  if (q.image && q.image.src) {
    const wrap = el("div", { class: "img-wrap" });
    wrap.append(el("img", { src: q.image.src, alt: "image of " + q.qid, loading: "lazy" }));
    const [w, h] = q.image.size;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("preserveAspectRatio", "none");
    q.objects.forEach((o, i) => {
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const [x0, y0, x1, y1] = o.box;
      r.setAttribute("x", x0); r.setAttribute("y", y0);
      r.setAttribute("width", x1 - x0); r.setAttribute("height", y1 - y0);
      r.setAttribute("class", "box box-" + (i % 6));
      const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
      t.textContent = `${i}: ${o.label} (${o.score.toFixed(2)})`;
      r.append(t);
      svg.append(r);
    });
    wrap.append(svg);
    side.append(wrap);
  } else {
    side.append(el("div", { class: "no-image", text: "no image" }));
  }
  const crops = el("div", { class: "crops" });
  (q.image ? q.image.crops : []).forEach((src, i) => {
    const o = q.objects[i];
    crops.append(el("figure", { class: "box-" + (i % 6) }, el("img", { src: src, alt: o.label, loading: "lazy" }),
      el("figcaption", { text: `${i} ${o.label}` })));
  });
  side.append(crops, el("p", { class: "n-objects", text: `${q.n_objects} object${q.n_objects === 1 ? "" : "s"}` }));
  return side;
}

function cellBlock(cell, q) {
  const run = runOf(cell);
  const meta = D.runs.find((r) => r.cell === cell && r.seed === seed());
  const section = el("section", { class: "cell " + cellClass(cell), "data-cell": cell });
  const rq = run && run.queries[q.qid];
  if (!rq) {
    section.append(el("h4", { text: cell }), el("p", { class: "muted", text: run ? "no record" : "no complete run" }));
    return section;
  }
  const right = hitAt(run, q.qid, k());
  section.append(el("h4", {}, cell + " ", el("span", { class: "badge " + (right ? "right" : "wrong"),
    text: (right ? "right" : "wrong") + " at " + k() })), el("p", { class: "sees", text: "sees: " + meta.sees }));
  const clues = el("table", { class: "clues" },
    el("tr", {}, ...["#", "clue", "tok", "score", "KB count", "docs", "hit"].map((h) => el("th", { text: h }))));
  rq.c.forEach((c, i) => {
    const [text, ntok, score, count, docs, hit, eos, dup] = c;
    clues.append(el("tr", { class: (hit ? "hit" : "") + (dup ? " dup" : ""), title: dup ? "repeats an earlier clue" : null },
      el("td", { text: String(i + 1) }),
      el("td", { class: "clue-text" }, el("code", { text: JSON.stringify(text) }), eos ? el("small", { text: " EOS" }) : null),
      el("td", { text: String(ntok) }), el("td", { text: score.toFixed(3) }),
      el("td", { class: count === 1 ? "unique" : "", text: String(count) }),
      el("td", { text: docs.join(" ") }), el("td", { text: hit ? "✓" : "✗" })));
  });
  const ranked = el("ol", { class: "ranked" });
  rq.r.forEach((id, i) => ranked.append(passage(id, q, rq.h[i] === 1, i + 1)));
  if (!rq.r.length) ranked.append(el("li", { class: "muted", text: "none: no clue retrieved a passage" }));
  section.append(clues, el("h5", { text: "ranked passages" }), ranked);
  return section;
}

function queryBlock(q) {
  const art = el("article", { class: "query", "data-qid": q.qid });
  const main = el("div", { class: "q-main" });
  main.append(el("h3", { text: q.qid }),
    el("p", { class: "question", text: q.question }),
    q.caption ? el("p", { class: "caption", text: "caption: " + q.caption }) : null,
    el("p", { class: "answers" }, "answers: ", ...q.answers.map((a) => el("span", { class: "chip", text: a === "" ? "(empty)" : a }))));
  if (q.gold.length) {
    const gold = el("ul", { class: "gold" });
    for (const id of q.gold.slice(0, 5)) gold.append(passage(id, q, true, null));
    if (q.gold.length > 5) gold.append(el("li", { text: `… and ${q.gold.length - 5} more: ${q.gold.slice(5).join(" ")}` }));
    main.append(el("h5", { text: "gold passages" }), gold);
  }
  const cells = el("div", { class: "cells" });
  cells.style.gridTemplateColumns = `repeat(${D.cells.length}, minmax(300px, 1fr))`;
  for (const c of D.cells) cells.append(cellBlock(c, q));
  art.append(imageBlock(q), main, cells);
  return art;
}

// ---- page --------------------------------------------------------------------------------------------------

function render() {
  const size = Number($("page-size").value);
  const pages = Math.max(1, Math.ceil(state.shown.length / size));
  state.page = Math.min(state.page, pages - 1);
  const slice = state.shown.slice(state.page * size, (state.page + 1) * size);
  $("results").replaceChildren(...slice.map(queryBlock));
  $("page-info").textContent = `page ${state.page + 1} of ${pages}`;
  $("count").textContent = `${state.shown.length} of ${D.queries.length} queries`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
  document.body.dataset.ready = "true";
}

function refresh() {
  state.shown = filtered();
  state.page = 0;
  renderSummary(state.shown);
  render();
}

async function showSeed() {
  document.body.dataset.ready = "false";
  const wanted = D.runs.map((r, i) => [r, i]).filter(([r]) => r.seed === seed());
  await Promise.all(wanted.map(([, i]) => loadRun(i)));
  refresh();
}

function init() {
  $("sweep-name").textContent = "· " + D.sweep;
  for (const n of D.notes) $("notes").append(el("li", { text: n }));
  const seeds = D.seeds.filter((s) => D.runs.some((r) => r.seed === s));
  seeds.forEach((s, i) => option($("seed"), s, String(s), i === 0));
  const other = D.cells.find((c) => c !== D.reference) || D.reference;
  for (const c of D.cells) {
    option($("cell-a"), c, c, c === D.reference);
    option($("cell-b"), c, c, c === other);
  }
  for (const kk of D.ks) option($("k"), kk, String(kk), kk === 5);
  $("seed").addEventListener("change", showSeed);
  for (const id of ["cell-a", "cell-b", "compare", "k", "hit", "uniq", "len-min", "len-max"]) {
    $(id).addEventListener("change", refresh);
  }
  let timer = null;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 150); });
  $("page-size").addEventListener("change", () => { state.page = 0; render(); });
  $("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, 0); });
  $("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, 0); });
  showSeed().catch((e) => { $("results").replaceChildren(el("p", { class: "error", text: String(e) })); });
}

init();
