// Helpers for the node:test suites: npm `ws` clients and HTTP refusals, child Node processes
// running this package, the drain assertions. Ports, processes, redis-server, tokens and waiting
// come from the kit the benchmark shares (test-kit/), re-exported here.
'use strict';

const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');

const WebSocket = require('ws');

const kit = require('../test-kit');

const { SECRET, DEFAULT_TIMEOUT, sign, delay, withTimeout, waitUntil } = kit;
const PKG = path.resolve(__dirname, '..');
const WELCOME = '{"type":"connected","message":"WebSocket connection established"}';

/** A frame without its trailing `"offset":"<ms>-<seq>"` field (the engine always puts it last). */
function withoutOffset(frame) {
  return frame.replace(/,"offset":"\d+-\d+"\}$/, '}');
}

/** The exact frame the engine sends for a parcel id (without its offset). */
function frame(parcelId) {
  return `{"type":"parcel_updated","parcel_id":${JSON.stringify(parcelId)}}`;
}

/** The exact frame the engine sends for a parcel id with publisher data. */
function dataFrame(parcelId, data) {
  return `{"type":"parcel_updated","parcel_id":${JSON.stringify(parcelId)},"data":${JSON.stringify(data)}}`;
}

// ---------------------------------------------------------------------------------------------
// WebSocket clients

/**
 * A connected ws client that records every frame it receives.
 * - `messages`: every text frame, in arrival order (binary frames are recorded as Buffers)
 * - `raw`: every frame exactly as received
 * - `messages`: the same with the trailing `"offset"` field removed, so that suites about the
 *   original protocol compare exact frames (offsets are asserted by the resume suites on `raw`)
 * - `next()`: the next frame not yet consumed by next()
 * - `waitFor(n)`: resolves with `messages` once at least n frames arrived
 * - `closed`: resolves with {code, reason} when the connection closes
 */
class Client {
  constructor(ws) {
    this.ws = ws;
    this.messages = [];
    this.raw = [];
    this.cursor = 0;
    this.errors = [];
    this.waiters = new Set();
    this.closeInfo = null;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this.notify();
      });
    });
    ws.on('message', (data, isBinary) => {
      const frame = isBinary ? Buffer.from(data) : data.toString('utf8');
      this.raw.push(frame);
      this.messages.push(isBinary ? frame : withoutOffset(frame));
      this.notify();
    });
    ws.on('error', (err) => this.errors.push(err));
  }

  notify() {
    for (const w of [...this.waiters]) w();
  }

  /** Resolves with all messages once at least `n` arrived; fails loudly after `ms`. */
  waitFor(n, ms = DEFAULT_TIMEOUT) {
    if (this.messages.length >= n) return Promise.resolve(this.messages);
    return kit.whenNotified(this.waiters, () => {
      if (this.messages.length >= n) return this.messages;
      if (this.closeInfo) {
        throw new Error(
          `connection closed (${this.closeInfo.code} ${this.closeInfo.reason}) after ` +
            `${this.messages.length} of ${n} messages: ${JSON.stringify(this.messages.slice(-3))}`,
        );
      }
      return undefined;
    }, ms, () => `timed out after ${ms} ms: got ${this.messages.length} of ${n} messages; last: ` +
      JSON.stringify(this.messages.slice(-3)));
  }

  /** The next frame not consumed yet. */
  async next(ms = DEFAULT_TIMEOUT) {
    const index = this.cursor++;
    const all = await this.waitFor(index + 1, ms);
    return all[index];
  }

  /** The next frame, parsed as JSON. */
  async nextJson(ms = DEFAULT_TIMEOUT) {
    const m = await this.next(ms);
    assert.equal(typeof m, 'string', 'expected a text frame');
    return JSON.parse(m);
  }

  send(data) {
    return new Promise((resolve, reject) => this.ws.send(data, (err) => (err ? reject(err) : resolve())));
  }

  /** Closes (normal closure) and waits for the close to complete. */
  async close() {
    if (this.closeInfo) return this.closeInfo;
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) {
      this.ws.close(1000, 'bye');
    }
    try {
      return await withTimeout(this.closed, 2000, 'the client to close');
    } catch {
      this.ws.terminate();
      return this.closed;
    }
  }

  terminate() {
    this.ws.terminate();
    return this.closed;
  }
}

