// sluice dashboard: follows GET /api/events and draws the state, rates and latency of each backend.
"use strict";

const WINDOW = 300; // seconds of history, as the server keeps
const TOKEN_KEY = "sluice.admin.token";
const STALE_AFTER = 5000; // ms without an event before the stream is considered stuck
const LABELS = {
  up: "Up",
  down: "Down",
  ejected: "Ejected",
  draining: "Draining",
  disabled: "Disabled",
};
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

/** Latest frame from the server and the rolling history built from it. */
const model = {
  status: null,
  summary: null,
  writable: false,
  /** { end: second, total: cols, backends: { id: cols } }, each column WINDOW long. */
  history: null,
};

// ---------------------------------------------------------------- token

function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  // Keep the secret out of the address bar, history and screenshots.
  history.replaceState(null, "", location.pathname + location.search);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const t = token();
  return t ? { authorization: `Bearer ${t}` } : {};
}

function showTokenForm(prompt) {
  $("token-prompt").textContent = prompt || "Admin token";
  $("token-form").hidden = false;
  $("token-input").value = "";
  $("token-input").focus();
}

function renderTokenButton() {
  $("token-button").textContent = token() ? "Token set" : "Set token";
}

function setupToken() {
  takeTokenFromFragment();
  renderTokenButton();
  $("token-button").addEventListener("click", () => {
    if ($("token-form").hidden) showTokenForm();
    else $("token-form").hidden = true;
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token-form").hidden = true;
    renderTokenButton();
    reconnect();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-form").hidden = true;
    renderTokenButton();
    reconnect();
  });
  $("token-cancel").addEventListener("click", () => {
    $("token-form").hidden = true;
  });
}

// ---------------------------------------------------------------- event stream

let stream = null; // AbortController of the open stream
let lastEvent = 0;
let retryTimer = 0;

function setConn(state, text) {
  const el = $("conn");
  el.dataset.conn = state;
  el.querySelector("span").textContent = text || state;
  document.body.classList.toggle("stale", state !== "live" && model.status !== null);
}

async function connect() {
  clearTimeout(retryTimer);
  const controller = new AbortController();
  stream = controller;
  setConn(model.status ? "reconnecting" : "connecting", model.status ? "reconnecting…" : "");
  try {
    const res = await fetch("api/events", {
      headers: authHeaders(),
      signal: controller.signal,
      cache: "no-store",
    });
    if (res.status === 401) {
      setConn("locked", "token needed");
      showTokenForm("This admin listener needs its token");
      return;
    }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch {
    // Network error or our own abort; either way reconnect below unless replaced.
  }
  if (stream !== controller) return;
  setConn("reconnecting", "reconnecting…");
  retryTimer = setTimeout(connect, 2000);
}

function reconnect() {
  const old = stream;
  stream = null;
  old?.abort();
  connect();
}

function handleEvent(raw) {
  let name = "message";
  let data = "";
  for (const line of raw.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data) return;
  lastEvent = Date.now();
  const frame = JSON.parse(data);
  model.status = frame.status;
  model.summary = frame.summary;
  model.writable = frame.writable;
  mergeHistory(name === "snapshot", frame.series);
  setConn("live", "live");
  render();
}

setInterval(() => {
  if ($("conn").dataset.conn === "live" && Date.now() - lastEvent > STALE_AFTER) reconnect();
}, 1000);

// ---------------------------------------------------------------- history

function emptyColumns() {
  const zeros = () => new Array(WINDOW).fill(0);
  return { count: zeros(), errors: zeros(), p50: zeros(), p99: zeros() };
}

function append(target, cols) {
  for (const key of ["count", "errors", "p50", "p99"]) {
    const merged = target[key].concat(cols[key]);
    target[key] = merged.slice(merged.length - WINDOW);
  }
}

function mergeHistory(reset, series) {
  const end = series.total.start + series.total.count.length - 1;
  if (reset || !model.history) model.history = { end, total: emptyColumns(), backends: {} };
  const h = model.history;
  append(h.total, series.total);
  for (const [id, cols] of Object.entries(series.backends)) {
    if (!h.backends[id]) h.backends[id] = emptyColumns();
    append(h.backends[id], cols);
  }
  for (const id of Object.keys(h.backends)) if (!series.backends[id]) delete h.backends[id];
  h.end = Math.max(h.end, end);
}

// ---------------------------------------------------------------- formatting

function fmtRate(n) {
  if (n === 0) return "0";
  if (n < 10) return n.toFixed(1);
  return Math.round(n).toLocaleString("en-US");
}

function fmtPercent(share) {
  if (share === 0) return "0%";
  const p = share * 100;
  if (p < 0.1) return "<0.1%";
  return (p < 10 ? p.toFixed(1) : Math.round(p)) + "%";
}

/** [number, unit] so the unit can be set smaller. */
function fmtMs(ms) {
  if (!ms) return ["–", ""];
  if (ms < 10) return [ms.toFixed(1), "ms"];
  if (ms < 1000) return [String(Math.round(ms)), "ms"];
  return [(ms / 1000).toFixed(ms < 10000 ? 2 : 1), "s"];
}

function fmtDuration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function fmtClock(second) {
  return new Date(second * 1000).toLocaleTimeString([], { hour12: false });
}

function setNumber(el, [value, unit]) {
  el.textContent = value;
  if (unit) {
    const small = document.createElement(el.classList.contains("value") ? "span" : "small");
    small.className = "unit";
    small.textContent = unit;
    el.append(small);
  }
}

function errorClass(share, count) {
  if (!count) return "";
  if (share >= 0.05) return "bad";
  if (share >= 0.01) return "warn";
  return "";
}

// ---------------------------------------------------------------- charts

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  parent?.append(node);
  return node;
}

