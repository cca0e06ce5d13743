// The search page's script: calls embedkit's search API from the browser and draws the answers with DOM
// methods only (result text is always set as text, never parsed as HTML).
"use strict";

const KEY_ITEM = "embedkit-api-key";
const DEBOUNCE_MS = 250;
const SIDE_K = 5; // documents in the "more like this" and "recommended" lists

const $ = (id) => document.getElementById(id);
const keyed = document.body.dataset.keyed === "yes";
const stopwords = new Set((document.body.dataset.stopwords || "").split(" "));

const state = {
  seq: 0,            // the latest search; older answers are dropped
  results: [],
  active: -1,        // the result the arrow keys are on
  examples: new Map(), // document key -> "good" | "bad"
  recSeq: 0,
  pendingKey: null,  // what to run once a key is given
  inflight: 0,       // API calls not answered yet
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- API calls ----

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY_ITEM);
  if (key) headers.Authorization = "Bearer " + key;
  let response;
  let data = null;
  state.inflight++;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    data = await response.json();
  } catch (e) {
    if (!response) {
      throw new ApiError(0, "The server cannot be reached (" + e.message + "). Is embedkit serve still running?");
    }
  } finally {
    state.inflight--;
  }
  if (!response.ok) {
    const message = data && data.error && data.error.message ? data.error.message : "HTTP " + response.status;
    throw new ApiError(response.status, message);
  }
  return data;
}

// Runs `work`; a 401 asks for the key (again) and runs it once the key is given; other errors are shown.
async function withKey(work) {
  try {
    return await work();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      const had = sessionStorage.getItem(KEY_ITEM);
      sessionStorage.removeItem(KEY_ITEM);
      askKey(had ? "The server refused the key: " + e.message + ". Type it again." : e.message, work);
      return undefined;
    }
    showError(e);
    return undefined;
  }
}

function askKey(message, then) {
  state.pendingKey = then;
  $("key-message").textContent = message;
  $("key-input").value = "";
  const dialog = $("key-dialog");
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
}

function showError(e) {
  const box = $("error");
  box.replaceChildren();
  if (!e) return;
  const p = document.createElement("p");
  p.className = "error-text";
  p.textContent = e.message || String(e);
  box.append(p);
}

// ---- highlighting ----

function queryTerms(query) {
  const words = new Set((query.toLowerCase().match(/[\p{L}\p{N}_]+/gu) || []).filter(
    (w) => w.length > 1 && !stopwords.has(w)));
  return [...words].sort((a, b) => b.length - a.length || (a < b ? -1 : 1));
}

// `text` as text nodes, with the query's words in <mark> (also with up to 3 more letters: "file" marks "files").
function highlighted(text, query) {
  const frag = document.createDocumentFragment();
  const terms = queryTerms(query);
  if (!terms.length) {
    frag.append(document.createTextNode(text));
    return frag;
  }
  const escaped = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const re = new RegExp("(?<![\\p{L}\\p{N}_])(?:" + escaped.join("|") + ")[\\p{L}\\p{N}_]{0,3}(?![\\p{L}\\p{N}_])", "giu");
  let last = 0;
  for (const m of text.matchAll(re)) {
    frag.append(document.createTextNode(text.slice(last, m.index)));
    const mark = document.createElement("mark");
    mark.textContent = m[0];
    frag.append(mark);
    last = m.index + m[0].length;
  }
  frag.append(document.createTextNode(text.slice(last)));
  return frag;
}

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  node.append(...children);
  return node;
}

// ---- the form ----

function formValues() {
  return {
    q: $("q").value,
    collection: $("collection").value || "default",
    hybrid: $("hybrid").checked,
    path: $("path").value.trim(),
    meta: $("meta").value.split(",").map((s) => s.trim()).filter(Boolean),
    k: Math.min(100, Math.max(1, parseInt($("k").value, 10) || 10)),
  };
}

