// Graceful drain (memory bus): health and upgrades answer 503 from the first instant, clients get
// the reconnect notice and close 1001 at moments spread over the window, a client that moves to
// another server on the same bus on the notice misses no event, and the CLI drains on SIGTERM.
'use strict';

const { test, describe, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const rt = require('..');
const h = require('./helpers');
const prom = require('./prometheus');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null };

/** A ready client that also records when its drain notice and its close arrived. */
async function timedClient(url, clock) {
  const c = await h.connectReady(url);
  c.notices = [];
  c.ws.on('message', (data) => {
    const text = data.toString('utf8');
    if (text.startsWith('{"type":"reconnect"')) c.notices.push({ at: clock(), frame: JSON.parse(text) });
  });
  c.closedAt = c.closed.then((info) => ({ at: clock(), ...info }));
  return c;
}

describe('graceful drain', () => {
  const servers = [];
  const clients = [];

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(servers.map((s) => s.close()));
  });

  test('health and upgrades answer 503 at once; 20 clients get the notice, then 1001 spread over the window', async () => {
    const port = await h.freePort();
    const WINDOW = 2000;
    const server = await rt.startServer({ ...BASE, port, drainMs: WINDOW });
    servers.push(server);
    let t0 = 0;
    const clock = () => performance.now() - t0;
    const group = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      timedClient(h.wsUrl(server, { token: h.sign({ sub: `drain-${i}` }) }), clock)));
    clients.push(...group);
    assert.equal((await h.httpGet(port, '/health')).status, 200);

    t0 = performance.now();
    const closing = server.close(); // drainMs from the server's option
    let closedAt = null;
    closing.then(() => { closedAt = clock(); });
    assert.equal(server.draining, true);

    const health = await h.httpGet(port, '/health');
    assert.equal(health.status, 503);
    assert.equal(health.body.status, 'draining');
    assert.equal(health.body.draining, true);
    await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'late' }) }), {}, 503, 'DRAINING');
    const families = prom.parse((await h.httpGet(port, '/metrics')).raw);
    assert.equal(prom.value(families, 'realtime_draining'), 1);
    assert.equal(prom.value(families, 'realtime_ready'), 0);
    assert.equal(prom.value(families, 'realtime_refusals_total', { reason: 'DRAINING' }), 1);
    assert.equal(server.stats().status, 'draining');

    const closes = await Promise.all(group.map((c) => c.closedAt));
    await closing;
    for (const [i, c] of group.entries()) {
      assert.equal(closes[i].code, 1001, `client ${i} closed with 1001`);
      assert.equal(c.notices.length, 1, `client ${i} got one notice`);
      const { frame, at } = c.notices[0];
      assert.equal(frame.type, 'reconnect');
      assert.equal(frame.close_in_ms, WINDOW / 4);
      assert.equal(typeof frame.message, 'string');
      assert.ok(at <= closes[i].at, 'the notice comes before the close');
      // That the connection keeps serving after its notice is shown by order, not time, in the
      // next test (the old connection delivers events the new one already got).
    }
    const times = closes.map((c) => c.at).sort((a, b) => a - b);
    const notices = group.map((c) => c.notices[0].at).sort((a, b) => a - b);
    const early = times.filter((t) => t < WINDOW * 0.1).length;
    assert.ok(early < group.length, `not all closes within the first 10% of the window: ${times.map(Math.round)}`);
    assert.equal(early, 0, 'no close before the first overlap ends');
    // Spread over the window's 1.5 s (2 s minus the overlap), not at once: a quarter of it, so
    // that a stalled test process cannot squeeze real spread below the bound. The lower bounds
    // above only get safer under load.
    assert.ok(times.at(-1) - times[0] >= (WINDOW * 3) / 4 / 4, `closes are spread: ${times.map(Math.round)}`);
    assert.ok(notices.at(-1) - notices[0] >= (WINDOW * 3) / 4 / 4, `notices (and so reconnects) are spread: ${notices.map(Math.round)}`);
    assert.ok(times.at(-1) <= WINDOW * 5, `every client is gone by the end of the window: ${Math.round(times.at(-1))} ms`);
    assert.ok(closedAt >= times[0] && closedAt <= WINDOW * 5, `close() resolved after the clients left: ${closedAt}`);
    // The port is free again.
    const again = await rt.startServer({ ...BASE, port });
    await again.close();
  });

  test('a client that moves to another server on the same bus misses no event (on the notice, or resuming after 1001)', async () => {
    const a = await rt.startServer({ ...BASE, port: 0 });
    const b = await rt.startServer({ ...BASE, port: 0 });
    servers.push(a, b);
    const clock = () => performance.now();
    const movers = await Promise.all(Array.from({ length: 10 }, (_, i) =>
      timedClient(h.wsUrl(a, { token: h.sign({ sub: `mover-${i}` }) }), clock)));
    clients.push(...movers);
    // Three more that ignore the notice and resume with ?since= after the 1001.
    const resumers = await Promise.all(Array.from({ length: 3 }, (_, i) =>
      timedClient(h.wsUrl(a, { token: h.sign({ sub: `resumer-${i}` }) }), clock)));
    clients.push(...resumers);
    const resumed = h.resumeOnClose(resumers, () => h.wsUrl(b, { token: h.sign({ sub: 'resumed' }) }));
    const next = h.moveOnNotice(movers, () => h.wsUrl(b, { token: h.sign({ sub: 'moved' }) }));
    const publisher = h.publishContinuously(rt, 'seq', 2);
    await h.delay(100);
    const beforeDrain = publisher.count;
    await a.close({ drainMs: 1500 });
    const duringDrain = publisher.count - beforeDrain;
    const [moved, back] = await Promise.all([next, resumed]);
    clients.push(...moved, ...back);
    await h.delay(100);
    const published = await publisher.stop();
    await rt.publishParcelUpdate('end');
    await Promise.all([...moved, ...back].map((n) => h.waitUntil(() => h.eventIds(n).includes('end'), 'the moved client sees the end')));

    for (const c of movers) assert.equal((await c.closed).code, 1001);
    const seams = h.assertMovedWithoutLoss({ prefix: 'seq', published, movers, moved, resumers, back });
    for (const [i, { lastOld, firstNew }] of seams.entries()) {
      assert.ok(lastOld >= firstNew, `client ${i}: the connections overlapped (old to ${lastOld}, new from ${firstNew})`);
    }
    assert.ok(duringDrain >= 10, `published continuously during the drain (${duringDrain})`);
  });

  test('the drain ends early once every client has left', async () => {
    const server = await rt.startServer({ ...BASE, port: 0 });
    servers.push(server);
    const group = await Promise.all(Array.from({ length: 3 }, () => h.connectReady(h.wsUrl(server))));
    clients.push(...group);
    // The first notice (at the window's start) makes every client leave; the others' notices
    // were due 29 s and 58 s into the 60 s window.
    for (const c of group) {
      c.ws.on('message', (data) => {
        if (data.toString('utf8').startsWith('{"type":"reconnect"')) for (const g of group) g.ws.close(1000, 'moving on');
      });
    }
    const t0 = performance.now();
    await server.close({ drainMs: 60_000 });
    const took = performance.now() - t0;
    assert.ok(took < 20_000, `close() resolved once the last client left, not at the window's end: ${Math.round(took)} ms`);
    for (const c of group) assert.equal((await c.closed).code, 1000);
    assert.ok(group.some((c) => c.messages.some((m) => m.startsWith('{"type":"reconnect"'))), 'a notice came first');
  });

  test('drainMs: 0 closes every client at once with 1001 and no notice', async () => {
    const server = await rt.startServer({ ...BASE, port: 0 });
    servers.push(server);
    const group = await Promise.all(Array.from({ length: 5 }, () => h.connectReady(h.wsUrl(server))));
    clients.push(...group);
    const t0 = performance.now();
    await server.close({ drainMs: 0 });
    assert.ok(performance.now() - t0 < 4000, 'sooner than the 5 s grace');
    for (const c of group) {
      assert.equal((await c.closed).code, 1001);
      assert.equal(c.messages.length, 1, 'only the welcome');
    }
  });
});