/** A round upper bound for an axis: 1, 2 or 5 times a power of ten. */
function niceMax(value, floor) {
  const v = Math.max(value, floor);
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= v) return step * power;
  return 10 * power;
}

/** Index ranges [from, to] of consecutive points that are not gaps. */
function segments(n, gaps) {
  const out = [];
  let from = -1;
  for (let i = 0; i <= n; i++) {
    const gap = i === n || (gaps && gaps[i]);
    if (!gap && from < 0) from = i;
    if (gap && from >= 0) {
      out.push([from, i - 1]);
      from = -1;
    }
  }
  return out;
}

function linePath(values, x, y, [from, to]) {
  let d = "";
  for (let i = from; i <= to; i++) {
    d += `${i === from ? "M" : "L"}${x(i).toFixed(1)},${y(values[i]).toFixed(1)}`;
  }
  // A lone point would be invisible as a path of one move.
  if (from === to) d += `h2`;
  return d;
}

function areaPath(values, x, y, base, [from, to]) {
  return `M${x(from).toFixed(1)},${base}L${linePath(values, x, y, [from, to]).slice(1)}L${
    x(to).toFixed(1)
  },${base}Z`;
}

/**
 * Draws series on an SVG. series: [{ values, color, kind: "area" | "line", gaps? }].
 * With `axes`, draws gridlines, value labels and minute marks and enables the hover readout.
 */
function drawChart(svg, series, { axes = false, format = String, floor = 1, end = 0 } = {}) {
  const width = svg.clientWidth || Number(svg.getAttribute("width")) || 300;
  const height = svg.clientHeight || Number(svg.getAttribute("height")) || 40;
  const left = axes ? 44 : 0;
  const bottom = axes ? 18 : 1;
  const top = axes ? 8 : 2;
  let max = 0;
  for (const s of series) {
    for (let i = 0; i < s.values.length; i++) {
      if (!(s.gaps && s.gaps[i]) && s.values[i] > max) max = s.values[i];
    }
  }
  max = niceMax(max, floor);
  const n = WINDOW;
  const x = (i) => left + (i / (n - 1)) * (width - left);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const base = (height - bottom).toFixed(1);
  svg.replaceChildren();
  if (axes) {
    for (const f of [0, 0.5, 1]) {
      const gy = y(max * f);
      el("line", { x1: left, x2: width, y1: gy, y2: gy, class: "gridline" }, svg);
      const label = el("text", { x: left - 6, y: gy + 4, "text-anchor": "end" }, svg);
      label.textContent = format(max * f);
    }
    for (let m = 5; m >= 0; m--) {
      const i = n - 1 - m * 60;
      const label = el("text", {
        x: Math.max(x(Math.max(i, 0)), left + 12),
        y: height - 3,
        "text-anchor": m === 0 ? "end" : "middle",
      }, svg);
      label.textContent = m === 0 ? "now" : `−${m}m`;
    }
  } else {
    el("line", { x1: 0, x2: width, y1: base, y2: base, class: "gridline" }, svg);
  }
  for (const s of series) {
    for (const span of segments(s.values.length, s.gaps)) {
      if (s.kind === "area") {
        el("path", {
          d: areaPath(s.values, x, y, base, span),
          fill: s.color,
          "fill-opacity": s.opacity ?? 0.18,
          stroke: "none",
        }, svg);
      }
      el("path", {
        d: linePath(s.values, x, y, span),
        fill: "none",
        stroke: s.color,
        "stroke-width": s.width ?? 1.5,
        "stroke-linejoin": "round",
      }, svg);
    }
  }
  if (axes) svg.chart = { series, x, left, width, height, top, bottom, end, format };
}

