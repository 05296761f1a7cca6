#!/usr/bin/env node
// Hardening figures (issue 10), rt and, where it can take the scenario, the plain-Node baseline,
// in the same run:
//   replayer  — a reading bystander's worst delay while one client resumes `?since=` the oldest
//               of 6,000 events of 3 KB and reads a 64 KiB chunk every 200 ms (rt only: the
//               baseline has no history); 3,000 live events at 300/s.
//   idle      — the bystander's worst delay while 2,000 clients never read; 3,000 events/s for
//               5 s.
//   fragments — server CPU while 4 connections send empty continuation frames for 10 s (after
//               one non-final text frame), and how long they stay connected.
//
//   node bench/hardening.js [--scenarios replayer,idle,fragments] [--impls rt,baseline]
//                           [--idle N] [--smoke]
// Results: bench/results/hardening.json (one JSON object, also printed).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const WebSocket = require('ws');

const { Child, delay: sleep, sign } = require('../test-kit');

const SECRET = 'bench-secret-not-for-production';
const token = (sub) => sign({ sub }, {}, SECRET);

function args() {
  const o = { scenarios: ['replayer', 'idle', 'fragments'], impls: ['rt', 'baseline'], idle: 2000, smoke: false };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--scenarios') o.scenarios = a[++i].split(',');
    else if (a[i] === '--impls') o.impls = a[++i].split(',');
    else if (a[i] === '--idle') o.idle = Number(a[++i]);
    else if (a[i] === '--smoke') o.smoke = true;
    else throw new Error(`unknown option ${a[i]}`);
  }
  if (o.smoke) o.idle = Math.min(o.idle, 100);
  return o;
}

async function startServer(impl) {
  const script = path.join(__dirname, impl === 'rt' ? 'server-rt.js' : 'server-baseline.js');
  const child = new Child(`${impl}-server`, process.execPath, [script, '--secret', SECRET, '--port', '0', '--host', '127.0.0.1'], {
    env: { ...process.env, LOG_LEVEL: 'warn' },
  });
  const ready = await child.next(30_000);
  child.port = ready.port;
  return child;
}

/** A bystander: records, per event, now − the publisher's stamp (ids are b<seq>-<hrtime ns>). */
function bystander(port) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${token('bystander')}`);
    const state = { ws, worstMs: 0, received: 0 };
    state.reset = () => {
      state.worstMs = 0;
      state.received = 0;
    };
    ws.on('message', (data) => {
      const m = /"parcel_id":"b\d+-(\d+)"/.exec(data.toString());
      if (!m) return;
      state.received++;
      const late = Number(process.hrtime.bigint() - BigInt(m[1])) / 1e6;
      if (late > state.worstMs) state.worstMs = late;
    });
    ws.once('open', () => resolve(state));
    ws.once('error', reject);
  });
}

/** A raw upgraded socket (the welcome not awaited). */
function rawSocket(port, query) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.write(`GET /ws?${query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    s.once('data', (chunk) => (chunk.toString('latin1').startsWith('HTTP/1.1 101') ? resolve(s) : reject(new Error(chunk.toString()))));
    s.once('error', reject);
  });
}

function maskedFrame(opcode, payload, fin) {
  const mask = crypto.randomBytes(4);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= mask[i & 3];
  return Buffer.concat([Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | body.length]), mask, body]);
}