function docHref(collection, key, chunkId, query) {
  const params = new URLSearchParams({ collection, key });
  if (chunkId !== undefined && chunkId !== null) params.set("chunk", chunkId);
  if (query) params.set("q", query);
  return "/doc?" + params.toString() + (chunkId !== undefined && chunkId !== null ? "#chunk-" + chunkId : "");
}

function rememberInAddress(v) {
  const params = new URLSearchParams({ q: v.q, collection: v.collection });
  if (v.hybrid) params.set("hybrid", "on");
  if (v.path) params.set("path", v.path);
  if (v.meta.length) params.set("meta", v.meta.join(", "));
  if (v.k !== 10) params.set("k", v.k);
  history.replaceState(null, "", v.q.trim() ? "/search?" + params.toString() : "/");
}

// ---- collections ----

async function loadCollections() {
  let data;
  for (let tries = 0; ; tries++) {
    try {
      data = await api("GET", "/v1/collections");
      break;
    } catch (e) {
      // 503 while the server's models load: say so and try again
      if (!(e instanceof ApiError && e.status === 503 && tries < 300)) throw e;
      $("status").textContent = e.message;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  $("status").textContent = "";
  const select = $("collection");
  const current = select.value;
  select.replaceChildren();
  for (const c of data.collections) {
    const label = c.searchable ? c.name : c.name + " (built with another model)";
    const opt = el("option", { value: c.name, textContent: label, disabled: !c.searchable });
    select.append(opt);
  }
  const names = data.collections.filter((c) => c.searchable).map((c) => c.name);
  if (!names.length) {
    showError(new Error("No collection here was built with this server's embedding model: index some files first "
      + "(embedkit index FOLDER)."));
    return;
  }
  select.value = names.includes(current) ? current : names.includes("default") ? "default" : names[0];
}

// ---- search ----

async function runSearch() {
  const v = formValues();
  const seq = ++state.seq;
  rememberInAddress(v);
  if (!v.q.trim()) {
    drawResults([], v, seq);
    $("status").textContent = "";
    return;
  }
  $("status").textContent = "Searching…";
  const body = { query: v.q, collection: v.collection, k: v.k, hybrid: v.hybrid };
  if (v.path) body.path = v.path;
  if (v.meta.length) body.meta = v.meta;
  await withKey(async () => {
    let data;
    try {
      data = await api("POST", "/v1/search", body);
    } catch (e) {
      if (seq === state.seq) $("status").textContent = "";
      throw e;
    }
    if (seq !== state.seq) return;
    showError(null);
    drawResults(data.results, v, seq);
  });
}

function drawResults(results, v, seq) {
  if (seq !== state.seq) return;
  state.results = results;
  state.active = -1;
  const list = $("results");
  list.replaceChildren();
  results.forEach((r, i) => {
    const link = el("a", { className: "doc-link", href: docHref(v.collection, r.path, r.chunk_id, v.q) }, r.path);
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      openDocument(i);
    });
    const head = el("div", { className: "result-head" }, link,
      el("span", { className: "score" }, "score " + r.score.toFixed(3)),
      el("span", { className: "where" }, "chunk " + (r.ordinal + 1)));
    const more = el("button", { type: "button", className: "secondary more-like" }, "More like this");
    more.setAttribute("aria-label", "More like this: " + r.path);
    more.addEventListener("click", () => moreLikeThis(r.path));
    const good = exampleButton(r.path, "good", "Good match");
    const bad = exampleButton(r.path, "bad", "Bad match");
    const item = el("li", { className: "result", tabIndex: -1 }, head,
      el("p", { className: "snippet" }, highlighted(r.text, v.q)),
      el("div", { className: "actions" }, more, good, bad));
    item.dataset.index = i;
    item.dataset.path = r.path;
    item.dataset.chunk = r.chunk_id;
    item.setAttribute("aria-label", (i + 1) + ". " + r.path);
    list.append(item);
  });
  const n = results.length;
  if (v.q.trim()) {
    $("status").textContent = n + (n === 1 ? " result" : " results") + " for “" + v.q + "”"
      + (v.hybrid ? " (hybrid)" : "") + (n ? " · ↑↓ to move, Enter to open" : "");
  }
}

