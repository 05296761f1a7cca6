// Operations with the Redis bus, against a private redis-server: /health follows Redis in strict
// mode (503 while it is down) and in fallback mode (200 "degraded"), Redis state and reconnects
// in /metrics, and a drain across two processes on one Redis that loses no event.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');
const prom = require('./prometheus');

const skip = h.redisSkipReason();

async function metrics(port) {
  const r = await h.httpGet(port, '/metrics');
  return prom.parse(r.raw);
}

describe('operations with Redis', { skip }, () => {
  let redis;
  let server;
  const procs = [];
  const clients = [];

  before(async () => {
    redis = await h.startRedis();
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: redis.url, redisRequired: true });
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
    await Promise.all(procs.map((p) => p.stop()));
    await redis?.stop();
  });

  test('/health and /metrics report the Redis bus', async () => {
    const r = await h.httpGet(server.port, '/health');
    assert.equal(r.status, 200);
    assert.equal(r.body.status, 'ok');
    assert.equal(r.body.bus, 'redis');
    assert.deepEqual(r.body.redis, { configured: true, required: true, connected: true });
    const m = await metrics(server.port);
    assert.equal(prom.value(m, 'realtime_redis_connected'), 1);
    assert.equal(prom.value(m, 'realtime_bus_info', { mode: 'redis', redis_required: 'true' }), 1);
    assert.equal(prom.value(m, 'realtime_redis_reconnects_total'), 0);
  });

  test('Redis killed: 503 redis_unavailable in strict mode, 200 degraded otherwise; back to 200 once it returns', async () => {
    const child = h.spawnServer({ redisUrl: redis.url }, { env: h.cleanEnv({ LOG_LEVEL: 'warn' }) });
    procs.push(child);
    const [, childPort, mode] = await child.waitForOutput(/^ready (\d+) (\w+)$/m, { ms: 10_000 });
    assert.equal(mode, 'redis');
    assert.equal((await h.httpGet(Number(childPort), '/health')).body.status, 'ok');

    await redis.kill('SIGKILL');
    const down = await h.waitUntil(async () => {
      const r = await h.httpGet(server.port, '/health');
      return r.status === 503 && r;
    }, 'strict /health turns 503', 10_000);
    assert.equal(down.body.status, 'redis_unavailable');
    assert.equal(down.body.redis.connected, false);
    const degraded = await h.waitUntil(async () => {
      const r = await h.httpGet(Number(childPort), '/health');
      return r.body.status === 'degraded' && r;
    }, 'the fallback server reports degraded', 10_000);
    assert.equal(degraded.status, 200, 'a server that is not redisRequired keeps taking clients');
    let m = await metrics(server.port);
    assert.equal(prom.value(m, 'realtime_redis_connected'), 0);
    assert.equal(prom.value(m, 'realtime_ready'), 0);
    // A publish meanwhile is held (in order) until Redis is back: the queue gauge shows it.
    const published = prom.value(m, 'realtime_events_published_total');
    let settled = false;
    const held = rt.publishParcelUpdate('while-down');
    held.then(() => { settled = true; }, () => { settled = true; });
    await h.waitUntil(async () => prom.value(await metrics(server.port), 'realtime_publish_queue') === 1,
      'the held publish shows in realtime_publish_queue', 10_000);
    assert.equal(server.stats().events.publishQueued, 1);
    assert.equal(settled, false);

    await redis.restart();
    await h.withTimeout(held, 20_000, 'the held publish to go out once Redis is back');
    m = await metrics(server.port);
    assert.equal(prom.value(m, 'realtime_publish_queue'), 0);
    assert.equal(prom.value(m, 'realtime_events_published_total'), published + 1);
    assert.equal(prom.value(m, 'realtime_events_publish_failed_total'), 0);
    await h.waitUntil(async () => (await h.httpGet(server.port, '/health')).status === 200, 'strict /health is 200 again', 20_000);
    await h.waitUntil(async () => (await h.httpGet(Number(childPort), '/health')).body.status === 'ok', 'the other server is ok again', 20_000);
    m = await metrics(server.port);
    assert.equal(prom.value(m, 'realtime_redis_connected'), 1);
    assert.ok(prom.value(m, 'realtime_redis_reconnects_total') >= 1);
    assert.equal(server.stats().bus.redisReconnects, prom.value(m, 'realtime_redis_reconnects_total'));
    child.write('close 0');
    await child.waitForOutput(/closed/);
  });

  test('drain across processes: clients moving from a draining server to another on the same Redis miss no event (on the notice, or resuming from the shared history after 1001)', async () => {
    // Make sure the publisher's connection is up again after the previous test's restart.
    await h.waitUntil(async () => {
      try {
        await rt.publishParcelUpdate('warm-up');
        return true;
      } catch {
        return false;
      }
    }, 'publishing works', 15_000, 200);
    const a = h.spawnServer({ redisUrl: redis.url }, { env: h.cleanEnv({ LOG_LEVEL: 'warn' }) });
    procs.push(a);
    const [, aPort] = await a.waitForOutput(/^ready (\d+) redis$/m, { ms: 10_000 });
    const movers = await Promise.all(Array.from({ length: 5 }, (_, i) =>
      h.connectReady(h.wsUrl(Number(aPort), { token: h.sign({ sub: `mover-${i}` }) }))));
    clients.push(...movers);
    const resumers = await Promise.all(Array.from({ length: 3 }, (_, i) =>
      h.connectReady(h.wsUrl(Number(aPort), { token: h.sign({ sub: `resumer-${i}` }) }))));
    clients.push(...resumers);
    const resumed = h.resumeOnClose(resumers, () => h.wsUrl(server));
    const moved = h.moveOnNotice(movers, () => h.wsUrl(server));
    const publisher = h.publishContinuously(rt, 'r', 3);
    await h.delay(150);
    const beforeDrain = publisher.count;
    a.write('close 1500');
    await a.waitForOutput(/closed/, { ms: 10_000 });
    const duringDrain = publisher.count - beforeDrain;
    const [next, back] = await Promise.all([moved, resumed]);
    clients.push(...next, ...back);
    await h.delay(100);
    const published = await publisher.stop();
    await rt.publishParcelUpdate('end');
    await Promise.all([...next, ...back].map((n) => h.waitUntil(() => h.eventIds(n).includes('end'), 'the moved client sees the end')));
    assert.deepEqual(await a.waitForExit(8000), { code: 0, signal: null }, a.err());

    for (const c of movers) assert.equal((await c.closed).code, 1001);
    h.assertMovedWithoutLoss({ prefix: 'r', published, movers, moved: next, resumers, back });
    assert.ok(duringDrain >= 10, `published during the drain: ${duringDrain}`);
  });
});
