// Process lifetime with a subscription (issue 14.3): a subscription keeps the process alive only
// while events can come from outside it. Memory mode: after server.close() the process exits by
// itself, subscription or not (like an EventEmitter's listeners). Redis mode: it stays, and
// receives what another Redis client publishes, until unsubscribe().
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');

/** A child that starts a server, subscribes, sees its own event, closes the server, then idles. */
function subscriberScript(redisUrl) {
  return `
    const rt = require(${JSON.stringify(h.PKG)});
    (async () => {
      const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: 'x', redisUrl: ${JSON.stringify(redisUrl)} });
      let unsubscribe;
      let own = null;
      const seen = new Promise((resolve) => (own = resolve));
      unsubscribe = rt.subscribeToParcelEvents((event) => {
        console.log('event ' + event.parcel_id);
        if (event.parcel_id === 'own') own();
        if (event.parcel_id === 'from-outside') unsubscribe();
      });
      await rt.publishParcelUpdate('own');
      await seen;
      await server.close();
      console.log('closed ' + server.busMode);
    })().catch((err) => { console.error(err); process.exit(1); });
  `;
}

describe('a subscription and the process lifetime', () => {
  const procs = [];
  after(async () => {
    await Promise.all(procs.map((p) => p.stop()));
  });

  test('memory mode: after server.close() the process exits by itself, with the subscription still active', async () => {
    const p = h.spawnNodeScript(subscriberScript(null));
    procs.push(p);
    await p.waitForOutput(/closed memory/, { ms: 10_000 });
    assert.deepEqual(await p.waitForExit(10_000), { code: 0, signal: null }, `never exited; ${p.err()}`);
    assert.match(p.out(), /event own\n/);
  });

  describe('Redis mode', { skip: h.redisSkipReason() }, () => {
    let redis;
    before(async () => {
      redis = await h.startRedis();
    });
    after(async () => {
      await redis?.stop();
    });

    test('after server.close() the process stays alive for events from outside, and exits once unsubscribed', async () => {
      const p = h.spawnNodeScript(subscriberScript(redis.url));
      procs.push(p);
      await p.waitForOutput(/closed redis/, { ms: 10_000 });
      assert.equal(p.exitInfo, null, 'alive after close');
      // Another Redis client publishes: the subscription receives it (so the process was alive).
      await h.waitUntil(() => {
        const r = h.redisCli(redis.port, ['PUBLISH', 'parcel_events', '{"type":"parcel_updated","parcel_id":"from-outside"}']);
        return r.status === 0 && Number(r.stdout.trim()) >= 1;
      }, 'the subscriber is listening on Redis', 10_000, 100);
      await p.waitForOutput(/event from-outside\n/, { ms: 10_000 });
      // The callback unsubscribed: nothing holds the process any more.
      assert.deepEqual(await p.waitForExit(10_000), { code: 0, signal: null }, p.err());
    });
  });
});