function exampleButton(path, kind, label) {
  const b = el("button", { type: "button", className: "secondary thumb " + kind }, label);
  b.dataset.path = path;
  b.dataset.kind = kind;
  b.setAttribute("aria-pressed", String(state.examples.get(path) === kind));
  b.setAttribute("aria-label", label + ": " + path);
  b.addEventListener("click", () => toggleExample(path, kind));
  return b;
}

// ---- more like this ----

async function moreLikeThis(path) {
  const v = formValues();
  $("side").hidden = false;
  const section = $("similar-section");
  section.hidden = false;
  $("similar-target").textContent = path;
  const list = $("similar");
  list.replaceChildren(el("li", {}, "Looking…"));
  await withKey(async () => {
    const body = { collection: v.collection, target: { document: path }, k: SIDE_K };
    const data = await api("POST", "/v1/similar", body);
    drawDocList(list, data.results, v.collection);
    showError(null);
  });
}

function drawDocList(list, results, collection) {
  list.replaceChildren();
  for (const r of results) {
    const link = el("a", { href: docHref(collection, r.path) }, r.path);
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      openDocumentByKey(collection, r.path, null, "");
    });
    const item = el("li", {}, link, " ", el("span", { className: "score" }, r.score.toFixed(3)));
    item.dataset.path = r.path;
    list.append(item);
  }
  if (!results.length) list.append(el("li", {}, "No other documents."));
}

// ---- good / bad examples and recommendations ----

function toggleExample(path, kind) {
  if (state.examples.get(path) === kind) state.examples.delete(path);
  else state.examples.set(path, kind);
  syncExampleButtons();
  recommend();
}

function syncExampleButtons() {
  for (const b of document.querySelectorAll("button.thumb")) {
    b.setAttribute("aria-pressed", String(state.examples.get(b.dataset.path) === b.dataset.kind));
  }
  const chips = $("examples");
  chips.replaceChildren();
  for (const [path, kind] of state.examples) {
    const remove = el("button", { type: "button" }, "×");
    remove.setAttribute("aria-label", "Remove example " + path);
    remove.addEventListener("click", () => {
      state.examples.delete(path);
      syncExampleButtons();
      recommend();
    });
    const chip = el("li", { className: kind }, (kind === "good" ? "+ " : "− ") + path, remove);
    chip.dataset.path = path;
    chips.append(chip);
  }
}

async function recommend() {
  const v = formValues();
  $("side").hidden = false;
  const positive = [...state.examples].filter(([, k]) => k === "good").map(([p]) => ({ document: p }));
  const negative = [...state.examples].filter(([, k]) => k === "bad").map(([p]) => ({ document: p }));
  const list = $("recommended");
  const seq = ++state.recSeq;
  if (!positive.length) {
    list.replaceChildren();
    $("rec-hint").textContent = state.examples.size
      ? "Mark at least one result as a good match to get recommendations."
      : "Mark results as good or bad matches: documents like the good ones and unlike the bad ones appear here.";
    return;
  }
  $("rec-hint").textContent = "Documents like the good examples" + (negative.length ? " and unlike the bad ones:" : ":");
  await withKey(async () => {
    const data = await api("POST", "/v1/recommend", { collection: v.collection, positive, negative, k: SIDE_K });
    if (seq !== state.recSeq) return;
    drawDocList(list, data.results, v.collection);
    list.dataset.done = String(seq);
    showError(null);
  });
}

// ---- one document ----

function openDocument(i) {
  const r = state.results[i];
  if (!r) return;
  state.active = i;
  openDocumentByKey(formValues().collection, r.path, r.chunk_id, formValues().q);
}