/** Opens a ws connection; rejects with the HTTP status if the server refuses. */
function connect(url, options = {}, ms = DEFAULT_TIMEOUT, protocols = undefined) {
  const ws = protocols === undefined ? new WebSocket(url, options) : new WebSocket(url, protocols, options);
  const client = new Client(ws);
  const opened = new Promise((resolve, reject) => {
    ws.once('open', () => resolve(client));
    ws.once('unexpected-response', (req, res) => {
      res.resume();
      req.destroy();
      reject(new Error(`server refused the upgrade with HTTP ${res.statusCode}`));
    });
    ws.once('error', reject);
  });
  return withTimeout(opened, ms, `a WebSocket connection to ${url}`).catch((err) => {
    ws.terminate();
    throw err;
  });
}

/** Connects and consumes the welcome frame, asserting it is exactly the welcome. */
async function connectReady(url, options) {
  const client = await connect(url, options);
  assert.equal(await client.next(), WELCOME);
  return client;
}

/**
 * Like `connect`, offering WebSocket subprotocols (as a browser's `new WebSocket(url, protocols)`
 * does). Resolves with the Client (its `ws.protocol` is the one the server picked).
 */
function connectProtocols(url, protocols, options = {}, ms = DEFAULT_TIMEOUT) {
  return connect(url, options, ms, protocols);
}

function wsUrl(server, { token = sign(), path: p = '/ws', host = '127.0.0.1' } = {}) {
  const query = token == null ? '' : `?token=${encodeURIComponent(token)}`;
  return `ws://${host}:${server.port ?? server}${p}${query}`;
}

/** Waits (at most `ms`) for the client to be closed; asserts the code (and reason if given). */
async function expectClose(client, code, reason, ms = DEFAULT_TIMEOUT) {
  const info = await withTimeout(client.closed, ms, `close ${code}`);
  assert.equal(info.code, code, `close code (reason ${JSON.stringify(info.reason)})`);
  if (reason !== undefined) assert.equal(info.reason, reason);
  return info;
}

/** The offset of the last frame a client received that carried one (the welcome included). */
function lastOffset(client) {
  for (let i = client.raw.length - 1; i >= 0; i--) {
    const m = /"offset":"(\d+-\d+)"/.exec(client.raw[i]);
    if (m) return m[1];
  }
  return null;
}

/** The parcel ids of the parcel_updated frames a client received, in order. */
function eventIds(client) {
  return client.messages
    .filter((m) => typeof m === 'string' && m.startsWith('{"type":"parcel_updated"'))
    .map((m) => JSON.parse(m).parcel_id);
}

// ---------------------------------------------------------------------------------------------
// Refusals and plain HTTP

/**
 * Attempts a WebSocket upgrade that the server is expected to refuse; resolves with
 * {status, headers, body} (body parsed as JSON; `raw` is the text).
 */
function refusal(url, options = {}, ms = DEFAULT_TIMEOUT, protocols = undefined) {
  const ws = protocols === undefined ? new WebSocket(url, options) : new WebSocket(url, protocols, options);
  const result = new Promise((resolve, reject) => {
    ws.on('error', (err) => reject(new Error(`expected an HTTP refusal from ${url}, got: ${err.message}`)));
    ws.once('open', () => {
      ws.terminate();
      reject(new Error(`expected a refusal, but the upgrade succeeded (${url})`));
    });
    ws.once('unexpected-response', (req, res) => {
      readResponse(res).then((r) => {
        req.destroy();
        resolve(r);
      }, reject);
    });
  });
  return withTimeout(result, ms, `an HTTP refusal from ${url}`);
}