async function replayer(impl, o) {
  if (impl !== 'rt') return { skipped: 'the baseline keeps no history' };
  const server = await startServer(impl);
  try {
    const seed = await bystander(server.port);
    await server.request({ cmd: 'publish', base: 0, rate: 0, count: 1 });
    await sleep(200);
    seed.ws.close();
    // The welcome of a fresh connection names the seed's offset: resume from just before.
    const since = await new Promise((resolve) => {
      const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws?token=${token('probe')}`);
      ws.once('message', (d) => {
        ws.close();
        resolve(/"offset":"(\d+-\d+)"/.exec(d.toString())[1]);
      });
    });
    const history = o.smoke ? 600 : 6000;
    await server.request({ cmd: 'publish', base: 1, rate: 0, count: history, dataBytes: 3000 }, 120_000);
    const by = await bystander(server.port);
    const attacker = await rawSocket(server.port, `token=${token('replayer')}&since=${since}`);
    attacker.pause();
    const reader = setInterval(() => {
      attacker.once('data', () => attacker.pause());
      attacker.resume();
    }, 200);
    attacker.on('error', () => {});
    let cut = false;
    attacker.on('close', () => {
      cut = true;
    });
    const live = o.smoke ? 300 : 3000;
    const pub = await server.request({ cmd: 'publish', base: 1 + history, rate: 300, count: live, dataBytes: 3000 }, 120_000);
    await sleep(1000);
    const fig = { history_events: history, live_events: live, published: pub.published, publish_secs: pub.secs, bystander_received: by.received, bystander_worst_delay_ms: Math.round(by.worstMs), replayer_cut: cut || (await server.request({ cmd: 'stats' })).clients <= 1 };
    clearInterval(reader);
    attacker.destroy();
    by.ws.close();
    return fig;
  } finally {
    await server.stop('{"cmd":"quit"}', 8000);
  }
}

async function idle(impl, o) {
  const server = await startServer(impl);
  const sockets = [];
  try {
    const by = await bystander(server.port);
    for (let i = 0; i < o.idle; i += 100) {
      sockets.push(...(await Promise.all(Array.from({ length: Math.min(100, o.idle - i) }, () => rawSocket(server.port, `token=${token('idle')}`)))));
    }
    for (const s of sockets) {
      s.pause();
      s.on('error', () => {});
    }
    const count = o.smoke ? 3000 : 15_000;
    const pub = await server.request({ cmd: 'publish', base: 0, rate: 3000, count }, 180_000);
    await sleep(1000);
    const stats = await server.request({ cmd: 'stats' });
    by.ws.close();
    return { idle_clients: o.idle, published: pub.published, publish_secs: pub.secs, bystander_received: by.received, bystander_worst_delay_ms: Math.round(by.worstMs), clients_left: stats.clients };
  } finally {
    for (const s of sockets) s.destroy();
    await server.stop('{"cmd":"quit"}', 8000);
  }
}

async function fragments(impl, o) {
  const server = await startServer(impl);
  try {
    const secs = o.smoke ? 2 : 10;
    const flooders = await Promise.all(Array.from({ length: 4 }, () => rawSocket(server.port, `token=${token('flood')}`)));
    const empty = Buffer.concat(Array.from({ length: 1000 }, () => maskedFrame(0, '', false)));
    const cpu0 = server.cpuSeconds();
    const until = Date.now() + secs * 1000;
    let frames = 0;
    const open = flooders.map(() => true);
    await Promise.all(flooders.map(async (s, i) => {
      s.on('error', () => {});
      s.on('close', () => {
        open[i] = false;
      });
      s.write(maskedFrame(1, '{', false));
      while (Date.now() < until && open[i]) {
        if (!s.write(empty)) await new Promise((r) => s.once('drain', r).once('close', r));
        frames += 1000;
      }
    }));
    const cpu = server.cpuSeconds() - cpu0;
    for (const s of flooders) s.destroy();
    return { seconds: secs, frames_sent: frames, server_cpu_cores: Math.round((cpu / secs) * 100) / 100, still_open: open.filter(Boolean).length };
  } finally {
    await server.stop('{"cmd":"quit"}', 8000);
  }
}

async function main() {
  const o = args();
  const out = { date: new Date().toISOString(), options: o };
  for (const name of o.scenarios) {
    out[name] = {};
    for (const impl of o.impls) {
      console.error(`hardening: ${name} / ${impl}`);
      out[name][impl] = await { replayer, idle, fragments }[name](impl, o);
    }
  }
  const json = JSON.stringify(out, null, 2);
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true });
  fs.writeFileSync(path.join(__dirname, 'results', o.smoke ? 'hardening-smoke.json' : 'hardening.json'), `${json}\n`);
  console.log(json);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