async function openDocumentByKey(collection, key, chunkId, query) {
  await withKey(async () => {
    const params = new URLSearchParams({ key });
    const data = await api("GET", "/v1/collections/" + encodeURIComponent(collection) + "/documents?" + params);
    $("doc-title").textContent = data.document.path;
    const body = $("doc-body");
    body.replaceChildren();
    let hit = null;
    for (const c of data.chunks) {
      const isHit = c.chunk_id === chunkId;
      const article = el("article", { className: "chunk" + (isHit ? " hit" : ""), id: "doc-chunk-" + c.chunk_id },
        el("h3", {}, "Chunk " + (c.ordinal + 1) + (isHit ? " (the hit)" : "")),
        el("p", { className: "chunk-text" }, highlighted(c.text, query)));
      body.append(article);
      if (isHit) hit = article;
    }
    const dialog = $("doc-dialog");
    if (!dialog.open) dialog.showModal();
    if (hit) hit.scrollIntoView({ block: "center" });
    else body.scrollTop = 0;
    $("doc-close").focus();
  });
}

// ---- keyboard ----

function focusResult(i) {
  const items = $("results").children;
  if (!items.length) return;
  i = Math.max(0, Math.min(items.length - 1, i));
  state.active = i;
  items[i].focus();
}

function onKey(ev) {
  if (ev.defaultPrevented || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  if (document.querySelector("dialog[open]")) return;
  const target = ev.target;
  const typing = target.matches && target.matches("input, select, textarea");
  if (ev.key === "/" && !typing) {
    ev.preventDefault();
    $("q").focus();
    $("q").select();
    return;
  }
  const inResult = target.classList && target.classList.contains("result");
  if (ev.key === "ArrowDown" && (target === $("q") || inResult)) {
    ev.preventDefault();
    focusResult(inResult ? Number(target.dataset.index) + 1 : 0);
  } else if (ev.key === "ArrowUp" && inResult) {
    ev.preventDefault();
    const i = Number(target.dataset.index);
    if (i === 0) $("q").focus();
    else focusResult(i - 1);
  } else if (ev.key === "Enter" && inResult) {
    ev.preventDefault();
    openDocument(Number(target.dataset.index));
  }
}

// ---- start ----

let timer = null;

// True when no search is waiting for its debounce and no API call is unanswered (the browser tests wait on it).
window.embedkitIdle = () => timer === null && state.inflight === 0;

function debounced() {
  clearTimeout(timer);
  timer = setTimeout(() => {
    timer = null;
    runSearch();
  }, DEBOUNCE_MS);
}

function start() {
  $("side").hidden = false;
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    timer = null;
    runSearch();
  });
  for (const id of ["q", "path", "meta", "k"]) $(id).addEventListener("input", debounced);
  for (const id of ["hybrid", "collection"]) $(id).addEventListener("change", () => runSearch());
  $("collection").addEventListener("change", () => {
    state.examples.clear();
    syncExampleButtons();
    recommend();
    $("similar-section").hidden = true;
  });
  document.addEventListener("keydown", onKey);
  const docDialog = $("doc-dialog");
  $("doc-close").addEventListener("click", () => docDialog.close());
  docDialog.addEventListener("close", () => {
    const items = $("results").children;
    if (state.active >= 0 && items[state.active]) items[state.active].focus();
  });
  $("key-form").addEventListener("submit", () => {
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_ITEM, key);
    const then = state.pendingKey;
    state.pendingKey = null;
    if (then) withKey(then);
  });
  $("key-dialog").addEventListener("cancel", (ev) => ev.preventDefault());

  const first = async () => {
    await loadCollections();
    document.body.dataset.ready = "yes";
    if (!$("server-doc") && $("q").value.trim()) await runSearch();
  };
  if (keyed && !sessionStorage.getItem(KEY_ITEM)) {
    askKey("This server needs an API key. It is kept for this tab only.", first);
  } else {
    withKey(first);
  }
}

start();