/** A hover readout (time and each series' value) for a chart drawn with axes. */
function attachHover(svg, names) {
  const box = svg.parentElement;
  const tip = document.createElement("div");
  tip.className = "tooltip";
  tip.hidden = true;
  box.append(tip);
  let cursor = null;
  svg.addEventListener("mousemove", (event) => {
    const c = svg.chart;
    if (!c) return;
    const rect = svg.getBoundingClientRect();
    const px = event.clientX - rect.left;
    if (px < c.left) return;
    const i = Math.round(((px - c.left) / (c.width - c.left)) * (WINDOW - 1));
    cursor?.remove();
    cursor = el("line", {
      x1: c.x(i),
      x2: c.x(i),
      y1: c.top,
      y2: c.height - c.bottom,
      class: "cursor",
    }, svg);
    const second = c.end - (WINDOW - 1 - i);
    tip.replaceChildren();
    const head = document.createElement("b");
    head.textContent = fmtClock(second);
    tip.append(head);
    c.series.forEach((s, k) => {
      const line = document.createElement("div");
      const missing = s.missing ?? s.gaps;
      const v = missing && missing[i] ? "–" : c.format(s.values[i]);
      line.textContent = `${names[k]}: ${v}`;
      tip.append(line);
    });
    tip.hidden = false;
    const left = Math.min(px + 14, rect.width - tip.offsetWidth - 4);
    tip.style.left = `${left + 12}px`;
    tip.style.top = "34px";
  });
  svg.addEventListener("mouseleave", () => {
    tip.hidden = true;
    cursor?.remove();
    cursor = null;
  });
}

function styleColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** Seconds before the balancer started have no data, which is not the same as no traffic. */
function beforeStart(cols) {
  const first = model.history.end - (WINDOW - 1);
  const start = Math.floor(Date.parse(model.status.startedAt) / 1000);
  return cols.count.map((_, i) => first + i < start);
}

function trafficSeries(cols) {
  const none = beforeStart(cols);
  const e = cols.errors;
  // Draw the error line only around errors, so it does not paint over the zero line.
  const quiet = e.map((v, i) => none[i] || (v === 0 && !e[i - 1] && !e[i + 1]));
  return [
    { values: cols.count, color: styleColor("--traffic"), kind: "area", gaps: none },
    {
      values: e,
      color: styleColor("--errors"),
      kind: "area",
      opacity: 0.35,
      gaps: quiet,
      missing: none,
    },
  ];
}

function latencySeries(cols) {
  const gaps = cols.count.map((c) => c === 0);
  return [
    { values: cols.p50, color: styleColor("--p50"), kind: "line", gaps },
    { values: cols.p99, color: styleColor("--p99"), kind: "line", gaps },
  ];
}

const fmtAxisMs = (v) => {
  const [n, unit] = fmtMs(v);
  return v ? `${n}${unit}` : "0";
};

// ---------------------------------------------------------------- rendering

function render() {
  const { status, summary, history } = model;
  if (!status) return;
  $("strategy").textContent = status.strategy;
  $("config-version").textContent = `v${status.configVersion}`;
  $("uptime").textContent = fmtDuration(status.uptimeSeconds);
  $("readonly").hidden = model.writable;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;

  const total = summary.total;
  $("total-rps").textContent = fmtRate(total.rps);
  const errors = $("total-errors");
  errors.textContent = total.rps ? fmtPercent(total.errorRate) : "–";
  errors.className = `value ${errorClass(total.errorRate, total.rps)}`;
  setNumber($("total-p50"), fmtMs(total.p50));
  setNumber($("total-p99"), fmtMs(total.p99));
  renderCounts(status.backends);
  renderTotals(history.total);

  drawChart($("chart-traffic"), trafficSeries(history.total), {
    axes: true,
    format: (v) => fmtRate(v),
    floor: 1,
    end: history.end,
  });
  drawChart($("chart-latency"), latencySeries(history.total), {
    axes: true,
    format: fmtAxisMs,
    floor: 1,
    end: history.end,
  });

  const list = $("backends");
  const rows = new Map(
    [...list.children].map((row) => [`${row.dataset.pool}/${row.dataset.backend}`, row]),
  );
  let previous = null;
  const pooled = (status.pools || []).length > 1;
  for (const b of status.backends) {
    const key = `${b.pool}/${b.id}`;
    let row = rows.get(key);
    rows.delete(key);
    if (!row) row = createRow(b.pool, b.id);
    const next = previous ? previous.nextSibling : list.firstChild;
    if (row !== next) list.insertBefore(row, next);
    updateRow(row, b, summary.backends[key], history.backends[key], pooled);
    previous = row;
  }
  for (const row of rows.values()) row.remove();
  $("empty").hidden = status.backends.length > 0;
  renderRoutes(status.routes || []);
}

