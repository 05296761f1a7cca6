// Events addressed to users (memory mode): who receives them, the inbox of a user who has no
// connection, presence, resume, and every bad input refused with a code.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

/** A client authenticated as `user`, ready (welcome received). */
function connect(server, user, params = {}) {
  const query = Object.entries(params).map(([k, v]) => `&${k}=${encodeURIComponent(v)}`).join('');
  return h.connectReady(h.wsUrl(server, { token: h.sign({ sub: user }) }) + query);
}

/** The parcel ids of the `parcel_updated` frames a client received, in order. */
function parcels(client) {
  return client.messages.map((m) => JSON.parse(m)).filter((m) => m.type === 'parcel_updated').map((m) => m.parcel_id);
}

describe('events addressed to users', () => {
  let server;
  before(async () => { server = await rt.startServer(BASE); });
  after(async () => { await server?.close(); });

  test('reach every connection of the user, whatever its filter, and nobody else; broadcasts still reach everyone', async () => {
    const a1 = await connect(server, 'a');
    const a2 = await connect(server, 'a');
    const b = await connect(server, 'b');
    const cx = await connect(server, 'c', { parcels: 'x' });
    const anonymous = await h.connectReady(h.wsUrl(server, { token: h.sign({ role: 'guest' }) }));
    try {
      await rt.publishParcelUpdate('for-a', { why: 'sold' }, { users: ['a'] });
      await rt.publishParcelUpdate('x');
      await rt.publishParcelUpdate('for-c', undefined, { users: ['c'] });
      await rt.publishParcelUpdate('end');
      await a1.waitFor(4); // welcome, for-a, x, end
      await a2.waitFor(4);
      await b.waitFor(3);
      await cx.waitFor(4); // welcome, subscribed, x, for-c
      await anonymous.waitFor(3);
      assert.deepEqual(parcels(a1), ['for-a', 'x', 'end']);
      assert.deepEqual(parcels(a2), ['for-a', 'x', 'end']);
      assert.deepEqual(parcels(b), ['x', 'end']);
      assert.deepEqual(parcels(cx), ['x', 'for-c'], 'addressed to c: delivered despite the filter');
      assert.deepEqual(parcels(anonymous), ['x', 'end']);
      const frame = JSON.parse(a1.raw.find((m) => m.includes('for-a')));
      assert.deepEqual(Object.keys(frame), ['type', 'parcel_id', 'data', 'offset'], 'the ordinary frame: no users field');
      assert.deepEqual(await rt.presence(['a', 'b', 'z']), { a: 2, b: 1, z: 0 });
    } finally {
      await Promise.all([a1, a2, b, cx, anonymous].map((c) => c.close()));
    }
  });

  test('a numeric user claim matches its decimal string', async () => {
    const n = await h.connectReady(h.wsUrl(server, { token: h.sign({ id: 42 }) }));
    try {
      await rt.publishParcelUpdate('for-42', undefined, { users: ['42'] });
      await n.waitFor(2);
      assert.deepEqual(parcels(n), ['for-42']);
    } finally {
      await n.close();
    }
  });

  test('a user with no connection gets the event right after the welcome of the next one, once', async () => {
    await rt.publishParcelUpdate('while-away-1', undefined, { users: ['z'] });
    await rt.publishParcelUpdate('broadcast-while-away');
    await rt.publishParcelUpdate('while-away-2', undefined, { users: ['z'] });
    const z = await connect(server, 'z');
    await rt.publishParcelUpdate('live');
    await z.waitFor(4);
    assert.equal(JSON.parse(z.messages[0]).type, 'connected');
    assert.deepEqual(parcels(z), ['while-away-1', 'while-away-2', 'live']);
    await z.close();
    const again = await connect(server, 'z');
    await rt.publishParcelUpdate('live-2');
    await again.waitFor(2);
    assert.deepEqual(parcels(again), ['live-2'], 'the inbox was delivered once');
    await again.close();
  });

  test('a resuming client gets its own missed addressed events interleaved with broadcasts, no other user\'s', async () => {
    const a = await connect(server, 'a');
    await rt.publishParcelUpdate('seen');
    await a.waitFor(2);
    const seen = JSON.parse(a.raw[1]).offset;
    await a.close();
    await rt.publishParcelUpdate('missed-1');
    await rt.publishParcelUpdate('missed-for-a', undefined, { users: ['a'] });
    await rt.publishParcelUpdate('missed-for-b', undefined, { users: ['b'] });
    await rt.publishParcelUpdate('missed-2');
    const back = await connect(server, 'a', { since: seen });
    await back.waitFor(5); // welcome, 3 replayed, resumed
    assert.deepEqual(parcels(back), ['missed-1', 'missed-for-a', 'missed-2']);
    assert.equal(JSON.parse(back.messages[4]).type, 'resumed');
    assert.equal(JSON.parse(back.messages[4]).replayed, 3);
    await rt.publishParcelUpdate('after');
    await back.waitFor(6);
    assert.deepEqual(parcels(back).slice(-1), ['after'], 'the inbox is not sent on top of the replay');
    await back.close();
  });

  test('subscribeToParcelEvents callbacks see addressed events with their users', async () => {
    const seen = [];
    const unsubscribe = rt.subscribeToParcelEvents((e) => seen.push(e));
    try {
      await rt.publishParcelUpdate('note', { n: 1 }, { users: ['a', 'b'] });
      await rt.publishParcelUpdate('plain');
      await h.waitUntil(() => seen.length >= 2, 'both events reach the callback');
      assert.deepEqual(seen[0].users, ['a', 'b']);
      assert.equal(seen[0].parcel_id, 'note');
      assert.equal(seen[1].users, undefined);
    } finally {
      unsubscribe();
    }
  });

  test('bad users are refused with a code and nothing is sent', async () => {
    const watcher = await connect(server, 'w');
    try {
      const cases = [
        [{ users: [] }, 'ERR_INVALID_USERS'],
        [{ users: 'a' }, 'ERR_INVALID_USERS'],
        [{ users: [1] }, 'ERR_INVALID_USERS'],
        [{ users: [''] }, 'ERR_INVALID_USERS'],
        [{ users: Array.from({ length: 1001 }, (_, i) => `u${i}`) }, 'ERR_INVALID_USERS'],
        [{ user: ['a'] }, 'ERR_INVALID_OPTION'],
        ['a', 'ERR_INVALID_OPTION'],
      ];
      for (const [options, code] of cases) {
        await assert.rejects(rt.publishParcelUpdate('never', undefined, options), (err) => {
          assert.equal(err.code, code, JSON.stringify(options).slice(0, 40));
          assert.ok(err instanceof TypeError);
          return true;
        });
        assert.throws(() => rt.publishParcelUpdateDirect('never', undefined, options), { code });
      }
      await assert.rejects(rt.presence('a'), { code: 'ERR_INVALID_USERS' });
      await assert.rejects(rt.presence([1]), { code: 'ERR_INVALID_USERS' });
      await assert.rejects(rt.presence(Array.from({ length: 1001 }, (_, i) => `u${i}`)), { code: 'ERR_INVALID_USERS' });
      await rt.publishParcelUpdate('sentinel');
      await watcher.waitFor(2);
      assert.deepEqual(parcels(watcher), ['sentinel']);
    } finally {
      await watcher.close();
    }
  });
});