describe('CLI drain on SIGTERM', () => {
  const procs = [];
  const clients = [];

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(procs.map((p) => p.stop()));
  });

  test('SIGTERM: /health 503 at once, clients closed with 1001 spread over REALTIME_DRAIN_MS, exit 0', async () => {
    const port = await h.freePort();
    const p = h.spawnProcess(process.execPath, [path.join(h.PKG, 'bin', 'realtime-events.js')], {
      env: h.cleanEnv({ REALTIME_PORT: port, JWT_SECRET: h.SECRET, REALTIME_DRAIN_MS: 1600, LOG_LEVEL: 'warn', LOG_FORMAT: 'text' }),
      cwd: require('node:os').tmpdir(),
    });
    procs.push(p);
    await p.waitForOutput(new RegExp(`health: http://localhost:${port}/health`), { ms: 10_000 });
    let t0 = 0;
    const clock = () => performance.now() - t0;
    const group = await Promise.all(Array.from({ length: 8 }, () => timedClient(h.wsUrl(port), clock)));
    clients.push(...group);
    t0 = performance.now();
    p.child.kill('SIGTERM');
    await p.waitForOutput(/SIGTERM: closing \(draining 8 clients over up to 1600 ms/);
    const health = await h.httpGet(port, '/health');
    assert.equal(health.status, 503);
    assert.equal(health.body.status, 'draining');
    const closes = await Promise.all(group.map((c) => c.closedAt));
    for (const c of closes) assert.equal(c.code, 1001);
    const times = closes.map((c) => c.at).sort((a, b) => a - b);
    assert.ok(times.filter((t) => t < 160).length === 0, `not all within the first 10%: ${times.map(Math.round)}`);
    assert.ok(times.at(-1) - times[0] >= 1200 / 4, `spread over a quarter of the 1.2 s at least: ${times.map(Math.round)}`);
    assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
    assert.match(p.out(), /\] closed\n/);
  });
});
