#!/usr/bin/env node
// The benchmark suite: runs every scenario against this package (rt) and against the original
// plain-Node design (baseline, bench/server-baseline.js) in the same run, and reports each figure
// as a ratio against the baseline and against the near-limit reference (bench/reference). See bench/README.md.
//
//   npm run bench                       all scenarios, full size (~15 min on 2 cores)
//   npm run bench -- --scenarios fanout,latency --clients 500 --duration 5
//   npm run bench:smoke                 tiny sizes for CI: fails only on lost, duplicated or
//                                       reordered events or a crashed scenario
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const jwt = require('jsonwebtoken');

const { Child, delay: sleep, setVerbose, findRedisServer, startBenchRedis: startRedis } = require('../test-kit');
const report = require('./lib/report');

const ROOT = path.resolve(__dirname, '..');
const RESULTS = path.join(__dirname, 'results');
const SECRET = 'bench-secret-not-for-production';
const ALL = ['fanout', 'latency', 'memory', 'handshake', 'eventloop', 'redis', 'scale', 'sweep', 'publishlatency'];
const IMPLS = ['rt', 'reference', 'baseline'];
// The reference's stats are its Node wrapper's, and it has no Redis mode: left out of these.
const NO_REFERENCE = new Set(['memory', 'redis', 'scale']);

// ---------------------------------------------------------------------------------------------
// Options

