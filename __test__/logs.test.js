// Logs: JSON lines when stderr is not a terminal (text on request), levels from LOG_LEVEL, one
// line per connection open and close with the user id and the reason, never a token; the
// setLogger() hook, and its bounded queue.
'use strict';

const { test, describe, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const h = require('./helpers');

const SERVER = path.join(__dirname, 'fixtures', 'log-server.js');

function logServer(env) {
  return h.spawnProcess(process.execPath, [SERVER], { env: h.cleanEnv({ SECRET: h.SECRET, ...env }) });
}

async function ready(p) {
  const [, port] = await p.waitForOutput(/^ready (\d+)$/m, { ms: 10_000 });
  return Number(port);
}

async function command(p, line, answer) {
  const before = p.out().length;
  p.write(line);
  await h.waitUntil(() => answer.test(p.out().slice(before)), `the log server answers ${line}`);
  return answer.exec(p.out().slice(before));
}

function jsonLines(text) {
  return text.split('\n').filter(Boolean).map((line) => {
    try {
      return JSON.parse(line);
    } catch {
      throw new Error(`not a JSON line: ${JSON.stringify(line)}`);
    }
  });
}

describe('logs', () => {
  const procs = [];
  after(async () => {
    await Promise.all(procs.map((p) => p.stop()));
  });

  test('JSON lines by default off a terminal: one line per open and close with user and reason; no token ever', async () => {
    const p = logServer({ LOG_LEVEL: 'trace' });
    procs.push(p);
    const port = await ready(p);
    const queryToken = h.sign({ sub: 'user-42' });
    const headerToken = h.sign({ id: 'user-43' });
    const badSignature = h.sign({ sub: 'intruder' }, {}, 'another-secret');
    const expired = h.sign({ sub: 'late' }, { expiresIn: -60 });
    const stray = h.sign({ sub: 'stray' });
    const a = await h.connectReady(h.wsUrl(port, { token: queryToken }));
    const b = await h.connectReady(h.wsUrl(port, { token: null }), { headers: { Authorization: `Bearer ${headerToken}` } });
    await command(p, 'publish logged-1', /published logged-1/);
    await a.waitFor(2);
    await b.waitFor(2);
    await a.close();
    await b.close();
    await h.expectRefusal(h.wsUrl(port, { token: badSignature }), {}, 401, 'TOKEN_INVALID_SIGNATURE');
    await h.expectRefusal(h.wsUrl(port, { token: expired }), {}, 401, 'TOKEN_EXPIRED');
    await h.expectRefusal(h.wsUrl(port, { token: stray, path: '/nope' }), {}, 404, 'NOT_FOUND');
    await h.httpGet(port, `/health?token=${stray}`);
    await command(p, 'close', /closed/);
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());

    const records = jsonLines(p.err());
    for (const r of records) {
      assert.match(r.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.ok(['error', 'warn', 'info', 'debug', 'trace'].includes(r.level), r.level);
      assert.equal(typeof r.module, 'string');
      assert.equal(typeof r.msg, 'string');
      assert.deepEqual(Object.keys(r).slice(0, 4), ['time', 'level', 'module', 'msg']);
    }
    const opens = records.filter((r) => r.event === 'connection_open');
    const closes = records.filter((r) => r.event === 'connection_close');
    assert.deepEqual(opens.map((r) => r.user).sort(), ['user-42', 'user-43']);
    assert.deepEqual(closes.map((r) => r.user).sort(), ['user-42', 'user-43']);
    for (const r of [...opens, ...closes]) {
      assert.equal(r.level, 'info');
      assert.match(r.peer, /^127\.0\.0\.1:\d+$/);
    }
    for (const r of closes) {
      assert.equal(r.reason, 'client');
      assert.equal(typeof r.duration_ms, 'number');
    }
    const refused = records.filter((r) => r.code && /refused/.test(r.msg));
    assert.deepEqual(refused.map((r) => r.code).sort(), ['NOT_FOUND', 'TOKEN_EXPIRED', 'TOKEN_INVALID_SIGNATURE']);

    const everything = p.err() + p.out();
    for (const token of [queryToken, headerToken, badSignature, expired, stray]) {
      assert.ok(!everything.includes(token), 'a token appeared in the logs');
      assert.ok(!everything.includes(token.split('.')[2]), 'a token signature appeared in the logs');
    }
  });

  test('LOG_FORMAT=text prints readable lines; LOG_LEVEL=warn drops the connection lines', async () => {
    const text = logServer({ LOG_FORMAT: 'text', LOG_LEVEL: 'info' });
    const quiet = logServer({ LOG_LEVEL: 'warn' });
    procs.push(text, quiet);
    for (const p of [text, quiet]) {
      const port = await ready(p);
      const c = await h.connectReady(h.wsUrl(port, { token: h.sign({ sub: 'reader' }) }));
      await c.close();
      await h.delay(50);
      await command(p, 'close', /closed/);
      assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
    }
    const lines = text.err().split('\n').filter(Boolean);
    assert.ok(lines.length >= 3);
    for (const line of lines) assert.match(line, /^\[realtime-events\] (ERROR|WARN|INFO|DEBUG|TRACE) /);
    assert.ok(lines.some((l) => /INFO server: client .* \(user reader\) connected/.test(l)));
    assert.ok(lines.some((l) => /INFO server: client .* \(user reader\) disconnected: closed by client/.test(l)));
    assert.equal(quiet.err(), '', 'nothing below warn');
  });

  test('setLogger() receives every record ({level, message, fields, time, module}) instead of stderr', async () => {
    const p = logServer({ HOOK: '1', LOG_LEVEL: 'info' });
    procs.push(p);
    const port = await ready(p);
    const token = h.sign({ userId: 'hooked-user' });
    const c = await h.connectReady(h.wsUrl(port, { token }));
    await c.close();
    await command(p, 'throw', /thrown/);
    await command(p, 'close', /closed/);
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
    assert.equal(p.err(), '', 'with a hook, nothing goes to stderr');
    const records = p.out().split('\n').filter((l) => l.startsWith('HOOK ')).map((l) => JSON.parse(l.slice(5)));
    for (const r of records) {
      assert.deepEqual(Object.keys(r).sort(), ['fields', 'level', 'message', 'module', 'time']);
      assert.match(r.time, /Z$/);
    }
    assert.ok(records.some((r) => r.module === 'server' && /listening on/.test(r.message)));
    const open = records.find((r) => r.fields.event === 'connection_open');
    assert.equal(open.fields.user, 'hooked-user');
    assert.equal(open.level, 'info');
    const close = records.find((r) => r.fields.event === 'connection_close');
    assert.equal(close.fields.reason, 'client');
    // The JS side's own messages take the same route.
    const js = records.find((r) => r.module === 'js');
    assert.equal(js.level, 'error');
    assert.match(js.message, /subscribeToParcelEvents callback threw/);
    assert.match(js.fields.error, /subscriber failure for the log test/);
    assert.ok(!p.out().includes(token.split('.')[2]), 'no token in hooked records');
  });

  test('a JS thread that falls behind: the hook queue stays bounded and drops are counted', async () => {
    const p = logServer({ HOOK: '1', LOG_LEVEL: 'debug' });
    procs.push(p);
    const port = await ready(p);
    const { hooked: hookedBefore } = JSON.parse((await command(p, 'stats', /stats (\{.*\})/))[1]);
    const N = 1500;
    const flag = path.join(require('node:os').tmpdir(), `realtime-events-unblock-${process.pid}-${Date.now()}`);
    p.write(`block ${flag}`);
    await p.waitForOutput(/blocking/, { ms: 10_000 }); // the child's JS thread is now busy
    // Each plain GET on /ws is refused (426) and logged at debug level by an engine thread before
    // the answer is written: once every answer is in, every record was handed to the hook.
    for (let i = 0; i < N; i += 50) {
      await Promise.all(Array.from({ length: 50 }, () => h.httpGet(port, '/ws')));
    }
    assert.doesNotMatch(p.out(), /unblocked/, 'the JS thread was busy the whole time');
    require('node:fs').writeFileSync(flag, '');
    await p.waitForOutput(/unblocked/, { ms: 10_000 });
    require('node:fs').rmSync(flag, { force: true });
    await h.delay(500);
    const stats = JSON.parse((await command(p, 'stats', /stats (\{.*\})/))[1]);
    assert.ok(stats.dropped > 0, `some records were dropped: ${JSON.stringify(stats)}`);
    const delivered = stats.hooked - hookedBefore;
    assert.ok(delivered <= 1024 + 50, `the queue held at most ~1024 records while the JS thread was busy: ${delivered}`);
    assert.ok(delivered + stats.dropped >= N, `every record was either delivered or counted as dropped: ${delivered} + ${stats.dropped}`);
    const metrics = await h.httpGet(port, '/metrics');
    assert.match(metrics.raw, new RegExp(`^realtime_log_records_dropped_total ${stats.dropped}$`, 'm'));
    await command(p, 'close', /closed/);
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
  });
});
