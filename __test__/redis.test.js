// The Redis bus, against a private redis-server: interop with redis-cli, several server processes
// sharing events, fallback and required modes, one bus per process, and a Redis restart.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const PKG = JSON.stringify(h.PKG);
const CHANNEL = 'parcel_events';

/** A `redis-cli SUBSCRIBE` process; resolves once the subscription is confirmed. */
async function redisSubscriber(port, channel = CHANNEL) {
  const p = h.spawnProcess('redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'SUBSCRIBE', channel]);
  await p.waitForOutput(new RegExp(`^subscribe\\n${channel}\\n1\\n`));
  return {
    proc: p,
    /** The payloads of the messages received so far. */
    messages() {
      const lines = p.out().split('\n');
      const out = [];
      for (let i = 0; i + 2 < lines.length; i++) {
        if (lines[i] === 'message' && lines[i + 1] === channel) {
          out.push(lines[i + 2]);
          i += 2;
        }
      }
      return out;
    },
  };
}

const skip = h.redisSkipReason();

test('redis-server and redis-cli are installed', { skip }, () => {
  assert.ok(h.redisInstalled(), 'redis-server is not on PATH (REQUIRE_REDIS=1 requires it)');
});

describe('redis bus', { skip }, () => {
  let redis;
  let server;
  let clients = [];
  const procs = [];

  before(async () => {
    redis = await h.startRedis();
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: redis.url });
  });

  after(async () => {
    await Promise.all(procs.map((p) => p.stop()));
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
    await redis?.stop();
  });

  test('with redisUrl set, busMode is "redis"', () => {
    assert.equal(server.busMode, 'redis');
    assert.deepEqual(rt._busInfo(), { mode: 'redis', redisConnected: true, redisConfigured: true });
  });

  test('an event PUBLISHed with redis-cli reaches WebSocket clients', async () => {
    clients = await Promise.all([1, 2, 3].map(() => h.connectReady(h.wsUrl(server))));
    const r = h.redisCli(redis.port, ['PUBLISH', CHANNEL, '{"type":"parcel_updated","parcel_id":"p1"}']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), '1', 'exactly one subscriber (this process)');
    // Any spacing and key order, extra fields ignored: clients get the canonical frame.
    h.redisCli(redis.port, ['PUBLISH', CHANNEL, ' { "parcel_id" : "p\\"2", "type":"parcel_updated", "x": 1 } ']);
    // Foreign messages are ignored, not forwarded.
    h.redisCli(redis.port, ['PUBLISH', CHANNEL, 'not json']);
    h.redisCli(redis.port, ['PUBLISH', CHANNEL, '{"type":"other","parcel_id":"p3"}']);
    h.redisCli(redis.port, ['PUBLISH', CHANNEL, '{"type":"parcel_updated","parcel_id":"p4"}']);
    for (const c of clients) {
      assert.equal(await c.next(), '{"type":"parcel_updated","parcel_id":"p1"}');
      assert.equal(await c.next(), h.frame('p"2'));
      assert.equal(await c.next(), h.frame('p4'));
    }
  });

  test('publishParcelUpdate is seen by redis-cli SUBSCRIBE as the exact JSON', async () => {
    const sub = await redisSubscriber(redis.port);
    procs.push(sub.proc);
    await rt.publishParcelUpdate('from-node');
    await rt.publishParcelUpdate('quote " é 🚀');
    await h.waitUntil(() => sub.messages().length >= 2, 'redis-cli received 2 messages');
    // Our publishes carry their offset (the Redis Stream entry id) as a last field.
    assert.deepEqual(sub.messages().map(h.withoutOffset), [
      '{"type":"parcel_updated","parcel_id":"from-node"}',
      '{"type":"parcel_updated","parcel_id":"quote \\" é 🚀"}',
    ]);
    for (const m of sub.messages()) assert.match(m, /,"offset":"\d+-\d+"\}$/);
    // In Redis mode local clients get the event via Redis, once.
    for (const c of clients) {
      assert.equal(await c.next(), h.frame('from-node'));
      assert.equal(await c.next(), h.frame('quote " é 🚀'));
    }
    await sub.proc.stop();
  });

  test('two server processes share events, each client gets each event exactly once', async () => {
    const a = h.spawnServer({ redisUrl: redis.url });
    const b = h.spawnServer({ redisUrl: redis.url });
    procs.push(a, b);
    const [, portA, modeA] = await a.waitForOutput(/^ready (\d+) (\w+)\n/m, { ms: 10_000 });
    const [, portB, modeB] = await b.waitForOutput(/^ready (\d+) (\w+)\n/m, { ms: 10_000 });
    assert.equal(modeA, 'redis');
    assert.equal(modeB, 'redis');
    const onA = await Promise.all([1, 2].map(() => h.connectReady(h.wsUrl(Number(portA)))));
    const onB = await Promise.all([1, 2].map(() => h.connectReady(h.wsUrl(Number(portB)))));
    const all = [...onA, ...onB];
    try {

      a.write('publish from-a');
      await a.waitForOutput(/^published from-a\n/m);
      for (const c of all) assert.equal(await c.next(), h.frame('from-a'));

      b.write('publish from-b');
      await b.waitForOutput(/^published from-b\n/m);
      for (const c of all) assert.equal(await c.next(), h.frame('from-b'));

      await rt.publishParcelUpdate('from-test-process');
      a.write('publish final');
      await a.waitForOutput(/^published final\n/m);
      const events = ['from-a', 'from-b', 'from-test-process', 'final'].map(h.frame);
      // Every client of every process: each event once, in order, nothing else.
      for (const c of all) {
        assert.deepEqual(await c.waitFor(1 + events.length), [h.WELCOME, ...events]);
      }
      for (const c of clients) {
        assert.deepEqual(await c.waitFor(c.cursor + events.length).then((m) => m.slice(c.cursor)), events);
        c.cursor += events.length;
      }
      // Nothing duplicated trails behind: a sentinel is the next frame everywhere.
      await rt.publishParcelUpdate('sentinel');
      for (const c of all) c.cursor = 1 + events.length;
      for (const c of [...all, ...clients]) assert.equal(await c.next(), h.frame('sentinel'));

      a.write('close');
      b.write('close');
      for (const c of all) assert.equal((await h.withTimeout(c.closed, 5000, 'close 1001')).code, 1001);
      assert.deepEqual(await a.waitForExit(8000), { code: 0, signal: null }, a.err());
      assert.deepEqual(await b.waitForExit(8000), { code: 0, signal: null }, b.err());
    } finally {
      await Promise.all(all.map((c) => c.close()));
    }
  });

  test('a publish-only process on Redis publishes and exits by itself', async () => {
    const sub = await redisSubscriber(redis.port);
    procs.push(sub.proc);
    const p = h.spawnNodeScript(`
      const rt = require(${PKG});
      rt.publishParcelUpdate('from-publish-only').then(() => console.log('published'));
    `, { env: h.cleanEnv({ REDIS_URL: redis.url }) });
    procs.push(p);
    assert.deepEqual(await p.waitForExit(10_000), { code: 0, signal: null }, p.err());
    assert.equal(p.out(), 'published\n');
    await h.waitUntil(() => sub.messages().length >= 1, 'redis-cli received the message');
    assert.deepEqual(sub.messages().map(h.withoutOffset), ['{"type":"parcel_updated","parcel_id":"from-publish-only"}']);
    for (const c of clients) assert.equal(await c.next(), h.frame('from-publish-only'));
    await sub.proc.stop();
  });

  test('through Redis, 300 events published without awaiting arrive once each, in order', async () => {
    const c = await h.connectReady(h.wsUrl(server));
    try {
      const ids = Array.from({ length: 300 }, (_, i) => `redis-order-${i}`);
      await Promise.all(ids.map((id) => rt.publishParcelUpdate(id)));
      await rt.publishParcelUpdate('redis-order-end');
      assert.deepEqual(await c.waitFor(302), [h.WELCOME, ...ids.map(h.frame), h.frame('redis-order-end')]);
    } finally {
      await c.close();
    }
    for (const c2 of clients) c2.cursor += 301;
  });

  test('subscribeToParcelEvents receives events published by any Redis client', async () => {
    const seen = [];
    const unsubscribe = rt.subscribeToParcelEvents((event) => seen.push(event));
    try {
      h.redisCli(redis.port, ['PUBLISH', CHANNEL, '{"type":"parcel_updated","parcel_id":"from-cli-to-sub"}']);
      await rt.publishParcelUpdate('from-node-to-sub');
      await h.waitUntil(() => seen.length >= 2, 'two subscriber events');
      // A bare PUBLISH has no offset; ours carries one.
      assert.deepEqual(seen[0], { type: 'parcel_updated', parcel_id: 'from-cli-to-sub' });
      const { offset, ...rest } = seen[1];
      assert.deepEqual(rest, { type: 'parcel_updated', parcel_id: 'from-node-to-sub' });
      assert.match(offset, /^\d+-\d+$/);
    } finally {
      unsubscribe();
    }
    for (const c of clients) {
      assert.equal(await c.next(), h.frame('from-cli-to-sub'));
      assert.equal(await c.next(), h.frame('from-node-to-sub'));
    }
  });

  test('Redis hanging (SIGSTOP): publishes wait in the buffer and go out, in order, once it resumes', async () => {
    process.kill(redis.pid, 'SIGSTOP');
    let settled = false;
    let during;
    try {
      during = Promise.all([rt.publishParcelUpdate('during-hang-1'), rt.publishParcelUpdate('during-hang-2')]);
      during.finally(() => { settled = true; }).catch(() => {});
      await h.delay(4000); // longer than the 3 s response timeout: the bus is retrying by now
      assert.equal(settled, false, 'publishes wait while Redis hangs; they neither resolve nor reject');
    } finally {
      process.kill(redis.pid, 'SIGCONT');
    }
    await h.withTimeout(during, 15_000, 'the held publishes to go out');
    await rt.publishParcelUpdate('after-hang');
    for (const c of clients) {
      // A batch whose answer timed out is sent again: it may arrive twice (at least once).
      const got = [];
      for (;;) {
        const m = await c.next(10_000);
        if (got.length === 0 || got[got.length - 1] !== m) got.push(m);
        if (m === h.frame('after-hang')) break;
      }
      assert.deepEqual([...new Set(got)], ['during-hang-1', 'during-hang-2', 'after-hang'].map(h.frame));
      assert.equal(c.closeInfo, null);
    }
  });

  test('a second startServer with another redisUrl or channel: ERR_BUS_CONFLICT', async () => {
    const other = `redis://127.0.0.1:${await h.freePort()}`;
    const base = { port: 0, host: '127.0.0.1', jwtSecret: h.SECRET };
    await assert.rejects(rt.startServer({ ...base, redisUrl: other }), { code: 'ERR_BUS_CONFLICT' });
    await assert.rejects(rt.startServer({ ...base, redisUrl: redis.url, channel: 'another_channel' }), { code: 'ERR_BUS_CONFLICT' });
    await assert.rejects(rt.startServer({ ...base, redisUrl: null }), { code: 'ERR_BUS_CONFLICT' });
    // The same bus is fine: a second server shares it.
    const second = await rt.startServer({ ...base, redisUrl: redis.url });
    try {
      assert.equal(second.busMode, 'redis');
      const c = await h.connectReady(h.wsUrl(second));
      await rt.publishParcelUpdate('shared-bus');
      assert.equal(await c.next(), h.frame('shared-bus'));
      await c.close();
    } finally {
      await second.close();
    }
    for (const c of clients) assert.equal(await c.next(), h.frame('shared-bus'));
  });

  test('unreachable REDIS_URL: the server starts on the memory bus with a warning', async () => {
    const closed = await h.freePort();
    const p = h.spawnNodeScript(`
      const rt = require(${PKG});
      (async () => {
        const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: 's' });
        console.log('mode ' + server.busMode);
        await rt.publishParcelUpdate('local-only');
        console.log('published');
        await server.close();
      })().catch((err) => { console.error(err); process.exit(2); });
    `, { env: h.cleanEnv({ REDIS_URL: `redis://127.0.0.1:${closed}` }) });
    procs.push(p);
    assert.deepEqual(await p.waitForExit(15_000), { code: 0, signal: null }, p.err());
    assert.equal(p.out(), 'mode memory\npublished\n');
    assert.match(p.err(), /"level":"warn".*Redis unreachable.*in-memory bus/);
  });

  test('redisRequired with unreachable Redis: ERR_REDIS_UNAVAILABLE', async () => {
    const closed = await h.freePort();
    const script = (options) => `
      const rt = require(${PKG});
      rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: 's', ...${options} }).then(
        (server) => { console.log('started ' + server.busMode); return server.close(); },
        (err) => console.log('rejected ' + err.code + ' ' + (err instanceof Error)),
      );
    `;
    const url = `redis://127.0.0.1:${closed}`;
    const byOption = h.spawnNodeScript(script(`{ redisUrl: ${JSON.stringify(url)}, redisRequired: true }`));
    const byEnv = h.spawnNodeScript(script('{}'), { env: h.cleanEnv({ REDIS_URL: url, REDIS_REQUIRED: '1' }) });
    procs.push(byOption, byEnv);
    for (const p of [byOption, byEnv]) {
      assert.deepEqual(await p.waitForExit(15_000), { code: 0, signal: null }, p.err());
      assert.equal(p.out(), 'rejected ERR_REDIS_UNAVAILABLE true\n');
    }
  });

  test('Redis restarted while running: publishes are held meanwhile and delivered, the subscription comes back by itself', async () => {
    await rt.publishParcelUpdate('before-kill');
    for (const c of clients) assert.equal(await c.next(), h.frame('before-kill'));

    await redis.kill('SIGKILL');
    await h.waitUntil(() => rt._busInfo().redisConnected === false, 'the bus notices the lost subscription', 10_000);
    // Published while Redis is down: held in order, sent once it is back.
    const held = Promise.all([rt.publishParcelUpdate('while-down-1'), rt.publishParcelUpdate('while-down-2')]);

    await redis.restart();
    await h.withTimeout(held, 20_000, 'the held publishes to reach Redis after the restart');
    const probe = () => rt.publishParcelUpdate('probe');
    await probe();
    // ...and the subscription came back by itself.
    await h.waitUntil(() => rt._busInfo().redisConnected, 'the subscription is restored', 15_000, 50);
    await h.waitUntil(() => h.redisCli(redis.port, ['PUBSUB', 'NUMSUB', CHANNEL]).stdout.trim() === `${CHANNEL}\n1`,
      'Redis counts one subscriber again', 5000, 50);
    await rt.publishParcelUpdate('after-restart');
    // The held events arrive (the subscription caught up from the stream), in order, once each.
    for (const c of clients) {
      const got = [];
      let m;
      do {
        m = await c.next(10_000);
        got.push(m);
      } while (m !== h.frame('after-restart'));
      assert.deepEqual(got.filter((f) => f !== h.frame('probe')), ['while-down-1', 'while-down-2', 'after-restart'].map(h.frame));
      assert.equal(c.closeInfo, null, 'clients stayed connected through the outage');
    }
    assert.equal(server.busMode, 'redis');
    // And new clients are served.
    const fresh = await h.connectReady(h.wsUrl(server));
    clients.push(fresh);
    h.redisCli(redis.port, ['PUBLISH', CHANNEL, '{"type":"parcel_updated","parcel_id":"via-cli-after-restart"}']);
    assert.equal(await fresh.next(), h.frame('via-cli-after-restart'));
  });
});