function parseOptions(argv) {
  const o = {
    scenarios: ALL,
    impls: IMPLS,
    smoke: false,
    verbose: false,
    build: true,
    write: true,
    clients: 1000,
    duration: 10,
    latencyRates: [100, 500],
    latencyDuration: 10,
    memClients: 10_000,
    handshakeClients: 10_000,
    handshakeConcurrency: [256, 100],
    handshakeRounds: 3,
    redisRate: 1500,
    redisServers: 1,
    scaleMax: 100_000,
    scaleStep: 5_000,
    scaleBudget: 240,
    threads: 2,
    drainCapMs: 45_000,
    sweepStart: 50,
    sweepStep: 5,
    sweepMax: 51_200,
    publishLatencyRate: 500,
  };
  const num = (v, name) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) fail(`--${name} needs a number, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) fail(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--scenarios': o.scenarios = val().split(',').filter(Boolean); break;
      case '--impls': o.impls = val().split(',').filter(Boolean); break;
      case '--smoke': o.smoke = true; break;
      case '--verbose': case '-v': o.verbose = true; break;
      case '--no-build': o.build = false; break;
      case '--no-write': o.write = false; break;
      case '--merge': o.merge = true; break;
      case '--quiet-wait': o.quietWait = num(val(), 'quiet-wait'); break;
      case '--clients': o.clients = num(val(), 'clients'); break;
      case '--duration': o.duration = num(val(), 'duration'); break;
      case '--latency-rates': o.latencyRates = val().split(',').map((v) => num(v, 'latency-rates')); break;
      case '--latency-duration': o.latencyDuration = num(val(), 'latency-duration'); break;
      case '--mem-clients': o.memClients = num(val(), 'mem-clients'); break;
      case '--handshake-clients': o.handshakeClients = num(val(), 'handshake-clients'); break;
      case '--handshake-concurrency': o.handshakeConcurrency = val().split(',').map((v) => num(v, 'handshake-concurrency')); break;
      case '--handshake-rounds': o.handshakeRounds = Math.max(1, num(val(), 'handshake-rounds')); break;
      case '--redis-rate': o.redisRate = num(val(), 'redis-rate'); break;
      case '--redis-servers': o.redisServers = num(val(), 'redis-servers'); break;
      case '--scale-max': o.scaleMax = num(val(), 'scale-max'); break;
      case '--scale-step': o.scaleStep = num(val(), 'scale-step'); break;
      case '--scale-budget': o.scaleBudget = num(val(), 'scale-budget'); break;
      case '--threads': o.threads = num(val(), 'threads'); break;
      case '--sweep-start': o.sweepStart = Math.max(1, num(val(), 'sweep-start')); break;
      case '--sweep-step': o.sweepStep = num(val(), 'sweep-step'); break;
      case '--sweep-max': o.sweepMax = num(val(), 'sweep-max'); break;
      case '--publish-latency-rate': o.publishLatencyRate = Math.max(1, num(val(), 'publish-latency-rate')); break;
      case '--help': case '-h':
        console.log(fs.readFileSync(path.join(__dirname, 'README.md'), 'utf8'));
        process.exit(0);
        break;
      default: fail(`unknown option ${a} (see bench/README.md)`);
    }
  }
  if (o.smoke) {
    // Tiny and short: a correctness run of the whole machinery, no speed claims.
    Object.assign(o, {
      clients: Math.min(o.clients, 50),
      duration: Math.min(o.duration, 1),
      fanoutCount: 2000,
      latencyRates: [200],
      latencyDuration: 1,
      memClients: 200,
      handshakeClients: 500,
      handshakeConcurrency: [64],
      handshakeRounds: 1,
      redisRate: 200,
      scaleMax: 600,
      scaleStep: 300,
      scaleBudget: 20,
      drainCapMs: 10_000,
      sweepStep: 1,
      sweepMax: Math.min(o.sweepMax, 100),
      publishLatencyRate: Math.min(o.publishLatencyRate, 100),
    });
  }
  for (const s of o.scenarios) if (!ALL.includes(s)) fail(`unknown scenario ${s}; known: ${ALL.join(', ')}`);
  for (const i of o.impls) if (!IMPLS.includes(i)) fail(`unknown impl ${i}`);
  return o;
}

function fail(message) {
  console.error(`bench: ${message}`);
  process.exit(2);
}

function log(message) {
  console.error(`bench: ${message}`);
}

// ---------------------------------------------------------------------------------------------
// Machine and build

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

function machine() {
  const cpuModel = (() => {
    try {
      const m = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
      return m ? m[1].trim() : os.cpus()[0]?.model;
    } catch {
      return os.cpus()[0]?.model;
    }
  })();
  return {
    nproc: Number(sh('nproc', [])) || os.cpus().length,
    cpu: cpuModel,
    ram_gib: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    rustc: sh('rustc', ['--version']),
    redis: sh('redis-server', ['--version'])?.split(' ').slice(0, 3).join(' ') ?? null,
    nofile_limit: sh('bash', ['-c', 'ulimit -Hn']),
    nofile_raisable: sh('bash', ['-c', 'ulimit -Hn $(( $(ulimit -Hn) + 1 )) 2>/dev/null && echo yes || echo no']) === 'yes',
    date: new Date().toISOString(),
    commit: sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']),
  };
}

function buildLoadgen(build) {
  const bin = path.join(process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target'), 'release', 'loadgen');
  if (build) {
    log('building the load generator (cargo build --release -p rt-loadgen)');
    const r = spawnSync('cargo', ['build', '--release', '--quiet', '-p', 'rt-loadgen', '-p', 'rt-reference'], { cwd: ROOT, stdio: 'inherit' });
    if (r.status !== 0) fail('cargo build -p rt-loadgen -p rt-reference failed');
  }
  if (!fs.existsSync(bin)) fail(`${bin} is missing (run without --no-build)`);
  if (!fs.existsSync(path.join(ROOT, 'realtime_events.node'))) fail('the addon is not built: run `npm run build` first');
  return bin;
}

// ---------------------------------------------------------------------------------------------
// Processes under test

// Source-address blocks start at a random place so that a run does not reuse the addresses (and
// meet the TIME_WAIT sockets) of the previous one.
const ctx = { loadgen: null, token: null, srcBlock: Math.floor(Math.random() * 50_000), opts: null, scenario: '', background: [] };

function cpuBusyJiffies() {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line;
  return { busy: user + nice + system + irq + softirq, steal, total: user + nice + system + idle + iowait + irq + softirq + steal };
}

/** Cores busy over `ms` (nothing of ours runs at that moment) and the steal share. */
async function backgroundLoad(ms = 1000) {
  const a = cpuBusyJiffies();
  await sleep(ms);
  const b = cpuBusyJiffies();
  const cores = os.cpus().length;
  const total = Math.max(1, b.total - a.total);
  return { busy_cores: ((b.busy - a.busy) / total) * cores, steal_cores: ((b.steal - a.steal) / total) * cores };
}

/**
 * Other work on the machine skews every figure: before each measured server starts, wait (up to
 * a minute) until less than 0.25 core is busy, and record what was seen.
 */
async function waitForQuiet(label) {
  const t0 = Date.now();
  let load = await backgroundLoad();
  let warned = false;
  const maxWaitMs = ctx.opts.smoke ? 0 : (ctx.opts.quietWait ?? 60) * 1000;
  while (load.busy_cores > 0.25 && Date.now() - t0 < maxWaitMs) {
    if (!warned) log(`${label}: the machine is busy (${load.busy_cores.toFixed(2)} cores used by other processes); waiting up to ${maxWaitMs / 1000} s`);
    warned = true;
    load = await backgroundLoad();
  }
  const entry = { run: label, busy_cores: Math.round(load.busy_cores * 100) / 100, steal_cores: Math.round(load.steal_cores * 100) / 100, waited_s: Math.round((Date.now() - t0) / 1000) };
  ctx.background.push(entry);
  if (load.busy_cores > 0.25 && !ctx.opts.smoke) log(`${label}: WARNING: still ${load.busy_cores.toFixed(2)} cores busy elsewhere; figures will be skewed`);
  return entry;
}

async function startServer(impl, extra = [], name = `${impl}-server`) {
  await waitForQuiet(`${ctx.scenario}/${name}`);
  const script = path.join(__dirname, { rt: 'server-rt.js', reference: 'server-reference.js', baseline: 'server-baseline.js' }[impl]);
  if (impl === 'reference') extra = [...extra, '--bin', path.join(path.dirname(ctx.loadgen), 'reference')];
  const child = new Child(name, process.execPath, ['--expose-gc', script, '--secret', SECRET, '--port', '0', '--host', '127.0.0.1', ...extra], {
    env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' },
  });
  const ready = await child.next(30_000);
  if (ready.event !== 'ready') throw new Error(`${name}: unexpected first line ${JSON.stringify(ready)}`);
  child.port = ready.port;
  return child;
}

async function stopServer(child) {
  if (child) await child.stop('{"cmd":"quit"}', 8000);
}

/**
 * A load generator for `clients` connections at most. Each one binds its own fresh block of
 * loopback source addresses (127.20.x.y), one per 20,000 clients, so that neither ephemeral
 * ports nor the TIME_WAIT left by an earlier scenario run out.
 */
async function startLoadgen(port, clients, { concurrency = 256, handshakeTimeoutMs = 20_000, name = 'loadgen' } = {}) {
  const k = ctx.srcBlock++;
  const srcCount = Math.max(1, Math.ceil(clients / 20_000));
  const src = `127.${20 + (Math.floor(k / 250) % 230)}.${k % 250}.1+${srcCount}`;
  const child = new Child(name, ctx.loadgen, [
    '--url', `ws://127.0.0.1:${port}/ws`, '--token', ctx.token, '--threads', String(ctx.opts.threads),
    '--src', src, '--concurrency', String(concurrency), '--handshake-timeout-ms', String(handshakeTimeoutMs),
    '--timeout-s', '1800',
  ]);
  const started = await child.next(10_000);
  if (started.event !== 'started') throw new Error(`loadgen: unexpected first line ${JSON.stringify(started)}`);
  child.nofile = started.nofile;
  return child;
}

