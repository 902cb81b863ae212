// walhook console: reads the admin API with the session cookie set at /login, and sends
// changes with the session's CSRF token. Plain DOM, no framework, nothing fetched from
// elsewhere. Every text from the server goes through textContent, never innerHTML.
"use strict";

const REFRESH_MS = 2000;
const PAGE_SIZE = 50;
let csrf = "";
let role = "";
let timer = null;
let current = null;

// ---- small helpers ------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function num(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function ms(n) {
  if (n === null || n === undefined) return "–";
  return n < 10 ? n.toFixed(2) + " ms" : n < 1000 ? n.toFixed(0) + " ms" : (n / 1000).toFixed(2) + " s";
}

function seconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
}

function ago(iso) {
  if (!iso) return "";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return isFinite(s) ? seconds(Math.max(0, s)) + " ago" : iso;
}

function badge(text, kind) {
  return h("span", { class: "badge " + (kind || text) }, text);
}

function toast(text, error) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.className = error ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, error ? 9000 : 4000);
}

function offline(text) {
  const o = document.getElementById("offline");
  o.textContent = text || "";
  o.hidden = !text;
}

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  followRole(r);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
  return body;
}

async function post(path, payload) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-walhook-csrf": csrf },
    body: payload === undefined ? "" : JSON.stringify(payload),
  });
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  followRole(r);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
  return body;
}

// Every API answer names the process's role: a takeover shows on any page.
function followRole(r) {
  const said = r.headers.get("x-walhook-role");
  if (said && said !== role) setRole(said);
}

/// Runs a change and says how it went; true when it was done.
async function act(what, path, payload) {
  try {
    const answer = await post(path, payload);
    toast(what + ": done");
    return answer;
  } catch (e) {
    toast(what + " refused: " + e.message, true);
    return null;
  }
}

function params() {
  const q = location.hash.split("?")[1] || "";
  return Object.fromEntries(new URLSearchParams(q));
}

