// seqserve demo page: plain JS, no build step, nothing loaded from elsewhere.
// Every call goes to the server in the "Server" field (the one that served this page by default, or ?api=...)
// and carries the key typed into the key field; the page itself holds no secret.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { base: "", key: "", translator: null, classifier: null };

// The server this page came from: the folder above the page's own (<prefix>/ui/ -> <prefix>), so the
// page works under whatever path prefix a reverse proxy serves seqserve at, not only at the root.
const pageServer = () => new URL("..", location.href).href.replace(/\/+$/, "");

function initialBase() {
  const fromQuery = new URLSearchParams(location.search).get("api");
  return (fromQuery || pageServer()).replace(/\/+$/, "");
}

// A key is remembered for the server it was typed for, never sent to another: a link to this page
// with ?api=<some other server> must not carry the key the tab holds for this one.
const keyStore = (base) => `seqserve.key ${base}`;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// A refused field is marked on its control, which points at the error (WCAG 3.3.1); the API names it.
const FIELD_CONTROLS = {
  translate: { text: "source", beam_size: "beam-size", num_hypotheses: "nbest", max_length: "max-length",
    sampling_topk: "topk", sampling_temperature: "temperature", seed: "seed" },
  sentiment: { text: "sentiment-text" },
};

function markInvalid(panel, err) {
  for (const id of Object.values(FIELD_CONTROLS[panel])) {
    $(id).removeAttribute("aria-invalid");
    $(id).removeAttribute("aria-describedby");
  }
  const field = err instanceof ApiError && err.body && err.body.field ? err.body.field.split(/[.[]/)[0] : "";
  const id = FIELD_CONTROLS[panel][field];
  if (!id) return;
  $(id).setAttribute("aria-invalid", "true");
  $(id).setAttribute("aria-describedby", "error");
}

// Said once by screen readers (a polite status region) when an answer is complete.
function announce(message) {
  $("status").textContent = message;
}

// While a request runs its button is aria-disabled, not disabled: a disabled button loses the
// keyboard focus (to the page body), so a keyboard user would start over from the top.
function busy(button, on) {
  if (on) button.setAttribute("aria-disabled", "true"); else button.removeAttribute("aria-disabled");
}

const isBusy = (button) => button.getAttribute("aria-disabled") === "true";

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(json) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  if (state.key) out["X-API-Key"] = state.key;
  return out;
}

