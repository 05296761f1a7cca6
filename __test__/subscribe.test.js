// subscribeToParcelEvents, and process lifetime: what keeps a process alive and what lets it exit.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const PKG = JSON.stringify(h.PKG);

describe('subscribeToParcelEvents', () => {
  let server;
  let client;

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
    client = await h.connectReady(h.wsUrl(server));
  });

  after(async () => {
    await client?.close();
    await server?.close();
  });

  /** Collects events into an array; `waitFor(n)` resolves once n arrived. */
  function collector() {
    const events = [];
    const waiters = new Set();
    return {
      events,
      callback(event) {
        events.push(event);
        for (const w of [...waiters]) w();
      },
      waitFor(n, ms = h.DEFAULT_TIMEOUT) {
        return h.waitUntil(() => events.length >= n && events, `${n} subscriber events (got ${events.length})`, ms, 5);
      },
    };
  }

  test('the callback gets {type, parcel_id, offset} for each event, in order', async () => {
    const c = collector();
    const unsubscribe = rt.subscribeToParcelEvents(c.callback);
    try {
      const ids = Array.from({ length: 50 }, (_, i) => `sub-${i}`);
      ids.push('quote " and \\ and é🚀');
      await Promise.all(ids.map((id) => rt.publishParcelUpdate(id)));
      const events = await c.waitFor(ids.length);
      assert.deepEqual(events.map(({ offset, ...rest }) => rest), ids.map((id) => ({ type: 'parcel_updated', parcel_id: id })));
      // Offsets: "<ms>-<seq>", strictly increasing in delivery order.
      const seqs = events.map((e) => {
        assert.match(e.offset, /^\d+-\d+$/);
        return BigInt(e.offset.split('-')[1]);
      });
      for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `offsets increase: ${events[i - 1].offset} then ${events[i].offset}`);
    } finally {
      unsubscribe();
    }
  });

  test('unsubscribe stops delivery; calling it twice is harmless', async () => {
    const a = collector();
    const b = collector();
    const unsubA = rt.subscribeToParcelEvents(a.callback);
    const unsubB = rt.subscribeToParcelEvents(b.callback);
    try {
      await rt.publishParcelUpdate('both');
      await a.waitFor(1);
      await b.waitFor(1);
      assert.equal(unsubA(), undefined);
      assert.doesNotThrow(() => unsubA());
      await rt.publishParcelUpdate('only-b');
      // Both callbacks are called from the same dispatch: once b has it, a would have it too.
      await b.waitFor(2);
      assert.deepEqual(b.events.map((e) => e.parcel_id), ['both', 'only-b']);
      assert.deepEqual(a.events.map((e) => e.parcel_id), ['both']);
      // Unsubscribing A twice did not remove B.
      await rt.publishParcelUpdate('still-b');
      await b.waitFor(3);
      assert.deepEqual(a.events.map((e) => e.parcel_id), ['both']);
    } finally {
      unsubA();
      unsubB();
    }
  });

  test('re-subscribing after everyone unsubscribed delivers again', async () => {
    const c = collector();
    const unsubscribe = rt.subscribeToParcelEvents(c.callback);
    try {
      await rt.publishParcelUpdate('again');
      assert.deepEqual((await c.waitFor(1)).map(({ offset, ...rest }) => rest), [{ type: 'parcel_updated', parcel_id: 'again' }]);
    } finally {
      unsubscribe();
    }
  });

  test('a throwing or rejecting callback does not stop other subscribers nor WebSocket clients', async () => {
    // Skip what earlier tests published: read up to a marker.
    await rt.publishParcelUpdate('marker');
    while ((await client.next()) !== h.frame('marker'));
    const thrown = [];
    const unsubThrow = rt.subscribeToParcelEvents((event) => {
      thrown.push(event.parcel_id);
      throw new Error(`subscriber failure for ${event.parcel_id} (expected in this test)`);
    });
    const unsubReject = rt.subscribeToParcelEvents(async (event) => {
      throw new Error(`async subscriber failure for ${event.parcel_id} (expected in this test)`);
    });
    const good = collector();
    const unsubGood = rt.subscribeToParcelEvents(good.callback);
    try {
      await rt.publishParcelUpdate('t1');
      await rt.publishParcelUpdate('t2');
      await rt.publishParcelUpdate('t3');
      assert.deepEqual((await good.waitFor(3)).map((e) => e.parcel_id), ['t1', 't2', 't3']);
      assert.deepEqual(thrown, ['t1', 't2', 't3']);
      assert.equal(await client.next(), h.frame('t1'));
      assert.equal(await client.next(), h.frame('t2'));
      assert.equal(await client.next(), h.frame('t3'));
    } finally {
      unsubThrow();
      unsubReject();
      unsubGood();
    }
  });

  test('a non-function callback: TypeError ERR_INVALID_OPTION', () => {
    assert.throws(() => rt.subscribeToParcelEvents('nope'), { name: 'TypeError', code: 'ERR_INVALID_OPTION' });
    assert.throws(() => rt.subscribeToParcelEvents(), { name: 'TypeError', code: 'ERR_INVALID_OPTION' });
  });
});