async function connectAll(lg, n, timeoutMs = 300_000) {
  const c = await lg.request(`connect ${n}`, timeoutMs);
  return c;
}

const ns = (v) => Number(v);

/** Common figures of one publish + deliver run. */
function deliveryFigures(pub, rep, cpu) {
  const startNs = ns(pub.start_ns);
  const windowS = rep.last_recv_ns ? (ns(rep.last_recv_ns) - startNs) / 1e9 : pub.secs;
  return {
    clients: rep.measured_clients,
    published: pub.published,
    publish_secs: pub.secs,
    publish_rate: pub.rate_achieved,
    publish_errors: pub.errors,
    scheduled: pub.scheduled,
    not_published: pub.not_published,
    publish_first_error: pub.first_error,
    expected: rep.expected,
    delivered: rep.unique,
    deliveries_per_s: rep.unique / Math.max(windowS, 1e-9),
    delivery_window_s: windowS,
    lost: rep.lost,
    loss_ratio: rep.expected ? rep.lost / rep.expected : 0,
    duplicates: rep.duplicates,
    reordered: rep.reordered,
    disconnected: rep.measured_clients - rep.live,
    closes: rep.closes,
    latency_us: rep.latency_us,
    call_latency_us: pub.call_latency_us,
    redis_rtt_us: pub.redis_rtt_us,
    event_loop_delay: pub.event_loop_delay,
    event_loop_utilization: pub.event_loop_utilization,
    cpu_s: cpu,
  };
}

/** Publishes from `publisher` while `loadgens` count, then collects and merges their reports. */
async function publishAndCollect(publisher, loadgens, servers, publishCmd, drainMs, base = 0, probe = null) {
  for (const lg of loadgens) await lg.request(`reset ${base}`);
  const cpu0 = [...servers, ...loadgens, publisher].map((c) => c.cpuSeconds());
  if (probe) await probe.request('start');
  const pub = await publisher.request({ cmd: 'publish', ...publishCmd, base }, ((publishCmd.duration ?? 10) + 120) * 1000);
  const idle = probe ? (await probe.request('stop')).event_loop_delay : undefined;
  const end = base + pub.published;
  const waits = await Promise.all(loadgens.map((lg) => lg.request(`wait ${end} ${drainMs}`, drainMs + 30_000)));
  const cpu1 = [...servers, ...loadgens, publisher].map((c) => c.cpuSeconds());
  const reps = await Promise.all(loadgens.map((lg) => lg.request(`report ${end}`)));
  const rep = mergeReports(reps);
  const d = (i) => Math.round((cpu1[i] - cpu0[i]) * 100) / 100;
  const cpu = {
    server: servers.reduce((s, _, i) => s + d(i), 0),
    loadgen: loadgens.reduce((s, _, i) => s + d(servers.length + i), 0),
  };
  if (!servers.includes(publisher)) cpu.publisher = d(servers.length + loadgens.length);
  const fig = deliveryFigures(pub, rep, cpu);
  if (idle) fig.idle_event_loop_delay = idle;
  fig.drain = waits.map((w) => w.reason);
  fig.drain_cap_s = drainMs / 1000;
  if (waits.some((w) => w.reason === 'timeout')) {
    // Still delivering when the drain cap hit: what is missing is a backlog the server had not
    // sent yet, not a proven loss. Reported apart; latency then covers only what arrived.
    fig.backlog_at_cap = fig.lost;
    fig.lost = 0;
    fig.loss_ratio = 0;
  }
  return fig;
}