async function api(path, body) {
  const init = body === undefined ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const response = await fetch(state.base + path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function explain(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return `The server at ${state.base} needs an API key: type it into the key field and press Connect.`;
    const field = err.body && err.body.field ? ` (field: ${err.body.field})` : "";
    return `${err.message}${field}`;
  }
  return `Cannot reach ${state.base}: ${err.message}. Is the server running, and does it allow this page's origin (SEQSERVE_CORS_ORIGINS)?`;
}

// ---- served models ----------------------------------------------------------------------
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function keyFigure(metrics) {
  // one headline figure: a test-set one, whole-word (not lower-cased) and from beam search if there is one
  const rank = ([name]) => (name.includes("test") ? 0 : 4) + (name.includes("_lc") ? 2 : 0)
    + (name.includes("greedy") ? 1 : 0);
  const [best] = Object.entries(metrics || {}).sort((a, b) => rank(a) - rank(b));
  if (!best) return "";
  const [name, value] = best;
  return `${name.replace(/_/g, " ").replace(/\bbleu\b/, "BLEU")} ${typeof value === "number" ? +value.toFixed(3) : value}`;
}

function renderModels(models) {
  const box = $("models");
  box.replaceChildren();
  for (const m of models) {
    const card = el("div", "model");
    card.dataset.model = m.name;
    const name = el("div", "name", m.name);
    name.append(el("span", "badge", `v${m.version}`));
    card.append(name);
    // what the model is for and what it was trained on (its card's words): a translator trained on
    // captions says here that other text translates poorly
    if (m.description) card.append(el("div", "about", m.description));
    const provider = m.provider.replace("ExecutionProvider", "");
    card.append(el("div", "facts", `${m.task} · ${provider} · versions ${m.versions.join(", ")}`));
    const figure = keyFigure(m.metrics);
    if (figure) card.append(el("div", "facts", figure));
    box.append(card);
  }
}

function fillBeamSizes(limits) {
  const select = $("beam-size");
  const max = limits.max_beam_size || 1;
  const chosen = Number(select.value) || limits.default_beam_size || 1;
  select.replaceChildren();
  for (let size = 1; size <= max; size++) {
    const option = el("option", "", size === 1 ? "1 (greedy)" : String(size));
    option.value = String(size);
    select.append(option);
  }
  select.value = String(Math.min(chosen, max));
  fillNbest();
  if (limits.max_output_tokens) $("max-length").max = String(limits.max_output_tokens);
}

async function loadModels() {
  showError("");
  for (const [id, path] of [["docs-link", "/docs"], ["metrics-link", "/metrics"]]) $(id).href = state.base + path;
  try {
    const { models } = await api("/v1/models");
    renderModels(models);
    state.translator = models.find((m) => m.task === "translation") || null;
    state.classifier = models.find((m) => m.task === "text-classification") || null;
    if (state.translator) fillBeamSizes(state.translator.limits);
  } catch (err) {
    $("models").replaceChildren(el("p", "muted", "No model list yet."));
    showError(explain(err));
  }
}

// ---- attention heatmap: rows are target subwords, columns source subwords ----------------
function shownPiece(piece) {
  // sentencepiece marks a word's first subword with U+2581; the rest continue the word before
  return piece.startsWith("\u2581") && piece.length > 1 ? piece.slice(1) : piece;
}

function pieceCell(tag, piece, scope, lang) {
  const cell = el(tag);
  cell.scope = scope;
  cell.lang = lang;
  // a subword that continues a word is marked; a word's first one and the end-of-sentence token are not
  const continues = !piece.startsWith("\u2581") && piece !== "</s>";
  const span = el("span", continues ? "cont" : "", shownPiece(piece));
  span.title = piece;
  cell.append(span);
  return cell;
}

const HEATMAP_MAX_CHARS = 600;  // texts this long or shorter ask for the attention
const HEATMAP_MAX_COLUMNS = 150;  // English subwords drawn at most

const heatmap = {
  table: null,
  sources: [],
  targets: [],
  drawn: true,
  start(sourceTokens, withAttention = true) {
    this.table = $("heatmap");
    this.sources = sourceTokens;
    this.targets = [];
    this.drawn = withAttention && sourceTokens.length > 0 && sourceTokens.length <= HEATMAP_MAX_COLUMNS;
    if (sourceTokens.length === 0) {  // no letter or digit: kept as typed, nothing read by the model
      this.table.replaceChildren();
      this.table.dataset.complete = "false";
      $("readout").textContent = "Nothing was translated: the text has no words, and comes back as typed.";
      return;
    }
    if (!this.drawn) {
      this.table.replaceChildren();
      this.table.dataset.complete = "false";
      $("readout").textContent = `No attention map for this text: it is drawn for up to ${HEATMAP_MAX_CHARS} `
        + `characters and ${HEATMAP_MAX_COLUMNS} English subwords (this one has ${sourceTokens.length}), `
        + "and not for very many short sentences.";
      return;
    }
    const caption = el("caption", "visually-hidden", "Attention weights: a row per German subword, a column per "
      + "English subword. The arrow keys move between cells.");
    const head = el("thead");
    const row = el("tr");
    row.append(el("td"));
    sourceTokens.forEach((piece) => row.append(pieceCell("th", piece, "col", "en")));
    head.append(row);
    this.table.replaceChildren(caption, head, el("tbody"));
    this.table.dataset.complete = "false";
    $("readout").textContent = "Hover a cell, or focus it and use the arrow keys: how much a German subword "
      + "looked at each English one.";
  },
  addRow(targetToken, weights) {
    const index = this.targets.length;
    this.targets.push(targetToken);
    if (!this.drawn || !weights) return;
    const row = el("tr", "new");
    row.append(pieceCell("th", targetToken, "row", "de"));
    weights.forEach((weight, col) => {
      const cell = el("td");
      cell.tabIndex = index === 0 && col === 0 ? 0 : -1;  // one Tab stop; the arrow keys move within
      cell.dataset.row = String(index);
      cell.dataset.col = String(col);
      cell.dataset.weight = String(weight);
      cell.style.setProperty("--w", String(Math.max(0, Math.min(1, weight))));
      cell.title = `${shownPiece(targetToken)} ← ${shownPiece(this.sources[col] ?? "?")}: ${weight.toFixed(3)}`;
      row.append(cell);
    });
    const body = this.table.tBodies[0];
    if (body.lastElementChild) body.lastElementChild.classList.remove("new");
    body.append(row);
  },
  hover(cell) {
    for (const hot of this.table.querySelectorAll("th.hot")) hot.classList.remove("hot");
    if (!cell || !cell.dataset.row) return;  // not a weight (the corner)
    const row = Number(cell.dataset.row);
    const col = Number(cell.dataset.col);
    this.table.tHead.rows[0].cells[col + 1].classList.add("hot");
    this.table.tBodies[0].rows[row].cells[0].classList.add("hot");
    const readout = $("readout");
    readout.replaceChildren("German ", el("b", "", shownPiece(this.targets[row])), " ← English ",
      el("b", "", shownPiece(this.sources[col] ?? "?")), `: weight ${Number(cell.dataset.weight).toFixed(4)}`);
  },
  // the grid pattern of the WAI-ARIA Authoring Practices: arrows, Home/End, Ctrl+Home/End
  move(event) {
    const cell = event.target.closest("td");
    if (!cell || !cell.dataset.row) return;
    const rows = this.table.tBodies[0].rows;
    const width = rows[0].cells.length - 1;
    let row = Number(cell.dataset.row);
    let col = Number(cell.dataset.col);
    const moves = { ArrowUp: [row - 1, col], ArrowDown: [row + 1, col], ArrowLeft: [row, col - 1],
      ArrowRight: [row, col + 1], Home: event.ctrlKey ? [0, 0] : [row, 0],
      End: event.ctrlKey ? [rows.length - 1, width - 1] : [row, width - 1] };
    if (!(event.key in moves)) return;
    event.preventDefault();
    [row, col] = moves[event.key];
    const next = rows[Math.max(0, Math.min(rows.length - 1, row))]?.cells[Math.max(0, Math.min(width - 1, col)) + 1];
    if (!next) return;
    cell.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  },
};

function fillNbest() {
  const select = $("nbest");
  const beam = Number($("beam-size").value) || 1;
  const chosen = Number(select.value) || 0;
  select.replaceChildren(el("option", "", "off"));
  select.options[0].value = "";
  for (let n = 2; n <= beam; n++) {
    const option = el("option", "", String(n));
    option.value = String(n);
    select.append(option);
  }
  select.value = chosen && chosen <= beam ? String(chosen) : "";
}

function toggleSampling() {
  const on = $("sampling").checked;
  document.querySelector(".card.translate").classList.toggle("sampling", on);
  const beam = $("beam-size");
  if (on) {
    beam.dataset.before = beam.value;  // given back when sampling is turned off
    beam.value = "1";  // sampling draws one hypothesis
  } else if (beam.dataset.before) {
    beam.value = beam.dataset.before;
  }
  beam.disabled = on;
  fillNbest();
  $("nbest").disabled = on;
}

function showNbest(hypotheses) {
  const list = $("nbest-list");
  list.replaceChildren();
  list.hidden = !hypotheses;
  for (const h of hypotheses || []) {
    const item = el("li", "", h.translation);
    item.append(" ", el("span", "score", `score ${h.score.toFixed(3)}`));
    list.append(item);
  }
}

// ---- translation: streamed (fetch reads the event stream; EventSource cannot POST or send a key) ----
async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function translationRequest() {
  const text = $("source").value;
  // the attention map is a table cell per subword pair: drawn for short texts only (a pasted page of
  // 2,000 characters froze the tab for 16 s, and its matrix alone can be tens of megabytes)
  const body = { text, beam_size: Number($("beam-size").value) || undefined,
    return_attention: text.length <= HEATMAP_MAX_CHARS, stream: true };
  const maxLength = Number($("max-length").value);
  if (maxLength > 0) body.max_length = maxLength;
  if ($("sampling").checked) {
    body.beam_size = 1;
    body.sampling_topk = Number($("topk").value) || undefined;
    body.sampling_temperature = Number($("temperature").value) || undefined;
    if ($("seed").value !== "") body.seed = Number($("seed").value);
  } else if (Number($("nbest").value) > 1) {
    body.num_hypotheses = Number($("nbest").value);
  }
  return body;
}

async function translate(event) {
  event.preventDefault();
  const button = $("translate");
  if (isBusy(button)) return;
  showError("");
  busy(button, true);
  $("translation-out").setAttribute("aria-busy", "true");
  // the previous answer's map is no longer this one's: not complete until this result comes (a
  // reader of data-complete, such as a test, read a stream mid-way when it stayed "true")
  $("heatmap").dataset.complete = "false";
  const started = performance.now();
  let firstAt = null;
  const request = translationRequest();
  const shown = $("translation");
  try {
    const post = () => fetch(`${state.base}/v1/translate`,
      { method: "POST", headers: headers(true), body: JSON.stringify(request) });
    let response = await post();
    if (response.status === 422 && request.return_attention) {
      // a short text of very many sentences: its map would be too large for the server to send
      const problem = await response.clone().json().catch(() => null);
      if (problem && problem.field === "return_attention") {
        request.return_attention = false;
        response = await post();
      }
    }
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    $("translation-out").hidden = false;
    shown.textContent = "";
    showNbest(null);
    shown.classList.add("live");
    $("translation-meta").textContent = "translating…";
    for await (const { event: name, data } of sseEvents(response)) {
      firstAt ??= performance.now();
      if (data.source_tokens) heatmap.start(data.source_tokens, request.return_attention);
      if (name === "delta") {  // greedy: the text grows and the heatmap gains a row per subword
        shown.textContent += data.text;
        heatmap.addRow(data.token, data.attention);
      } else if (name === "hypothesis") {  // beam search: the best beam so far (may still change)
        shown.textContent = data.translation;
      } else if (name === "result") {
        shown.textContent = data.translation;
        if (heatmap.targets.length !== data.target_tokens.length) {  // beam search: the rows come with the result
          heatmap.start(data.source_tokens, request.return_attention);
          data.target_tokens.forEach((piece, i) => heatmap.addRow(piece, data.attention ? data.attention[i] : null));
        }
        showNbest(data.hypotheses);
        const ms = (t) => Math.round(t - started);
        const how = data.seed !== undefined ? `sampled, seed ${data.seed}` : `beam ${request.beam_size}`;
        // a translation that reached max_length may end mid-sentence: said, not left to look finished
        const cut = data.finish_reason === "length" ? "cut at the length limit · " : "";
        $("translation-meta").textContent = `${cut}score ${data.score.toFixed(3)} · ${data.target_tokens.length} subwords · `
          + `${how} · first event ${ms(firstAt)} ms · whole ${ms(performance.now())} ms · `
          + `${data.model} v${data.version}`;
        $("heatmap").dataset.complete = "true";
        announce(`German: ${data.translation}`);
      } else if (name === "error") {
        throw new ApiError(200, data);
      }
    }
    markInvalid("translate", null);
  } catch (err) {
    // no earlier text's translation left beside this one's error, as if it were its answer
    $("translation-out").hidden = true;
    showError(`Translation: ${explain(err)}`);
    markInvalid("translate", err);
  } finally {
    shown.classList.remove("live");
    $("translation-out").removeAttribute("aria-busy");
    busy(button, false);
  }
}

// ---- sentiment --------------------------------------------------------------------------
async function classify(event) {
  event.preventDefault();
  const button = $("classify");
  if (isBusy(button)) return;
  showError("");
  busy(button, true);
  const started = performance.now();
  try {
    const result = await api("/v1/sentiment", { text: $("sentiment-text").value });
    $("sentiment-out").hidden = false;
    const chip = $("sentiment-label");
    chip.textContent = `${result.label} · ${(100 * result.score).toFixed(1)}%`;
    chip.className = `label-chip ${result.label}`;
    const bars = $("probabilities");
    bars.replaceChildren();
    for (const [label, p] of Object.entries(result.probabilities)) {
      const bar = el("div", `bar ${label}`);
      bar.dataset.label = label;
      bar.dataset.probability = String(p);
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      track.append(fill);
      bar.append(el("span", "", label), track, el("span", "value", `${(100 * p).toFixed(1)}%`));
      bars.append(bar);
    }
    // a text over the model's subword limit is scored sentence by sentence: say so beside the figures
    const pieces = result.sentences ? ` · the mean of ${result.sentences} sentences` : "";
    $("sentiment-meta").textContent =
      `${Math.round(performance.now() - started)} ms · ${result.model} v${result.version}${pieces}`;
    announce(`Sentiment: ${result.label}, ${(100 * result.score).toFixed(1)}%`);
    markInvalid("sentiment", null);
  } catch (err) {
    $("sentiment-out").hidden = true;
    showError(`Sentiment: ${explain(err)}`);
    markInvalid("sentiment", err);
  } finally {
    busy(button, false);
  }
}

// ---- wiring -----------------------------------------------------------------------------
// An address the page will send requests (and a typed key) to: http or https only (a javascript:
// URL would end up in the footer's links).
function serverAddress(text) {
  try {
    const url = new URL(text);
    return ["http:", "https:"].includes(url.protocol) ? url.href.replace(/\/+$/, "") : null;
  } catch {
    return null;
  }
}

function connect(event) {
  if (event) event.preventDefault();
  const base = serverAddress($("api-base").value.trim() || pageServer());
  if (!base) {
    showError("The server address must be an http:// or https:// URL.");
    return Promise.resolve();
  }
  state.base = base;
  state.key = $("api-key").value.trim();
  // another server is kept in the address (?api=), so a reload or a shared link keeps it
  const url = new URL(location.href);
  if (state.base === pageServer()) url.searchParams.delete("api"); else url.searchParams.set("api", state.base);
  history.replaceState(null, "", url);
  sessionStorage.setItem(keyStore(state.base), state.key);
  return loadModels();
}

document.addEventListener("DOMContentLoaded", () => {
  const base = initialBase();
  $("api-base").value = base;
  $("api-key").value = sessionStorage.getItem(keyStore(base)) || "";
  $("connection").addEventListener("submit", connect);
  $("translate-form").addEventListener("submit", translate);
  $("beam-size").addEventListener("change", fillNbest);
  $("sampling").addEventListener("change", toggleSampling);
  $("sentiment-form").addEventListener("submit", classify);
  // A link may point the page at another server (?api=): it is not called, nor a key typed for it,
  // until the user has seen its address and pressed Connect (a crafted link would otherwise have the
  // page ask for the key on behalf of a stranger's server, as the page's own message)
  $("heatmap").addEventListener("mouseover", (e) => heatmap.hover(e.target.closest("td")));
  $("heatmap").addEventListener("mouseleave", () => heatmap.hover(null));
  $("heatmap").addEventListener("focusin", (e) => heatmap.hover(e.target.closest("td")));
  $("heatmap").addEventListener("keydown", (e) => heatmap.move(e));
  for (const id of ["source", "sentiment-text"]) {  // Enter is a new line; Ctrl+Enter (Cmd+Enter) sends
    $(id).addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); e.target.form.requestSubmit(); }
    });
  }
  if (base === pageServer()) {
    connect();
  } else {
    const notice = el("p", "notice", "This link points the page at another server, ");
    notice.append(el("b", "", base), ". Press Connect to use it: requests, and any key you type, go there.");
    $("models").replaceChildren(notice);
  }
});
