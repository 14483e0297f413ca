// The gateway's live inspector (/debug): lists from GET requests, one request's events over SSE.
// Vanilla JS, no build step, nothing from the network but this gateway. Text goes in with
// textContent only: prompts and model output are data, never markup.
"use strict";

const BASE = location.pathname; // "/debug/" (also behind a proxy's path prefix)
const POLL_MS = 1000;
const MAX_EVENT_ROWS = 2000;
const TEXT_DELTAS = new Set(["response.output_text.delta", "response.refusal.delta",
  "response.function_call_arguments.delta", "response.custom_tool_call_input.delta"]);
let selected = null; // {id, source}

const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text == null ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

const ms = (v) => (v == null ? null : v < 10000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`);
const shortId = (r) => r.request_id.length > 22 ? r.request_id.slice(0, 20) + "…" : r.request_id;

function fill(tbody, rows, columns, emptyText) {
  tbody.replaceChildren();
  if (!rows.length) {
    const td = tbody.insertRow().insertCell();
    td.colSpan = 7; td.className = "empty"; td.textContent = emptyText;
    return;
  }
  for (const r of rows) {
    const tr = tbody.insertRow();
    tr.dataset.id = r.id;
    tr.title = r.request_id;
    if (r.state === "failed") tr.classList.add("failed");
    if (selected && selected.id === r.id) tr.classList.add("selected");
    columns(tr, r);
    tr.addEventListener("click", () => select(r));
  }
}

function openRow(tr, r) {
  cell(tr, shortId(r)); cell(tr, r.model); cell(tr, r.upstream);
  cell(tr, `${r.age_s.toFixed(1)} s`, "num"); cell(tr, r.tokens, "num"); cell(tr, ms(r.ttft_ms), "num");
}

function recentRow(tr, r) {
  cell(tr, shortId(r)); cell(tr, r.model);
  cell(tr, r.status || `HTTP ${r.http_status}`);
  cell(tr, r.tokens, "num"); cell(tr, ms(r.ttft_ms), "num"); cell(tr, ms(r.duration_ms), "num");
  cell(tr, r.error_code ? `${r.error_code}: ${r.error_message || ""}` : "", "error");
}

// With gateway keys the data needs an admin key; EventSource sends no headers, so it rides in a cookie.
function askForKey() {
  const key = window.prompt("This gateway has keys: an admin key (auth.keys, admin: true) to inspect it");
  if (key) document.cookie = `gateway_key=${encodeURIComponent(key)}; path=/debug; SameSite=Strict`;
  $("status").textContent = key ? "key set, retrying" : "an admin key is needed";
}

async function refresh() {
  try {
    const answer = await fetch(BASE + "requests", { cache: "no-store" });
    if (answer.status === 401 || answer.status === 403) return askForKey();
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    const data = await answer.json();
    $("open-count").textContent = data.open.length;
    fill($("open").tBodies[0], data.open, openRow, "no open streams");
    fill($("recent").tBodies[0], data.recent, recentRow, "nothing finished yet");
    $("status").textContent = `live · updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    $("status").textContent = `cannot reach the gateway (${err.message})`;
  }
}

function showMeta(r) {
  const meta = $("detail-meta");
  meta.replaceChildren();
  const fields = [["model", r.model], ["upstream", r.upstream], ["stream", r.stream], ["state", r.state],
    ["status", r.status], ["TTFT", ms(r.ttft_ms)], ["tokens", r.tokens], ["duration", ms(r.duration_ms)]];
  for (const [name, value] of fields) {
    if (value == null) continue;
    const span = document.createElement("span");
    const b = document.createElement("b");
    b.textContent = name + " ";
    span.append(b, String(value));
    meta.append(span);
  }
  const error = $("detail-error");
  error.hidden = !r.error_code;
  error.textContent = r.error_code ? `${r.error_code}: ${r.error_message || ""}` : "";
}

function showEvent(event) {
  const list = $("detail-events");
  const li = document.createElement("li");
  li.value = event.sequence_number ?? list.children.length;
  const delta = typeof event.delta === "string" ? ` ${JSON.stringify(event.delta)}` : "";
  li.textContent = event.type + delta;
  if (event.type === "response.failed" || event.type === "error") li.classList.add("failed");
  li.addEventListener("click", () => {
    if (li.querySelector("pre")) { li.querySelector("pre").remove(); return; }
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(event, null, 2);
    li.append(pre);
  });
  if (list.children.length >= MAX_EVENT_ROWS) list.firstElementChild.remove();
  list.append(li);
  $("event-count").textContent = Number($("event-count").textContent) + 1;
  if (TEXT_DELTAS.has(event.type)) $("detail-text").textContent += event.delta;
  const failure = event.type === "response.failed" ? event.response.error : event.type === "error" ? event : null;
  if (failure) {
    $("detail-error").hidden = false;
    $("detail-error").textContent = `${failure.code}: ${failure.message}`;
  }
  const box = $("detail-events");
  box.scrollTop = box.scrollHeight;
}

async function showCapture(name) {
  const url = `${BASE}captures/${encodeURIComponent(name)}`;
  $("detail-capture").hidden = false;
  $("capture-link").href = url + "?download=1";
  $("capture-link").textContent = `download ${name}`;
  try {
    const capture = await (await fetch(url)).json();
    const reads = capture.upstream_reads || [];
    $("capture-info").textContent = ` · ${reads.length} upstream reads` + (capture.truncated ? " (truncated)" : "");
    $("capture-reads").hidden = false;
    $("capture-raw").textContent = reads.map((r) => `+${r.t_ms} ms  ${r.text != null ? r.text.trimEnd() : "[base64] " + r.base64}`).join("\n");
  } catch (err) {
    $("capture-info").textContent = ` (cannot read it: ${err.message})`;
  }
}

function select(r) {
  if (selected) selected.source.close();
  $("detail").hidden = false;
  $("detail-title").textContent = r.request_id;
  for (const id of ["detail-text", "detail-events", "capture-raw", "capture-info"]) $(id).replaceChildren();
  $("event-count").textContent = "0";
  $("detail-capture").hidden = $("capture-reads").hidden = true;
  showMeta(r);
  if (r.capture) showCapture(r.capture);
  document.querySelectorAll("tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.id === r.id));
  const source = new EventSource(`${BASE}requests/${encodeURIComponent(r.id)}/events`);
  selected = { id: r.id, source };
  $("feed-state").textContent = r.state === "open" ? "· live" : "";
  source.onmessage = (message) => JSON.parse(message.data).forEach(showEvent);
  source.addEventListener("end", (message) => {
    source.close();
    const summary = JSON.parse(message.data);
    showMeta(summary);
    if (summary.capture && summary.capture !== r.capture) showCapture(summary.capture);
    $("feed-state").textContent = "· ended";
  });
  source.addEventListener("lagged", () => { source.close(); $("feed-state").textContent = "· fell behind, click again"; });
  source.onerror = () => { source.close(); $("feed-state").textContent = "· feed closed"; };
}

refresh();
setInterval(refresh, POLL_MS);
