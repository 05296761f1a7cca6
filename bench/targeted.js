#!/usr/bin/env node
// Events addressed to users: an addressed event costs work in proportion to its user's
// connections, as a filtered event does; a publish to offline users costs its inbox writes.
//
//   node bench/targeted.js [--clients 10000] [--events 2000] [--offline 1000] [--redis URL]
//
// One server process (this one, publishing through the public API) and one client process
// (npm `ws`, spawned) holding --clients connections, each authenticated as its own user
// (u0, u1, ...). Phases, each measuring the server process's CPU time per publish
// (process.cpuUsage, user + system; JS thread and engine threads together):
//   1. broadcast:           every client receives every event           (work ∝ all clients)
//   2. addressed, online:   each event to one connected user            (work ∝ 1 connection)
//   3. addressed, offline:  each event to --offline users not connected (work ∝ inbox writes)
// The clients count what they receive, so the deliveries are checked, not assumed.
// With --redis URL the server runs on the Redis bus (presence and inboxes in Redis): each row then
// also shows Redis's own CPU per publish (INFO cpu, read with redis-cli), and a last row the
// time of presence() for 1,000 users.
'use strict';

const { spawn } = require('node:child_process');
const rt = require('..');

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const CLIENTS = arg('clients', 10000);
const EVENTS = arg('events', 2000);
const OFFLINE = arg('offline', 1000);
const SECRET = 'bench-targeted-secret';
const REDIS = (() => {
  const i = process.argv.indexOf('--redis');
  return i > 0 ? process.argv[i + 1] : null;
})();

/** Redis's CPU seconds so far (user + system), or NaN without --redis. */
function redisCpu() {
  if (!REDIS) return NaN;
  const { spawnSync } = require('node:child_process');
  const r = spawnSync('redis-cli', ['-u', REDIS, 'INFO', 'cpu'], { encoding: 'utf8' });
  const field = (name) => Number((new RegExp(`^${name}:([\\d.]+)`, 'm').exec(r.stdout) || [])[1]);
  return field('used_cpu_user') + field('used_cpu_sys');
}

const CLIENT_SCRIPT = `
const WebSocket = require(${JSON.stringify(require.resolve('ws'))});
const jwt = require(${JSON.stringify(require.resolve('jsonwebtoken'))});
const [url, n, secret] = process.argv.slice(1);
let open = 0, received = 0;
const sockets = [];
function connect(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url + '?token=' + jwt.sign({ sub: 'u' + i }, secret));
    ws.on('message', (d) => { if (d.toString().includes('parcel_updated')) received++; });
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

function startClients(url) {
  const child = spawn(process.execPath, ['-e', CLIENT_SCRIPT, url, String(CLIENTS), SECRET], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const waitFor = (re) => new Promise((resolve, reject) => {
    const t = setInterval(() => {
      const m = re.exec(out);
      if (m) { clearInterval(t); out = out.slice(m.index + m[0].length); resolve(m); }
    }, 20);
    setTimeout(() => { clearInterval(t); reject(new Error(`timeout waiting for ${re}`)); }, 180_000);
  });
  return {
    ready: waitFor(/ready (\d+)\n/),
    async received() { child.stdin.write('count\n'); return Number((await waitFor(/received (\d+)\n/))[1]); },
    quit() { child.stdin.write('quit\n'); },
  };
}

async function settle(clients, expected) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const got = await clients.received();
    if (got >= expected || Date.now() > deadline) return got;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Runs `publishes` (functions returning a promise), 500 in flight at a time, and waits until the
 * clients received `expected` more frames; the server process's CPU per publish meanwhile. */
async function cpuPerPublish(publishes, clients, expected) {
  const base = await clients.received();
  const before = process.cpuUsage();
  const redisBefore = redisCpu();
  for (let i = 0; i < publishes.length; i += 500) await Promise.all(publishes.slice(i, i + 500).map((p) => p()));
  const delivered = (await settle(clients, base + expected)) - base;
  const used = process.cpuUsage(before);
  const redisUs = ((redisCpu() - redisBefore) * 1e6) / publishes.length;
  return { cpuUsPerPublish: (used.user + used.system) / publishes.length, redisUs, delivered };
}

(async () => {
  const server = await rt.startServer({
    port: 0, host: '127.0.0.1', jwtSecret: SECRET, messagesPerSecond: 0, redisUrl: REDIS, redisRequired: Boolean(REDIS),
    // Every client comes from 127.0.0.1: the per-address limits would refuse most of them.
    maxConnectionsPerIp: 0, maxHandshakesPerIp: 0, maxConnections: 0,
  });
  const clients = startClients(`ws://127.0.0.1:${server.port}/ws`);
  await clients.ready;
  const results = [];
  const range = (n) => Array.from({ length: n }, (_, i) => i);

  const a = await cpuPerPublish(range(EVENTS).map((i) => () => rt.publishParcelUpdate(`b${i}`)), clients, EVENTS * CLIENTS);
  results.push({ phase: 'broadcast: every client gets every event', targets: CLIENTS, ...a, expected: EVENTS * CLIENTS });

  const b = await cpuPerPublish(
    range(EVENTS).map((i) => () => rt.publishParcelUpdate(`t${i}`, undefined, { users: [`u${i % CLIENTS}`] })),
    clients, EVENTS);
  results.push({ phase: 'addressed to one connected user', targets: 1, ...b, expected: EVENTS });

  const offline = range(OFFLINE).map((i) => `offline${i}`);
  const publishes = Math.max(1, Math.floor(EVENTS / 10));
  const c = await cpuPerPublish(range(publishes).map((i) => () => rt.publishParcelUpdate(`o${i}`, undefined, { users: offline })), clients, 0);
  results.push({ phase: `addressed to ${OFFLINE} users with no connection (inbox)`, targets: OFFLINE, ...c, expected: 0 });

  let presenceMs = null;
  if (REDIS) {
    const users = range(1000).map((i) => `u${i}`);
    const counts = await rt.presence(users);
    if (Object.values(counts).some((n) => n !== 1)) throw new Error('presence: every one of u0..u999 has one connection');
    const started = process.hrtime.bigint();
    for (let i = 0; i < 100; i++) await rt.presence(users);
    presenceMs = Number(process.hrtime.bigint() - started) / 1e6 / 100;
  }

  clients.quit();
  await server.close();

  const mode = REDIS ? 'Redis mode' : 'memory mode';
  console.log(`\n${CLIENTS} clients of ${CLIENTS} users, ${mode} (server-process CPU per publish)\n`);
  if (REDIS) {
    console.log('| phase | connections or inboxes per publish | CPU µs per publish | Redis CPU µs per publish | deliveries (expected) |');
    console.log('| --- | ---: | ---: | ---: | ---: |');
  } else {
    console.log('| phase | connections or inboxes per publish | CPU µs per publish | deliveries (expected) |');
    console.log('| --- | ---: | ---: | ---: |');
  }
  for (const r of results) {
    const redis = REDIS ? ` ${r.redisUs.toFixed(1)} |` : '';
    console.log(`| ${r.phase} | ${r.targets} | ${r.cpuUsPerPublish.toFixed(1)} |${redis} ${r.delivered} (${r.expected}) |`);
  }
  if (presenceMs !== null) console.log(`\npresence() of 1,000 users: ${presenceMs.toFixed(2)} ms per call (mean of 100)`);
  const bad = results.filter((r) => r.delivered !== r.expected);
  if (bad.length) {
    console.error('deliveries differ from what was expected:', bad);
    process.exitCode = 1;
  }
})().catch((err) => { console.error(err); process.exit(1); });
