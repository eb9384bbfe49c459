// The OK Log web UI: search with a time range, a hits-over-time chart, streamed results with
// highlighted matches, planning stats as you type, and a live tail. Plain ES module, no build
// step; it talks to the store API of the node that serves it (../store/*).
//
// The page state lives in the URL: q, regex=1, i=1 (ignore case), from (a relative range such
// as 1h, or an RFC 3339 time), to (RFC 3339; absent means now), topic (repeatable), order=asc
// (oldest first; newest first is the default) and tail=1 (live tail).
//
// A node with -auth.token-file answers 401 without a token of the query role: the page then
// asks for one and keeps it in session storage (this tab only), sending it as a bearer token.

const $ = (id) => document.getElementById(id);

/** Records shown at most (a search stops reading past this; a tail drops its oldest rows). */
const MAX_ROWS = 5000;
/** Records per page, newest first ("Older" asks for the next). */
const PAGE = 1000;
/** Records of the same topic shown before and after a clicked record. */
const CONTEXT = 5;
/** Colours of the chart's topic series (the last is "other"). */
const PALETTE = ["#3d8bd9", "#e8833a", "#49a05a", "#c8463d", "#8c6bc0", "#8a5a44", "#d36fb8", "#7f7f7f", "#b5b82f", "#2fb0c2", "#c0c6cc"];
/** Records a paused tail keeps waiting at most (the oldest are dropped beyond). */
const MAX_WAITING = 5000;
const UNITS = { s: 1000, m: 60000, h: 3600000, d: 86400000 };
const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

let running = null; // the AbortController of the search or tail in progress
let planTimer = 0;
let planController = null;
let tail = null; // {paused, waiting: [], dropped} while a live tail runs
let paging = null; // {params, oldest, mark} while newest-first results can go on
const TOKEN_KEY = "oklog-token";

// ---------------------------------------------------------------------------------------------
// State and URL

function readState() {
  const p = new URLSearchParams(location.search);
  return {
    q: p.get("q") ?? "",
    regex: p.get("regex") === "1",
    icase: p.get("i") === "1",
    from: p.get("from") || "1h",
    to: p.get("to") || "",
    topics: p.getAll("topic").filter(Boolean),
    order: p.get("order") === "asc" ? "asc" : "desc",
    tail: p.get("tail") === "1",
  };
}

function formState() {
  const s = {
    q: $("q").value,
    regex: $("regex").checked,
    icase: $("icase").checked,
    from: $("range").value,
    to: "",
    topics: $("topic").value ? $("topic").value.split(",") : [],
    order: $("order").value === "asc" ? "asc" : "desc",
    tail: false,
  };
  if (s.from === "custom") {
    s.from = localInputToIso($("from").value) || "1h";
    s.to = localInputToIso($("to").value);
  }
  return s;
}

function showState(s) {
  $("q").value = s.q;
  $("regex").checked = s.regex;
  $("icase").checked = s.icase;
  const relative = [...$("range").options].some((o) => o.value === s.from);
  if (relative) {
    $("range").value = s.from;
  } else {
    $("range").value = "custom";
    const w = timeWindow(s);
    $("from").value = isoToLocalInput(w.from);
    $("to").value = s.to ? isoToLocalInput(w.to) : "";
  }
  $("absolute").hidden = $("range").value !== "custom";
  $("order").value = s.order;
  showTopicChoice(s.topics);
}

/** Select `topics` in the topic picker (adding an option for a choice it does not list). */
function showTopicChoice(topics) {
  const value = topics.join(",");
  const select = $("topic");
  if (![...select.options].some((o) => o.value === value)) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = topics.join(", ");
    select.append(o);
  }
  select.value = value;
}

function stateUrl(s) {
  const p = new URLSearchParams();
  if (s.q) p.set("q", s.q);
  if (s.regex) p.set("regex", "1");
  if (s.icase) p.set("i", "1");
  if (s.from !== "1h") p.set("from", s.from);
  if (s.to) p.set("to", s.to);
  for (const t of s.topics) p.append("topic", t);
  if (s.order === "asc") p.set("order", "asc");
  if (s.tail) p.set("tail", "1");
  const qs = p.toString();
  return location.pathname + (qs ? "?" + qs : "");
}

