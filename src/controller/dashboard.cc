// The dashboard page, embedded in the binary so `tern controller` serves it with nothing
// else installed. Written by hand; the JS keeps every JSON → HTML step in pure functions
// (buildModel, renderHosts, renderEvents, ...) and only start() touches the DOM, so
// tests evaluate the script under node without a browser.
#include "controller/dashboard.h"

namespace tern::controller {
namespace {

constexpr std::string_view kPage = R"tern_page(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tern dashboard</title>
<style>
  :root { --bg:#0f1419; --panel:#182029; --line:#2a3542; --fg:#d8dee6; --dim:#7f8c99;
          --ok:#3fb950; --warn:#d29922; --bad:#f85149; --mig:#a371f7; --info:#58a6ff; }
  * { box-sizing: border-box; }
  body { margin:0; background:var(--bg); color:var(--fg);
         font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
  header { padding:10px 16px; border-bottom:1px solid var(--line); display:flex;
           gap:16px; align-items:baseline; flex-wrap:wrap; }
  header h1 { font-size:18px; margin:0; }
  .dim { color:var(--dim); }
  .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size:12px; }
  #banner { display:none; padding:8px 16px; background:#5a1d1d; color:#ffd7d5;
            border-bottom:1px solid var(--bad); }
  #banner.show { display:block; }
  #flash { padding:8px 16px; background:#2d1f4d; border-bottom:1px solid var(--mig); }
  #flash:empty { display:none; }
  main { display:grid; grid-template-columns: minmax(0,3fr) minmax(280px,1fr); gap:12px;
         padding:12px 16px; }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
  .host { border:1px solid var(--line); border-radius:6px; margin-bottom:12px; }
  .host > h2 { font-size:14px; margin:0; padding:6px 10px; border-bottom:1px solid var(--line);
               background:var(--panel); }
  .devices { display:flex; flex-wrap:wrap; gap:10px; padding:10px; }
  .device { border:1px solid var(--line); border-radius:6px; padding:8px; min-width:240px;
            flex:1 1 240px; background:var(--panel); }
  .device.dead { opacity:.55; border-style:dashed; }
  .device.draining { border-color:var(--warn); }
  .device h3 { font-size:14px; margin:0 0 4px; display:flex; gap:6px; align-items:center; }
  .badge { font-size:11px; padding:1px 6px; border-radius:9px; border:1px solid var(--line); }
  .badge.live { color:var(--ok); border-color:var(--ok); }
  .badge.dead { color:var(--bad); border-color:var(--bad); }
  .badge.draining { color:var(--warn); border-color:var(--warn); }
  .badge.moving { color:var(--mig); border-color:var(--mig); animation:pulse 1s infinite; }
  .badge.starting { color:var(--warn); border-color:var(--warn); }
  .bar { height:6px; background:var(--line); border-radius:3px; margin:3px 0 6px; }
  .bar > i { display:block; height:100%; border-radius:3px; background:var(--info); }
  .inst { border-top:1px solid var(--line); padding:5px 0 3px; }
  .inst .name { font-weight:600; }
  .slo-ok { color:var(--ok); } .slo-bad { color:var(--bad); }
  .empty { color:var(--dim); font-style:italic; padding:4px 0; }
  #events { list-style:none; margin:0; padding:0; max-height:75vh; overflow-y:auto; }
  #events li { border-left:3px solid var(--line); padding:3px 8px; margin-bottom:4px; }
  #events li.migration { border-color:var(--mig); }
  #events li.restore { border-color:var(--info); }
  #events li.drain { border-color:var(--warn); }
  #events li.fail { border-color:var(--bad); }
  #events li.new { animation:flash 3s ease-out; }
  section > h2 { font-size:14px; margin:0 0 8px; }
  @keyframes pulse { 50% { opacity:.35; } }
  @keyframes flash { from { background:#4b2f86; } to { background:transparent; } }
</style>
</head>
<body>
<header>
  <h1>tern</h1>
  <span id="summary" class="dim">connecting to the controller…</span>
</header>
<div id="banner" role="alert"></div>
<div id="flash"></div>
<main>
  <section><h2>Hosts and devices</h2><div id="hosts"><div class="empty">waiting for the first answer…</div></div></section>
  <section><h2>Recent events</h2><ul id="events"></ul></section>
</main>
<script>
'use strict';
// The controller routes these (controller.h); controller_test requests every API path
// this page names and expects an answer.
const API = { cluster: '/v1/cluster', topology: '/v1/topology', locations: '/v1/locations' };

function esc(s) {
  return String(s === undefined || s === null ? '' : s).replace(/[&<>"']/g,
      c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}
function fmtBytes(n) {
  if (!(n > 0)) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; ++i; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + u[i];
}
function fmtUs(us) {
  if (us < 1000) return us.toFixed(0) + ' µs';
  if (us < 1e6) return (us / 1000).toFixed(1) + ' ms';
  return (us / 1e6).toFixed(2) + ' s';
}
function fmtAgo(ms) {
  if (ms < 1000) return 'now';
  if (ms < 60000) return Math.floor(ms / 1000) + ' s ago';
  if (ms < 3600000) return Math.floor(ms / 60000) + ' min ago';
  return Math.floor(ms / 3600000) + ' h ago';
}

// The kind of a controller event (its text, as controller.cc words it): the class that
// colours it.
function classifyEvent(text) {
  if (/^ERROR|failed|is gone|lost|could not/.test(text)) return 'fail';
  if (/^migrated |^rebalancing: moving /.test(text)) return 'migration';
  if (/^restored |journal of .* is gone/.test(text)) return 'restore';
  if (/^draining |^drained |undrained/.test(text)) return 'drain';
  return 'info';
}
// "migrated ID from A to B (WHY): downtime D ms, total T ms, ..." → its parts, or null.
function parseMigration(text) {
  const m = /^migrated (\S+) from (\S+) to (\S+) \(([^)]*)\): downtime ([\d.]+) ms, total ([\d.]+) ms/
      .exec(text);
  if (!m) return null;
  return { id: m[1], from: m[2], to: m[3], why: m[4], downtime_ms: +m[5], total_ms: +m[6] };
}

// The cluster document (+ the topology, or null) → hosts → devices → instances. Devices
// come from the topology (in its order; one without an agent is dead) and from the
// registered agents; instances from the services, with their agents' telemetry.
function buildModel(cluster, topology) {
  const agents = new Map();
  for (const a of cluster.agents || []) agents.set(a.device, a);
  const drained = new Set(cluster.drained || []);
  const hosts = new Map();
  const devices = new Map();
  const addDevice = (host, name, kind, cores, memory) => {
    if (devices.has(name)) return devices.get(name);
    if (!hosts.has(host)) hosts.set(host, { name: host, devices: [] });
    const a = agents.get(name);
    const d = {
      name, host, kind: (a && a.kind) || kind || '?', cores: (a && a.cores) || cores || 0,
      memory_bytes: (a && a.memory_bytes) || memory || 0,
      status: !a ? 'dead' : (a.draining || drained.has(name)) ? 'draining' : 'live',
      cpu_util: a && typeof a.cpu_util === 'number' ? a.cpu_util : null,
      rss_bytes: a && a.rss_bytes, heartbeat_age_ms: a && a.heartbeat_age_ms,
      instances: []
    };
    hosts.get(host).devices.push(d);
    devices.set(name, d);
    return d;
  };
  for (const h of (topology && topology.hosts) || []) {
    for (const d of h.devices || []) addDevice(h.name, d.name, d.kind, d.cores, d.memory_bytes);
  }
  for (const a of cluster.agents || []) addDevice(a.host || '?', a.device);
  let instances = 0, moving = 0;
  for (const s of cluster.services || []) {
    for (const i of s.instances || []) {
      const d = devices.get(i.device) || addDevice(i.host || '?', i.device);
      const a = agents.get(i.device);
      const t = (a && a.instances && a.instances[i.id]) || {};
      d.instances.push({
        id: i.id, service: s.name, state: i.moving ? 'moving' : i.state, epoch: i.epoch,
        stateful: !!s.stateful, durable: !!s.durable, checkpoint_ms: s.checkpoint_ms || 0,
        p99_us: typeof i.p99_us === 'number' ? i.p99_us : null, slo_p99_us: s.slo_p99_us || 0,
        rate: t.rate || 0, requests: t.requests || 0,
        checkpoint: i.checkpoint || null, journal: i.journal || null
      });
      ++instances;
      if (i.moving) ++moving;
    }
  }
  for (const d of devices.values()) d.instances.sort((x, y) => x.id < y.id ? -1 : 1);
  return {
    hosts: [...hosts.values()], devices: devices.size, instances, moving,
    services: (cluster.services || []).length,
    live: [...devices.values()].filter(d => d.status !== 'dead').length
  };
}

function renderInstance(i) {
  const tags = [];
  if (i.durable) tags.push('durable');
  else if (i.stateful) tags.push('stateful');
  else tags.push('stateless');
  let slo = '';
  if (i.p99_us !== null) {
    const over = i.slo_p99_us > 0 && i.p99_us > i.slo_p99_us;
    slo = '<span class="' + (i.slo_p99_us > 0 ? (over ? 'slo-bad' : 'slo-ok') : '') + '">p99 ' +
        fmtUs(i.p99_us) + (i.slo_p99_us > 0 ? ' / SLO ' + fmtUs(i.slo_p99_us) : '') + '</span>';
  } else if (i.slo_p99_us > 0) {
    slo = '<span class="dim">p99 – / SLO ' + fmtUs(i.slo_p99_us) + '</span>';
  }
  const lines = [];
  if (i.checkpoint) {
    lines.push('checkpoint ' + fmtBytes(i.checkpoint.bytes) + ', ' + fmtAgo(i.checkpoint.age_ms || 0) +
        ' on ' + esc((i.checkpoint.keepers || []).join(', ') || i.checkpoint.device));
  }
  if (i.journal) {
    let j = 'journal on ' + esc((i.journal.keepers || []).join(', ') || '–');
    if ((i.journal.out || []).length) {
      j += ' <span class="slo-bad">(degraded: ' + esc(i.journal.out.join(', ')) + ' out)</span>';
    }
    lines.push(j);
  }
  return '<div class="inst" data-instance="' + esc(i.id) + '">' +
      '<span class="name">' + esc(i.id) + '</span> <span class="dim">' + esc(i.service) + '</span> ' +
      '<span class="badge ' + esc(i.state) + '">' + esc(i.state) + '</span> ' +
      '<span class="badge">' + tags.join(' ') + '</span>' +
      [[slo, i.rate > 0 ? i.rate.toFixed(1) + ' req/s' : ''].filter(Boolean).join(' · ')]
          .concat(lines).filter(Boolean).map(l => '<div class="mono dim">' + l + '</div>').join('') +
      '</div>';
}

function renderDevice(d) {
  let util = '';
  if (d.cpu_util !== null) {
    const pct = Math.round(d.cpu_util * 100);
    util = '<div class="mono dim">cpu ' + pct + '% of ' + esc(d.cores) + ' cores' +
        (d.rss_bytes ? ' · rss ' + fmtBytes(d.rss_bytes) : '') +
        (d.memory_bytes ? ' / ' + fmtBytes(d.memory_bytes) : '') + '</div>' +
        '<div class="bar"><i style="width:' + Math.min(pct, 100) + '%"></i></div>';
  } else if (d.status === 'dead') {
    util = '<div class="mono dim">no agent registered</div>';
  }
  const inst = d.instances.length ? d.instances.map(renderInstance).join('')
                                  : '<div class="empty">no instances</div>';
  return '<div class="device ' + d.status + '" data-device="' + esc(d.name) + '">' +
      '<h3>' + esc(d.name) + ' <span class="badge">' + esc(d.kind) + '</span>' +
      '<span class="badge ' + d.status + '">' + d.status + '</span></h3>' + util + inst + '</div>';
}

function renderHosts(model) {
  if (!model.hosts.length) {
    return '<div class="empty">no devices: no agent has registered and the controller has no ' +
        'topology (start agents with --controller, or `tern up TOPOLOGY`)</div>';
  }
  return model.hosts.map(h => '<div class="host"><h2>host ' + esc(h.name) + '</h2>' +
      '<div class="devices">' + h.devices.map(renderDevice).join('') + '</div></div>').join('');
}

// Events newest first; those after `seenMs` get the class "new" (they flash once).
function renderEvents(events, nowMs, seenMs) {
  if (!events || !events.length) return '<li class="empty">no events yet</li>';
  return events.slice().reverse().map(e => {
    const kind = classifyEvent(e.event);
    const cls = kind + (e.unix_ms > seenMs ? ' new' : '');
    return '<li class="' + cls + '"><span class="dim mono">' + fmtAgo(nowMs - e.unix_ms) +
        '</span> ' + esc(e.event) + '</li>';
  }).join('');
}

// The newest migration within `windowMs` of now, as a one-line callout, or "".
function renderFlash(events, nowMs, windowMs) {
  for (let k = (events || []).length - 1; k >= 0; --k) {
    const e = events[k];
    if (nowMs - e.unix_ms > windowMs) break;
    const m = parseMigration(e.event);
    if (m) {
      return '⇄ migrated <b>' + esc(m.id) + '</b> ' + esc(m.from) + ' → ' + esc(m.to) +
          ': downtime <b>' + m.downtime_ms.toFixed(2) + ' ms</b> (total ' + m.total_ms.toFixed(1) +
          ' ms, ' + esc(m.why) + ')';
    }
  }
  return '';
}

function renderSummary(cluster, model) {
  return 'controller ' + esc(cluster.controller) + ' (leader ' + esc(cluster.leader || '–') +
      ') · store ' + esc(cluster.store) + ' · ' + model.live + '/' + model.devices + ' devices live · ' +
      model.services + ' services · ' + model.instances + ' instances' +
      (model.moving ? ' · <b>' + model.moving + ' moving</b>' : '');
}

function renderBanner(error, retryMs) {
  return 'controller unreachable: ' + esc(error) + ' — retrying in ' + Math.round(retryMs / 1000) +
      ' s (is `tern controller` still running?)';
}

// ---- the browser side: fetch, render, repeat -------------------------------------------
function start() {
  const $ = id => document.getElementById(id);
  let topology;  // undefined: not fetched yet; null: the controller has none
  let seenMs = 0, failures = 0;
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  async function get(url, timeoutMs) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs);
    try {
      const r = await fetch(url, { signal: ctl.signal, cache: 'no-store' });
      const body = await r.text();
      if (!r.ok) {
        let msg = 'HTTP ' + r.status;
        try { msg += ': ' + JSON.parse(body).error.message; } catch (_) {}
        const e = new Error(msg);
        e.status = r.status;
        throw e;
      }
      return JSON.parse(body);
    } finally {
      clearTimeout(timer);
    }
  }
  async function loop() {
    for (;;) {
      let version = 0;
      try {
        if (topology === undefined) {
          try {
            topology = await get(API.topology, 5000);
          } catch (e) {
            if (e.status !== 404) throw e;
            topology = null;
          }
        }
        const cluster = await get(API.cluster, 10000);
        const now = Date.now();
        const model = buildModel(cluster, topology);
        $('summary').innerHTML = renderSummary(cluster, model);
        $('hosts').innerHTML = renderHosts(model);
        $('events').innerHTML = renderEvents(cluster.events, now, seenMs);
        $('flash').innerHTML = renderFlash(cluster.events, now, 15000);
        for (const e of cluster.events || []) seenMs = Math.max(seenMs, e.unix_ms);
        $('banner').classList.remove('show');
        failures = 0;
        version = cluster.locations_version || 0;
      } catch (e) {
        ++failures;
        const retry = Math.min(1000 * failures, 5000);
        $('banner').innerHTML = renderBanner(e.message || e, retry);
        $('banner').classList.add('show');
        topology = topology === null ? null : undefined;
        await sleep(retry);
        continue;
      }
      // Wakes at once when a location changes (a migration, a re-placement), else in 1 s.
      try {
        await get(API.locations + '?after=' + version + '&wait_ms=1000', 5000);
      } catch (_) {
        await sleep(1000);
      }
    }
  }
  loop();
}
if (typeof document !== 'undefined') start();
</script>
</body>
</html>
)tern_page";

}  // namespace

std::string_view DashboardHtml() { return kPage; }

}  // namespace tern::controller