function mergeReports(reps) {
  if (reps.length === 1) return reps[0];
  const sum = (k) => reps.reduce((s, r) => s + r[k], 0);
  const out = {};
  for (const k of ['clients', 'live', 'measured_clients', 'expected', 'received', 'unique', 'duplicates', 'reordered', 'stale', 'lost', 'incomplete_clients', 'other_frames']) out[k] = sum(k);
  out.last_recv_ns = Math.max(...reps.map((r) => ns(r.last_recv_ns)));
  out.closes = {};
  for (const r of reps) for (const [k, v] of Object.entries(r.closes)) out.closes[k] = (out.closes[k] ?? 0) + v;
  // Latency: weighted means and the worst of the percentiles (an upper bound, flagged).
  const lat = reps.map((r) => r.latency_us).filter((l) => l.count);
  out.latency_us = lat.length
    ? {
        count: lat.reduce((s, l) => s + l.count, 0),
        mean: lat.reduce((s, l) => s + l.mean * l.count, 0) / lat.reduce((s, l) => s + l.count, 0),
        p50: Math.max(...lat.map((l) => l.p50)),
        p90: Math.max(...lat.map((l) => l.p90)),
        p99: Math.max(...lat.map((l) => l.p99)),
        p999: Math.max(...lat.map((l) => l.p999)),
        max: Math.max(...lat.map((l) => l.max)),
        merged: 'max over load generators',
      }
    : { count: 0 };
  return out;
}

// ---------------------------------------------------------------------------------------------
// Scenarios. Each returns { rt: {...}, baseline: {...} }.

/**
 * A server of `impl` with `o.clients` clients of one load generator, and an idle probe beside
 * them; runs `fn(server, lg, probe)`, then stops them all.
 */
async function withClients(impl, o, fn) {
  const server = await startServer(impl);
  const probe = idleProbe();
  let lg;
  try {
    lg = await startLoadgen(server.port, o.clients);
    const c = await connectAll(lg, o.clients);
    if (c.ok !== o.clients) throw new Error(`connected ${c.ok}/${o.clients}: ${JSON.stringify(c)}`);
    return await fn(server, lg, probe);
  } finally {
    await probe.stop('quit');
    if (lg) await lg.stop('quit');
    await stopServer(server);
  }
}

/** 1 (and 5): fan-out as fast as the API accepts; event-loop delay measured meanwhile. */
function fanout(impl, o) {
  return withClients(impl, o, async (server, lg, probe) => {
    const cmd = { rate: 0, duration: o.duration, chunk: impl === 'rt' ? 100 : 1, window: 1000 };
    if (o.fanoutCount) cmd.count = o.fanoutCount;
    const fig = await publishAndCollect(server, [lg], [server], cmd, 60_000, 0, probe);
    fig.server_rss_after = server.rssBytes();
    return fig;
  });
}

/** 2: latency at a fixed publish rate. */
function latency(impl, o, rate) {
  return withClients(impl, o, (server, lg, probe) =>
    publishAndCollect(server, [lg], [server], { rate, duration: o.latencyDuration }, o.drainCapMs, 0, probe));
}

/** An idle Node process beside a run: the event-loop delay the machine alone imposes. */
function idleProbe() {
  return new Child('idle-probe', process.execPath, [path.join(__dirname, 'lib', 'probe.js')]);
}

/** One event to every client of `loadgens` (all must have it): the sanity check of a hold. */
async function deliverOne(publisher, loadgens, seq, timeoutMs = 15_000) {
  for (const lg of loadgens) await lg.request(`reset ${seq}`);
  const pub = await publisher.request({ cmd: 'publish', base: seq, rate: 0, count: 1 });
  await Promise.all(loadgens.map((lg) => lg.request(`wait ${seq + 1} ${timeoutMs}`, timeoutMs + 30_000)));
  const reps = await Promise.all(loadgens.map((lg) => lg.request(`report ${seq + 1}`)));
  const rep = mergeReports(reps);
  return { published: pub.published, clients: rep.measured_clients, live: rep.live, delivered: rep.unique, lost: rep.lost, duplicates: rep.duplicates, reordered: rep.reordered, latency_us: rep.latency_us };
}

/** 3: RSS growth per idle authenticated connection. */
async function memory(impl, o) {
  const server = await startServer(impl);
  const lgs = [];
  try {
    // Warm up first (code paths, pools, JIT): a few clients stay connected during the measure.
    const warm = Math.min(200, Math.max(10, Math.floor(o.memClients / 50)));
    const lgWarm = await startLoadgen(server.port, warm, { name: 'loadgen-warm' });
    lgs.push(lgWarm);
    await connectAll(lgWarm, warm);
    await deliverOne(server, [lgWarm], 0);
    await sleep(500);
    const before = await server.request({ cmd: 'stats', gc: true });
    const lg = await startLoadgen(server.port, o.memClients);
    lgs.push(lg);
    const c = await connectAll(lg, o.memClients);
    if (c.ok !== o.memClients) throw new Error(`connected ${c.ok}/${o.memClients}: ${JSON.stringify(c)}`);
    await sleep(2000);
    const after = await server.request({ cmd: 'stats', gc: true });
    const check = await deliverOne(server, lgs, 1);
    const n = after.clients - before.clients;
    return {
      clients: n,
      rss_before: before.rss,
      rss_after: after.rss,
      rss_per_connection: (after.rss - before.rss) / n,
      heap_per_connection: (after.heap_used - before.heap_used) / n,
      loadgen_rss_per_connection: lg.rssBytes() / o.memClients,
      delivery_check: check,
      lost: check.lost,
      duplicates: check.duplicates,
      reordered: check.reordered,
    };
  } finally {
    for (const lg of lgs) await lg.stop('quit');
    await stopServer(server);
  }
}