describe('process lifetime', () => {
  const procs = [];
  const run = (script) => {
    const p = h.spawnNodeScript(script);
    procs.push(p);
    return p;
  };

  after(async () => {
    await Promise.all(procs.map((p) => p.stop()));
  });

  test('a process that only publishes (memory bus) exits by itself with code 0', async () => {
    const p = run(`
      const rt = require(${PKG});
      rt.publishParcelUpdate('only-publish').then(() => console.log('published'));
    `);
    const exit = await p.waitForExit(8000);
    assert.deepEqual(exit, { code: 0, signal: null }, p.err());
    assert.equal(p.out(), 'published\n');
  });

  test('a process that only fires publishParcelUpdateDirect exits by itself with code 0', async () => {
    const p = run(`
      const rt = require(${PKG});
      rt.publishParcelUpdateDirect('fire-and-forget');
      console.log('fired');
    `);
    const exit = await p.waitForExit(8000);
    assert.deepEqual(exit, { code: 0, signal: null }, p.err());
    assert.equal(p.out(), 'fired\n');
  });

  test('subscribe, publish, receive, unsubscribe: the process exits by itself', async () => {
    const p = run(`
      const rt = require(${PKG});
      const unsubscribe = rt.subscribeToParcelEvents((event) => {
        console.log(JSON.stringify(event));
        unsubscribe();
      });
      rt.publishParcelUpdate('round-trip');
    `);
    const exit = await p.waitForExit(8000);
    assert.deepEqual(exit, { code: 0, signal: null }, p.err());
    assert.match(p.out(), /^\{"type":"parcel_updated","parcel_id":"round-trip","offset":"\d+-1"\}\n$/);
  });

  test('a process that starts a server and closes it exits by itself', async () => {
    const p = run(`
      const rt = require(${PKG});
      (async () => {
        const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: 's' });
        console.log('listening ' + (server.port > 0));
        await server.close();
        console.log('closed');
      })().catch((err) => { console.error(err); process.exit(2); });
    `);
    const exit = await p.waitForExit(8000);
    assert.deepEqual(exit, { code: 0, signal: null }, p.err());
    assert.equal(p.out(), 'listening true\nclosed\n');
  });

  test('a process with a server that had clients exits by itself after close', async () => {
    const p = run(`
      const rt = require(${PKG});
      (async () => {
        const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: ${JSON.stringify(h.SECRET)} });
        console.log('port ' + server.port);
        process.on('SIGUSR2', async () => {
          await server.close();
          console.log('closed');
        });
      })().catch((err) => { console.error(err); process.exit(2); });
    `);
    const [, port] = await p.waitForOutput(/port (\d+)\n/);
    const c = await h.connectReady(h.wsUrl(Number(port)));
    try {
      await h.delay(200);
      assert.equal(p.exitInfo, null, 'a running server keeps its process alive');
      p.child.kill('SIGUSR2');
      assert.equal((await h.withTimeout(c.closed, 5000, 'close 1001')).code, 1001);
      const exit = await p.waitForExit(8000);
      assert.deepEqual(exit, { code: 0, signal: null }, p.err());
    } finally {
      await c.close();
    }
  });
});