function remember(s) {
  const url = stateUrl(s);
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
}

/** The time window of a state: `from` relative (`90m`, `1h`, `7d`) or absolute. */
function timeWindow(s) {
  const to = s.to ? new Date(s.to) : new Date();
  const rel = /^(\d+)([smhd])$/.exec(s.from);
  const from = rel ? new Date(to.getTime() - Number(rel[1]) * UNITS[rel[2]]) : new Date(s.from);
  return { from, to };
}

function localInputToIso(v) {
  if (!v) return "";
  const d = new Date(v); // datetime-local values are local times
  return isNaN(d) ? "" : d.toISOString();
}

function isoToLocalInput(d) {
  if (isNaN(d)) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// ---------------------------------------------------------------------------------------------
// Requests

/** Escape a literal for the store's regex syntax (and JavaScript's). */
function escapeRegex(s) {
  return s.replace(/[\\.+*?()|[\]{}^$#&\-~]/g, "\\$&");
}

/** The store's `q`/`regex` for a state: ignoring case is sent as a `(?i)` regex. */
function storeQuery(s, p) {
  let q = s.q;
  let regex = s.regex;
  if (s.icase) {
    q = "(?i)" + (regex ? q : escapeRegex(q));
    regex = true;
  }
  p.set("q", q);
  if (regex) p.set("regex", "1");
  for (const t of s.topics || []) p.append("topic", t);
  return p;
}

function windowParams(s) {
  const w = timeWindow(s);
  if (isNaN(w.from) || isNaN(w.to)) throw new Error("The time range is not valid.");
  const p = new URLSearchParams();
  p.set("from", w.from.toISOString());
  p.set("to", w.to.toISOString());
  return storeQuery(s, p);
}

// ---------------------------------------------------------------------------------------------
// Tokens

/** `fetch` with the session's token as a bearer; a 401 asks for a token. */
async function api(url, opts = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = new Headers(opts.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  const resp = await fetch(url, { ...opts, headers });
  // A 401 to a request sent with an older token (one still in flight when a new token was
  // given) says nothing about the current one.
  if (resp.status === 401 && sessionStorage.getItem(TOKEN_KEY) === token) {
    askForToken(token ? "That token was refused; give another." : "");
  }
  return resp;
}

function askForToken(why) {
  $("login-why").textContent = why;
  if ($("login").hidden) {
    $("login").hidden = false;
    $("token").focus();
  }
}

function useToken(e) {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("login").hidden = true;
  start(readState());
}

async function failure(resp) {
  const body = await resp.text();
  return body || `${resp.status} ${resp.statusText}`;
}

// ---------------------------------------------------------------------------------------------
// Messages

function showError(text) {
  $("error").textContent = text; // verbatim, as the server wrote it
  $("error").hidden = false;
}

function showPartial(resp) {
  const n = resp.headers.get("X-Oklog-Error-Count") || "some";
  $("warning").textContent = `Partial result: ${n} store node(s) did not answer; what the others have is shown.`;
  $("warning").hidden = false;
}

function setStatus(text) {
  $("status").textContent = text;
}

function clearOutput() {
  paging = null;
  $("older").hidden = true;
  $("legend").hidden = true;
  $("error").hidden = true;
  $("error").textContent = "";
  $("warning").hidden = true;
  $("results").tBodies[0].replaceChildren();
  setStatus("");
}

function humanBytes(n) {
  const units = ["bytes", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

// ---------------------------------------------------------------------------------------------
// Planning stats as you type

function schedulePlan() {
  clearTimeout(planTimer);
  planTimer = setTimeout(plan, 250);
}

async function plan() {
  planController?.abort();
  planController = new AbortController();
  const s = formState();
  const line = $("plan");
  line.classList.remove("bad");
  let params;
  try {
    params = windowParams(s);
  } catch (e) {
    line.textContent = e.message;
    line.classList.add("bad");
    return;
  }
  try {
    const url = "../store/query?" + params;
    const resp = await api(url, { method: "HEAD", signal: planController.signal });
    if (resp.status === 400) {
      // HEAD answers carry no body: ask again for the message (refused before any work).
      const again = await api(url, { signal: planController.signal });
      line.textContent = await failure(again);
      line.classList.add("bad");
      return;
    }
    if (!resp.ok) {
      line.textContent = await failure(resp);
      line.classList.add("bad");
      return;
    }
    const h = (k) => Number(resp.headers.get(k) || 0);
    const segs = h("X-Oklog-Segments-Queried");
    const nodes = h("X-Oklog-Nodes-Queried");
    const errors = h("X-Oklog-Error-Count");
    let text = `This search reads up to ${humanBytes(h("X-Oklog-Max-Data-Set-Size"))} in ${segs} segment${segs === 1 ? "" : "s"} on ${nodes} node${nodes === 1 ? "" : "s"}`;
    if (errors) text += `; ${errors} node(s) did not answer`;
    line.textContent = text + ".";
  } catch (e) {
    if (e.name !== "AbortError") {
      line.textContent = `Planning failed: ${e.message}`;
      line.classList.add("bad");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Results

/** A function returning the match ranges of a line, or null when the query is not a valid
 *  JavaScript regex too (then nothing is highlighted). */
function highlighter(s) {
  if (!s.q) return null;
  let src = s.regex ? s.q : escapeRegex(s.q);
  let flags = "g";
  if (s.icase) flags += "i";
  if (src.startsWith("(?i)")) {
    src = src.slice(4);
    flags += flags.includes("i") ? "" : "i";
  }
  let re;
  for (const f of [flags + "u", flags]) {
    try {
      re = new RegExp(src, f);
      break;
    } catch {
      // try without the u flag, then give up
    }
  }
  if (!re) return null;
  return (text) => {
    const out = [];
    re.lastIndex = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      if (m[0].length === 0) {
        re.lastIndex++;
        continue;
      }
      out.push([m.index, m.index + m[0].length]);
      if (out.length > 100) break;
    }
    return out;
  };
}

function ulidTime(line) {
  let t = 0;
  for (let i = 0; i < 10; i++) {
    const v = CROCKFORD.indexOf(line[i]);
    if (v < 0) return NaN;
    t = t * 32 + v;
  }
  return t;
}

function formatTime(ms) {
  const d = new Date(ms);
  if (isNaN(d)) return "";
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A table row for one record line (`<ULID> <topic> <payload>`). */
function row(line, mark) {
  const tr = document.createElement("tr");
  const ms = ulidTime(line);
  const time = document.createElement("td");
  time.className = "time";
  time.textContent = formatTime(ms);
  if (!isNaN(ms)) time.title = `${new Date(ms).toISOString()} · ${line.slice(0, 26)}`;
  const text = document.createElement("td");
  text.className = "line";
  // A pushed record's parts (message, stream labels, metadata) are separated by U+001F:
  // shown as spaces, so offsets of matches stay the same.
  const body = line.slice(27).replaceAll("\x1f", " ");
  let at = 0;
  for (const [a, b] of mark ? mark(body) : []) {
    if (a > at) text.append(body.slice(at, a));
    const m = document.createElement("mark");
    m.textContent = body.slice(a, b);
    text.append(m);
    at = b;
  }
  if (at < body.length) text.append(body.slice(at));
  tr.append(time, text);
  tr.className = "record";
  tr.dataset.ulid = line.slice(0, 26);
  return tr;
}

/** Read a streamed body as lines, passing batches to `onLines`; it returns false to stop. */
async function readLines(resp, onLines) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder(); // invalid UTF-8 shows as U+FFFD
  let rest = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    rest += decoder.decode(value, { stream: true });
    const lines = rest.split("\n");
    rest = lines.pop();
    if (lines.length && onLines(lines) === false) {
      await reader.cancel();
      return;
    }
  }
  rest += decoder.decode();
  if (rest) onLines([rest]);
}

// ---------------------------------------------------------------------------------------------
// Search

async function search(s) {
  stopRunning();
  clearOutput();
  const controller = new AbortController();
  running = controller;
  let params;
  try {
    params = windowParams(s);
  } catch (e) {
    showError(e.message);
    return;
  }
  setStatus("Searching…");
  document.body.dataset.state = "searching";
  const hits = drawHits(params, controller.signal);
  const records = showRecords(params, s, controller.signal);
  const [total, shown] = await Promise.all([hits, records]);
  if (running !== controller) return;
  running = null;
  if (shown === null) {
    setStatus("");
  } else if (total !== null && total > shown && s.order !== "asc") {
    setStatus(`Showing the newest ${shown.toLocaleString()} of ${total.toLocaleString()} matching records; "Older" shows the next ${PAGE.toLocaleString()}, or click a bar of the chart to narrow the time range.`);
  } else if (total !== null && total > shown) {
    setStatus(`Showing the first ${shown.toLocaleString()} of ${total.toLocaleString()} matching records; click a bar of the chart to narrow the time range.`);
  } else {
    setStatus(`${shown.toLocaleString()} matching record${shown === 1 ? "" : "s"}.`);
  }
  document.body.dataset.state = "done";
}

/** Ask ../store/query for `params` and pass its lines to `onLines` as they come; false when
 *  the node answered with an error (shown). */
async function queryLines(params, signal, onLines) {
  const resp = await api("../store/query?" + params, { signal });
  if (!resp.ok) {
    showError(await failure(resp));
    return false;
  }
  if (resp.status === 206) showPartial(resp);
  await readLines(resp, onLines);
  return true;
}

/** Stream the matching records into the table; resolves to the number shown, or null on
 *  failure (shown as an error). */
async function showRecords(params, s, signal) {
  if (s.order !== "asc") return showPage(params, highlighter(s), signal, null);
  let shown = 0;
  try {
    const mark = highlighter(s);
    const tbody = $("results").tBodies[0];
    const answered = await queryLines(params, signal, (lines) => {
      const frag = document.createDocumentFragment();
      for (const line of lines) {
        if (shown >= MAX_ROWS) break;
        frag.append(row(line, mark));
        shown++;
      }
      tbody.append(frag);
      setStatus(`${shown.toLocaleString()} records so far…`);
      return shown < MAX_ROWS;
    });
    return answered ? shown : null;
  } catch (e) {
    if (e.name === "AbortError") return shown;
    showError(`Search failed: ${e.message}`);
    return null;
  }
}

/** One page of newest-first results, appended to the table: the PAGE newest matches older
 *  than `oldest` (a ULID; null for the first page). Records of the oldest shown millisecond
 *  come again and are skipped (`to` has millisecond precision). Resolves to the rows shown in
 *  all, or null on failure (shown as an error). */
async function showPage(params, mark, signal, oldest, again = 0) {
  const p = new URLSearchParams(params);
  p.set("order", "desc");
  // The `again` shown records of the oldest millisecond come first: ask for them too.
  p.set("limit", String(PAGE + again));
  if (oldest) p.set("to", oldest);
  const tbody = $("results").tBodies[0];
  let added = 0;
  let last = oldest;
  let sameMs = again;
  let received = 0;
  try {
    const answered = await queryLines(p, signal, (lines) => {
      const frag = document.createDocumentFragment();
      for (const line of lines) {
        received++;
        const id = line.slice(0, 26);
        if (oldest && id >= oldest) continue;
        frag.append(row(line, mark));
        // Shown records of the oldest millisecond so far (they come again on the next page).
        sameMs = last && id.slice(0, 10) === last.slice(0, 10) ? sameMs + 1 : 1;
        last = id;
        added++;
      }
      tbody.append(frag);
      setStatus(`${tbody.rows.length.toLocaleString()} records so far…`);
      return true;
    });
    if (!answered) return null;
  } catch (e) {
    if (e.name === "AbortError") return tbody.rows.length;
    showError(`Search failed: ${e.message}`);
    return null;
  }
  // A full page may have older ones after it.
  paging = received >= PAGE + again && added > 0 ? { params, mark, oldest: last, again: sameMs } : null;
  $("older").hidden = !paging;
  return tbody.rows.length;
}

/** "Older": the next page of a newest-first search. */
async function older() {
  if (!paging || running) return;
  const controller = new AbortController();
  running = controller;
  document.body.dataset.state = "searching";
  $("older").hidden = true;
  const shown = await showPage(paging.params, paging.mark, controller.signal, paging.oldest, paging.again);
  if (running !== controller) return;
  running = null;
  if (shown !== null) {
    setStatus(`${shown.toLocaleString()} matching record${shown === 1 ? "" : "s"}, newest first${paging ? "" : " (no older ones)"}.`);
  }
  document.body.dataset.state = "done";
}

/** Show (or hide again) the records of the same topic around a clicked record. */
async function toggleContext(tr) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("context-box")) {
    next.remove();
    return;
  }
  const line = tr.dataset.ulid;
  const body = tr.querySelector("td.line").textContent;
  const topic = body.split(" ")[0];
  const box = document.createElement("tr");
  box.className = "context-box";
  const cell = document.createElement("td");
  cell.colSpan = 2;
  cell.textContent = "Loading the records around it…";
  box.append(cell);
  tr.after(box);
  const p = new URLSearchParams();
  p.set("from", line);
  p.set("to", line);
  p.append("topic", topic);
  p.set("before", String(CONTEXT));
  p.set("after", String(CONTEXT));
  try {
    const resp = await api("../store/query?" + p);
    if (!resp.ok) {
      cell.textContent = await failure(resp);
      return;
    }
    const table = document.createElement("table");
    const tbody = document.createElement("tbody");
    table.append(tbody);
    await readLines(resp, (lines) => {
      for (const l of lines) {
        const r = row(l, null);
        r.className = l.slice(0, 26) === line ? "self" : "ctx";
        tbody.append(r);
      }
      return true;
    });
    cell.replaceChildren(table);
    box.dataset.state = "done";
  } catch (e) {
    cell.textContent = `Context failed: ${e.message}`;
  }
}

/** Fetch the hits of the search and draw them; resolves to the total count, or null. */
async function drawHits(params, signal) {
  const figure = $("chart");
  try {
    const p = new URLSearchParams(params);
    p.set("by", "topic");
    const resp = await api("../store/hits?" + p, { signal });
    if (!resp.ok) {
      figure.hidden = true;
      // The records request reports the same 400 verbatim; report anything else here.
      if (resp.status !== 400) showError(await failure(resp));
      return null;
    }
    if (resp.status === 206) showPartial(resp);
    const hits = await resp.json();
    // The exact window searched (a relative range moves on with the clock).
    const searched = { from: Date.parse(params.get("from")), to: Date.parse(params.get("to")) };
    figure.replaceChildren(chart(hits, searched));
    figure.hidden = false;
    legend(hits);
    return hits.buckets.reduce((n, b) => n + b.count, 0);
  } catch (e) {
    if (e.name !== "AbortError") showError(`Chart failed: ${e.message}`);
    return null;
  }
}

function stepMs(step) {
  let ms = 0;
  for (const [, n, unit] of step.matchAll(/(\d+)(ms|h|m|s)/g)) {
    ms += Number(n) * (unit === "ms" ? 1 : UNITS[unit]);
  }
  return ms;
}

const SVG = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

/** The hits-over-time bar chart, as inline SVG. Clicking a bar zooms into its bucket. */
function chart(hits, searched) {
  const main = document.querySelector("main");
  const width = Math.max(320, (main.clientWidth || 924) - 24);
  const height = 120;
  const top = 14;
  const bottom = 18;
  const plotH = height - top - bottom;
  const n = hits.buckets.length;
  const max = Math.max(1, ...hits.buckets.map((b) => b.count));
  const total = hits.buckets.reduce((s, b) => s + b.count, 0);
  const slot = width / Math.max(1, n);
  const step = stepMs(hits.step);
  const svg = svgEl("svg", {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Matching records over time, ${total} in all, per ${hits.step}`,
  });
  svg.append(svgEl("line", { class: "axis", x1: 0, x2: width, y1: top + plotH + 0.5, y2: top + plotH + 0.5 }));
  // Stacked by topic: the largest series at the bottom, "other" on top.
  const series = [...(hits.series || [])];
  if (hits.other && hits.other.count) series.push({ topic: null, counts: hits.other.counts });
  hits.buckets.forEach((b, i) => {
    if (!b.count) return;
    let y = top + plotH;
    series.forEach((sr, k) => {
      const c = sr.counts[i] || 0;
      if (!c) return;
      const h = (c / max) * plotH;
      y -= h;
      svg.append(svgEl("rect", {
        class: "seg",
        x: (i * slot + 0.5).toFixed(1),
        y: y.toFixed(2),
        width: Math.max(1, slot - 1).toFixed(1),
        height: Math.max(0.5, h).toFixed(2),
        fill: sr.topic === null ? PALETTE[PALETTE.length - 1] : PALETTE[k % (PALETTE.length - 1)],
        "data-topic": sr.topic ?? "",
        "data-other": sr.topic === null ? "1" : "0",
        "data-count": c,
      }));
    });
    const h = Math.max(1, (b.count / max) * plotH);
    const rect = svgEl("rect", {
      class: series.length ? "bar overlay" : "bar",
      x: (i * slot + 0.5).toFixed(1),
      y: (top + plotH - h).toFixed(1),
      width: Math.max(1, slot - 1).toFixed(1),
      height: h.toFixed(1),
      "data-count": b.count,
      "data-time": b.time,
    });
    rect.append(svgEl("title", {}, `${formatTime(Date.parse(b.time))}: ${b.count.toLocaleString()}`));
    rect.addEventListener("click", () => zoom(Date.parse(b.time), step, searched));
    svg.append(rect);
  });
  svg.append(svgEl("text", { x: 2, y: 10 }, `${max.toLocaleString()} per ${hits.step} at most · ${total.toLocaleString()} in all`));
  if (n) {
    const start = Date.parse(hits.buckets[0].time);
    const label = (i, anchor) =>
      svgEl("text", { x: Math.min(width - 2, Math.max(2, i * slot)), y: height - 4, "text-anchor": anchor }, formatTime(start + i * step).slice(0, 19));
    svg.append(label(0, "start"));
    if (n > 2) svg.append(label(Math.floor(n / 2), "middle"));
    svg.append(label(n, "end"));
  }
  return svg;
}

/** The chart's legend: a swatch per topic series, and "other". */
function legend(hits) {
  const box = $("legend");
  box.replaceChildren();
  const items = (hits.series || []).map((sr, k) => [sr.topic, sr.count, PALETTE[k % (PALETTE.length - 1)]]);
  if (hits.other && hits.other.count) {
    items.push([`${hits.other.topics} other topic${hits.other.topics === 1 ? "" : "s"}`, hits.other.count, PALETTE[PALETTE.length - 1]]);
  }
  for (const [name, count, colour] of items) {
    const item = document.createElement("span");
    item.className = "item";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colour;
    item.append(sw, `${name} (${count.toLocaleString()})`);
    box.append(item);
  }
  box.hidden = items.length < 2;
}

/** Fill the topic picker with the topics of the chosen window and their record counts. */
async function loadTopics() {
  let params;
  try {
    const w = timeWindow(formState());
    params = new URLSearchParams({ from: w.from.toISOString(), to: w.to.toISOString() });
  } catch {
    return;
  }
  try {
    const resp = await api("../store/topics?" + params);
    if (!resp.ok) return;
    const answer = await resp.json();
    const select = $("topic");
    const chosen = select.value;
    select.replaceChildren(new Option("all topics", ""));
    for (const t of answer.topics) {
      select.append(new Option(`${t.topic} (${t.records.toLocaleString()})`, t.topic));
    }
    showTopicChoice(chosen ? chosen.split(",") : []);
    select.dataset.loaded = "1";
  } catch {
    // the picker keeps what it had
  }
}

function zoom(startMs, step, searched) {
  const s = formState();
  // The first and last buckets may reach outside the window: keep to what the bar counted.
  s.from = new Date(Math.max(startMs, searched.from)).toISOString();
  s.to = new Date(Math.min(startMs + step - 1, searched.to)).toISOString();
  showState(s);
  remember(s);
  search(s);
}

// ---------------------------------------------------------------------------------------------
// Live tail

async function startTail(s) {
  stopRunning();
  clearOutput();
  $("chart").hidden = true;
  const controller = new AbortController();
  running = controller;
  tail = { paused: false, waiting: [], dropped: 0, shown: 0 };
  $("tail").textContent = "Stop tail";
  $("tail").classList.add("active");
  $("pause").hidden = false;
  $("pause").textContent = "Pause";
  setStatus("Following new records…");
  document.body.dataset.state = "tailing";
  const p = storeQuery(s, new URLSearchParams());
  const mark = highlighter(s);
  try {
    const resp = await api("../store/stream?" + p, { signal: controller.signal });
    if (!resp.ok) {
      showError(await failure(resp));
      endTail();
      return;
    }
    await readLines(resp, (lines) => {
      if (running !== controller) return false;
      if (tail.paused) {
        tail.waiting.push(...lines);
        const over = tail.waiting.length - MAX_WAITING;
        if (over > 0) {
          tail.waiting.splice(0, over);
          tail.dropped += over;
        }
        tailStatus();
      } else {
        appendTail(lines, mark);
      }
      return true;
    });
    if (running === controller) {
      showError("The live tail ended: the node closed the stream.");
      endTail();
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      showError(`Live tail failed: ${e.message}`);
      endTail();
    }
  }
}

function appendTail(lines, mark) {
  const tbody = $("results").tBodies[0];
  const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  const frag = document.createDocumentFragment();
  for (const line of lines) frag.append(row(line, mark));
  tbody.append(frag);
  tail.shown += lines.length;
  while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(0);
  if (nearBottom) window.scrollTo(0, document.body.scrollHeight);
  tailStatus();
}

function tailStatus() {
  let text = `Live: ${tail.shown.toLocaleString()} record${tail.shown === 1 ? "" : "s"}`;
  if (tail.paused) text += ` · paused, ${tail.waiting.length.toLocaleString()} waiting`;
  if (tail.dropped) text += ` (${tail.dropped.toLocaleString()} older ones dropped while paused)`;
  setStatus(text + ".");
}

function togglePause() {
  if (!tail) return;
  tail.paused = !tail.paused;
  $("pause").textContent = tail.paused ? "Resume" : "Pause";
  if (!tail.paused && tail.waiting.length) {
    const lines = tail.waiting;
    tail.waiting = [];
    appendTail(lines, highlighter(formState()));
  }
  tailStatus();
}

function endTail() {
  tail = null;
  running = null;
  $("tail").textContent = "Live tail";
  $("tail").classList.remove("active");
  $("pause").hidden = true;
  document.body.dataset.state = "done";
}

function stopRunning() {
  if (running) running.abort();
  running = null;
  if (tail) endTail();
}

// ---------------------------------------------------------------------------------------------
// Wiring

function run(s) {
  if (s.tail) startTail(s);
  else search(s);
}

function init() {
  const s = readState();
  showState(s);
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const st = formState();
    remember(st);
    search(st);
  });
  $("tail").addEventListener("click", () => {
    if (tail) {
      stopRunning();
      const st = formState();
      remember(st);
      setStatus("Live tail stopped.");
      return;
    }
    const st = formState();
    st.tail = true;
    remember(st);
    startTail(st);
  });
  $("login").addEventListener("submit", useToken);
  $("pause").addEventListener("click", togglePause);
  $("older").addEventListener("click", older);
  $("results").addEventListener("click", (e) => {
    const tr = e.target.closest("tr.record");
    if (tr && !tail && tr.closest("#results > tbody")) toggleContext(tr);
  });
  $("topic").addEventListener("change", schedulePlan);
  $("order").addEventListener("change", schedulePlan);
  $("range").addEventListener("change", () => {
    $("absolute").hidden = $("range").value !== "custom";
    if ($("range").value === "custom" && !$("from").value) {
      const w = timeWindow({ from: "1h", to: "" });
      $("from").value = isoToLocalInput(w.from);
    }
    schedulePlan();
    loadTopics();
  });
  for (const id of ["q", "from", "to"]) $(id).addEventListener("input", schedulePlan);
  for (const id of ["regex", "icase"]) $(id).addEventListener("change", schedulePlan);
  window.addEventListener("popstate", () => {
    const st = readState();
    showState(st);
    run(st);
  });
  start(s);
}

/** What the page does on its own: the plan, the topics, and the search or tail of the URL. */
function start(s) {
  plan();
  loadTopics();
  if (s.q || s.tail || location.search) run(s);
}

init();
