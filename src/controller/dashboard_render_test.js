// Runs the dashboard page's render functions under node, without a browser:
//   node dashboard_render_test.js PAGE.html CLUSTER.json TOPOLOGY.json NOW_MS
// PAGE is the page as the controller served it; CLUSTER and TOPOLOGY its answers to
// GET /v1/cluster and GET /v1/topology ("null" = none). Prints one JSON object:
// {model, hosts, events, flash, summary} (controller_test.cc checks them against the
// cluster it built). Exits 1, saying why, when the page's own invariants fail (escaping,
// empty states), which the live cluster cannot exercise.
'use strict';
const fs = require('fs');
const vm = require('vm');

function fail(why) {
  process.stderr.write('dashboard_render_test: ' + why + '\n');
  process.exit(1);
}

const [page, clusterPath, topologyPath, nowArg] = process.argv.slice(2);
if (!nowArg) fail('usage: node dashboard_render_test.js PAGE CLUSTER TOPOLOGY NOW_MS');
const html = fs.readFileSync(page, 'utf8');
const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map(m => m[1]);
if (scripts.length !== 1) fail('expected one inline <script>, found ' + scripts.length);

// No `document` in the context: the page must not start its fetch loop, only define.
const ctx = vm.createContext({});
vm.runInContext(scripts[0] + '\n;globalThis.__api = {buildModel, renderHosts, renderEvents, ' +
                'renderFlash, renderSummary, renderBanner, classifyEvent, parseMigration};', ctx);
const d = ctx.__api;

const cluster = JSON.parse(fs.readFileSync(clusterPath, 'utf8'));
const topology = JSON.parse(fs.readFileSync(topologyPath, 'utf8'));
const now = Number(nowArg);
const model = d.buildModel(cluster, topology);
const out = {
  model,
  hosts: d.renderHosts(model),
  events: d.renderEvents(cluster.events, now, 0),
  flash: d.renderFlash(cluster.events, now, 600000),
  summary: d.renderSummary(cluster, model),
};

// Invariants no live cluster shows.
const hostile = '<img src=x onerror=alert(1)>';
const ev = d.renderEvents([{ unix_ms: now, event: 'service ' + hostile + ' removed' }], now, 0);
if (ev.includes('<img')) fail('an event is not escaped: ' + ev);
const evil = d.renderHosts(d.buildModel({ agents: [{ device: hostile, host: 'h', kind: 'cpu' }] }, null));
if (evil.includes('<img')) fail('a device name is not escaped: ' + evil);
if (!d.renderHosts(d.buildModel({}, null)).includes('no devices')) fail('no empty state for devices');
if (!d.renderEvents([], now, 0).includes('no events')) fail('no empty state for events');
if (!d.renderBanner('connection refused', 2000).includes('unreachable')) fail('no error banner');
const m = d.parseMigration('migrated counter-1 from cpu0 to cpu1 (requested): downtime 1.25 ms, ' +
                           'total 9.5 ms, 4.0 KiB sent (64.0 KiB raw), 2 rounds, 0 forwarded (epoch 3)');
if (!m || m.id !== 'counter-1' || m.to !== 'cpu1' || m.downtime_ms !== 1.25) {
  fail('parseMigration: ' + JSON.stringify(m));
}
if (d.classifyEvent('migration of x from a to b failed: boom; x keeps serving on a') !== 'fail') {
  fail('a failed migration is not classed as a failure');
}
const over = d.renderHosts(d.buildModel({
  agents: [{ device: 'c', host: 'h', kind: 'cpu', instances: {} }],
  services: [{ name: 's', slo_p99_us: 1000, instances: [{ id: 's-1', device: 'c', state: 'running',
                                                           p99_us: 5000 }] }]
}, null));
if (!over.includes('class="slo-bad">p99 5.0 ms / SLO 1.0 ms')) fail('a missed SLO is not marked: ' + over);
process.stdout.write(JSON.stringify(out) + '\n');