/** Like `refusal`, offering WebSocket subprotocols. */
function refusalProtocols(url, protocols, options = {}, ms = DEFAULT_TIMEOUT) {
  return refusal(url, options, ms, protocols);
}

/** An HTTP response read whole: {status, headers, body (parsed JSON, or undefined), raw}. */
function readResponse(res) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    res.on('error', reject);
    res.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let body;
      try {
        body = JSON.parse(raw);
      } catch {
        body = undefined;
      }
      resolve({ status: res.statusCode, headers: res.headers, body, raw });
    });
  });
}

/** Asserts the refusal of `url` has `status` and a JSON body {error, code} exactly in shape. */
async function expectRefusal(url, options, status, code) {
  return assertRefusal(await refusal(url, options), status, code);
}

/** Asserts a refusal's status and JSON body {error, code}; `r` from refusal/refusalProtocols. */
function assertRefusal(r, status, code) {
  assert.equal(r.status, status, `status for ${code}: body ${r.raw}`);
  assert.match(r.headers['content-type'] ?? '', /^application\/json/);
  assert.ok(r.body, `body is JSON: ${r.raw}`);
  assert.deepEqual(Object.keys(r.body).sort(), ['code', 'error']);
  assert.equal(r.body.code, code);
  assert.equal(typeof r.body.error, 'string');
  assert.ok(r.body.error.length > 0);
  return r;
}

/** A plain HTTP request (no upgrade); resolves with {status, headers, body, raw}. */
function httpGet(port, p, headers = {}, method = 'GET') {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, method, headers, agent: false }, (res) => {
      readResponse(res).then(resolve, reject);
    });
    req.on('error', reject);
    req.end();
  }), DEFAULT_TIMEOUT, `GET ${p}`);
}

/**
 * Serves an Express `app` on a free loopback port: `{ post(path) → status, close() }` (close
 * cuts keep-alive connections).
 */
