// Per-parcel subscriptions: subscribe / unsubscribe / subscribe all, ?parcels= at connect, their
// exact acknowledgements, refusals (INVALID_SUBSCRIPTION, SUBSCRIPTION_LIMIT, INVALID_PARCELS),
// and exact, ordered delivery, also across the moment a filter changes.
'use strict';

const { test, describe, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

function ack(type, ids) {
  return ids == null
    ? `{"type":"${type}","all":true,"parcel_ids":[]}`
    : `{"type":"${type}","all":false,"parcel_ids":${JSON.stringify(ids)}}`;
}

function send(c, message) {
  return c.send(typeof message === 'string' ? message : JSON.stringify(message));
}

/** Sends a request and asserts that the next frame is exactly `expected`. */
async function request(c, message, expected) {
  await send(c, message);
  assert.equal(await c.next(), expected, `answer to ${typeof message === 'string' ? message : JSON.stringify(message)}`);
}

/** Sends a request and asserts that the next frame is an error with `code`. */
async function refused(c, message, code) {
  await send(c, message);
  const raw = await c.next();
  const reply = JSON.parse(raw);
  assert.deepEqual(Object.keys(reply), ['type', 'code', 'message'], raw);
  assert.equal(reply.type, 'error', raw);
  assert.equal(reply.code, code, `${JSON.stringify(message)} -> ${raw}`);
  assert.equal(typeof reply.message, 'string');
  assert.ok(reply.message.length > 0);
}

/** Publishes `ids` in order (not awaiting each), then awaits them all. */
async function publishAll(ids) {
  await Promise.all(ids.map((id) => rt.publishParcelUpdate(id)));
}

/** The frames from the cursor on, once `n` more arrived; moves the cursor past them. */
async function take(c, n) {
  const all = await c.waitFor(c.cursor + n);
  const got = all.slice(c.cursor, c.cursor + n);
  c.cursor += n;
  return got;
}

describe('per-parcel subscriptions', () => {
  let server;
  let open = [];

  /** A connected client (welcome consumed), closed after the test. */
  async function client(query = '') {
    const c = await h.connectReady(h.wsUrl(server) + query);
    open.push(c);
    return c;
  }

  before(async () => {
    server = await rt.startServer({ ...BASE, maxSubscriptions: 1000 });
  });

  afterEach(async () => {
    await Promise.all(open.map((c) => c.close()));
    open = [];
    await h.waitUntil(() => server.clientCount === 0, 'every client of the test is gone');
  });

  after(() => server?.close());

  test('by default a client receives every event', async () => {
    const c = await client();
    await publishAll(['d-1', 'd-2', 'd-3']);
    assert.deepEqual(await take(c, 3), ['d-1', 'd-2', 'd-3'].map(h.frame));
  });

  test('subscribe narrows to exactly those parcels; the ack lists the sorted set', async () => {
    const filtered = await client();
    const everything = await client();
    await request(filtered, { type: 'subscribe', parcel_ids: ['b', 'a'] }, ack('subscribed', ['a', 'b']));
    const ids = ['x', 'a', 'y', 'b', 'z', 'a', 'ab', 'A', 'b ', 'b'];
    await publishAll(ids);
    await rt.publishParcelUpdate('b'); // sentinel
    assert.deepEqual(await take(filtered, 5), ['a', 'b', 'a', 'b', 'b'].map(h.frame));
    assert.deepEqual(await take(everything, ids.length + 1), [...ids, 'b'].map(h.frame));
    // Nothing else trails behind the sentinel.
    await rt.publishParcelUpdate('a');
    assert.equal(await filtered.next(), h.frame('a'));
    assert.equal(filtered.messages.length, filtered.cursor);
  });

  test('subscribe adds to an existing filter; duplicates count once', async () => {
    const c = await client();
    await request(c, { type: 'subscribe', parcel_ids: ['zeta', 'alpha', 'zeta'] }, ack('subscribed', ['alpha', 'zeta']));
    await request(c, { type: 'subscribe', parcel_ids: ['mid', 'alpha'] }, ack('subscribed', ['alpha', 'mid', 'zeta']));
    await publishAll(['other', 'zeta', 'mid', 'nope', 'alpha', 'mid2']);
    await rt.publishParcelUpdate('zeta');
    assert.deepEqual(await take(c, 4), ['zeta', 'mid', 'alpha', 'zeta'].map(h.frame));
  });

  test('unsubscribe removes ids; unknown ids are ignored', async () => {
    const c = await client();
    await request(c, { type: 'subscribe', parcel_ids: ['a', 'b', 'c'] }, ack('subscribed', ['a', 'b', 'c']));
    await request(c, { type: 'unsubscribe', parcel_ids: ['a', 'never-subscribed'] }, ack('unsubscribed', ['b', 'c']));
    await publishAll(['a', 'b', 'x', 'c', 'a']);
    await rt.publishParcelUpdate('c');
    assert.deepEqual(await take(c, 3), ['b', 'c', 'c'].map(h.frame));
    // Unsubscribing the rest leaves an empty filter: nothing arrives, and the ack says so.
    await request(c, { type: 'unsubscribe', parcel_ids: ['b', 'c'] }, ack('unsubscribed', []));
    await publishAll(['a', 'b', 'c']);
    await request(c, '{"type":"ping"}', '{"type":"pong"}');
  });

  test('unsubscribe while receiving everything changes nothing (all:true)', async () => {
    const c = await client();
    await request(c, { type: 'unsubscribe', parcel_ids: ['a'] }, ack('unsubscribed', null));
    await publishAll(['a', 'b']);
    assert.deepEqual(await take(c, 2), ['a', 'b'].map(h.frame));
  });

  test('subscribe all widens back to every event', async () => {
    const c = await client();
    await request(c, { type: 'subscribe', parcel_ids: ['a'] }, ack('subscribed', ['a']));
    await publishAll(['b', 'a', 'c']);
    await send(c, { type: 'subscribe', all: true });
    // The 'a' published before the widening arrives before its ack.
    assert.deepEqual(await take(c, 2), [h.frame('a'), ack('subscribed', null)]);
    const ids = ['b', 'a', 'c', 'd', 'e'];
    await publishAll(ids);
    assert.deepEqual(await take(c, ids.length), ids.map(h.frame));
    // Widening a client that already receives everything is harmless.
    await request(c, { type: 'subscribe', all: true }, ack('subscribed', null));
    // And it can narrow again.
    await request(c, { type: 'subscribe', parcel_ids: ['e'] }, ack('subscribed', ['e']));
    await publishAll(['a', 'e', 'b']);
    await rt.publishParcelUpdate('e');
    assert.deepEqual(await take(c, 2), ['e', 'e'].map(h.frame));
  });

  test('"all": true wins even when parcel_ids are sent along', async () => {
    const c = await client();
    await request(c, { type: 'subscribe', parcel_ids: ['a'] }, ack('subscribed', ['a']));
    await request(c, { type: 'subscribe', all: true, parcel_ids: ['b'] }, ack('subscribed', null));
    await publishAll(['x', 'y']);
    assert.deepEqual(await take(c, 2), ['x', 'y'].map(h.frame));
  });

  test('ids are exact strings: unicode, quotes and long ids work, no prefix or case folding', async () => {
    const long = 'L'.repeat(rt.MAX_PARCEL_ID_BYTES);
    const ids = ['parcel "1"', 'é🚀 日本', 'back\\slash', long];
    const c = await client();
    await request(c, { type: 'subscribe', parcel_ids: ids }, ack('subscribed', [...ids].sort()));
    const published = ['parcel "1" ', 'É🚀 日本', ...ids, 'back\\', long.slice(1), ...ids.reverse()];
    await publishAll(published);
    assert.deepEqual(await take(c, 8), [...ids.reverse(), ...ids.reverse()].map(h.frame));
  });

  test('invalid requests get INVALID_SUBSCRIPTION and change nothing', async () => {
    const c = await client();
    await request(c, { type: 'subscribe', parcel_ids: ['keep'] }, ack('subscribed', ['keep']));
    for (const bad of [
      { type: 'subscribe' },
      { type: 'subscribe', all: false },
      { type: 'subscribe', parcel_ids: [1] },
      { type: 'subscribe', parcel_ids: ['ok', 2] },
      { type: 'subscribe', parcel_ids: ['ok', null] },
      { type: 'subscribe', parcel_ids: [''] },
      { type: 'subscribe', parcel_ids: ['ok', ''] },
      { type: 'subscribe', parcel_ids: [{ id: 'ok' }] },
      { type: 'subscribe', parcel_ids: ['x'.repeat(rt.MAX_PARCEL_ID_BYTES + 1)] },
      { type: 'unsubscribe' },
      { type: 'unsubscribe', parcel_ids: ['keep', 3] },
      { type: 'unsubscribe', parcel_ids: ['keep', ''] },
    ]) {
      await refused(c, bad, 'INVALID_SUBSCRIPTION');
    }
    // Nothing was added or removed: the filter is still exactly ['keep'].
    await publishAll(['ok', 'keep', 'x']);
    await rt.publishParcelUpdate('keep');
    assert.deepEqual(await take(c, 2), ['keep', 'keep'].map(h.frame));
    await request(c, { type: 'subscribe', parcel_ids: ['keep'] }, ack('subscribed', ['keep']));

    // A client receiving everything keeps receiving everything after a refused request.
    const all = await client();
    await refused(all, { type: 'subscribe', parcel_ids: ['a', 5] }, 'INVALID_SUBSCRIPTION');
    await publishAll(['a', 'b']);
    assert.deepEqual(await take(all, 2), ['a', 'b'].map(h.frame));
  });

  test('?parcels=a,b narrows from the start: welcome, then the ack, then only those', async () => {
    const c = await client(`&parcels=${encodeURIComponent('b')},a,a,${encodeURIComponent('é 1')}`);
    assert.equal(await c.next(), ack('subscribed', ['a', 'b', 'é 1']));
    await publishAll(['x', 'a', 'é', 'é 1', 'b', 'y']);
    await rt.publishParcelUpdate('a');
    assert.deepEqual(await take(c, 4), ['a', 'é 1', 'b', 'a'].map(h.frame));
    // It can change its filter like any other client.
    await request(c, { type: 'unsubscribe', parcel_ids: ['a'] }, ack('unsubscribed', ['b', 'é 1']));
    await request(c, { type: 'subscribe', all: true }, ack('subscribed', null));
  });

  test('an invalid ?parcels= is refused with HTTP 400 INVALID_PARCELS', async () => {
    const tooLong = 'x'.repeat(rt.MAX_PARCEL_ID_BYTES + 1);
    await h.expectRefusal(`${h.wsUrl(server)}&parcels=a,${tooLong}`, {}, 400, 'INVALID_PARCELS');
    const many = Array.from({ length: 1001 }, (_, i) => `p${i}`).join(',');
    await h.expectRefusal(`${h.wsUrl(server)}&parcels=${many}`, {}, 400, 'INVALID_PARCELS');
    // Exactly maxSubscriptions is fine.
    const c = await client(`&parcels=${Array.from({ length: 1000 }, (_, i) => `p${i}`).join(',')}`);
    const first = JSON.parse(await c.next());
    assert.equal(first.type, 'subscribed');
    assert.equal(first.parcel_ids.length, 1000);
  });

  test('more than maxSubscriptions (default 1000) ids: SUBSCRIPTION_LIMIT, nothing changed', async () => {
    const c = await client();
    const ids = Array.from({ length: 1001 }, (_, i) => `s${String(i).padStart(4, '0')}`);
    await refused(c, { type: 'subscribe', parcel_ids: ids }, 'SUBSCRIPTION_LIMIT');
    // Still receiving everything.
    await publishAll(['s0000', 'other']);
    assert.deepEqual(await take(c, 2), ['s0000', 'other'].map(h.frame));
    await request(c, { type: 'subscribe', parcel_ids: ids.slice(0, 1000) }, ack('subscribed', ids.slice(0, 1000)));
    await refused(c, { type: 'subscribe', parcel_ids: ['s1000'] }, 'SUBSCRIPTION_LIMIT');
    // Re-subscribing ids already followed does not count against the limit.
    await request(c, { type: 'subscribe', parcel_ids: ['s0000', 's0999'] }, ack('subscribed', ids.slice(0, 1000)));
    await publishAll(['s1000', 's0999']);
    assert.equal(await c.next(), h.frame('s0999'));
  });

  test('500 mixed events: each filtered client sees exactly its subsequence, in order', async () => {
    const sets = [['p1', 'p3', 'p7'], ['p0'], ['p9', 'p2'], ['p5', 'p6', 'p4', 'p8']];
    const filtered = [];
    for (const set of sets) {
      const c = await client();
      await request(c, { type: 'subscribe', parcel_ids: set }, ack('subscribed', [...set].sort()));
      filtered.push(c);
    }
    const everything = await client();
    // Pseudo-random but reproducible order, with data to tell the events apart.
    let seed = 7;
    const events = Array.from({ length: 500 }, (_, n) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return { id: `p${seed % 10}`, data: { n } };
    });
    await Promise.all(events.map((e) => rt.publishParcelUpdate(e.id, e.data)));
    const frames = events.map((e) => h.dataFrame(e.id, e.data));
    assert.deepEqual(await take(everything, 500), frames);
    for (const [i, set] of sets.entries()) {
      const expected = events.filter((e) => set.includes(e.id)).map((e) => h.dataFrame(e.id, e.data));
      assert.ok(expected.length > 0);
      assert.deepEqual(await take(filtered[i], expected.length), expected, `client following ${set}`);
    }
    await rt.publishParcelUpdate('p0', { n: 'end' });
    assert.equal(await filtered[1].next(), h.dataFrame('p0', { n: 'end' }));
    for (const i of [0, 2, 3]) assert.equal(filtered[i].messages.length, filtered[i].cursor, `client ${i} got extra frames`);
  });

  /** Publishes 400 events in bursts of 20 (every third for parcel 'a'); `frames` as clients get them. */
  function streamMixed() {
    const events = Array.from({ length: 400 }, (_, n) => ({ id: n % 3 === 0 ? 'a' : `o${n % 3}`, data: { n } }));
    const publishing = (async () => {
      for (let i = 0; i < events.length; i += 20) {
        await Promise.all(events.slice(i, i + 20).map((e) => rt.publishParcelUpdate(e.id, e.data)));
        await h.delay(1);
      }
    })();
    return { frames: events.map((e) => h.dataFrame(e.id, e.data)), publishing };
  }

  test('narrowing while events stream in: no gap, no duplicate, no stray event after the ack', async () => {
    const c = await client();
    const { frames, publishing } = streamMixed();
    await c.waitFor(30); // some events arrived unfiltered
    await send(c, { type: 'subscribe', parcel_ids: ['a'] });
    await publishing;
    await rt.publishParcelUpdate('a', { n: 'end' });
    const end = h.dataFrame('a', { n: 'end' });
    await h.waitUntil(() => c.messages.includes(end), 'the sentinel arrived');
    const got = c.messages.slice(1);
    const ackAt = got.indexOf(ack('subscribed', ['a']));
    assert.ok(ackAt >= 0, 'the ack arrived');
    const received = got.filter((_, i) => i !== ackAt);
    assert.equal(received.pop(), end);
    // received = every event up to some point j, then only the 'a' events after j.
    const lastOther = received.findLastIndex((f) => !f.includes('"parcel_id":"a"'));
    const j = lastOther < 0 ? 0 : frames.indexOf(received[lastOther]) + 1;
    const expected = [...frames.slice(0, j), ...frames.slice(j).filter((f) => f.includes('"parcel_id":"a"'))];
    assert.deepEqual(received, expected);
    // And after the ack, only 'a' events.
    assert.ok(got.slice(ackAt + 1).every((f) => f.includes('"parcel_id":"a"')));
  });

  test('widening while events stream in: no gap, no duplicate', async () => {
    const c = await client();
    await request(c, { type: 'subscribe', parcel_ids: ['a'] }, ack('subscribed', ['a']));
    const start = c.cursor;
    const { frames, publishing } = streamMixed();
    await c.waitFor(start + 10);
    await send(c, { type: 'subscribe', all: true });
    await publishing;
    await rt.publishParcelUpdate('o1', { n: 'end' });
    const end = h.dataFrame('o1', { n: 'end' });
    await h.waitUntil(() => c.messages.includes(end), 'the sentinel arrived');
    const got = c.messages.slice(start);
    const ackAt = got.indexOf(ack('subscribed', null));
    assert.ok(ackAt >= 0, 'the ack arrived');
    const received = got.filter((_, i) => i !== ackAt);
    assert.equal(received.pop(), end);
    // received = only the 'a' events up to some point j, then every event after j.
    const firstOther = received.findIndex((f) => !f.includes('"parcel_id":"a"'));
    const j = firstOther < 0 ? frames.length : frames.indexOf(received[firstOther]);
    const expected = [...frames.slice(0, j).filter((f) => f.includes('"parcel_id":"a"')), ...frames.slice(j)];
    assert.deepEqual(received, expected);
    // Before the ack, only 'a' events.
    assert.ok(got.slice(0, ackAt).every((f) => f.includes('"parcel_id":"a"')));
  });

  test('a filtered client does not disturb others, and its close releases its parcels', async () => {
    const a = await client();
    const b = await client();
    await request(a, { type: 'subscribe', parcel_ids: ['shared'] }, ack('subscribed', ['shared']));
    await request(b, { type: 'subscribe', parcel_ids: ['shared'] }, ack('subscribed', ['shared']));
    await a.close();
    await h.waitUntil(() => server.clientCount === 1, 'a is gone');
    await publishAll(['shared', 'x', 'shared']);
    assert.deepEqual(await take(b, 2), ['shared', 'shared'].map(h.frame));
  });
});

