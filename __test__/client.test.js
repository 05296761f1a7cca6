// realtime-events/client in Node (with npm `ws`), against the real server: the token in the
// subprotocol, events, subscriptions restored after reconnects, restarts on the same port,
// getToken on every attempt, refresh, token expiry, close(). Then a scripted `ws` server for what
// the real one cannot be made to do on demand (fall silent, send overlapping replays), and the
// offset/resume tests against the real server: in memory (same process, new process) and across
// two instances sharing Redis.
//
// Servers in one process share one bus, so the tests run one at a time.
'use strict';

const { test, describe, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { once } = require('node:events');
const net = require('node:net');

const WebSocket = require('ws');

const rt = require('..');
const h = require('./helpers');
const { RealtimeClient, compareOffsets } = require('../client');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null };
const OFFSET = /^\d+-\d+$/;
const PKG = JSON.stringify(h.PKG);

// ---------------------------------------------------------------------------------------------
// Fixtures

const cleanups = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) {
    try {
      await fn();
    } catch {}
  }
});

async function startServer(options = {}) {
  const server = await rt.startServer({ ...BASE, port: 0, ...options });
  cleanups.push(() => server.close());
  return server;
}

/** Closes `server` (clients see 1001), waits `pauseMs`, starts a new one on the same port. */
async function restart(server, options = {}, pauseMs = 300) {
  const port = server.port;
  await server.close();
  await h.delay(pauseMs);
  return startServer({ ...options, port });
}

/**
 * A `ws` subclass that records every socket the client creates, and counts creations while
 * another socket of the same client was still connecting or open (must stay 0).
 */
function spyWebSocket() {
  const spy = { sockets: [], urls: [], protocols: [], overlaps: 0 };
  spy.WebSocket = class SpyWebSocket extends WebSocket {
    constructor(url, protocols, options) {
      if (spy.sockets.some((s) => s.readyState === WebSocket.CONNECTING || s.readyState === WebSocket.OPEN)) {
        spy.overlaps++;
      }
      super(url, protocols, options);
      spy.sockets.push(this);
      spy.urls.push(url);
      spy.protocols.push(protocols);
    }
  };
  spy.query = (i) => new URL(spy.urls[i]).searchParams;
  return spy;
}

let tokenCounter = 0;
/** A distinct valid token per call (so each connection's token is recognisable). */
function freshToken(claims = {}) {
  return h.sign({ sub: 'user-1', n: ++tokenCounter, ...claims });
}

/**
 * A client with a recorder: events, states, errors, disconnects, frames, resyncs, resumes.
 * Options default to quick reconnects; closed after the test.
 */
function newClient(port, options = {}) {
  const spy = spyWebSocket();
  const tokens = [];
  const getToken = options.getToken ?? (() => {
    const t = freshToken();
    tokens.push(t);
    return t;
  });
  const client = new RealtimeClient({
    url: `ws://127.0.0.1:${port}/ws`,
    WebSocket: spy.WebSocket,
    minDelayMs: 20,
    maxDelayMs: 200,
    ...options,
    getToken,
  });
  cleanups.push(() => client.close());
  const rec = {
    client, spy, tokens,
    events: [], states: [client.state], errors: [], disconnects: [], frames: [], resyncs: [], resumed: [],
    ids: () => rec.events.map((e) => e.parcel_id),
    opens: () => rec.states.filter((s) => s === 'open').length,
    framesOf: (type) => rec.frames.filter((f) => f.type === type),
    until: (check, what, ms) => h.waitUntil(check, what, ms),
    /** Waits for the `n`th 'open' state (counting from the first connection). */
    waitOpen: (n = 1, ms = 5000) => h.waitUntil(() => rec.opens() >= n, `open #${n} (states ${rec.states})`, ms),
    /** Waits for the `n`th frame of this type. */
    waitFrame: (type, n = 1, ms = 5000) =>
      h.waitUntil(() => rec.framesOf(type).length >= n, `${n} "${type}" frame(s); got ${JSON.stringify(rec.frames.slice(-5))}`, ms),
    /** Waits until the event for parcel `id` arrived (n-th occurrence). */
    waitEvent: (id, n = 1, ms = 5000) =>
      h.waitUntil(() => rec.ids().filter((x) => x === id).length >= n, `event ${id}; got ${rec.ids()}`, ms),
  };
  client.on('parcel_updated', (e) => rec.events.push(e));
  client.on('state', (s) => rec.states.push(s));
  client.on('error', (e) => rec.errors.push(e));
  client.on('disconnect', (d) => rec.disconnects.push(d));
  client.on('message', (f) => rec.frames.push(f));
  client.on('resync_required', (f) => rec.resyncs.push(f));
  client.on('resumed', (f) => rec.resumed.push(f));
  return rec;
}

/** The event without its offset (to compare shapes whether or not the server numbers events). */
function plain(event) {
  const { offset, ...rest } = event;
  return rest;
}

/** Publishes in order and waits for `sentinel` (a parcel the client follows) to arrive. */
async function publishAndSettle(rec, ids, sentinel) {
  const seen = rec.ids().filter((x) => x === sentinel).length;
  for (const id of ids) await rt.publishParcelUpdate(id);
  await rt.publishParcelUpdate(sentinel);
  await rec.waitEvent(sentinel, seen + 1);
}

// ---------------------------------------------------------------------------------------------
// Against the real server (memory bus)

