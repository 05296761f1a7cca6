#!/usr/bin/env node
// What one Redis carries for this module (docs/scaling.md): events/s through the publish script
// (XADD + PUBLISH + sequence, as the bus runs it), messages/s to K subscribed server processes,
// and what a Redis Cluster changes (classic PUBLISH copied to every node; SPUBLISH to one shard).
// Starts its own redis-server processes on free loopback ports and drives them with
// redis-benchmark; prints a Markdown table. Usage: node bench/redis-scaling.js [--quick]
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const h = require('../__test__/helpers');
const topo = require('../__test__/redis-topology');

const QUICK = process.argv.includes('--quick');
const N = QUICK ? 50_000 : 200_000;
const CHANNEL = 'parcel_events';
const FRAME = '{"type":"parcel_updated","parcel_id":"parcel_0123456789","data":{"price":120}}';

/** The publish script exactly as the bus sends it (read from the Rust source). */
function publishScript() {
  const src = fs.readFileSync(path.join(__dirname, '..', 'src', 'bus', 'redis.rs'), 'utf8');
  const body = (name) => {
    const m = new RegExp(`const ${name}: &str = r#"([\\s\\S]*?)"#;`).exec(src);
    if (!m) throw new Error(`${name} not found in src/bus/redis.rs`);
    return m[1];
  };
  return body('EPOCH_LUA') + body('PUBLISH_SCRIPT_BODY');
}

/** requests/s that redis-benchmark reports for `args` against `port`. */
function bench(port, args, { n = N, clients = 8, pipeline = 16, extra = [] } = {}) {
  const r = spawnSync('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), '-n', String(n), '-c', String(clients),
    '-P', String(pipeline), '-q', '-r', '100000000', ...extra, ...args], { encoding: 'utf8', timeout: 300_000 });
  const m = /([\d.]+) requests per second/.exec(r.stdout);
  if (!m) throw new Error(`redis-benchmark ${args.join(' ')}: ${r.stdout} ${r.stderr}`);
  return Number(m[1]);
}

/** K raw subscriber connections (one per "server process"); counts the messages they receive. */
async function subscribers(port, k) {
  const socks = [];
  let bytes = 0;
  for (let i = 0; i < k; i++) {
    const s = net.connect(port, '127.0.0.1');
    await new Promise((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    s.on('data', (d) => {
      bytes += d.length;
    });
    s.write(`SUBSCRIBE ${CHANNEL}\r\n`);
    socks.push(s);
  }
  await h.waitUntil(() => h.redisCli(port, ['PUBSUB', 'NUMSUB', CHANNEL]).stdout.trim().endsWith(String(k)) || k === 0,
    `${k} subscribers`, 10_000, 50);
  return { bytes: () => bytes, close: () => socks.forEach((s) => s.destroy()) };
}

function scriptArgs(sha, events) {
  // A fresh batch key per call (the benchmark's random number), batch number 1: every call applies.
  return ['EVALSHA', sha, '4', `{${CHANNEL}}:history`, `{${CHANNEL}}:epoch`, `{${CHANNEL}}:seq`,
    `{${CHANNEL}}:batch:__rand_int__`, '0', CHANNEL, '10000', '0', String(Date.now()), '1',
    ...Array.from({ length: events }, () => FRAME)];
}

function fmt(n) {
  return Math.round(n).toLocaleString('en-US');
}

async function main() {
  const rows = [];
  const node = await topo.startNode(['--client-output-buffer-limit', 'pubsub', '0', '0', '0']);
  const cli = (args) => h.redisCli(node.port, args);
  const sha = cli(['SCRIPT', 'LOAD', publishScript()]).stdout.trim();
  if (!/^[0-9a-f]{40}$/.test(sha)) throw new Error(`SCRIPT LOAD: ${sha}`);

  // 1. Events/s through the publish script, one Redis, no subscriber.
  rows.push(['PUBLISH (bare, no history), 0 subscribers', fmt(bench(node.port, ['PUBLISH', CHANNEL, FRAME])), 'messages/s']);
  for (const batch of [1, 16, 64]) {
    const n = Math.max(2000, Math.round(N / batch));
    const calls = bench(node.port, scriptArgs(sha, batch), { n, pipeline: batch === 1 ? 16 : 1 });
    rows.push([`publish script, ${batch} event(s) per call (the bus batches up to 256), 0 subscribers`, fmt(calls * batch), 'events/s']);
  }
  cli(['DEL', `{${CHANNEL}}:history`]);

  // 2. Messages/s to K subscribed server processes.
  for (const k of [1, 8, 32, 128]) {
    const subs = await subscribers(node.port, k);
    const rate = bench(node.port, ['PUBLISH', CHANNEL, FRAME], { n: Math.max(20_000, Math.round(N / Math.sqrt(k))) });
    rows.push([`PUBLISH, ${k} subscribed server process(es)`, fmt(rate), `events/s; ${fmt(rate * k)} messages/s out`]);
    const calls = bench(node.port, scriptArgs(sha, 16), { n: Math.max(1000, Math.round(N / 16 / Math.sqrt(k))), pipeline: 1 });
    rows.push([`publish script (16 per call), ${k} subscribed server process(es)`, fmt(calls * 16), `events/s; ${fmt(calls * 16 * k)} messages/s out`]);
    subs.close();
    cli(['DEL', `{${CHANNEL}}:history`]);
  }
  await node.kill();

  // 3. A cluster of 3 masters + 3 replicas.
  if (!QUICK || process.argv.includes('--cluster')) {
    const cluster = await topo.startCluster();
    const owner = cluster.slotOwner(`{${CHANNEL}}:history`);
    const other = cluster.nodes.find((n) => n.port !== owner).port;
    const csha = h.redisCli(owner, ['SCRIPT', 'LOAD', publishScript()]).stdout.trim();
    rows.push(['Cluster: PUBLISH on one node (copied to all 6 over the cluster bus), 0 subscribers', fmt(bench(other, ['PUBLISH', CHANNEL, FRAME])), 'messages/s']);
    rows.push(['Cluster: SPUBLISH on the shard owning the channel (its master and replica only)', fmt(bench(cluster.slotOwner(CHANNEL), ['SPUBLISH', CHANNEL, FRAME])), 'messages/s']);
    const calls = bench(owner, scriptArgs(csha, 16), { n: Math.max(2000, Math.round(N / 16)), pipeline: 1 });
    rows.push(['Cluster: publish script (16 per call) on the slot\'s master', fmt(calls * 16), 'events/s']);
    await cluster.stop();
  }

  const cpu = os.cpus();
  console.log(`Machine: ${cpu.length} cores (${cpu[0] && cpu[0].model}), ${spawnSync('redis-server', ['--version'], { encoding: 'utf8' }).stdout.trim()}; redis-benchmark -c 8 on the same cores; ${new Date().toISOString()}\n`);
  console.log('| what | rate | unit |\n| --- | ---: | --- |');
  for (const [what, rate, unit] of rows) console.log(`| ${what} | ${rate} | ${unit} |`);
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