async function serveApp(app) {
  const server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    async post(path) {
      const res = await fetch(`${base}${path}`, { method: 'POST' });
      await res.text();
      return res.status;
    },
    close() {
      server.closeAllConnections?.();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Processes (the kit's, started clean in the package folder)

/** process.env without the variables the package reads, so that children start clean. */
function cleanEnv(extra = {}) {
  const env = { ...process.env };
  for (const k of [
    'JWT_SECRET', 'REDIS_URL', 'REDIS_CHANNEL', 'REDIS_REQUIRED', 'REALTIME_PORT', 'REALTIME_HOST',
    'NODE_ENV', 'LOG_LEVEL', 'LOG_FORMAT', 'REALTIME_DRAIN_MS', 'REALTIME_DASHBOARD', 'NODE_TEST_CONTEXT',
  ]) {
    delete env[k];
  }
  for (const k of Object.keys(env)) if (k.startsWith('REALTIME_')) delete env[k];
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = String(v);
  }
  return env;
}

/** Runs `fn` with process.env[k] set (or deleted when undefined), restoring them afterwards. */
async function withEnv(vars, fn) {
  const saved = {};
  for (const [k, v] of Object.entries(vars)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = String(v);
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/**
 * A child process with its output captured (see test-kit/proc.js): `group: true` makes it lead
 * a process group of its own, which stop() and the cleanup kill whole.
 */
function spawnProcess(command, args, { env = cleanEnv(), cwd = PKG, group = false } = {}) {
  return kit.spawnProcess(command, args, { env, cwd, group });
}

/** Runs `node -e script` (the script can require the package as PKG). */
function spawnNodeScript(script, options) {
  return spawnProcess(process.execPath, ['-e', script], options);
}

/**
 * Starts a server with `options` in a child process and closes it at once: resolves with
 * `{ready: {port, mode}}` or `{rejected: {code, message}}` (what startServer did).
 */
async function tryStart(options, env = {}) {
  const all = { port: 0, host: '127.0.0.1', jwtSecret: SECRET, pingIntervalMs: 0, ...options };
  const p = spawnNodeScript(`
    const rt = require(${JSON.stringify(PKG)});
    rt.startServer(${JSON.stringify(all)}).then(
      (s) => { console.log('ready ' + s.port + ' ' + s.busMode); return s.close().then(() => process.exit(0)); },
      (err) => { console.log('rejected ' + err.code + ' ' + err.message); process.exit(0); });
  `, { env: cleanEnv({ LOG_LEVEL: 'off', ...env }) });
  await p.waitForExit(30_000);
  const ready = /^ready (\d+) (\w+)$/m.exec(p.out());
  if (ready) return { ready: { port: Number(ready[1]), mode: ready[2] } };
  const rejected = /^rejected (\S+) (.*)$/m.exec(p.out());
  assert.ok(rejected, `neither ready nor rejected: ${p.out()} ${p.err()}`);
  return { rejected: { code: rejected[1], message: rejected[2] } };
}

/**
 * A child process running a server with `options` (port 0 on 127.0.0.1 with the test secret
 * unless given). It prints `ready PORT BUSMODE`, then obeys lines on stdin:
 * - `publish ID` publishes ID; `publish PREFIX N` publishes PREFIX-1 .. PREFIX-N at once, in
 *   order; either answers `published ID|PREFIX` or `failed ID|PREFIX CODE`;
 * - `close [DRAIN_MS]` closes the server (draining for DRAIN_MS) and answers `closed`.
 */
function spawnServer(options = {}, spawnOptions) {
  const all = { port: 0, host: '127.0.0.1', jwtSecret: SECRET, ...options };
  return spawnNodeScript(`
    const rt = require(${JSON.stringify(PKG)});
    const readline = require('node:readline');
    (async () => {
      const server = await rt.startServer(${JSON.stringify(all)});
      console.log('ready ' + server.port + ' ' + server.busMode);
      const rl = readline.createInterface({ input: process.stdin });
      rl.on('line', async (line) => {
        const [cmd, arg, n] = line.split(' ');
        if (cmd === 'publish') {
          const ids = n === undefined ? [arg] : Array.from({ length: Number(n) }, (_, i) => arg + '-' + (i + 1));
          try {
            await Promise.all(ids.map((id) => rt.publishParcelUpdate(id)));
            console.log('published ' + arg);
          } catch (err) {
            console.log('failed ' + arg + ' ' + err.code);
          }
        } else if (cmd === 'close') {
          rl.close();
          process.stdin.destroy(); // readline alone keeps an open stdin pipe alive
          await server.close(arg === undefined ? undefined : { drainMs: Number(arg) });
          console.log('closed');
        }
      });
    })().catch((err) => { console.error(err); process.exit(2); });
  `, spawnOptions);
}

// ---------------------------------------------------------------------------------------------
// Drains: clients that move on the notice or resume after the close, and what they must see

/**
 * Clients that ignore the drain notice: on 1001 they reconnect to `url()` with
 * `?since=<last offset>`, as the README's "Never missing an event" says. Resolves with the new
 * connections, in order.
 */
function resumeOnClose(group, url) {
  return Promise.all(group.map(async (c) => {
    assert.equal((await c.closed).code, 1001);
    const since = lastOffset(c);
    assert.ok(since, 'the old connection carried offsets');
    return connectReady(`${url()}&since=${encodeURIComponent(since)}`);
  }));
}

/**
 * Clients that follow the drain notice: on `{"type":"reconnect"}` each connects to `url()` at
 * once and keeps reading the old connection, as the README says. Resolves with the new
 * connections, in order.
 */
function moveOnNotice(group, url) {
  return Promise.all(group.map((c) => new Promise((resolve, reject) => {
    // The new connection resumes from the last offset the old one gave, as the README
    // advises: however long it takes to open (a loaded machine may need longer than the
    // overlap), nothing between the two is missed.
    let last = null;
    c.ws.on('message', (data) => {
      const text = data.toString('utf8');
      const offset = /"offset":"([^"]+)"/.exec(text);
      if (offset) last = offset[1];
      if (text.startsWith('{"type":"reconnect"')) {
        const since = last ? `${url().includes('?') ? '&' : '?'}since=${encodeURIComponent(last)}` : '';
        connectReady(url() + since).then(resolve, reject);
      }
    });
  })));
}

/**
 * Publishes `PREFIX-0`, `PREFIX-1`, ... in bursts of 5 with `pauseMs` between them, until
 * `stop()`, which resolves with how many were published.
 */
function publishContinuously(rt, prefix, pauseMs) {
  let published = 0;
  let publishing = true;
  const done = (async () => {
    while (publishing) {
      await Promise.all(Array.from({ length: 5 }, () => rt.publishParcelUpdate(`${prefix}-${published++}`)));
      await delay(pauseMs);
    }
  })();
  return {
    /** How many were published so far. */
    get count() {
      return published;
    },
    async stop() {
      publishing = false;
      await done;
      return published;
    },
  };
}

/**
 * After a drain moved clients from one server to another while `PREFIX-0..published-1` were
 * published: each of `movers` (moved on the notice to `moved[i]`) got a gap-free stream from
 * the first event on the old server, a gap-free stream to the last on the new one, and nothing
 * in between was missed; each of `resumers` (resumed after the 1001 as `back[i]`) got every
 * event exactly once, in order. Returns, per mover, where each connection's events ended and
 * began: [{ lastOld, firstNew }].
 */
function assertMovedWithoutLoss({ prefix, published, movers, moved, resumers, back }) {
  const seq = (client) => eventIds(client).filter((id) => id.startsWith(`${prefix}-`)).map((id) => Number(id.slice(prefix.length + 1)));
  const seams = movers.map((c, i) => {
    const fromOld = seq(c);
    const fromNew = seq(moved[i]);
    assert.equal(fromOld[0], 0, `client ${i} connected before the first publish`);
    fromOld.forEach((n, k) => assert.equal(n, k, `the old server's stream is gap-free (client ${i})`));
    fromNew.forEach((n, k) => assert.equal(n, fromNew[0] + k, `the new server's stream is gap-free (client ${i})`));
    assert.ok(fromNew[0] <= fromOld.at(-1) + 1, `no gap between the old (to ${fromOld.at(-1)}) and the new connection (from ${fromNew[0]})`);
    assert.equal(fromNew.at(-1), published - 1, 'the new server delivered up to the last event');
    return { lastOld: fromOld.at(-1), firstNew: fromNew[0] };
  });
  for (const [i, c] of resumers.entries()) {
    const all = [...seq(c), ...seq(back[i])];
    assert.ok(back[i].messages.some((m) => m.startsWith('{"type":"resumed"')), 'the resume was answered');
    all.forEach((n, k) => assert.equal(n, k, `resumer ${i}: every event exactly once, in order`));
    assert.equal(all.length, published, `resumer ${i} missed nothing`);
  }
  return seams;
}

module.exports = {
  PKG,
  SECRET,
  WELCOME,
  DEFAULT_TIMEOUT,
  withoutOffset,
  frame,
  dataFrame,
  sign,
  nowSeconds: kit.nowSeconds,
  delay,
  withTimeout,
  waitUntil,
  Client,
  connect,
  connectReady,
  connectProtocols,
  wsUrl,
  expectClose,
  lastOffset,
  eventIds,
  refusal,
  refusalProtocols,
  expectRefusal,
  assertRefusal,
  httpGet,
  serveApp,
  freePort: kit.freePort,
  cleanEnv,
  withEnv,
  spawnProcess,
  spawnNodeScript,
  spawnServer,
  tryStart,
  redisInstalled: kit.redisInstalled,
  redisSkipReason: kit.redisSkipReason,
  redisCli: kit.redisCli,
  startRedis: () => kit.startRedis(),
  resumeOnClose,
  moveOnNotice,
  publishContinuously,
  assertMovedWithoutLoss,
};