/** 4: handshakes per second, JWT verification included (TCP connect → welcome frame). */
function listenBacklog(port) {
  // For a listening socket, ss shows the accept-queue limit (the listen() backlog) as Send-Q.
  const out = sh('ss', ['-ltnH', `sport = :${port}`]);
  const m = out && /^\S+\s+\d+\s+(\d+)/m.exec(out);
  return m ? Number(m[1]) : null;
}

async function handshake(impl, o, concurrency) {
  const server = await startServer(impl);
  const backlog = listenBacklog(server.port);
  const lgs = [];
  try {
    const warm = await startLoadgen(server.port, 100, { name: 'loadgen-warm' });
    lgs.push(warm);
    await connectAll(warm, 100);
    // Several rounds, each from a fresh load generator; the median round is the figure (this
    // one is the most sensitive to other work on the machine).
    const rounds = [];
    const per = Math.ceil(o.handshakeClients / o.handshakeRounds);
    for (let r = 0; r < o.handshakeRounds; r++) {
      const lg = await startLoadgen(server.port, per, { concurrency });
      lgs.push(lg);
      const cpu0 = [server.cpuSeconds(), lg.cpuSeconds()];
      const c = await connectAll(lg, per);
      const cpu1 = [server.cpuSeconds(), lg.cpuSeconds()];
      const rep = await lg.request('report 0');
      rounds.push({
        clients: per,
        ok: c.ok,
        failed: c.failed,
        secs: c.secs,
        handshakes_per_s: c.rate,
        handshake_latency_us: rep.handshake_us,
        connect_errors: rep.connect_errors,
        cpu_s: { server: Math.round((cpu1[0] - cpu0[0]) * 100) / 100, loadgen: Math.round((cpu1[1] - cpu0[1]) * 100) / 100 },
        server_cpu_us_per_handshake: ((cpu1[0] - cpu0[0]) / Math.max(c.ok, 1)) * 1e6,
      });
      await lg.stop('quit');
      await sleep(500);
    }
    const median = [...rounds].sort((a, b) => a.handshakes_per_s - b.handshakes_per_s)[Math.floor(rounds.length / 2)];
    return {
      ...median,
      clients: o.handshakeClients,
      concurrency,
      listen_backlog: backlog,
      failed: rounds.reduce((s, r) => s + r.failed, 0),
      rounds: rounds.map((r) => Math.round(r.handshakes_per_s)),
    };
  } finally {
    for (const lg of lgs) await lg.stop('quit');
    await stopServer(server);
  }
}

// Redis ---------------------------------------------------------------------------------------