/** The route table, first match first; hidden without `routes:`. */
function renderRoutes(routes) {
  const section = $("routes");
  section.hidden = routes.length === 0;
  const list = $("route-list");
  const text = (r) => {
    const c = r.conditions;
    const parts = [];
    if (c.host) parts.push(`host ${[].concat(c.host).join(", ")}`);
    if (c.path) parts.push(`${c.exact ? "path =" : "path"} ${c.path}`);
    if (c.methods) parts.push(c.methods.join(" "));
    if (c.headers) parts.push(Object.entries(c.headers).map(([k, v]) => `${k}: ${v}`).join(", "));
    if (c.clientIp) parts.push(`from ${[].concat(c.clientIp).join(", ")}`);
    const a = r.action;
    const action = a.pool !== undefined
      ? `→ pool ${a.pool}`
      : a.redirect
      ? `→ ${a.redirect.status} ${a.redirect.to}`
      : `→ respond ${a.respond.status}`;
    return `${r.label}: ${parts.length ? parts.join(" · ") : "every request"} ${action}`;
  };
  const lines = routes.map(text);
  if (lines.join("\n") === list.dataset.shown) return;
  list.dataset.shown = lines.join("\n");
  list.replaceChildren(...lines.map((line) => {
    const li = document.createElement("li");
    li.textContent = line;
    return li;
  }));
}

/** Five-minute context under the headline numbers. */
function renderTotals(cols) {
  let requests = 0;
  let errors = 0;
  let peak = 0;
  let p50 = 0;
  let p99 = 0;
  for (let i = 0; i < cols.count.length; i++) {
    requests += cols.count[i];
    errors += cols.errors[i];
    peak = Math.max(peak, cols.count[i]);
    p50 = Math.max(p50, cols.p50[i]);
    p99 = Math.max(p99, cols.p99[i]);
  }
  const ms = (v) => fmtMs(v).join(" ");
  $("total-rps-sub").textContent = `peak ${fmtRate(peak)}/s · ${
    requests.toLocaleString("en-US")
  } in 5 min`;
  $("total-errors-sub").textContent = `${errors.toLocaleString("en-US")} errors in 5 min`;
  $("total-p50-sub").textContent = requests ? `highest ${ms(p50)} in 5 min` : "";
  $("total-p99-sub").textContent = requests ? `highest ${ms(p99)} in 5 min` : "";
}

function renderCounts(backends) {
  const counts = {};
  for (const b of backends) counts[b.state] = (counts[b.state] || 0) + 1;
  const box = $("backend-counts");
  box.replaceChildren();
  for (const state of Object.keys(LABELS)) {
    if (!counts[state]) continue;
    const item = document.createElement("span");
    item.className = "count";
    item.dataset.state = state;
    const dot = document.createElement("i");
    dot.className = "dot";
    const n = document.createElement("b");
    n.textContent = counts[state];
    item.append(dot, n, LABELS[state].toLowerCase());
    box.append(item);
  }
  if (!backends.length) box.textContent = "none";
}

function createRow(pool, id) {
  const row = $("row-template").content.firstElementChild.cloneNode(true);
  row.dataset.pool = pool;
  row.dataset.backend = id;
  for (const button of row.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => act(pool, id, button.dataset.action, button));
  }
  return row;
}