function setParams(page, p) {
  const q = new URLSearchParams(Object.entries(p).filter(([, v]) => v !== "" && v !== undefined && v !== null));
  const hash = "#/" + page + (q.toString() ? "?" + q : "");
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

function setRole(r) {
  role = r;
  const b = document.getElementById("role");
  b.textContent = r;
  b.className = "badge " + r;
  document.getElementById("standby-note").hidden = r !== "standby";
}

const standby = () => role === "standby";

// ---- overview -----------------------------------------------------------------------

function stat(label, value, sub, id) {
  return h("div", { class: "card stat", id }, h("div", { class: "label" }, label),
    h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

function chart(rates, sampleSeconds) {
  const W = 1200, H = 260, L = 56, R = 12, T = 12, B = 26;
  const now = Date.now();
  const from = now - 15 * 60 * 1000;
  const max = Math.max(1, ...rates.map((r) => Math.max(r.decoded, r.delivered)));
  const top = niceCeil(max);
  const x = (t) => L + ((t - from) / (now - from)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "events decoded and delivered per second over the last 15 minutes" });
  for (const f of [0, 0.5, 1]) {
    root.append(svg("line", { class: f === 0 ? "axis" : "grid", x1: L, x2: W - R, y1: y(top * f), y2: y(top * f) }));
    root.append(svg("text", { x: L - 6, y: y(top * f) + 4, "text-anchor": "end" }, num(top * f)));
  }
  for (const m of [15, 10, 5, 0]) {
    const tx = x(now - m * 60000);
    root.append(svg("text", { x: tx, y: H - 8, "text-anchor": m === 0 ? "end" : m === 15 ? "start" : "middle" },
      m === 0 ? "now" : "−" + m + " min"));
  }
  for (const key of ["decoded", "delivered"]) {
    const pts = rates.filter((r) => r.t >= from).map((r) => `${x(r.t).toFixed(1)},${y(r[key]).toFixed(1)}`);
    if (pts.length) root.append(svg("polyline", { class: key, points: pts.join(" ") }));
  }
  const legend = h("div", { class: "legend" },
    h("span", {}, h("i", { style: "background:#2f6fde" }), "changes decoded / s"),
    h("span", {}, h("i", { style: "background:#1f9d55" }), "events delivered / s"),
    h("span", {}, rates.length ? `one point per ${sampleSeconds} s` : `the first points come within ${sampleSeconds * 2} s`));
  return h("div", { class: "card" }, h("h2", { style: "margin-top:0" }, "Throughput, last 15 minutes"), root, legend);
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

async function overview(main) {
  const o = await api("/overview");
  setRole(o.role);
  const reload = o.last_reload;
  const modes = Object.entries(o.modes || {}).map(([m, n]) => h("span", {}, badge(m), " ", n, " "));
  main.replaceChildren(
    h("h1", {}, "Overview"),
    h("div", { class: "grid" },
      stat("Role", badge(o.role), o.role === "leader" ? "holds the slot's lease" : "waits to take over", "stat-role"),
      stat("Slot", o.slot, "publication " + o.publication + (o.streaming ? " · streaming" : " · not streaming")),
      stat("Confirmed LSN", o.confirmed_lsn || "–", "the server may free WAL before it"),
      stat("WAL the slot retains", bytes(o.retained_wal_bytes), "from the slot's restart LSN"),
      stat("Replication lag", bytes(o.lag_bytes), seconds(o.lag_seconds) + " behind (server's flush lag)"),
      stat("State database", o.state_reachable ? badge("reachable", "ok") : badge("unreachable", "bad"),
        "spill log, dead letters, leases"),
      stat("Last reload", reload ? badge(reload.ok ? "applied" : "refused", reload.ok ? "ok" : "bad") : "none yet",
        reload ? ago(reload.at) + ": " + reload.message : (o.reloads_watched ? "send SIGHUP to reload" : "reloads are not watched")),
      stat("Subscribers", num(o.subscribers), modes.length ? h("span", {}, modes) : (o.role === "standby" ? "served by the leader" : "")),
    ),
    h("div", { style: "margin-top:14px" }, chart(o.rates || [], o.sample_seconds || 5)),
  );
}

// ---- subscribers --------------------------------------------------------------------

const SEVERITY = { disabled: 0, down: 1, paused: 2, spilling: 3, hot: 4 };

async function subscribers(main) {
  const filter = params().q || "";
  const { subscribers: list } = await api("/subscribers");
  list.sort((a, b) => (SEVERITY[a.mode] ?? 9) - (SEVERITY[b.mode] ?? 9) || a.name.localeCompare(b.name));
  const shown = list.filter((s) => s.name.toLowerCase().includes(filter.toLowerCase()));
  const search = h("input", { id: "subscriber-filter", placeholder: "filter by name", value: filter,
    oninput: (e) => { setParams("subscribers", { q: e.target.value }); render(); } });
  const rows = shown.map((s) => {
    const stopped = s.status !== "active";
    const f = s.last_failure;
    return h("tr", { "data-subscriber": s.name },
      h("td", {}, h("b", {}, s.name), h("div", { class: "muted small mono" }, s.url || "")),
      h("td", {}, h("span", { class: "mode" }, badge(s.mode)),
        s.reason ? h("div", { class: "muted small" }, s.reason) : null,
        s.since ? h("div", { class: "muted small" }, "since " + ago(s.since)) : null),
      h("td", { class: "num" }, num(s.backlog_in_memory)),
      h("td", { class: "num" }, num(s.backlog_in_log)),
      h("td", { class: "num" }, s.dead_letters
        ? h("a", { href: "#/deliveries?status=dead&subscriber=" + encodeURIComponent(s.name) }, num(s.dead_letters))
        : num(s.dead_letters)),
      h("td", { class: "num" }, num(s.delivered_per_second, 1)),
      h("td", { class: "num" }, ms(s.p50_ms)),
      h("td", { class: "num" }, ms(s.p99_ms)),
      h("td", {}, f ? [
        h("div", { class: "small" }, (f.status ? "HTTP " + f.status : "no answer") + " · " + ago(f.at),
          s.failing_since ? " · failing since " + ago(s.failing_since).replace(" ago", "") : ""),
        h("div", { class: "excerpt small mono", title: f.error }, f.error),
      ] : h("span", { class: "muted" }, "none")),
      h("td", {}, stopped
        ? h("button", { class: "secondary", "data-action": "resume", disabled: standby(),
            onclick: async () => { await act("Resume " + s.name, `/subscribers/${encodeURIComponent(s.name)}/resume`); render(); } }, "Resume")
        : h("button", { class: "danger", "data-action": "pause", disabled: standby(),
            onclick: async () => { await act("Pause " + s.name, `/subscribers/${encodeURIComponent(s.name)}/pause`,
              { reason: "paused from the console" }); render(); } }, "Pause")),
    );
  });
  const table = h("table", { id: "subscribers" },
    h("thead", {}, h("tr", {}, ["Subscriber", "Mode", "In memory", "Spill log", "Dead letters", "Delivered/s",
      "p50", "p99", "Last error", ""].map((c, i) => h("th", { class: i >= 2 && i <= 7 ? "num" : "" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 10, class: "muted" },
      standby() ? "This walhook is a standby: the leader serves the subscribers." : "No subscriber matches."))));
  // Keep the filter box (and its caret) while the table refreshes.
  const old = document.getElementById("subscriber-filter");
  main.replaceChildren(h("h1", {}, "Subscribers ", h("span", { class: "muted small" }, `${shown.length} of ${list.length}`)),
    h("div", { class: "filters" }, old || search), table);
  if (old && document.activeElement !== old) old.value = filter;
}

// ---- deliveries ---------------------------------------------------------------------

let selected = null;

async function deliveries(main) {
  const p = params();
  const status = p.status || "dead";
  const offset = Math.max(0, Math.floor(Number(p.offset) || 0));
  const q = new URLSearchParams({ status, limit: PAGE_SIZE, offset, count: "true" });
  for (const k of ["subscriber", "type", "key", "since", "until"]) if (p[k]) q.set(k, p[k]);
  const { deliveries: list, total } = await api("/deliveries?" + q);
  if (!list.length && offset > 0) {
    // The page emptied (replayed, or pruned): show the last one there is.
    setParams("deliveries", { ...p, offset: Math.max(0, Math.floor((total - 1) / PAGE_SIZE) * PAGE_SIZE) });
    return deliveries(main);
  }
  if (!document.getElementById("deliveries-list")) {
    const subs = await api("/subscribers").catch(() => ({ subscribers: [] }));
    main.replaceChildren(filtersForm(p, subs.subscribers),
      h("div", { class: "split" }, h("div", { id: "deliveries-list" }),
        h("div", { id: "delivery-detail", class: "card" }, h("p", { class: "muted" }, "Pick a delivery to see its body and attempts."))));
  }
  const body = document.getElementById("deliveries-list");
  const rows = list.map((d) => h("tr", {
    class: "clickable" + (selected && selected.id === d.id && selected.subscriber === d.subscriber ? " selected" : ""),
    "data-id": d.id, "data-subscriber": d.subscriber, onclick: () => { selected = d; showDelivery(d); markSelected(); } },
  h("td", { class: "small" }, d.at.replace("T", " ").slice(0, 19)),
  h("td", {}, d.subscriber), h("td", {}, d.type), h("td", { class: "mono small" }, d.key),
  h("td", { class: "num" }, d.attempts), h("td", { class: "excerpt small" }, d.error || "")));
  const pager = h("div", { class: "pager" },
    h("button", { class: "secondary", disabled: offset === 0, onclick: () => { setParams("deliveries", { ...p, offset: Math.max(0, offset - PAGE_SIZE) }); render(); } }, "‹ Newer"),
    h("span", { id: "deliveries-count" }, total ? `${num(offset + 1)}–${num(offset + list.length)} of ${num(total)} ${status}` : `no ${status} deliveries`),
    h("button", { class: "secondary", disabled: offset + list.length >= total, onclick: () => { setParams("deliveries", { ...p, offset: offset + PAGE_SIZE }); render(); } }, "Older ›"));
  const replayAll = status === "dead" && p.subscriber && total
    ? h("button", { id: "replay-filter", class: "secondary", disabled: standby(), onclick: replayFilter }, `Replay all ${num(total)} matching`)
    : null;
  body.replaceChildren(h("div", { class: "pager" }, pager, replayAll),
    h("table", { id: "deliveries" },
      h("thead", {}, h("tr", {}, ["Time (UTC)", "Subscriber", "Type", "Key", "Attempts", status === "dead" ? "Why" : "Last error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "Nothing matches.")))));
}

function markSelected() {
  for (const tr of document.querySelectorAll("#deliveries tbody tr")) {
    tr.classList.toggle("selected", !!selected && tr.dataset.id === selected.id && tr.dataset.subscriber === selected.subscriber);
  }
}

function filtersForm(p, subs) {
  const field = (name, label, placeholder) => h("label", {}, label, h("input", { name, value: p[name] || "", placeholder }));
  const form = h("form", { id: "delivery-filters", class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const f = Object.fromEntries(new FormData(form));
    selected = null;
    setParams("deliveries", { ...f, offset: 0 });
    render();
  } },
  h("label", {}, "Status", h("select", { name: "status" }, ["dead", "pending"].map((s) => h("option", { value: s, selected: (p.status || "dead") === s }, s)))),
  h("label", {}, "Subscriber", h("select", { name: "subscriber" }, h("option", { value: "" }, "any"),
    // The one asked for stays a choice even when the list does not have it (a standby).
    p.subscriber && !subs.some((s) => s.name === p.subscriber) ? h("option", { value: p.subscriber, selected: true }, p.subscriber) : null,
    subs.map((s) => h("option", { value: s.name, selected: p.subscriber === s.name }, s.name)))),
  field("type", "Type", "price.changed"), field("key", "Key", "ordering key"),
  field("since", "Since", "2026-12-01T00:00:00Z"), field("until", "Until", "RFC 3339"),
  h("button", { type: "submit" }, "Apply"));
  return h("div", {}, h("h1", {}, "Deliveries"), form);
}

async function showDelivery(d) {
  const box = document.getElementById("delivery-detail");
  if (!box) return;
  const which = d.subscriber + "/" + d.id;
  box.dataset.id = which;
  box.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  let full;
  try {
    full = await api(`/deliveries/${encodeURIComponent(d.subscriber)}/${encodeURIComponent(d.id)}`);
    // Another row was picked meanwhile: its answer is the one to show.
    if (box.dataset.id !== which) return;
  } catch (e) {
    if (box.dataset.id !== which) return;
    box.replaceChildren(h("p", { class: "muted" }, "This delivery is gone (delivered or replayed): " + e.message));
    return;
  }
  const history = (full.history || []).map((a) => h("tr", {},
    h("td", { class: "small" }, a.at), h("td", {}, a.status ?? "–"), h("td", { class: "num" }, a.ms), h("td", { class: "small excerpt", title: a.error }, a.error)));
  box.replaceChildren(
    h("h2", { style: "margin-top:0" }, full.type, " ", badge(full.status === "dead" ? "dead" : "pending", full.status === "dead" ? "bad" : "pending")),
    h("div", { class: "small mono" }, full.id),
    h("div", { class: "small" }, full.subscriber, " · key ", h("span", { class: "mono" }, full.key), " · ", full.attempts, " attempts"),
    full.error ? h("p", { class: "error small" }, full.error) : null,
    full.status === "dead" ? h("button", { id: "replay-one", disabled: standby(), onclick: async (e) => {
      e.target.disabled = true;
      const r = await act("Replay " + full.id, "/deliveries/replay", { subscriber: full.subscriber, id: full.id });
      e.target.disabled = false;
      if (r) {
        selected = null;
        box.replaceChildren(h("p", {}, `Replayed: ${full.id} is back in ${full.subscriber}'s spill log and goes out in its key's order.`));
        render();
      }
    } }, "Replay") : null,
    h("h2", {}, "Attempts"),
    history.length ? h("table", { class: "small" }, h("thead", {}, h("tr", {}, ["At", "Status", "ms", "Error"].map((c) => h("th", {}, c)))), h("tbody", {}, history))
      : h("p", { class: "muted" }, "No attempt recorded."),
    h("h2", {}, "Body"),
    h("pre", { id: "delivery-body" }, full.body_text ?? JSON.stringify(full.body, null, 2)));
}

async function replayFilter(e) {
  const p = params();
  const n = e.target.textContent.replace(/\D/g, "");
  if (!confirm(`Replay ${Number(n).toLocaleString("en-US")} dead letters of ${p.subscriber}? They go out again, each key in order.`)) return;
  e.target.disabled = true;
  const payload = { subscriber: p.subscriber };
  for (const k of ["type", "key", "since", "until"]) if (p[k]) payload[k] = p[k];
  if (Object.keys(payload).length === 1) payload.all = true;
  const r = await act("Replay " + p.subscriber, "/deliveries/replay", payload);
  if (r) toast(`Replayed ${r.replayed} dead letters of ${p.subscriber}`);
  render();
}

// ---- backfills ----------------------------------------------------------------------

async function backfills(main) {
  const { backfills: list } = await api("/backfills");
  const rows = list.map((b) => {
    const est = b.rows_estimate || 0;
    const share = b.status === "done" ? 1 : est > 0 ? Math.min(1, b.rows_done / est) : 0;
    const rate = b.seconds > 0 ? b.rows_done / b.seconds : 0;
    const eta = b.status === "running" && rate > 0 && est > b.rows_done ? (est - b.rows_done) / rate : null;
    const steer = (action, label, cls) => h("button", { class: cls, "data-action": action,
      onclick: async () => { await act(`${label} backfill ${b.id}`, `/backfills/${b.id}/${action}`); render(); } }, label);
    return h("tr", { "data-backfill": b.id },
      h("td", { class: "num" }, b.id),
      h("td", {}, b.subscriber, b.initial ? h("div", { class: "muted small" }, "initial") : null),
      h("td", { class: "small" }, b.document ? "document " + b.document : b.tables.join(", "), b.where ? h("div", { class: "muted mono" }, "where " + b.where) : null),
      h("td", {}, badge(b.status), b.error ? h("div", { class: "error small" }, b.error) : null),
      h("td", {}, h("div", { class: "bar", title: Math.round(share * 100) + "%" }, h("span", { style: `width:${(share * 100).toFixed(1)}%` })),
        h("div", { class: "muted small" }, `${num(b.rows_done)} of ${est ? "~" + num(est) : "?"} rows · ${Math.round(share * 100)}%`)),
      h("td", { class: "num" }, rate ? num(rate) + "/s" : "–"),
      h("td", { class: "num" }, eta === null ? "–" : seconds(eta)),
      h("td", { class: "small" }, b.started_at ? ago(b.started_at) : "not started"),
      h("td", {}, b.status === "running" || b.status === "pending" ? steer("pause", "Pause", "secondary") : null,
        b.status === "paused" || b.status === "failed" ? steer("resume", "Resume", "secondary") : null, " ",
        ["running", "pending", "paused"].includes(b.status) ? steer("cancel", "Cancel", "danger") : null));
  });
  main.replaceChildren(h("h1", {}, "Backfills"),
    h("p", { class: "muted" }, "Start one with ", h("code", {}, "walhook backfill start --subscriber NAME"), " or ", h("code", {}, "POST /backfills"), "; a subscriber with initial_backfill gets one when it first appears."),
    h("table", { id: "backfills" },
      h("thead", {}, h("tr", {}, ["#", "Subscriber", "What", "Status", "Progress", "Rate", "ETA", "Started", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No backfill yet.")))));
}

// ---- config -------------------------------------------------------------------------

async function config(main) {
  const c = await api("/config");
  const rules = (c.events || []).map((r, i) => h("tr", {}, h("td", { class: "num" }, i), h("td", { class: "mono" }, r.table),
    h("td", {}, r.name || "(default)"), h("td", {}, (r.on || []).join(", ")), h("td", { class: "mono small" }, r.when || "")));
  const subs = (c.subscribers || []).map((s) => h("tr", {}, h("td", {}, s.name), h("td", { class: "mono small" }, s.url),
    h("td", { class: "small" }, (s.events || ["*"]).join(", ")), h("td", {}, s.format || "standard")));
  main.replaceChildren(h("h1", {}, "Config"),
    h("p", { class: "muted" }, "As loaded (after ${VAR} expansion, WALHOOK_ overrides and reloads), with secrets masked."),
    h("h2", {}, "Rules"), h("table", {}, h("thead", {}, h("tr", {}, ["#", "Table", "Event", "On", "When"].map((x) => h("th", {}, x)))), h("tbody", {}, rules)),
    h("h2", {}, "Subscribers"), h("table", {}, h("thead", {}, h("tr", {}, ["Name", "URL", "Events", "Format"].map((x) => h("th", {}, x)))), h("tbody", {}, subs)),
    h("h2", {}, "Everything"), h("pre", { id: "config-json" }, JSON.stringify(c, null, 2)));
}

// ---- routing ------------------------------------------------------------------------

const PAGES = { overview, subscribers, deliveries, backfills, config };

let rendering = false;
let again = false;

// One render at a time; a render asked for meanwhile follows the one running.
async function render() {
  if (rendering) { again = true; return; }
  rendering = true;
  try {
    do {
      again = false;
      await renderPage();
    } while (again);
  } finally {
    rendering = false;
  }
}

async function renderPage() {
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1] || "overview";
  const page = PAGES[name] || overview;
  const main = document.getElementById("page");
  if (current !== name) {
    current = name;
    selected = null;
    main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  }
  try {
    await page(main);
    offline("");
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString() + " · refreshes every 2 s";
  } catch (e) {
    if (e.message !== "logged out") offline("Cannot read from walhook: " + e.message);
  }
}

async function start() {
  try {
    const s = await api("/session");
    csrf = s.csrf;
    const o = await api("/overview");
    setRole(o.role);
  } catch (e) {
    offline("Cannot read from walhook: " + e.message);
  }
  window.addEventListener("hashchange", render);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) render(); });
  await render();
  timer = setInterval(() => {
    // Not in a tab nobody looks at, nor while the operator types in a filter.
    if (document.hidden) return;
    const f = document.activeElement;
    if (current === "deliveries" && f && f.form && f.form.id === "delivery-filters") return;
    render();
  }, REFRESH_MS);
}

start();
