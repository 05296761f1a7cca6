// Event data: publishParcelUpdate(id, data) puts `data` into the frame, subscribers get it too,
// anything but a plain object of at most 4096 bytes of JSON is refused (ERR_INVALID_DATA) and
// nothing is broadcast; the Express middleware forwards res.locals.parcelEventData; data crosses
// Redis (a child process: one process has one bus).
'use strict';

const { test, describe, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const express = require('express');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

/** Asserts that `promiseOrFn` rejects/throws a TypeError with code ERR_INVALID_DATA. */
async function invalidData(promiseOrFn, what) {
  await assert.rejects(
    typeof promiseOrFn === 'function' ? (async () => promiseOrFn())() : promiseOrFn,
    (err) => {
      assert.ok(err instanceof TypeError, `${what}: a TypeError, got ${err && err.constructor.name}: ${err && err.message}`);
      assert.equal(err.code, 'ERR_INVALID_DATA', what);
      return true;
    },
    what,
  );
}

/**
 * An event object without an "offset" field (added by the resume feature, which this suite does
 * not judge; the Node WebSocket clients strip it the same way in helpers.Client).
 */
function withoutOffset(event) {
  if (!event || typeof event !== 'object' || !('offset' in event)) return event;
  const { offset, ...rest } = event;
  return rest;
}

/** Runs fn with console.error silenced (publishParcelUpdateDirect logs its failures there). */
async function quietly(fn) {
  const original = console.error;
  const lines = [];
  console.error = (...args) => lines.push(args.map(String).join(' '));
  try {
    await fn();
  } finally {
    console.error = original;
  }
  return lines;
}

describe('event data (memory bus)', () => {
  let server;
  let client; // a fresh client for each test: it receives exactly what the test publishes

  before(async () => {
    server = await rt.startServer(BASE);
  });

  beforeEach(async () => {
    client = await h.connectReady(h.wsUrl(server));
  });

  afterEach(async () => {
    await client?.close();
  });

  after(async () => {
    await server?.close();
  });

  test('the frame carries the data as compact JSON', async () => {
    await rt.publishParcelUpdate('p1', { owner_id: 'u7', price: 120 });
    assert.equal(await client.next(), '{"type":"parcel_updated","parcel_id":"p1","data":{"owner_id":"u7","price":120}}');
    // Without data (or with null/undefined) the frame has no data field at all.
    await rt.publishParcelUpdate('p2');
    await rt.publishParcelUpdate('p3', undefined);
    await rt.publishParcelUpdate('p4', null);
    assert.equal(await client.next(), h.frame('p2'));
    assert.equal(await client.next(), h.frame('p3'));
    assert.equal(await client.next(), h.frame('p4'));
    // An empty object is data too.
    await rt.publishParcelUpdate('p5', {});
    assert.equal(await client.next(), '{"type":"parcel_updated","parcel_id":"p5","data":{}}');
  });

  test('nested values, unicode and escapes arrive intact', async () => {
    const data = {
      owner: { id: 'u"1', name: 'Zoë 日本 🚀', tags: ['a', 'b\\c', 'line\nbreak'] },
      price: 1234.5,
      negative: -7,
      sold: true,
      previous_owner: null,
      html: '</script><b>x</b>',
      control: '\u0001\u001f',
      big: 9007199254740991,
    };
    await rt.publishParcelUpdate('nested', data);
    const raw = await client.next();
    assert.deepEqual(JSON.parse(raw), { type: 'parcel_updated', parcel_id: 'nested', data });
    assert.ok(raw.startsWith('{"type":"parcel_updated","parcel_id":"nested","data":{'), raw);
    assert.ok(!/\n|": /.test(raw), `compact: ${raw}`);
  });

  test('data is carried as given: the publisher\'s key order is kept', async () => {
    // The frame is documented as {"type","parcel_id","data"} with the publisher's object; a
    // client (or the original plain-Node design) would write it with JSON.stringify.
    const data = { price: 120, owner_id: 'u7', listing: { z: 1, a: 2 } };
    await rt.publishParcelUpdate('order', data);
    assert.equal(await client.next(), h.dataFrame('order', data));
  });

  test('subscribeToParcelEvents callbacks receive the same object, data included', async () => {
    const events = [];
    const unsubscribe = rt.subscribeToParcelEvents((e) => events.push(withoutOffset(e)));
    try {
      await rt.publishParcelUpdate('sub-data', { owner_id: 'u1', price: 5 });
      await rt.publishParcelUpdate('sub-plain');
      await h.waitUntil(() => events.length >= 2, 'two subscriber events');
      assert.deepEqual(events, [
        { type: 'parcel_updated', parcel_id: 'sub-data', data: { owner_id: 'u1', price: 5 } },
        { type: 'parcel_updated', parcel_id: 'sub-plain' },
      ]);
      assert.ok(!('data' in events[1]), 'no data key without data');
      assert.equal(await client.next(), h.dataFrame('sub-data', { owner_id: 'u1', price: 5 }));
      assert.equal(await client.next(), h.frame('sub-plain'));
    } finally {
      unsubscribe();
    }
  });

  /** Publishes each case; returns the names of those that were NOT refused with ERR_INVALID_DATA. */
  async function notRefused(cases) {
    const accepted = [];
    for (const [what, data] of Object.entries(cases)) {
      try {
        await invalidData(rt.publishParcelUpdate('must-not-arrive', data), `publishParcelUpdate with ${what}`);
      } catch {
        accepted.push(what);
      }
    }
    return accepted;
  }

  test('data that is not a plain object is a TypeError ERR_INVALID_DATA and nothing is broadcast', async () => {
    const cases = {
      array: [1, 2],
      'empty array': [],
      string: 'x',
      number: 5,
      boolean: true,
      date: new Date(0),
      function: () => {},
      bigint: { n: 10n },
      'lone surrogate': { s: '\ud800' },
    };
    assert.deepEqual(await notRefused(cases), []);
    // The fire-and-forget variant may throw at once or log, but must not broadcast either.
    await quietly(async () => {
      for (const [what, data] of Object.entries(cases)) {
        try {
          rt.publishParcelUpdateDirect('must-not-arrive', data);
        } catch (err) {
          assert.equal(err.code, 'ERR_INVALID_DATA', `publishParcelUpdateDirect with ${what}`);
        }
      }
      await h.delay(50);
    });
    await rt.publishParcelUpdate('after-invalid');
    assert.equal(await client.next(), h.frame('after-invalid'));
  });

  test('a Map or Set is not a plain object either: refused, not sent as {}', async () => {
    // JSON.stringify turns them into {} (a Map's entries are lost), which is no plain object.
    const cases = { map: new Map([['price', 5]]), set: new Set(['a']) };
    const accepted = await notRefused(cases);
    await rt.publishParcelUpdate('after-map');
    const got = client.messages.slice(client.cursor);
    assert.deepEqual(accepted, [], `accepted and broadcast: ${JSON.stringify(got)}`);
    assert.equal(await client.next(), h.frame('after-map'));
  });

  test('circular data is a TypeError ERR_INVALID_DATA and nothing is broadcast', async () => {
    const data = { a: 1 };
    data.self = data;
    await invalidData(rt.publishParcelUpdate('circular', data), 'circular');
    const deep = { a: { b: {} } };
    deep.a.b.c = deep.a;
    await invalidData(rt.publishParcelUpdate('circular', deep), 'deep circular');
    await rt.publishParcelUpdate('after-circular');
    assert.equal(await client.next(), h.frame('after-circular'));
  });

  test('4096 bytes of JSON is the limit (counted in UTF-8 bytes)', async () => {
    // {"x":"…"} is 8 bytes plus the string.
    const exact = { x: 'a'.repeat(4096 - 8) };
    assert.equal(Buffer.byteLength(JSON.stringify(exact)), 4096);
    await rt.publishParcelUpdate('limit-ok', exact);
    const got = await client.next();
    assert.ok(got === h.dataFrame('limit-ok', exact), `4096 bytes arrive intact (got ${got.slice(0, 80)}...)`);

    const over = { x: 'a'.repeat(4096 - 7) };
    await invalidData(rt.publishParcelUpdate('limit-over', over), '4097 bytes');
    // 2100 two-byte characters: 2108 characters but 4208 bytes.
    const multibyte = { x: 'é'.repeat(2100) };
    assert.ok(JSON.stringify(multibyte).length < 4096);
    await invalidData(rt.publishParcelUpdate('limit-utf8', multibyte), '4208 bytes in 2108 characters');
    await quietly(async () => {
      try {
        rt.publishParcelUpdateDirect('limit-over', over);
      } catch (err) {
        assert.equal(err.code, 'ERR_INVALID_DATA');
      }
      await h.delay(50);
    });
    await rt.publishParcelUpdate('after-limit');
    assert.equal(await client.next(), h.frame('after-limit'));
    // The Direct variant must not have broadcast anything later either.
    await h.delay(50);
    assert.equal(client.messages.length, client.cursor, 'nothing after the sentinel');
  });

  test('publishParcelUpdateDirect carries data too', async () => {
    rt.publishParcelUpdateDirect('direct', { price: 1 });
    assert.equal(await client.next(), h.dataFrame('direct', { price: 1 }));
  });

  test('filtered clients get the data of their parcels', async () => {
    const c = await h.connectReady(`${h.wsUrl(server)}&parcels=mine`);
    try {
      assert.equal(await c.next(), '{"type":"subscribed","all":false,"parcel_ids":["mine"]}');
      await rt.publishParcelUpdate('other', { v: 1 });
      await rt.publishParcelUpdate('mine', { v: 2 });
      assert.equal(await c.next(), h.dataFrame('mine', { v: 2 }));
      assert.equal(c.messages.length, 3, 'welcome, ack, its event: nothing else');
      assert.equal(await client.next(), h.dataFrame('other', { v: 1 }));
      assert.equal(await client.next(), h.dataFrame('mine', { v: 2 }));
    } finally {
      await c.close();
    }
  });
});

describe('Express middleware: res.locals.parcelEventData', () => {
  let server;
  let client;
  let httpServer;
  let errors;
  let originalError;

  before(async () => {
    server = await rt.startServer(BASE);
    client = await h.connectReady(h.wsUrl(server));
    const app = express();
    app.post('/buy/:parcel_id', (req, res, next) => {
      res.locals.parcelEventData = { owner_id: 'buyer-1', price: 99 };
      res.json({ ok: true });
      next();
    }, rt.publishParcelEvent);
    app.post('/plain/:parcel_id', (req, res, next) => {
      res.json({ ok: true });
      next();
    }, rt.publishParcelEvent);
    app.post('/bad/:parcel_id', (req, res, next) => {
      res.locals.parcelEventData = ['not', 'an', 'object'];
      res.json({ ok: true });
      next();
    }, rt.publishParcelEvent);
    app.post('/first/:parcel_id', rt.publishParcelEvent, async (req, res) => {
      await h.delay(5);
      res.locals.parcelEventData = { set: 'after the middleware ran' };
      res.status(201).json({ ok: true });
    });
    app.post('/failed/:parcel_id', (req, res, next) => {
      res.locals.parcelEventData = { price: 1 };
      res.status(409).json({ error: 'sold' });
      next();
    }, rt.publishParcelEvent);
    httpServer = await h.serveApp(app);
    errors = [];
    originalError = console.error;
    console.error = (...args) => errors.push(args.map(String).join(' '));
  });

  after(async () => {
    console.error = originalError;
    await client?.close();
    await httpServer?.close();
    await server?.close();
  });

  const post = (path) => httpServer.post(path);

  test('a handler\'s parcelEventData is attached to the event', async () => {
    assert.equal(await post('/buy/e-1'), 200);
    assert.equal(await client.next(), h.dataFrame('e-1', { owner_id: 'buyer-1', price: 99 }));
  });

  test('without parcelEventData the event has no data', async () => {
    assert.equal(await post('/plain/e-2'), 200);
    assert.equal(await client.next(), h.frame('e-2'));
  });

  test('data set by a handler that runs after the middleware is attached too', async () => {
    assert.equal(await post('/first/e-3'), 201);
    assert.equal(await client.next(), h.dataFrame('e-3', { set: 'after the middleware ran' }));
  });

  test('invalid parcelEventData: the response is unaffected, nothing is published, an error is logged', async () => {
    assert.equal(await post('/bad/e-4'), 200);
    assert.equal(await post('/failed/e-5'), 409);
    assert.equal(await post('/plain/e-6'), 200);
    assert.equal(await client.next(), h.frame('e-6'));
    assert.ok(errors.some((e) => e.includes('ERR_INVALID_DATA')), `logged: ${JSON.stringify(errors)}`);
  });
});

describe('event data over Redis', { skip: h.redisSkipReason() }, () => {
  const PKG = JSON.stringify(h.PKG);
  let redis;
  let child;
  let port;
  let client;

  before(async () => {
    redis = await h.startRedis();
    // One process has one bus: the Redis server lives in a child, which prints what its
    // subscriber receives and publishes what it is told on stdin.
    child = h.spawnNodeScript(`
      const rt = require(${PKG});
      const readline = require('node:readline');
      (async () => {
        const server = await rt.startServer({
          port: 0, host: '127.0.0.1', jwtSecret: ${JSON.stringify(h.SECRET)}, redisUrl: ${JSON.stringify(redis.url)},
        });
        rt.subscribeToParcelEvents((e) => console.log('event ' + JSON.stringify(e)));
        console.log('ready ' + server.port + ' ' + server.busMode);
        readline.createInterface({ input: process.stdin }).on('line', async (line) => {
          const { id, data } = JSON.parse(line);
          try {
            await rt.publishParcelUpdate(id, data);
            console.log('published ' + id);
          } catch (err) {
            console.log('failed ' + id + ' ' + err.code);
          }
        });
      })().catch((err) => { console.error(err); process.exit(2); });
    `);
    const m = await child.waitForOutput(/^ready (\d+) (\w+)$/m, { ms: 10_000 });
    assert.equal(m[2], 'redis');
    port = Number(m[1]);
    client = await h.connectReady(h.wsUrl(port));
  });

  after(async () => {
    await client?.close();
    await child?.stop();
    await redis?.stop();
  });

  /** Lines `event {...}` the child's subscriber printed, parsed. */
  function childEvents(ids) {
    return child.out().split('\n').filter((l) => l.startsWith('event ')).map((l) => withoutOffset(JSON.parse(l.slice(6))))
      .filter((e) => !ids || ids.includes(e.parcel_id));
  }

  test('data published in a Redis-mode process reaches clients and subscribers', async () => {
    child.write(JSON.stringify({ id: 'r-1', data: { owner_id: 'u7', price: 120 } }));
    await child.waitForOutput(/^published r-1$/m);
    assert.equal(await client.next(), '{"type":"parcel_updated","parcel_id":"r-1","data":{"owner_id":"u7","price":120}}');
    await h.waitUntil(() => childEvents().length >= 1, 'the child subscriber got it');
    assert.deepEqual(childEvents()[0], { type: 'parcel_updated', parcel_id: 'r-1', data: { owner_id: 'u7', price: 120 } });
  });

  test('invalid data is refused in Redis mode too, nothing published', async () => {
    child.write(JSON.stringify({ id: 'r-bad', data: [1] }));
    await child.waitForOutput(/^failed r-bad ERR_INVALID_DATA$/m);
    child.write(JSON.stringify({ id: 'r-after' }));
    assert.equal(await client.next(), h.frame('r-after'));
  });

  test('redis-cli PUBLISH with data arrives with its data, canonically encoded', async () => {
    let r = h.redisCli(redis.port, ['PUBLISH', 'parcel_events', '{"type":"parcel_updated","parcel_id":"p","data":{"x":1}}']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), '1');
    assert.equal(await client.next(), '{"type":"parcel_updated","parcel_id":"p","data":{"x":1}}');
    r = h.redisCli(redis.port, ['PUBLISH', 'parcel_events', ' { "data" : { "x" : [1, 2] , "y":"é" }, "parcel_id":"q", "type":"parcel_updated", "extra":true } ']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(await client.next(), '{"type":"parcel_updated","parcel_id":"q","data":{"x":[1,2],"y":"é"}}');
    // "data": null is no data.
    h.redisCli(redis.port, ['PUBLISH', 'parcel_events', '{"type":"parcel_updated","parcel_id":"n","data":null}']);
    assert.equal(await client.next(), h.frame('n'));
    await h.waitUntil(() => childEvents(['p', 'q', 'n']).length >= 3, 'the child subscriber got all three');
    assert.deepEqual(childEvents(['p', 'q', 'n']), [
      { type: 'parcel_updated', parcel_id: 'p', data: { x: 1 } },
      { type: 'parcel_updated', parcel_id: 'q', data: { x: [1, 2], y: 'é' } },
      { type: 'parcel_updated', parcel_id: 'n' },
    ]);
  });
});