describe('RealtimeClient against the real server', () => {
  test('connects with the token in the subprotocol (never in the URL) and reports its states', async () => {
    const server = await startServer();
    const rec = newClient(server.port);
    assert.equal(rec.client.state, 'connecting');
    await rec.waitOpen();
    assert.deepEqual(rec.states, ['connecting', 'open']);
    assert.equal(server.clientCount, 1);
    assert.equal(rec.spy.sockets.length, 1);
    assert.equal(rec.spy.urls[0], `ws://127.0.0.1:${server.port}/ws`, 'first URL: no token, no query');
    assert.deepEqual(rec.spy.protocols[0], ['realtime-events', `bearer.${rec.tokens[0]}`]);
    assert.equal(rec.spy.sockets[0].protocol, 'realtime-events', 'the server picked the realtime-events subprotocol');
    assert.equal(rec.frames[0].type, 'connected');
    assert.deepEqual(rec.errors, []);
    assert.deepEqual(rec.client.subscriptions, { all: true, parcelIds: [] });
  });

  test('delivers parcel_updated events in publish order, with their data', async () => {
    const server = await startServer();
    const rec = newClient(server.port);
    await rec.waitOpen();
    await rt.publishParcelUpdate('p1');
    await rt.publishParcelUpdate('p2', { owner_id: 'u7', price: 120 });
    await rt.publishParcelUpdate('p3');
    await rec.waitEvent('p3');
    assert.deepEqual(rec.events.map(plain), [
      { type: 'parcel_updated', parcel_id: 'p1' },
      { type: 'parcel_updated', parcel_id: 'p2', data: { owner_id: 'u7', price: 120 } },
      { type: 'parcel_updated', parcel_id: 'p3' },
    ]);
    assert.deepEqual(rec.errors, []);
  });

  test('survives a server restart on the same port: 1001, reconnects, keeps receiving; one socket at a time', async () => {
    let server = await startServer({ port: await h.freePort() });
    const rec = newClient(server.port);
    await rec.waitOpen();
    await rt.publishParcelUpdate('before');
    await rec.waitEvent('before');

    server = await restart(server, {}, 400);
    await rec.waitOpen(2);
    assert.equal(rec.disconnects[0].code, 1001, JSON.stringify(rec.disconnects));
    // The delay the client chose (not a measured time): jitter below minDelayMs (20), rounded.
    assert.ok(rec.disconnects[0].delayMs <= 20, `1001 reconnects at once (with jitter): ${rec.disconnects[0].delayMs} ms`);
    assert.deepEqual(rec.states.slice(0, 3), ['connecting', 'open', 'reconnecting']);
    assert.equal(rec.states.at(-1), 'open');
    assert.ok(rec.errors.length >= 1, 'attempts while the server was down were reported');
    for (const err of rec.errors) {
      assert.equal(err.code, 'ERR_CONNECTION_FAILED');
      assert.equal(typeof err.retryInMs, 'number');
    }
    assert.ok(rec.errors.some((e) => e.closeCode === 1006 && /ECONNREFUSED/.test(e.message)), rec.errors.map((e) => e.message).join('; '));
    await h.waitUntil(() => server.clientCount === 1, 'the client on the new server');

    await rt.publishParcelUpdate('after');
    await rec.waitEvent('after');
    assert.deepEqual(rec.ids(), ['before', 'after']);
    assert.equal(rec.spy.overlaps, 0, 'never two sockets at once');
    assert.equal(rec.spy.sockets.filter((s) => s.readyState === WebSocket.OPEN).length, 1);
  });

  test('getToken is called before every connection; a sync string, a throw, a rejection and a Promise all work', async () => {
    let server = await startServer({ port: await h.freePort() });
    let serverBack;
    const back = new Promise((resolve) => (serverBack = resolve));
    const calls = [];
    const script = [
      () => freshToken(),
      async () => {
        await back; // fails only once the new server listens, so that the next attempts reach it
        throw new Error('auth service down');
      },
      () => {
        throw new Error('still down');
      },
      () => new Promise((resolve) => setTimeout(() => resolve(freshToken()), 30)),
    ];
    const rec = newClient(server.port, {
      getToken: () => {
        const i = calls.length;
        calls.push(Date.now());
        return (script[i] ?? (() => freshToken()))();
      },
    });
    await rec.waitOpen();
    assert.equal(calls.length, 1);
    const firstToken = rec.spy.protocols[0][1];

    const port = server.port;
    await server.close();
    await h.waitUntil(() => calls.length === 2, 'getToken for the reconnect');
    server = await startServer({ port });
    serverBack();
    await rec.waitOpen(2);
    assert.equal(calls.length, 4, 'open after a rejection and a throw');
    const tokenErrors = rec.errors.filter((e) => e.code === 'ERR_GET_TOKEN');
    assert.equal(tokenErrors.length, 2);
    assert.match(tokenErrors[0].message, /auth service down/);
    assert.equal(tokenErrors[1].cause.message, 'still down');
    assert.deepEqual(rec.errors.filter((e) => e.code !== 'ERR_GET_TOKEN'), []);
    assert.equal(rec.spy.sockets.length, 2, 'no socket was opened without a token');
    assert.notEqual(rec.spy.protocols[1][1], firstToken, 'the reconnect used the new token');
    assert.deepEqual(rec.spy.protocols[1], ['realtime-events', `bearer.${rec.spy.protocols[1][1].slice(7)}`]);
    await rt.publishParcelUpdate('p1');
    await rec.waitEvent('p1');
  });

  test('a refused connection (HTTP 401) is reported and retried with backoff until getToken gives a valid token', async () => {
    const server = await startServer();
    let calls = 0;
    const rec = newClient(server.port, {
      getToken: () => (++calls <= 2 ? h.sign({ sub: 'user-1' }, {}, 'another-secret') : freshToken()),
    });
    await rec.waitOpen();
    assert.equal(calls, 3);
    assert.equal(rec.errors.length, 2);
    for (const err of rec.errors) {
      assert.equal(err.code, 'ERR_CONNECTION_FAILED');
      assert.equal(err.closeCode, 1006);
      assert.match(err.message, /401/);
    }
    assert.deepEqual(rec.states, ['connecting', 'reconnecting', 'open']);
  });

  test('subscribe/unsubscribe/subscribeAll are sent while open and restored after every reconnect', async () => {
    let server = await startServer({ port: await h.freePort() });
    const rec = newClient(server.port, { parcels: ['p1', 'p2'] });
    await rec.waitOpen();
    assert.equal(rec.spy.query(0).get('parcels'), 'p1,p2', 'the initial filter travels in the URL');
    await rec.waitFrame('subscribed');
    assert.deepEqual(rec.framesOf('subscribed')[0], { type: 'subscribed', all: false, parcel_ids: ['p1', 'p2'] });
    await publishAndSettle(rec, ['p1', 'p3'], 'p2');
    assert.deepEqual(rec.ids(), ['p1', 'p2']);

    // Live changes are sent at once (changes made in one tick go out together).
    rec.client.unsubscribe(['p1']);
    rec.client.subscribe(['p3']);
    assert.deepEqual(rec.client.subscriptions, { all: false, parcelIds: ['p2', 'p3'] });
    await rec.waitFrame('subscribed', 2);
    assert.deepEqual(rec.framesOf('unsubscribed')[0], { type: 'unsubscribed', all: false, parcel_ids: ['p2'] });
    assert.deepEqual(rec.framesOf('subscribed')[1], { type: 'subscribed', all: false, parcel_ids: ['p2', 'p3'] });
    rec.events.length = 0;
    await publishAndSettle(rec, ['p1', 'p2', 'p4'], 'p3');
    assert.deepEqual(rec.ids(), ['p2', 'p3']);

    // Restored after a restart: the URL carries the current filter.
    server = await restart(server);
    await rec.waitOpen(2);
    const second = rec.spy.sockets.length - 1;
    assert.equal(rec.spy.query(second).get('parcels'), 'p2,p3');
    await rec.waitFrame('subscribed', 3);
    rec.events.length = 0;
    await publishAndSettle(rec, ['p1', 'p2', 'p4'], 'p3');
    assert.deepEqual(rec.ids(), ['p2', 'p3']);

    // Every event again, and that too survives a restart.
    rec.client.subscribeAll();
    await rec.waitFrame('subscribed', 4);
    assert.deepEqual(rec.framesOf('subscribed')[3], { type: 'subscribed', all: true, parcel_ids: [] });
    rec.events.length = 0;
    await publishAndSettle(rec, ['p1', 'p4'], 'p3');
    assert.deepEqual(rec.ids(), ['p1', 'p4', 'p3']);

    // Changes made while disconnected are remembered too.
    const port = server.port;
    await server.close();
    await h.waitUntil(() => rec.client.state === 'reconnecting', 'reconnecting');
    rec.client.subscribe(['p9']);
    rec.client.subscribe(['p8']);
    rec.client.unsubscribe(['p8']);
    await h.delay(100);
    server = await startServer({ port });
    await rec.waitOpen(3);
    assert.equal(rec.spy.query(rec.spy.sockets.length - 1).get('parcels'), 'p9');
    await rec.waitFrame('subscribed', 5);
    rec.events.length = 0;
    await publishAndSettle(rec, ['p1', 'p8', 'p3'], 'p9');
    assert.deepEqual(rec.ids(), ['p9']);
    assert.equal(rec.spy.overlaps, 0);
    assert.deepEqual(rec.errors.filter((e) => e.code !== 'ERR_CONNECTION_FAILED'), []);
  });

  test('a subscription the server refuses (SUBSCRIPTION_LIMIT) is reported and forgotten, not retried', async () => {
    let server = await startServer({ port: await h.freePort(), maxSubscriptions: 2 });
    const rec = newClient(server.port, { parcels: ['a'] });
    await rec.waitOpen();
    await rec.waitFrame('subscribed');
    rec.client.subscribe(['b', 'c']);
    await h.waitUntil(() => rec.errors.length === 1, 'the refusal');
    assert.equal(rec.errors[0].code, 'SUBSCRIPTION_LIMIT');
    assert.equal(rec.errors[0].frame.type, 'error');
    assert.deepEqual(rec.client.subscriptions, { all: false, parcelIds: ['a'] });
    rec.client.subscribe(['b']);
    await rec.waitFrame('subscribed', 2);
    assert.deepEqual(rec.framesOf('subscribed')[1].parcel_ids, ['a', 'b']);

    server = await restart(server, { maxSubscriptions: 2 });
    await rec.waitOpen(2);
    assert.equal(rec.spy.query(rec.spy.sockets.length - 1).get('parcels'), 'a,b');
    await rec.waitFrame('subscribed', 3);
    await publishAndSettle(rec, ['c'], 'b');
    assert.deepEqual(rec.ids(), ['b']);
    assert.equal(rec.errors.filter((e) => e.code === 'SUBSCRIPTION_LIMIT').length, 1);
  });

  test('invalid parcel ids and options throw a TypeError with a code at the call; nothing is sent', async () => {
    const server = await startServer();
    const rec = newClient(server.port);
    await rec.waitOpen();
    const badId = { name: 'TypeError', code: 'ERR_INVALID_PARCEL_ID' };
    assert.throws(() => rec.client.subscribe('p1'), badId);
    assert.throws(() => rec.client.subscribe([1]), badId);
    assert.throws(() => rec.client.subscribe(['']), badId);
    assert.throws(() => rec.client.unsubscribe(['x'.repeat(257)]), badId);
    assert.throws(() => rec.client.subscribe(['\ud800']), badId);
    rec.client.subscribe(['é'.repeat(128)]); // 256 UTF-8 bytes: allowed
    rec.client.subscribe([]); // nothing to add: no change
    await rec.waitFrame('subscribed');
    assert.deepEqual(rec.framesOf('subscribed')[0].parcel_ids, ['é'.repeat(128)]);
    assert.deepEqual(rec.errors, []);
    const badOption = { name: 'TypeError', code: 'ERR_INVALID_OPTION' };
    assert.throws(() => new RealtimeClient(), badOption);
    assert.throws(() => new RealtimeClient({ url: 'http//nope', getToken: () => 't', WebSocket }), badOption);
    assert.throws(() => new RealtimeClient({ url: 'ws://x/ws', WebSocket }), badOption);
    assert.throws(() => new RealtimeClient({ url: 'ws://x/ws', getToken: () => 't' }), { ...badOption, message: /pass options.WebSocket/ });
    assert.throws(() => new RealtimeClient({ url: 'ws://x/ws', getToken: () => 't', WebSocket, minDelayMs: 500, maxDelayMs: 100 }), badOption);
    assert.throws(() => new RealtimeClient({ url: 'ws://x/ws', getToken: () => 't', WebSocket, since: 5 }), badOption);
    assert.throws(() => rec.client.on('nope', () => {}), { name: 'TypeError', code: 'ERR_INVALID_ARGUMENT' });
    assert.throws(() => rec.client.on('state', 'not a function'), { name: 'TypeError', code: 'ERR_INVALID_ARGUMENT' });
  });

  test('refreshToken() sends a fresh token from getToken; a refused one (4403) reconnects with a new token', async () => {
    const server = await startServer();
    let user = 'user-1';
    let calls = 0;
    const rec = newClient(server.port, {
      getToken: async () => {
        calls++;
        return freshToken({ sub: user });
      },
    });
    await rec.waitOpen();
    assert.equal(await rec.client.refreshToken(), true);
    assert.equal(calls, 2);
    assert.equal(rec.framesOf('refreshed').length, 1);

    user = 'someone-else'; // the server refuses a refresh for another user: 4403
    const refused = rec.client.refreshToken();
    assert.equal(await refused, false);
    await h.waitUntil(() => rec.disconnects.length === 1, 'the 4403 close');
    assert.equal(rec.disconnects[0].code, 4403);
    await rec.waitOpen(2);
    assert.equal(calls, 4, 'a new token for the reconnect');
    assert.equal(rec.spy.overlaps, 0);

    const closed = newClient(server.port);
    closed.client.close();
    assert.equal(await closed.client.refreshToken(), false, 'false after close()');
  });

  test('an expired token (4401) makes it reconnect at once with a fresh token from getToken', { timeout: 20_000 }, async () => {
    const server = await startServer();
    let calls = 0;
    const rec = newClient(server.port, {
      getToken: () => (++calls === 1 ? freshToken({ exp: h.nowSeconds() + 1 }) : freshToken()),
    });
    await rec.waitOpen();
    await h.waitUntil(() => rec.disconnects.length === 1, 'the 4401 close', 12_000);
    assert.equal(rec.disconnects[0].code, 4401);
    assert.equal(rec.disconnects[0].reason, 'token expired');
    await rec.waitOpen(2);
    assert.equal(calls, 2);
    await rt.publishParcelUpdate('p1');
    await rec.waitEvent('p1');
  });

  test('sends {"type":"ping"} every pingIntervalMs; the pongs keep the connection up', async () => {
    const server = await startServer();
    const rec = newClient(server.port, { pingIntervalMs: 100 });
    await rec.waitOpen();
    await h.delay(700);
    assert.ok(rec.framesOf('pong').length >= 4, `pongs: ${rec.framesOf('pong').length}`);
    assert.equal(rec.client.state, 'open');
    assert.deepEqual(rec.disconnects, []);
    assert.equal(rec.spy.sockets.length, 1);
  });

  test('listener errors (thrown or rejected) are reported on "error" and break nothing', async () => {
    const server = await startServer();
    const rec = newClient(server.port);
    const seen = [];
    rec.client.on('parcel_updated', () => {
      throw new Error('boom');
    });
    rec.client.on('parcel_updated', async () => {
      throw new Error('async boom');
    });
    rec.client.on('parcel_updated', (e) => seen.push(e.parcel_id));
    rec.client.on('state', () => {
      throw new Error('state boom');
    });
    const removed = () => seen.push('removed listener called');
    rec.client.on('parcel_updated', removed);
    rec.client.off('parcel_updated', removed);
    await rec.waitOpen();
    await rt.publishParcelUpdate('p1');
    await rt.publishParcelUpdate('p2');
    await h.waitUntil(() => seen.length === 2, 'both events past the throwing listeners');
    await h.waitUntil(() => rec.errors.length === 5, `five listener errors: ${rec.errors.map((e) => e.message)}`);
    assert.deepEqual(seen, ['p1', 'p2']);
    assert.deepEqual(rec.errors.map((e) => e.code), Array(5).fill('ERR_LISTENER'));
    assert.deepEqual(rec.errors.map((e) => e.event).sort(), ['parcel_updated', 'parcel_updated', 'parcel_updated', 'parcel_updated', 'state']);
    assert.ok(rec.errors.some((e) => e.cause.message === 'async boom'));
    assert.equal(rec.client.state, 'open');

    // An 'error' listener that throws goes to console.error, nowhere else.
    const logged = [];
    const original = console.error;
    console.error = (...args) => logged.push(args.join(' '));
    try {
      rec.client.on('error', () => {
        throw new Error('error boom');
      });
      await rt.publishParcelUpdate('p3');
      await h.waitUntil(() => seen.length === 3, 'p3');
    } finally {
      console.error = original;
    }
    assert.ok(logged.some((l) => /"error" listener threw/.test(l)), JSON.stringify(logged));
    assert.equal(rec.client.state, 'open');
  });

  test('close() stops everything: no socket, no reconnect, no event, whatever the state', async () => {
    let server = await startServer({ port: await h.freePort() });
    const port = server.port;

    // While open.
    const open = newClient(port);
    await open.waitOpen();
    open.client.close();
    open.client.close(); // twice is harmless
    assert.equal(open.client.state, 'closed');
    await h.waitUntil(() => server.clientCount === 0, 'the server sees the client go');
    await rt.publishParcelUpdate('p1');
    open.client.subscribe(['p2']);
    assert.equal(await open.client.refreshToken(), false);

    // While reconnecting (server down), with a pending backoff timer.
    const waiting = newClient(port, { minDelayMs: 50, maxDelayMs: 100 });
    await waiting.waitOpen();
    await server.close();
    await h.waitUntil(() => waiting.client.state === 'reconnecting' && waiting.errors.length >= 1, 'a failed attempt');
    waiting.client.close();
    const socketsAtClose = waiting.spy.sockets.length;

    // While getToken is pending.
    let release;
    const pending = newClient(port, { getToken: () => new Promise((resolve) => (release = resolve)) });
    await h.waitUntil(() => release, 'getToken called');
    pending.client.close();
    release(freshToken());

    server = await startServer({ port });
    await h.delay(500); // several maxDelayMs
    assert.equal(server.clientCount, 0, 'nobody reconnected');
    assert.equal(waiting.spy.sockets.length, socketsAtClose, 'no socket after close()');
    assert.equal(pending.spy.sockets.length, 0, 'no socket once the pending token arrived');
    for (const rec of [open, waiting, pending]) {
      assert.equal(rec.client.state, 'closed');
      assert.equal(rec.states.at(-1), 'closed');
      assert.equal(rec.states.filter((s) => s === 'closed').length, 1);
    }
    assert.deepEqual(open.events, []);
  });

  test('close() clears every timer: a Node process with a closed client exits by itself', async () => {
    const port = await h.freePort();
    const proc = h.spawnNodeScript(`
      const rt = require(${PKG});
      const WebSocket = require(${JSON.stringify(require.resolve('ws'))});
      const jwt = require(${JSON.stringify(require.resolve('jsonwebtoken'))});
      const { RealtimeClient } = require(${PKG} + '/client');
      (async () => {
        const server = await rt.startServer({ port: ${port}, host: '127.0.0.1', jwtSecret: ${JSON.stringify(h.SECRET)}, redisUrl: null });
        const client = new RealtimeClient({
          url: 'ws://127.0.0.1:${port}/ws', WebSocket, pingIntervalMs: 50, minDelayMs: 10, maxDelayMs: 50,
          getToken: () => jwt.sign({ sub: 'u' }, ${JSON.stringify(h.SECRET)}),
        });
        await new Promise((resolve) => client.on('state', (s) => s === 'open' && resolve()));
        await server.close();             // reconnect attempts begin (backoff timers)
        await new Promise((r) => setTimeout(r, 150));
        client.close();
        console.log('closed ' + client.state);
      })();
    `);
    await proc.waitForOutput(/closed closed/);
    const exit = await proc.waitForExit(5000);
    assert.equal(exit.code, 0, proc.err());
  });
});