describe('maxSubscriptions option', () => {
  test('a small limit: SUBSCRIPTION_LIMIT past it, ?parcels= past it is 400', async () => {
    const server = await rt.startServer({ ...BASE, maxSubscriptions: 3 });
    const clients = [];
    try {
      const c = await h.connectReady(h.wsUrl(server));
      clients.push(c);
      await refused(c, { type: 'subscribe', parcel_ids: ['a', 'b', 'c', 'd'] }, 'SUBSCRIPTION_LIMIT');
      await request(c, { type: 'subscribe', parcel_ids: ['a', 'b', 'a', 'c'] }, ack('subscribed', ['a', 'b', 'c']));
      await refused(c, { type: 'subscribe', parcel_ids: ['d'] }, 'SUBSCRIPTION_LIMIT');
      await request(c, { type: 'unsubscribe', parcel_ids: ['b'] }, ack('unsubscribed', ['a', 'c']));
      await request(c, { type: 'subscribe', parcel_ids: ['d'] }, ack('subscribed', ['a', 'c', 'd']));
      await publishAll(['b', 'd', 'a']);
      assert.deepEqual(await take(c, 2), ['d', 'a'].map(h.frame));
      await h.expectRefusal(`${h.wsUrl(server)}&parcels=a,b,c,d`, {}, 400, 'INVALID_PARCELS');
      const ok = await h.connectReady(`${h.wsUrl(server)}&parcels=a,b,c,a`);
      clients.push(ok);
      assert.equal(await ok.next(), ack('subscribed', ['a', 'b', 'c']));
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await server.close();
    }
  });

  test('REALTIME_MAX_SUBSCRIPTIONS is the fallback', async () => {
    const server = await h.withEnv({ REALTIME_MAX_SUBSCRIPTIONS: '2' }, () => rt.startServer(BASE));
    try {
      const c = await h.connectReady(h.wsUrl(server));
      await refused(c, { type: 'subscribe', parcel_ids: ['a', 'b', 'c'] }, 'SUBSCRIPTION_LIMIT');
      await request(c, { type: 'subscribe', parcel_ids: ['a', 'b'] }, ack('subscribed', ['a', 'b']));
      await c.close();
    } finally {
      await server.close();
    }
  });
});
