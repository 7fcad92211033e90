"""The dashboard's page and login form: static HTML and JS (no build step, no CDN). Every value
from the API is put in the page with ``textContent``, never as HTML."""

LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>EarnORM events: sign in</title>
<style>body{font:15px system-ui,sans-serif;margin:4rem auto;max-width:24rem}
input,button{font:inherit;padding:.4rem}</style></head><body>
<h1>EarnORM events</h1><form method="post" action="login">
<label>Dashboard token <input type="password" name="token" autofocus></label>
<button type="submit">Sign in</button></form></body></html>"""

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>EarnORM events</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:.7rem 1.2rem;display:flex;gap:1.5rem;
align-items:center}
header h1{font-size:1.1rem;margin:0} nav button{background:none;border:0;color:#cfd6e4;
font:inherit;cursor:pointer;padding:.3rem .6rem} nav button.on{color:#fff;
border-bottom:2px solid #6ea8fe}
main{padding:1rem 1.2rem} .cards{display:flex;gap:.8rem;flex-wrap:wrap}
.card{background:#fff;border-radius:6px;padding:.7rem 1rem;min-width:9rem;
box-shadow:0 1px 2px #0001} .card b{display:block;font-size:1.5rem}
table{border-collapse:collapse;width:100%;background:#fff;margin-top:.8rem}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e5e8ee;
vertical-align:top} th{background:#eef1f6}
pre{background:#fff;padding:.7rem;overflow:auto;max-height:24rem;white-space:pre-wrap}
button.act{font:inherit;padding:.15rem .5rem;margin-right:.3rem;cursor:pointer}
svg{background:#fff;border-radius:6px;margin-top:.8rem} .muted{color:#6b7586}
#live{margin-left:auto;font-size:.85rem} .bad{color:#b42318}
</style></head><body>
<header><h1>EarnORM events · <span id="queue"></span></h1>
<nav><button data-tab="overview" class="on">Queue</button><button data-tab="consumers">
Consumers</button><button data-tab="delayed">Delayed</button><button data-tab="failed">
Failed <span id="failed-count"></span></button><button data-tab="event">Event</button></nav>
<span id="live" class="muted"></span></header>
<main>
<section id="overview"><div class="cards" id="cards"></div>
<h3>Throughput (events/s, last 5 minutes)</h3><svg id="rate" width="720" height="120"></svg>
<h3>Processing time p50 / p95 (ms)</h3><svg id="timing" width="720" height="120"></svg>
<h3>Waiting on flow control</h3>
<table><thead><tr><th>Rate-limited event</th><th>Its waiting events reach (s ahead)</th></tr>
</thead><tbody id="rate-rows"></tbody></table>
<table><thead><tr><th>Concurrency key (max:key)</th><th>Events waiting for a slot</th></tr>
</thead><tbody id="key-rows"></tbody></table>
</section>
<section id="consumers" hidden><table><thead><tr><th>Consumer</th><th>Host</th><th>PID</th>
<th>Status</th><th>Last heartbeat</th><th>Running</th><th>Processed</th><th>Failed</th>
<th>Rate waits</th><th>Key waits</th></tr>
</thead><tbody id="consumer-rows"></tbody></table></section>
<section id="delayed" hidden><table><thead><tr><th>Due</th><th>Event</th><th>Id</th>
<th>Retries</th><th></th></tr></thead><tbody id="delayed-rows"></tbody></table></section>
<section id="failed" hidden>
<label>Event <input id="f-event" placeholder="order.paid"></label>
<label>Reason <select id="f-reason"><option value="">any</option>
<option>handler_error</option><option>no_handler</option><option>undecodable</option>
<option>expired</option><option>delivery_limit</option><option>too_large</option><option>no_concurrency_key</option>
<option>eta_out_of_range</option><option>unsupported_protocol</option></select></label>
<button class="act" id="retry-all">Retry all shown</button>
<button class="act" id="purge">Remove all shown</button>
<table><thead><tr><th>Job</th><th>Event</th><th>Reason</th><th>Attempts</th>
<th>Last failed</th><th>Error</th><th>Data</th><th></th></tr></thead>
<tbody id="failed-rows"></tbody></table>
<h3 id="job-title" hidden>Job</h3><pre id="job-detail" hidden></pre></section>
<section id="event" hidden><label>Event id <input id="event-id" size="40"></label>
<button class="act" id="event-go">Look up</button>
<button class="act" id="event-revoke">Revoke</button>
<button class="act" id="event-terminate">Revoke and stop it if running</button>
<p><b id="event-progress" hidden></b> <progress id="event-bar" hidden></progress></p>
<pre id="event-detail"></pre></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let tab = "overview", history = [], lastProcessed = null, lastAt = null;
function csrf() {
  const m = document.cookie.match(/(?:^|; )earnorm_csrf=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : "";
}
async function api(path, options = {}) {
  const opts = {credentials: "same-origin", ...options};
  if (opts.method && opts.method !== "GET") opts.headers = {"X-CSRF-Token": csrf()};
  const r = await fetch("api/" + path, opts);
  if (!r.ok) throw new Error((await r.json()).error || r.statusText);
  return r.json();
}
function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" :
    (typeof value === "object" ? JSON.stringify(value) : String(value));
  row.appendChild(td); return td;
}
function rows(body, items, render) {
  const tbody = $(body); tbody.replaceChildren();
  for (const item of items) { const tr = document.createElement("tr"); render(tr, item);
    tbody.appendChild(tr); }
  if (!items.length) { const tr = document.createElement("tr"); const td = cell(tr, "none");
    td.colSpan = 8; td.className = "muted"; tbody.appendChild(tr); }
}
function button(parent, label, onClick) {
  const b = document.createElement("button"); b.className = "act"; b.textContent = label;
  b.addEventListener("click", onClick); parent.appendChild(b); return b;
}
function chart(id, series, colors) {
  const svg = $(id), w = 720, h = 120; svg.replaceChildren();
  const max = Math.max(1, ...series.flat().filter((v) => v !== null));
  series.forEach((values, i) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("fill", "none"); line.setAttribute("stroke", colors[i]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("points", values.map((v, x) =>
      `${(x / 149) * w},${h - ((v || 0) / max) * (h - 10) - 5}`).join(" "));
    svg.appendChild(line);
  });
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", 6); label.setAttribute("y", 14); label.setAttribute("fill", "#6b7586");
  label.textContent = "max " + max.toFixed(1); svg.appendChild(label);
}
async function overview() {
  const [q] = await api("queues");
  $("queue").textContent = q.queue;
  $("failed-count").textContent = q.failed ? `(${q.failed})` : "";
  const cards = $("cards"); cards.replaceChildren();
  const ready = Object.entries(q.ready).map(([p, n]) => `p${p} ${n}`).join(" · ");
  for (const [name, value, note] of [["Ready", q.ready_total, ready], ["Delayed", q.delayed,
      q.next_due_s === null ? "" : `next in ${q.next_due_s}s`], ["In flight", q.inflight, ""],
      ["Failed", q.failed, ""], ["Processed", q.counters.processed, ""],
      ["Revoked", q.revoked, `${q.counters.revoked} not run`],
      ["Consumers", q.consumers.filter((c) => c.status === "alive").length, "alive"]]) {
    const card = document.createElement("div"); card.className = "card";
    const b = document.createElement("b"); b.textContent = value;
    const small = document.createElement("span"); small.className = "muted";
    small.textContent = name + (note ? " · " + note : "");
    card.append(b, small); cards.appendChild(card);
  }
  const now = Date.now();
  const rate = lastProcessed === null ? 0 :
    Math.max(0, (q.counters.processed - lastProcessed) / ((now - lastAt) / 1000));
  lastProcessed = q.counters.processed; lastAt = now;
  history.push({rate, p50: q.processing_ms.p50, p95: q.processing_ms.p95});
  history = history.slice(-150);
  rows("rate-rows", Object.entries(q.rate_limited || {}), (tr, [name, ahead]) => {
    cell(tr, name); cell(tr, ahead); });
  rows("key-rows", Object.entries(q.key_limited || {}), (tr, [key, waiting]) => {
    cell(tr, key); cell(tr, waiting); });
  chart("rate", [history.map((s) => s.rate)], ["#3b82f6"]);
  chart("timing", [history.map((s) => s.p50), history.map((s) => s.p95)],
        ["#10b981", "#f59e0b"]);
}
async function consumers() {
  rows("consumer-rows", await api("consumers"), (tr, c) => {
    for (const v of [c.id, c.host, c.pid]) cell(tr, v);
    const s = cell(tr, c.status); if (c.status !== "alive") s.className = "bad";
    cell(tr, c.last_heartbeat_age_s === null ? "" : `${c.last_heartbeat_age_s}s ago`);
    for (const v of [c.running, c.processed, c.failed, c.rate_waits, c.key_waits]) cell(tr, v);
  });
}
async function delayed() {
  rows("delayed-rows", await api("delayed?limit=100"), (tr, d) => {
    cell(tr, new Date(d.due_ms).toISOString()); cell(tr, d.name); cell(tr, d.id);
    cell(tr, d.retries);
    if (d.revoked) { cell(tr, "revoked: will not run").className = "muted"; return; }
    const td = document.createElement("td"); tr.appendChild(td);
    button(td, "Revoke", async () => {
      if (!confirm(`Revoke ${d.name} ${d.id}? It will not run.`)) return;
      await api("revoke/" + encodeURIComponent(d.id), {method: "POST"}); refresh();
    }).dataset.revoke = d.id;
  });
}
function filterQuery() {
  const p = new URLSearchParams();
  if ($("f-event").value) p.set("event", $("f-event").value);
  if ($("f-reason").value) p.set("reason", $("f-reason").value);
  return p.toString();
}
async function failed() {
  rows("failed-rows", await api("failed?" + filterQuery()), (tr, j) => {
    for (const v of [j.job_id, j.name, j.reason, j.attempts, j.last_failed_at,
                     j.error_type ? `${j.error_type}: ${j.error}` : j.detail, j.data]) cell(tr, v);
    const td = document.createElement("td"); tr.appendChild(td);
    button(td, "Details", async () => {
      const job = await api("failed/" + encodeURIComponent(j.job_id));
      $("job-title").hidden = false; $("job-title").textContent = "Job " + j.job_id;
      $("job-detail").hidden = false;
      $("job-detail").textContent = (job.traceback || "") + "\\n" + JSON.stringify(job, null, 2);
    });
    button(td, "Retry", async () => {
      await api("failed/" + encodeURIComponent(j.job_id) + "/retry", {method: "POST"});
      refresh();
    }).dataset.retry = j.job_id;
    button(td, "Remove", async () => {
      if (!confirm("Remove job " + j.job_id + "?")) return;
      await api("failed/" + encodeURIComponent(j.job_id), {method: "DELETE"}); refresh();
    });
  });
}
$("retry-all").addEventListener("click", async () => {
  if (!confirm("Retry every failed job shown?")) return;
  await api("failed/retry-all?" + filterQuery(), {method: "POST"}); refresh();
});
$("purge").addEventListener("click", async () => {
  if (!confirm("Remove every failed job shown? This cannot be undone.")) return;
  await api("failed/purge?" + filterQuery(), {method: "POST"}); refresh();
});
async function lookUp() {
  const id = $("event-id").value.trim(); if (!id) return;
  try {
    const found = await api("events/" + encodeURIComponent(id));
    if (found.where === "running") {
      const p = found.progress, info = p.info || {};
      const of = info.total === null || info.total === undefined ? "" : ` of ${info.total}`;
      $("event-progress").hidden = false;
      $("event-progress").textContent = `${p.state}: ${info.done}${of}`;
      if (info.total) { $("event-bar").hidden = false;
        $("event-bar").max = info.total; $("event-bar").value = info.done; }
    } else { $("event-progress").hidden = true; $("event-bar").hidden = true; }
    $("event-detail").textContent = JSON.stringify(found, null, 2);
  } catch (e) { $("event-progress").hidden = true; $("event-bar").hidden = true;
    $("event-detail").textContent = String(e.message); }
}
$("event-go").addEventListener("click", lookUp);
for (const [id, terminate] of [["event-revoke", false], ["event-terminate", true]]) {
  $(id).addEventListener("click", async () => {
    const job = $("event-id").value.trim(); if (!job) return;
    if (!confirm(`Revoke ${job}?` + (terminate ? " If it is running it is cancelled." : "")))
      return;
    try { $("event-detail").textContent = JSON.stringify(await api(
            "revoke/" + encodeURIComponent(job) + (terminate ? "?terminate=1" : ""),
            {method: "POST"}), null, 2); }
    catch (e) { $("event-detail").textContent = String(e.message); }
  });
}
for (const el of ["f-event", "f-reason"]) $(el).addEventListener("change", () => refresh());
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
  tab = b.dataset.tab;
  document.querySelectorAll("nav button").forEach((x) => x.classList.toggle("on", x === b));
  document.querySelectorAll("main section").forEach((s) => { s.hidden = s.id !== tab; });
  refresh();
}));
const views = {overview, consumers, delayed, failed, event: lookUp};  // live while shown
async function refresh() {
  try {
    if (tab !== "overview") await overview();
    await views[tab]();
    $("live").textContent = "live · " + new Date().toLocaleTimeString();
  } catch (e) { $("live").textContent = "error: " + e.message; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>"""