// ---------------------------------------------------------------------------------------------
// Against a scripted `ws` server: behaviours the real server cannot be made to show on demand.

/**
 * A `ws` server speaking just enough of the protocol; `script(conn, n)` runs for the n-th
 * connection (1-based) with conn = {ws, url, query, received[]}.
 */
async function scriptedServer(script) {
  const wss = new WebSocket.Server({
    host: '127.0.0.1',
    port: 0,
    handleProtocols: (protocols) => (protocols.has('realtime-events') ? 'realtime-events' : false),
  });
  await once(wss, 'listening');
  const conns = [];
  wss.on('connection', (ws, req) => {
    const conn = {
      ws,
      url: req.url,
      query: new URL(req.url, 'ws://x').searchParams,
      protocols: req.headers['sec-websocket-protocol'],
      received: [],
      send: (obj) => ws.send(JSON.stringify(obj)),
    };
    ws.on('message', (d) => conn.received.push(JSON.parse(d.toString())));
    conns.push(conn);
    script(conn, conns.length);
  });
  const server = {
    port: wss.address().port,
    conns,
    close: () => new Promise((resolve) => {
      for (const ws of wss.clients) ws.terminate();
      wss.close(() => resolve());
    }),
  };
  cleanups.push(() => server.close());
  return server;
}