/** 6: separate publisher process → Redis → server(s) → clients, at a fixed rate. */
async function redisRun(impl, o, url) {
  const servers = [];
  const lgs = [];
  let publisher;
  try {
    for (let i = 0; i < o.redisServers; i++) servers.push(await startServer(impl, ['--redis', url], `${impl}-server-${i}`));
    const per = Math.ceil(o.clients / o.redisServers);
    for (const [i, srv] of servers.entries()) {
      const lg = await startLoadgen(srv.port, per, { name: `loadgen-${i}` });
      lgs.push(lg);
      const c = await connectAll(lg, per);
      if (c.ok !== per) throw new Error(`connected ${c.ok}/${per}: ${JSON.stringify(c)}`);
    }
    const script = path.join(__dirname, impl === 'rt' ? 'server-rt.js' : 'server-baseline.js');
    publisher = new Child(`${impl}-publisher`, process.execPath, [script, '--publisher-only', '--redis', url], {
      env: { ...process.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' },
    });
    const ready = await publisher.next(30_000);
    if (ready.event !== 'ready') throw new Error(`publisher: ${JSON.stringify(ready)}`);
    // Let the subscriptions settle (the warm-up publish of the rt publisher is not measured).
    await sleep(500);
    const fig = await publishAndCollect(publisher, lgs, servers, { rate: o.redisRate, duration: o.duration }, o.drainCapMs, 1_000_000);
    fig.servers = o.redisServers;
    fig.rate_offered = o.redisRate;
    return fig;
  } finally {
    if (publisher) await publisher.stop('{"cmd":"quit"}');
    for (const lg of lgs) await lg.stop('quit');
    for (const s of servers) await stopServer(s);
  }
}

/** 7: the most concurrent authenticated connections that still all receive an event. */
async function scale(impl, o) {
  const server = await startServer(impl);
  const lgs = [];
  const steps = [];
  const t0 = Date.now();
  let seq = 0;
  let total = 0;
  let stopReason = `reached --scale-max ${o.scaleMax}`;
  try {
    while (total < o.scaleMax) {
      if ((Date.now() - t0) / 1000 > o.scaleBudget) {
        stopReason = `time budget (--scale-budget ${o.scaleBudget} s) used up`;
        break;
      }
      let want = Math.min(o.scaleStep, o.scaleMax - total);
      let ok = 0;
      let failed = 0;
      let secs = 0;
      const errors = {};
      while (want > 0) {
        let lg = lgs.find((l) => l.room > 0);
        if (!lg) {
          lg = await startLoadgen(server.port, 20_000, { name: `loadgen-${lgs.length}`, handshakeTimeoutMs: 10_000, concurrency: 512 });
          // Each process has RLIMIT_NOFILE file descriptors at most; keep a margin.
          lg.room = Math.max(0, Number(lg.nofile[0]) - 100);
          lgs.push(lg);
        }
        const k = Math.min(want, lg.room);
        const c = await connectAll(lg, k, 600_000);
        lg.room -= k;
        want -= k;
        ok += c.ok;
        failed += c.failed;
        secs += c.secs;
      }
      total += ok;
      const check = await deliverOne(server, lgs, seq);
      seq += 1;
      const st = await server.request({ cmd: 'stats' });
      st.rss = server.rssBytes();
      const reps = await Promise.all(lgs.map((lg) => lg.request('report 0')));
      for (const r of reps) for (const [k, v] of Object.entries(r.connect_errors)) errors[k] = (errors[k] ?? 0) + v;
      const step = {
        attempted: ok + failed, ok, failed, connect_secs: secs, live: check.live, server_clients: st.clients,
        delivered: check.delivered, all_delivered: check.lost === 0 && check.delivered === check.live,
        delivery_latency_max_ms: check.latency_us.max / 1000, server_rss: st.rss, connect_errors: errors,
      };
      steps.push(step);
      log(`scale: ${impl}: ${check.live} connected (+${ok}, ${failed} failed), event delivered to ${check.delivered} in ≤${fmtMs(step.delivery_latency_max_ms)}, RSS ${(st.rss / 2 ** 20).toFixed(0)} MiB`);
      if (failed > 0) {
        stopReason = `connections refused or timed out at ${total + failed} (${JSON.stringify(errors)})`;
        break;
      }
      if (!step.all_delivered) {
        stopReason = `event not delivered to every client at ${check.live}`;
        break;
      }
    }
    const good = steps.filter((s) => s.all_delivered);
    return {
      max_connections: good.length ? Math.max(...good.map((s) => s.live)) : 0,
      stop_reason: stopReason,
      server_nofile_limit: serverNofile(server.pid),
      steps,
    };
  } finally {
    for (const lg of lgs) await lg.stop('quit');
    await stopServer(server);
  }
}

function serverNofile(pid) {
  try {
    const m = /Max open files\s+(\d+)\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

const fmtMs = (v) => (v == null ? '-' : `${v.toFixed(1)} ms`);

const paced = require('./scenarios/paced')({ startServer, stopServer, startLoadgen, connectAll, publishAndCollect, log, Child, sleep });

/** Runs `run` with `o.redisUrl` set to a private redis-server (unset when none is installed). */
function withRedis(name, run) {
  return async (o, results) => {
    const bin = findRedisServer();
    if (!bin) {
      log(`${name}: redis-server not installed: Redis mode skipped`);
      return run(o, results);
    }
    const redis = await startRedis(bin);
    try {
      return await run({ ...o, redisUrl: redis.url }, results);
    } finally {
      await redis.child.stop(null, 3000);
    }
  };
}

const SCENARIOS = {
  sweep: { run: withRedis('sweep', paced.sweep.run) },
  publishlatency: { run: withRedis('publishlatency', paced.publishlatency.run) },
  fanout: {
    title: 'Fan-out',
    run: async (o, results) => {
      const out = {};
      for (const impl of o.impls) {
        log(`fanout: ${impl}, ${o.clients} clients, ${o.fanoutCount ? `${o.fanoutCount} events` : `${o.duration} s`} as fast as the API accepts`);
        out[impl] = await fanout(impl, o);
        log(`fanout: ${impl}: ${fmt(out[impl].deliveries_per_s)} deliveries/s, lost ${out[impl].lost}, published ${out[impl].published}`);
      }
      results.fanout = out;
      // Scenario 5 is measured during scenario 1.
      if (o.scenarios.includes('eventloop')) {
        results.eventloop = { source: 'fanout', ...pick(out, (f) => f.event_loop_delay) };
        results.eventloop.idle = pick(out, (f) => f.idle_event_loop_delay);
      }
    },
  },
  latency: {
    run: async (o, results) => {
      results.latency = [];
      for (const rate of o.latencyRates) {
        const out = { rate };
        for (const impl of o.impls) {
          log(`latency: ${impl}, ${o.clients} clients at ${rate} events/s for ${o.latencyDuration} s`);
          out[impl] = await latency(impl, o, rate);
          const l = out[impl].latency_us;
          log(`latency: ${impl} @${rate}/s: p50 ${fmtMs(l.p50 / 1000)}, p99 ${fmtMs(l.p99 / 1000)}, p99.9 ${fmtMs(l.p999 / 1000)}, max ${fmtMs(l.max / 1000)}; lost ${out[impl].lost}${out[impl].backlog_at_cap ? `, backlog ${out[impl].backlog_at_cap}` : ''}`);
        }
        results.latency.push(out);
        if (o.scenarios.includes('eventloop')) {
          // Scenario 5's companion: the same probe while publishing at a steady rate.
          results.eventloop = results.eventloop || { source: 'fanout' };
          results.eventloop.paced = results.eventloop.paced || [];
          const entry = { rate, idle: {} };
          for (const impl of o.impls) {
            entry[impl] = out[impl]?.event_loop_delay ?? null;
            entry.idle[impl] = out[impl]?.idle_event_loop_delay ?? null;
          }
          results.eventloop.paced.push(entry);
        }
      }
    },
  },
  memory: {
    run: async (o, results) => {
      const out = {};
      for (const impl of o.impls) {
        log(`memory: ${impl}, ${o.memClients} idle clients`);
        out[impl] = await memory(impl, o);
        log(`memory: ${impl}: ${fmt(out[impl].rss_per_connection)} bytes RSS per connection`);
      }
      results.memory = out;
    },
  },
  handshake: {
    run: async (o, results) => {
      // The first concurrency is the headline; the others are reported beside it.
      const runs = [];
      for (const concurrency of o.handshakeConcurrency) {
        const out = { concurrency };
        for (const impl of o.impls) {
          log(`handshake: ${impl}, ${o.handshakeClients} clients, ${concurrency} at a time`);
          out[impl] = await handshake(impl, o, concurrency);
          log(`handshake: ${impl} (${concurrency} in flight): ${fmt(out[impl].handshakes_per_s)} handshakes/s (${out[impl].failed} failed), p99 ${fmtMs(out[impl].handshake_latency_us.p99 / 1000)}, listen backlog ${out[impl].listen_backlog}`);
        }
        runs.push(out);
      }
      const [head, ...others] = runs;
      results.handshake = { ...head, others };
    },
  },
  redis: {
    run: async (o, results) => {
      const bin = findRedisServer();
      if (!bin) {
        log('redis: SKIPPED: redis-server is not installed (apt-get install redis-server)');
        results.redis = { skipped: 'redis-server not found on PATH' };
        return;
      }
      const redis = await startRedis(bin);
      try {
        const out = {};
        for (const impl of o.impls) {
          log(`redis: ${impl}, publisher process → Redis → ${o.redisServers} server(s) → ${o.clients} clients at ${o.redisRate} events/s for ${o.duration} s`);
          out[impl] = await redisRun(impl, o, redis.url);
          log(`redis: ${impl}: ${fmt(out[impl].deliveries_per_s)} deliveries/s, lost ${out[impl].lost}${out[impl].backlog_at_cap ? `, backlog ${out[impl].backlog_at_cap}` : ''}, p99 ${fmtMs(out[impl].latency_us.p99 / 1000)}`);
        }
        results.redis = out;
      } finally {
        await redis.child.stop(null, 3000);
      }
    },
  },
  scale: {
    run: async (o, results) => {
      const out = {};
      for (const impl of o.impls) {
        log(`scale: ${impl}, steps of ${o.scaleStep} up to ${o.scaleMax} (budget ${o.scaleBudget} s)`);
        out[impl] = await scale(impl, o);
        log(`scale: ${impl}: ${fmt(out[impl].max_connections)} connections (${out[impl].stop_reason})`);
      }
      results.scale = out;
    },
  },
};

function pick(byImpl, f) {
  const out = {};
  for (const [impl, v] of Object.entries(byImpl)) out[impl] = f(v);
  return out;
}

const fmt = (n) => (n == null ? '-' : Math.round(n).toLocaleString('en-US'));

// ---------------------------------------------------------------------------------------------
// Verdict: the smoke run fails on loss, duplicates, reordering or a crash; never on speed.

function integrityProblems(results, o) {
  const problems = [];
  const check = (where, f) => {
    if (!f || typeof f !== 'object') return;
    if (f.error) problems.push(`${where}: crashed: ${f.error}`);
    // The reference drops what a client is too far behind for (by design): its loss is a figure.
    for (const k of where.includes('.reference') ? ['duplicates', 'reordered', 'failed'] : ['lost', 'duplicates', 'reordered', 'failed']) {
      if (typeof f[k] === 'number' && f[k] > 0) problems.push(`${where}: ${k} = ${f[k]}`);
    }
  };
  for (const [name, r] of Object.entries(results)) {
    if (!r || typeof r !== 'object') continue;
    if (r.error) problems.push(`${name}: crashed: ${r.error}`);
    // latency is a list of {rate, rt, baseline}; the others are {rt, baseline}.
    const runs = Array.isArray(r) ? r.map((x, i) => [`${name}[${x.rate ?? i}]`, x]) : [[name, r]];
    for (const [where, run] of runs) {
      if (run.error) problems.push(`${where}: crashed: ${run.error}`);
      for (const impl of [...o.impls, 'rt_redis']) check(`${where}.${impl}`, run[impl]);
    }
  }
  // At smoke size, every step of the scale ramp must reach every client.
  if (o.smoke && results.scale && !results.scale.error) {
    for (const impl of o.impls) {
      const s = results.scale[impl];
      if (s && s.max_connections < o.scaleMax) problems.push(`scale.${impl}: held ${s.max_connections} of ${o.scaleMax} (${s.stop_reason})`);
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const o = parseOptions(process.argv.slice(2));
  ctx.opts = o;
  setVerbose(o.verbose);
  ctx.loadgen = buildLoadgen(o.build);
  ctx.token = jwt.sign({ sub: 'bench', userId: 'bench-user' }, SECRET, { algorithm: 'HS256', expiresIn: '6h' });
  const meta = { machine: machine(), command: `npm run ${o.smoke ? 'bench:smoke' : 'bench'}${process.argv.slice(2).filter((a) => a !== '--smoke').length ? ` -- ${process.argv.slice(2).filter((a) => a !== '--smoke').join(' ')}` : ''}`, options: o };
  log(`machine: ${meta.machine.nproc} cores (${meta.machine.cpu}), ${meta.machine.ram_gib} GiB, node ${meta.machine.node}, ${meta.machine.rustc}`);
  const results = {};
  const t0 = Date.now();
  const order = ALL.filter((s) => o.scenarios.includes(s));
  for (const name of order) {
    const sc = SCENARIOS[name];
    if (!sc) continue; // eventloop is measured by fanout
    const s0 = Date.now();
    ctx.scenario = name;
    try {
      await sc.run(NO_REFERENCE.has(name) ? { ...o, impls: o.impls.filter((i) => i !== 'reference') } : o, results);
    } catch (err) {
      log(`${name}: FAILED: ${err.stack || err.message}`);
      results[name] = { ...(results[name] || {}), error: err.message };
    }
    log(`${name}: done in ${((Date.now() - s0) / 1000).toFixed(1)} s`);
  }
  if (o.scenarios.includes('eventloop') && !o.scenarios.includes('fanout')) {
    log('eventloop: measured during fanout; add fanout to --scenarios');
  }
  meta.total_secs = (Date.now() - t0) / 1000;
  meta.background = ctx.background;
  meta.max_background_cores = Math.max(0, ...ctx.background.map((b) => b.busy_cores));
  meta.quiet_wait_s = o.quietWait ?? 60;
  if (o.merge && !o.smoke) {
    // Re-ran some scenarios (each still rt vs baseline in this run): keep the others' figures.
    const file = path.join(RESULTS, 'latest.json');
    if (fs.existsSync(file)) {
      const prev = JSON.parse(fs.readFileSync(file, 'utf8'));
      const kept = Object.fromEntries(Object.entries(prev.results).filter(([k]) => !(k in results)));
      Object.assign(results, kept);
      // Scenario 5 has two halves: measured during fan-out (scenario 1) and at steady rates
      // (scenario 2). Keep the half whose scenario did not run again.
      const el = prev.results.eventloop;
      if (el && results.eventloop && results.eventloop !== el) {
        const fanoutPart = o.scenarios.includes('fanout') ? results.eventloop : el;
        const pacedPart = o.scenarios.includes('latency') ? results.eventloop.paced : el.paced;
        results.eventloop = { ...fanoutPart, paced: pacedPart };
      }
      meta.merged_into = { date: prev.meta.machine.date, command: prev.meta.command, total_secs: prev.meta.total_secs, background: prev.meta.background };
      meta.background = [...(prev.meta.background || []).filter((b) => !o.scenarios.includes(b.run.split('/')[0])), ...meta.background];
      meta.max_background_cores = Math.max(0, ...meta.background.map((b) => b.busy_cores));
      meta.command = `${prev.meta.command}, then ${meta.command}`;
    }
  }
  const doc = { meta, results, summary: report.summarize(results, o) };
  const problems = integrityProblems(results, o);
  doc.problems = problems;
  fs.mkdirSync(RESULTS, { recursive: true });
  const base = o.smoke ? 'smoke' : o.write ? 'latest' : 'scratch';
  fs.writeFileSync(path.join(RESULTS, `${base}.json`), `${JSON.stringify(doc, null, 2)}\n`);
  log(`wrote bench/results/${base}.json`);
  if (o.write && !o.smoke) {
    fs.writeFileSync(path.join(RESULTS, 'chart.svg'), report.chartSvg(doc));
    fs.writeFileSync(path.join(ROOT, 'BENCHMARKS.md'), report.markdown(doc));
    log('wrote BENCHMARKS.md and bench/results/chart.svg');
  }
  console.log(report.textTable(doc));
  if (problems.length) {
    log(`integrity problems:\n  ${problems.join('\n  ')}`);
    if (o.smoke) process.exit(1);
  }
  log(`finished in ${meta.total_secs.toFixed(0)} s`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
