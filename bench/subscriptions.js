#!/usr/bin/env node
// Per-parcel subscriptions: an event costs work in proportion to the clients that want it.
//
//   node bench/subscriptions.js [--clients 5000] [--events 2000]
//
// One server process (this one, publishing through the public API) and one client process
// (npm `ws`, spawned) holding --clients connections. Three phases, each publishing --events
// events, measuring the server process's CPU time per event (process.cpuUsage, user + system):
//   1. firehose:   every client receives every event            (work ∝ all clients)
//   2. filtered:   each client follows 3 parcels of its own;
//                  events for parcels nobody follows             (work ∝ 0 interested clients)
//   3. filtered:   events for parcels exactly one client follows (work ∝ 1 interested client)
// The clients count what they receive, so the deliveries are checked, not assumed.
'use strict';

const { spawn } = require('node:child_process');
const path = require('node:path');
const jwt = require('jsonwebtoken');
const rt = require('..');

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const CLIENTS = arg('clients', 5000);
const EVENTS = arg('events', 2000);
const SECRET = 'bench-subscriptions-secret';

const CLIENT_SCRIPT = `
const WebSocket = require(${JSON.stringify(require.resolve('ws'))});
const [url, n, mode] = process.argv.slice(1);
let open = 0, received = 0;
const sockets = [];
function connect(i) {
  const parcels = mode === 'filtered' ? '&parcels=' + ['a', 'b', 'c'].map((p) => p + i).join(',') : '';
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url + parcels);
    ws.on('message', (d) => { const t = d.toString(); if (t.includes('parcel_updated')) received++; });
    ws.on('open', () => { open++; resolve(); });
    ws.on('error', reject);
    sockets.push(ws);
  });
}
(async () => {
  for (let i = 0; i < Number(n); i += 200) {
    await Promise.all(Array.from({ length: Math.min(200, Number(n) - i) }, (_, k) => connect(i + k)));
  }
  console.log('ready ' + open);
  process.stdin.on('data', (d) => {
    if (d.toString().includes('count')) console.log('received ' + received);
    if (d.toString().includes('quit')) { for (const s of sockets) s.terminate(); process.exit(0); }
  });
})().catch((e) => { console.error(e); process.exit(1); });
`;

function startClients(url, mode) {
  const child = spawn(process.execPath, ['-e', CLIENT_SCRIPT, url, String(CLIENTS), mode], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const waitFor = (re) => new Promise((resolve, reject) => {
    const t = setInterval(() => {
      const m = re.exec(out);
      if (m) { clearInterval(t); out = out.slice(m.index + m[0].length); resolve(m); }
    }, 20);
    setTimeout(() => { clearInterval(t); reject(new Error(`timeout waiting for ${re}`)); }, 120_000);
  });
  return {
    ready: waitFor(/ready (\d+)\n/),
    async received() { child.stdin.write('count\n'); return Number((await waitFor(/received (\d+)\n/))[1]); },
    quit() { child.stdin.write('quit\n'); },
  };
}

/** Publishes `ids` and waits until the clients received `expected` frames in all; the CPU the
 * whole server process (JS thread and engine threads) spent meanwhile, per event. */
async function cpuPerEvent(ids, clients, expected) {
  const base = await clients.received();
  const before = process.cpuUsage();
  // In flight at most 500 at a time, as a marketplace burst would be.
  for (let i = 0; i < ids.length; i += 500) await Promise.all(ids.slice(i, i + 500).map((id) => rt.publishParcelUpdate(id)));
  const delivered = (await settle(clients, base + expected)) - base;
  const used = process.cpuUsage(before);
  return { cpuUsPerEvent: (used.user + used.system) / ids.length, delivered };
}

async function settle(clients, expected) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const got = await clients.received();
    if (got >= expected || Date.now() > deadline) return got;
    await new Promise((r) => setTimeout(r, 200));
  }
}

(async () => {
  const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: SECRET, messagesPerSecond: 0 });
  const url = `ws://127.0.0.1:${server.port}/ws?token=${jwt.sign({ sub: 'bench' }, SECRET)}`;
  const results = [];

  const fire = startClients(url, 'firehose');
  await fire.ready;
  const a = await cpuPerEvent(Array.from({ length: EVENTS }, (_, i) => `x${i}`), fire, EVENTS * CLIENTS);
  results.push({ phase: 'firehose: every client gets every event', interested: CLIENTS, ...a, expected: EVENTS * CLIENTS });
  fire.quit();
  await new Promise((r) => setTimeout(r, 1000));

  const filt = startClients(url, 'filtered');
  await filt.ready;
  const b = await cpuPerEvent(Array.from({ length: EVENTS }, (_, i) => `nobody${i}`), filt, 0);
  results.push({ phase: 'filtered: parcels nobody follows', interested: 0, ...b, expected: 0 });
  const c = await cpuPerEvent(Array.from({ length: EVENTS }, (_, i) => `a${i % CLIENTS}`), filt, EVENTS);
  results.push({ phase: 'filtered: parcels one client follows', interested: 1, ...c, expected: EVENTS });
  filt.quit();
  await server.close();

  console.log(`\n${CLIENTS} clients, ${EVENTS} events per phase (server-process CPU per published event)\n`);
  console.log('| phase | clients interested per event | CPU µs per event | deliveries (expected) |');
  console.log('| --- | ---: | ---: | ---: |');
  for (const r of results) {
    console.log(`| ${r.phase} | ${r.interested} | ${r.cpuUsPerEvent.toFixed(1)} | ${r.delivered} (${r.expected}) |`);
  }
  const bad = results.filter((r) => r.delivered !== r.expected);
  if (bad.length) {
    console.error('deliveries differ from what was expected:', bad);
    process.exitCode = 1;
  }
})().catch((err) => { console.error(err); process.exit(1); });