function welcome(offset) {
  return { type: 'connected', message: 'WebSocket connection established', ...(offset ? { offset } : {}) };
}

function ev(parcelId, offset) {
  return { type: 'parcel_updated', parcel_id: parcelId, ...(offset ? { offset } : {}) };
}

describe('RealtimeClient against a scripted server', () => {
  test('nothing received for 2 x pingIntervalMs: it gives up on the connection (4000) and reconnects', async () => {
    const server = await scriptedServer((conn) => conn.send(welcome())); // never answers pings
    const rec = newClient(server.port, { pingIntervalMs: 100 });
    let openedAt;
    rec.client.on('state', (s) => {
      if (s === 'open') openedAt ??= Date.now();
    });
    await rec.waitOpen();
    await h.waitUntil(() => rec.disconnects.length === 1, 'the heartbeat timeout', 10_000);
    // A lower bound only (a loaded machine makes it later, never sooner); that it gives up at all
    // is the wait above.
    const after = Date.now() - openedAt;
    assert.ok(after >= 190, `gave up after ${after} ms, not before 2 x 100 ms`);
    assert.equal(rec.disconnects[0].code, 4000);
    assert.ok(server.conns[0].received.filter((m) => m.type === 'ping').length >= 1, 'it pinged');
    await rec.waitOpen(2);
    assert.equal(server.conns.length, 2);
    await h.waitUntil(() => server.conns[0].ws.readyState === WebSocket.CLOSED, 'the dead socket is gone');
    assert.equal(rec.spy.overlaps, 0);
  });

  test('backoff follows the close code: 1001 at once, 4429 at least half of maxDelayMs, failures grow', async () => {
    const codes = [1001, 4429, 4408];
    const server = await scriptedServer((conn, n) => {
      conn.send(welcome());
      if (codes[n - 1]) setTimeout(() => conn.ws.close(codes[n - 1], 'scripted'), 20);
    });
    const rec = newClient(server.port, { minDelayMs: 40, maxDelayMs: 400 });
    await rec.waitOpen(4, 5000);
    assert.deepEqual(rec.disconnects.map((d) => d.code), [1001, 4429, 4408]);
    const [goingAway, limited, timeout] = rec.disconnects.map((d) => d.delayMs);
    assert.ok(goingAway <= 40, `1001: ${goingAway} ms`);
    assert.ok(limited >= 200 && limited <= 400, `4429: ${limited} ms`);
    assert.ok(timeout <= 160, `4408 on the 3rd short-lived connection: ${timeout} ms (<= 40 x 2^2)`);
    assert.equal(rec.spy.sockets.length, 4);
    assert.equal(rec.tokens.length, 4, 'a token per connection');
  });

  test('offsets: takes the welcome offset, resumes with ?since=, drops replayed duplicates, restarts from resync_required', async () => {
    const server = await scriptedServer((conn, n) => {
      if (n === 1) {
        conn.send(welcome('100-0'));
        setTimeout(() => {
          conn.send(ev('p1', '100-1'));
          conn.send(ev('p2', '100-2'));
          conn.send(ev('bare')); // published with a bare Redis PUBLISH: no offset
          conn.ws.close(1001, 'going away');
        }, 50);
      } else if (n === 2) {
        conn.send(welcome('100-4'));
        conn.send(ev('p2', '100-2')); // overlap: already seen
        conn.send(ev('p3', '100-3'));
        conn.send(ev('p4', '100-4'));
        conn.send({ type: 'resumed', since: '100-2', replayed: 3 });
        conn.send(ev('p4', '100-4')); // overlap again (live)
        conn.send(ev('p5', '100-10')); // numeric order, not string order
        setTimeout(() => conn.ws.close(1013, 'too slow'), 20);
      } else if (n === 3) {
        conn.send(welcome('900-7'));
        conn.send({ type: 'resync_required', since: '100-10', offset: '900-7' });
        conn.send(ev('p6', '900-8'));
        setTimeout(() => conn.ws.close(1001, 'going away'), 20);
      } else {
        conn.send(welcome('900-9'));
      }
    });
    const rec = newClient(server.port);
    let offsetAtOpen;
    rec.client.on('state', (s) => {
      if (s === 'open' && offsetAtOpen === undefined) offsetAtOpen = rec.client.lastOffset;
    });
    await rec.waitOpen(4);
    assert.equal(offsetAtOpen, '100-0', 'from the welcome, having none');
    assert.equal(server.conns[0].query.get('since'), null, 'first connection: no resume point');
    assert.equal(server.conns[1].query.get('since'), '100-2', 'the bare event does not move the offset');
    assert.equal(server.conns[2].query.get('since'), '100-10');
    assert.equal(server.conns[3].query.get('since'), '900-8', 'after resync_required: continues from the new history');
    assert.deepEqual(rec.ids(), ['p1', 'p2', 'bare', 'p3', 'p4', 'p5', 'p6']);
    assert.deepEqual(rec.resumed, [{ type: 'resumed', since: '100-2', replayed: 3 }]);
    assert.deepEqual(rec.resyncs, [{ type: 'resync_required', since: '100-10', offset: '900-7' }]);
    assert.equal(rec.client.lastOffset, '900-8', 'a later welcome does not replace a known offset');
    assert.deepEqual(rec.disconnects.map((d) => d.code), [1001, 1013, 1001]);
  });

  test('a resume delivers every event once even if live events overtake the replay, and an interrupted resume starts over from the same point', async () => {
    const server = await scriptedServer((conn, n) => {
      if (n === 1) {
        conn.send(welcome('7-0'));
        conn.send(ev('a', '7-1'));
        setTimeout(() => conn.ws.close(1001, 'going away'), 20);
      } else if (n === 2) {
        // The first live event overtakes the replay; the connection drops before `resumed`.
        conn.send(welcome('7-5'));
        conn.send(ev('live', '7-6'));
        conn.send(ev('b', '7-2'));
        setTimeout(() => conn.ws.close(1001, 'going away'), 20);
      } else if (n === 3) {
        conn.send(welcome('7-6'));
        conn.send(ev('b', '7-2')); // again: not twice
        conn.send(ev('c', '7-3'));
        conn.send(ev('live', '7-6')); // again: not twice
        conn.send({ type: 'resumed', since: '7-1', replayed: 3 });
        conn.send(ev('c', '7-3')); // an overlap after the replay: dropped
        conn.send(ev('d', '7-7'));
      }
    });
    const rec = newClient(server.port);
    const during = [];
    rec.client.on('parcel_updated', () => during.push(rec.client.lastOffset));
    await rec.waitOpen(3);
    await rec.waitEvent('d');
    assert.deepEqual(rec.ids(), ['a', 'live', 'b', 'c', 'd']);
    assert.equal(server.conns[1].query.get('since'), '7-1');
    assert.equal(server.conns[2].query.get('since'), '7-1', 'the interrupted resume starts over from the same point');
    assert.deepEqual(during, ['7-1', '7-1', '7-1', '7-1', '7-7'], 'lastOffset moves on once the replay is complete');
    assert.equal(rec.client.lastOffset, '7-7');
  });

  test('a stored offset (options.since) is the first resume point', async () => {
    const server = await scriptedServer((conn) => conn.send(welcome('5-0')));
    const rec = newClient(server.port, { since: '4-2' });
    await rec.waitOpen();
    assert.equal(server.conns[0].query.get('since'), '4-2');
    assert.equal(rec.client.lastOffset, '4-2');
  });

  test('delivers only events of the parcels it follows, even those the server sent before an unsubscribe took effect', async () => {
    const server = await scriptedServer((conn) => {
      conn.send(welcome());
      conn.send({ type: 'subscribed', all: false, parcel_ids: ['a', 'b'] });
      conn.ws.on('message', (d) => {
        const m = JSON.parse(d.toString());
        if (m.type === 'unsubscribe') {
          conn.send(ev('b')); // in flight before the server applied the unsubscribe
          conn.send(ev('a'));
          conn.send({ type: 'unsubscribed', all: false, parcel_ids: ['a'] });
        }
      });
    });
    const rec = newClient(server.port, { parcels: ['a', 'b'] });
    await rec.waitOpen();
    rec.client.unsubscribe(['b']);
    await rec.waitFrame('unsubscribed');
    assert.deepEqual(rec.ids(), ['a']);
  });

  test('filters too large for the URL: one message when it fits, else every event filtered locally; commas never go in the URL', async () => {
    const server = await scriptedServer((conn) => conn.send(welcome()));
    const many = Array.from({ length: 300 }, (_, i) => `parcel-${i}`);
    const huge = Array.from({ length: 1000 }, (_, i) => `a-rather-long-parcel-id-${i}`);

    const a = newClient(server.port, { parcels: many });
    await a.waitOpen();
    assert.equal(server.conns[0].query.get('parcels'), null);
    await h.waitUntil(() => server.conns[0].received.length === 1, 'one subscribe message');
    assert.deepEqual(server.conns[0].received[0], { type: 'subscribe', parcel_ids: many });

    const b = newClient(server.port, { parcels: huge });
    await b.waitOpen();
    assert.equal(server.conns[1].query.get('parcels'), null);
    await h.delay(100);
    assert.deepEqual(server.conns[1].received, [], 'too large for one message: stays on every event');
    server.conns[1].send(ev('not-followed'));
    server.conns[1].send(ev(huge[999]));
    await b.waitEvent(huge[999]);
    assert.deepEqual(b.ids(), [huge[999]]);
    b.client.unsubscribe(huge.slice(10)); // now small: narrowed in one message
    await h.waitUntil(() => server.conns[1].received.length === 1, 'the narrowing');
    assert.deepEqual(server.conns[1].received[0], { type: 'subscribe', parcel_ids: huge.slice(0, 10) });

    const c = newClient(server.port, { parcels: ['x,y', 'z'] });
    await c.waitOpen();
    assert.equal(server.conns[2].query.get('parcels'), null);
    await h.waitUntil(() => server.conns[2].received.length === 1, 'subscribe with the comma id');
    assert.deepEqual(server.conns[2].received[0], { type: 'subscribe', parcel_ids: ['x,y', 'z'] });
  });

  test('a connection that never sends its welcome is abandoned after connectTimeoutMs and retried', async () => {
    const server = await scriptedServer((conn, n) => {
      if (n > 1) conn.send(welcome());
    });
    const rec = newClient(server.port, { connectTimeoutMs: 150 });
    await rec.waitOpen();
    assert.equal(rec.errors[0].code, 'ERR_CONNECT_TIMEOUT');
    assert.equal(server.conns.length, 2);
    await h.waitUntil(() => server.conns[0].ws.readyState === WebSocket.CLOSED, 'the abandoned socket is closed');
    assert.equal(rec.spy.overlaps, 0);
  });

  test('close() during a pending handshake: the socket is abandoned quietly, nothing reconnects', async () => {
    const sockets = [];
    const silent = net.createServer((socket) => sockets.push(socket)); // accepts, never answers the upgrade
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      silent.close(() => resolve());
    }));
    const rec = newClient(silent.address().port);
    await h.waitUntil(() => sockets.length === 1 && rec.spy.sockets.length === 1, 'the handshake under way');
    assert.equal(rec.spy.sockets[0].readyState, WebSocket.CONNECTING);
    rec.client.close();
    await h.waitUntil(() => rec.spy.sockets[0].readyState === WebSocket.CLOSED, 'the socket closed');
    await h.delay(300);
    assert.equal(sockets.length, 1, 'no new attempt');
    assert.deepEqual(rec.errors, []);
    assert.deepEqual(rec.states, ['connecting', 'closed']);
  });

  test('compareOffsets orders "<ms>-<seq>" numerically', () => {
    assert.equal(compareOffsets('1-1', '1-1'), 0);
    assert.ok(compareOffsets('1-2', '1-10') < 0);
    assert.ok(compareOffsets('10-0', '9-99') > 0);
    assert.ok(compareOffsets('0017-3', '17-2') > 0);
    assert.ok(compareOffsets('123456789012345678901234567890-1', '123456789012345678901234567891-0') < 0);
    assert.ok(Number.isNaN(compareOffsets('abc', '1-1')));
    assert.equal(compareOffsets('opaque', 'opaque'), 0);
  });
});