function updateRow(row, b, s, cols, pooled) {
  row.dataset.state = b.state;
  row.dataset.drained = b.drained === undefined ? "" : String(b.drained);
  const q = (sel) => row.querySelector(sel);
  q(".pill").textContent = LABELS[b.state] || b.state;
  q(".id").textContent = b.id;
  q(".id").title = b.id;
  const where = [pooled ? `pool ${b.pool}` : "", b.source && b.source !== "config" ? b.source : ""]
    .filter(Boolean).join(" · ");
  const url = b.url === `http://${b.id}` ? "" : b.url;
  q(".url").textContent = [where, url].filter(Boolean).join(" · ");
  q(".url").hidden = q(".url").textContent === "";

  let reason = b.reason;
  if (b.state === "draining") {
    reason = b.drained ? "drained: 0 in flight" : `draining: ${b.inflight} in flight`;
  }
  const age = (Date.now() - Date.parse(b.since)) / 1000;
  q(".reason").textContent = `${reason} · for ${fmtDuration(age)}`;
  const probe = b.lastProbe;
  q(".reason").title = probe
    ? `last health check ${probe.ok ? "passed" : "failed"}${
      probe.status ? ` (${probe.status})` : ""
    }${probe.error ? `: ${probe.error}` : ""} in ${Math.round(probe.durationMs)} ms at ${
      new Date(probe.time).toLocaleTimeString([], { hour12: false })
    }`
    : "no health check yet";

  const has = s && s.rps > 0;
  q(".rps").textContent = s ? fmtRate(s.rps) : "–";
  const errors = q(".errors");
  errors.textContent = has ? fmtPercent(s.errorRate) : "–";
  errors.className = `num errors ${errorClass(s ? s.errorRate : 0, has)}`;
  setNumber(q(".p50"), has ? fmtMs(s.p50) : ["–", ""]);
  setNumber(q(".p99"), has ? fmtMs(s.p99) : ["–", ""]);
  q(".inflight").textContent = b.maxConnections === null
    ? String(b.inflight)
    : `${b.inflight} / ${b.maxConnections}`;
  const weight = q(".weight");
  weight.textContent = b.effectiveWeight < b.weight
    ? `${+b.effectiveWeight.toFixed(2)} → ${b.weight}`
    : String(b.weight);
  weight.title = b.effectiveWeight < b.weight ? "ramping up (slow start)" : "";

  const history = cols || emptyColumns();
  drawChart(q(".spark.traffic"), trafficSeries(history), { floor: 1 });
  drawChart(q(".spark.latency"), latencySeries(history), { floor: 1 });

  const show = {
    drain: b.state !== "draining" && b.state !== "disabled",
    enable: b.state === "draining" || b.state === "disabled",
    disable: b.state !== "disabled",
  };
  for (const button of row.querySelectorAll("button[data-action]")) {
    const action = button.dataset.action;
    button.hidden = !show[action];
    if (!button.dataset.busy) button.disabled = !model.writable;
    button.title = model.writable
      ? `${action[0].toUpperCase()}${action.slice(1)} ${b.id}`
      : "Read-only: set admin.token in the configuration";
  }
}

// ---------------------------------------------------------------- actions

const PAST = { drain: "Draining", enable: "Enabled", disable: "Disabled" };

async function act(pool, id, action, button) {
  button.dataset.busy = "1";
  button.disabled = true;
  try {
    const path = `api/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(id)}`;
    const res = await fetch(`${path}/${action}`, {
      method: "POST",
      headers: authHeaders(),
    });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) {
      toast("That needs the admin token.", true);
      showTokenForm("Admin token needed to change backends");
      return;
    }
    if (!res.ok) {
      toast(body.error || `${action} failed (HTTP ${res.status})`, true);
      return;
    }
    toast(`${PAST[action]} ${id}`);
    // Show the change now rather than at the next tick.
    const status = await fetch("api/status", { headers: authHeaders(), cache: "no-store" });
    if (status.ok) {
      model.status = await status.json();
      render();
    }
  } catch (err) {
    toast(`${action} failed: ${err.message}`, true);
  } finally {
    delete button.dataset.busy;
    button.disabled = !model.writable;
  }
}

function toast(message, error = false) {
  const item = document.createElement("div");
  item.className = error ? "toast error" : "toast";
  item.textContent = message;
  $("toasts").append(item);
  setTimeout(() => item.remove(), error ? 8000 : 4000);
}

// ---------------------------------------------------------------- start

setupToken();
attachHover($("chart-traffic"), ["requests/s", "errors/s"]);
attachHover($("chart-latency"), ["p50", "p99"]);
addEventListener("resize", () => render());
connect();