// ---------------------------------------------------------------------------------------------
// Offsets and resume against the real server. These fail (they do not skip) while the server
// sends no offsets.

/** A child process running a server on a given port; commands on stdin. */
function serverProcess({ port, redisUrl = null, extra = {} }) {
  const proc = h.spawnServer({ port, redisUrl, redisRequired: Boolean(redisUrl), ...extra });
  cleanups.push(() => proc.stop());
  return {
    proc,
    async ready() {
      const m = await proc.waitForOutput(/ready (\d+) (\w+)/);
      return { port: Number(m[1]), busMode: m[2] };
    },
    async publish(id) {
      proc.write(`publish ${id}`);
      const m = await proc.waitForOutput(new RegExp(`^(published|failed) ${id}( .*)?$`, 'm'));
      assert.equal(m[1], 'published', `publish ${id}: ${m[0]}`);
    },
    async close() {
      proc.write('close');
      await proc.waitForOutput(/^closed$/m);
      await proc.stop();
    },
  };
}

describe('offsets and resume against the real server', () => {
  test('the welcome and every event carry an offset; lastOffset follows them', async () => {
    const server = await startServer();
    const rec = newClient(server.port);
    await rec.waitOpen();
    const welcomeOffset = rec.frames[0].offset;
    assert.match(String(welcomeOffset), OFFSET, `welcome: ${JSON.stringify(rec.frames[0])}`);
    assert.equal(rec.client.lastOffset, welcomeOffset);
    await rt.publishParcelUpdate('p1');
    await rt.publishParcelUpdate('p2', { n: 1 });
    await rec.waitEvent('p2');
    const [e1, e2] = rec.events;
    assert.match(String(e1.offset), OFFSET);
    assert.ok(compareOffsets(e1.offset, welcomeOffset) > 0);
    assert.ok(compareOffsets(e2.offset, e1.offset) > 0);
    assert.deepEqual(e2.data, { n: 1 });
    assert.equal(rec.client.lastOffset, e2.offset);
  });

  test('memory bus, restart within the process: events published while away are replayed, none twice', async () => {
    let server = await startServer({ port: await h.freePort() });
    const rec = newClient(server.port, { parcels: ['p1', 'p2'] });
    await rec.waitOpen();
    await rt.publishParcelUpdate('p1');
    await rec.waitEvent('p1');
    const port = server.port;
    await server.close();
    await h.waitUntil(() => rec.client.state === 'reconnecting', 'reconnecting');
    // Published while the client is away (the process's bus keeps the history).
    await rt.publishParcelUpdate('p2');
    await rt.publishParcelUpdate('p3'); // not followed
    await rt.publishParcelUpdate('p1');
    server = await startServer({ port });
    await rec.waitOpen(2);
    await h.waitUntil(() => rec.resumed.length + rec.resyncs.length === 1, `resumed (frames ${JSON.stringify(rec.frames.slice(-4))})`);
    assert.deepEqual(rec.resyncs, []);
    assert.equal(rec.resumed[0].replayed, 2);
    assert.equal(rec.spy.query(rec.spy.sockets.length - 1).get('since'), rec.events[0].offset);
    await rt.publishParcelUpdate('p2');
    await rec.waitEvent('p2', 2);
    assert.deepEqual(rec.ids(), ['p1', 'p2', 'p1', 'p2']);
    const offsets = rec.events.map((e) => e.offset);
    for (let i = 1; i < offsets.length; i++) assert.ok(compareOffsets(offsets[i], offsets[i - 1]) > 0, String(offsets));
  });

  test('memory bus, a new server process is a new history: resync_required, then live events', { timeout: 30_000 }, async () => {
    const port = await h.freePort();
    const a = serverProcess({ port });
    await a.ready();
    const rec = newClient(port);
    await rec.waitOpen();
    await a.publish('p1');
    await rec.waitEvent('p1');
    assert.match(String(rec.events[0].offset), OFFSET);
    await a.close();
    await h.waitUntil(() => rec.disconnects.length === 1, '1001');
    assert.equal(rec.disconnects[0].code, 1001);

    const b = serverProcess({ port });
    await b.ready();
    await rec.waitOpen(2);
    await h.waitUntil(() => rec.resyncs.length === 1, `resync_required (frames ${JSON.stringify(rec.frames.slice(-3))})`);
    const secondWelcome = rec.framesOf('connected')[1];
    assert.equal(rec.spy.query(rec.spy.sockets.length - 1).get('since'), rec.events[0].offset);
    assert.equal(rec.resyncs[0].offset, secondWelcome.offset);
    assert.equal(rec.client.lastOffset, secondWelcome.offset);
    assert.deepEqual(rec.resumed, []);
    await b.publish('p2');
    await rec.waitEvent('p2');
    assert.equal(rec.client.lastOffset, rec.events[1].offset);
    assert.deepEqual(rec.ids(), ['p1', 'p2']);
  });

  test('a server without history (historySize 0): resync_required with no offset, and the client starts over without one', { timeout: 30_000 }, async () => {
    const port = await h.freePort();
    const a = serverProcess({ port, extra: { historySize: 0 } });
    await a.ready();
    const rec = newClient(port, { since: '1732590000000-5' });
    await rec.waitOpen();
    await h.waitUntil(() => rec.resyncs.length === 1, `resync_required (frames ${JSON.stringify(rec.frames)})`);
    assert.equal(rec.spy.query(0).get('since'), '1732590000000-5');
    assert.equal(rec.resyncs[0].offset, null);
    assert.equal(rec.client.lastOffset, null);
    await a.publish('p1');
    await rec.waitEvent('p1');
    assert.deepEqual(rec.events, [{ type: 'parcel_updated', parcel_id: 'p1' }]);
    await a.close();

    const b = serverProcess({ port });
    await b.ready();
    await rec.waitOpen(2);
    assert.equal(rec.spy.query(rec.spy.sockets.length - 1).get('since'), null, 'nothing to resume from');
    assert.match(String(rec.client.lastOffset), OFFSET, 'from the new welcome');
    assert.equal(rec.resyncs.length, 1);
  });

  const skip = h.redisSkipReason();
  test('two instances sharing Redis: a client that moves from one to the other misses nothing', { skip, timeout: 60_000 }, async () => {
    const redis = await h.startRedis();
    cleanups.push(() => redis.stop());
    const port = await h.freePort();
    const a = serverProcess({ port, redisUrl: redis.url });
    const publisher = serverProcess({ port: 0, redisUrl: redis.url }); // the other instance
    assert.equal((await a.ready()).busMode, 'redis');
    assert.equal((await publisher.ready()).busMode, 'redis');

    const rec = newClient(port);
    await rec.waitOpen();
    await publisher.publish('e1');
    await rec.waitEvent('e1');
    assert.match(String(rec.events[0].offset), OFFSET, JSON.stringify(rec.events[0]));

    await a.close();
    await h.waitUntil(() => rec.disconnects.length === 1, '1001');
    await publisher.publish('e2'); // while the client is away
    await publisher.publish('e3');

    const b = serverProcess({ port, redisUrl: redis.url });
    await b.ready();
    await rec.waitOpen(2, 10_000);
    await h.waitUntil(() => rec.resumed.length + rec.resyncs.length === 1, `resumed (frames ${JSON.stringify(rec.frames.slice(-4))})`);
    assert.deepEqual(rec.resyncs, []);
    assert.deepEqual(rec.resumed, [{ type: 'resumed', since: rec.events[0].offset, replayed: 2 }]);
    await publisher.publish('e4');
    await rec.waitEvent('e4');
    assert.deepEqual(rec.ids(), ['e1', 'e2', 'e3', 'e4']);
    const offsets = rec.events.map((e) => e.offset);
    for (let i = 1; i < offsets.length; i++) assert.ok(compareOffsets(offsets[i], offsets[i - 1]) > 0, String(offsets));

    // An event PUBLISHed by an outside Redis client carries no offset: delivered, offset kept.
    const r = h.redisCli(redis.port, ['PUBLISH', 'parcel_events', '{"type":"parcel_updated","parcel_id":"bare"}']);
    assert.equal(r.status, 0, r.stderr);
    await rec.waitEvent('bare');
    assert.deepEqual(rec.events.at(-1), { type: 'parcel_updated', parcel_id: 'bare' });
    assert.equal(rec.client.lastOffset, offsets.at(-1));
    assert.equal(rec.spy.overlaps, 0);
  });
});
