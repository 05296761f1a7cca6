// Heartbeats: the server pings a client after `pingIntervalMs` of silence and drops it (4408) when
// nothing at all arrives within `pongTimeoutMs`; any inbound frame counts as alive; the
// application-level {"type":"ping"} is answered with exactly {"type":"pong"}.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null };
const PING_MS = 200;
// Long enough that the answering clients' automatic pongs (from this busy test process) are
// always in time on a loaded machine; the silent ones still show the timeout.
const PONG_MS = 1000;

/** Records the protocol-level pings a ws client receives (times in ms). */
function recordPings(client) {
  const pings = [];
  client.ws.on('ping', () => pings.push(Date.now()));
  return pings;
}

/** A client that does not answer the server's pings (npm ws >= 8.16: autoPong: false). */
async function silentClient(server) {
  // Taken before connecting: the server's silence timer cannot start earlier, so bounds from
  // here are lower bounds a loaded machine only makes safer.
  const openedAt = Date.now();
  const client = await h.connect(h.wsUrl(server), { autoPong: false });
  const pings = recordPings(client);
  assert.equal(await client.next(), h.WELCOME);
  return { client, pings, openedAt };
}

describe('heartbeats (pingIntervalMs 200, pongTimeoutMs 1000)', () => {
  let server;
  const clients = [];
  const servers = [];

  before(async () => {
    server = await rt.startServer({ ...BASE, port: 0, pingIntervalMs: PING_MS, pongTimeoutMs: PONG_MS });
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
    await Promise.all(servers.map((s) => s.close()));
  });

  test('a client that answers pings stays; a silent one is pinged once, then closed with 4408', async () => {
    const alive = await h.connectReady(h.wsUrl(server));
    clients.push(alive);
    const alivePings = recordPings(alive);
    const { client: silent, pings, openedAt } = await silentClient(server);
    clients.push(silent);
    await h.waitUntil(() => server.clientCount === 2, 'clientCount is 2');

    const info = await h.expectClose(silent, 4408, 'no answer to ping', 10_000);
    const closedAt = Date.now();
    assert.equal(info.code, 4408);
    assert.equal(pings.length, 1, 'exactly one ping before the close');
    // The ping came after the silence, and the close only after the pong timeout.
    assert.ok(pings[0] - openedAt >= PING_MS - 20, `pinged after ${pings[0] - openedAt} ms of silence`);
    assert.ok(closedAt - openedAt >= PING_MS + PONG_MS - 20, `closed ${closedAt - openedAt} ms after connecting`);
    assert.deepEqual(silent.messages, [h.WELCOME], 'nothing but the welcome reached the silent client');
    await h.waitUntil(() => server.clientCount === 1, 'clientCount is back to 1 after the 4408');

    // The answering client went through several ping rounds and is still served.
    await h.waitUntil(() => alivePings.length >= 4, 'the answering client received 4 pings', 20_000);
    assert.equal(alive.closeInfo, null, 'the answering client is still open');
    assert.equal(server.clientCount, 1);
    await rt.publishParcelUpdate('hb-after-drop');
    assert.equal(await alive.next(), h.frame('hb-after-drop'));
  });

  test('any inbound frame counts as alive: app ping, client ping, even an invalid message', async () => {
    // A pong timeout of 2 s, so that an answer 100 ms after the ping is in time on any machine.
    const patient = await rt.startServer({ ...BASE, port: 0, pingIntervalMs: PING_MS, pongTimeoutMs: 2000 });
    servers.push(patient);
    const { client, pings } = await silentClient(patient);
    clients.push(client);
    const pongs = [];
    client.ws.on('pong', () => pongs.push(Date.now()));
    // Answer each server ping 100 ms later (well within the 2 s pong timeout) with something
    // other than a pong frame.
    const answers = [
      () => client.send('{"type":"ping"}'),
      () => new Promise((resolve, reject) => client.ws.ping(undefined, undefined, (e) => (e ? reject(e) : resolve()))),
      () => client.send('not json'),
      () => client.send('{"type":"ping"}'),
    ];
    let answered = 0;
    client.ws.on('ping', () => {
      const answer = answers[answered++];
      if (answer) setTimeout(() => answer().catch(() => {}), 100);
    });
    // A server pings again only once the last ping was answered (else it closes with 4408): a
    // fifth ping shows that all four answers counted.
    await h.waitUntil(() => pings.length >= 5, 'five server pings, the first four answered', 10_000);
    assert.equal(client.closeInfo, null, `closed: ${JSON.stringify(client.closeInfo)}`);
    // welcome, pong (app ping), error (for "not json"), pong (app ping): nothing else.
    assert.equal(client.messages.length, 4, JSON.stringify(client.messages));
    assert.equal(client.messages[1], '{"type":"pong"}');
    const error = JSON.parse(client.messages[2]);
    assert.deepEqual(Object.keys(error), ['type', 'code', 'message']);
    assert.equal(error.type, 'error');
    assert.equal(error.code, 'INVALID_JSON');
    assert.equal(client.messages[3], '{"type":"pong"}');
    assert.equal(pongs.length, 1, 'the client\'s protocol ping was answered with a pong');
    // Then it falls silent: closed with 4408.
    await h.expectClose(client, 4408, 'no answer to ping', 10_000);
  });

  test('outbound events do not count: a silent client receiving events is still closed (4408)', async () => {
    const { client } = await silentClient(server);
    clients.push(client);
    let n = 0;
    const timer = setInterval(() => {
      rt.publishParcelUpdate(`hb-out-${n++}`).catch(() => {});
    }, 40);
    try {
      await h.expectClose(client, 4408, 'no answer to ping', 10_000);
    } finally {
      clearInterval(timer);
    }
    const events = client.messages.slice(1);
    assert.ok(events.length >= 1, `it received events before the close (${events.length})`);
    assert.deepEqual(events, events.map((_, i) => h.frame(`hb-out-${i}`)), 'in order, none missing');
  });

  test('a client that keeps talking is never pinged (pings only follow silence)', async () => {
    // Pings after 1.5 s of silence; the client talks every 50 ms for 3.5 s (more than two
    // intervals), so only a 1.4 s stall of this process could let a ping through.
    const quiet = await rt.startServer({ ...BASE, port: 0, pingIntervalMs: 1500, pongTimeoutMs: PONG_MS });
    servers.push(quiet);
    const { client, pings } = await silentClient(quiet);
    clients.push(client);
    let sent = 0;
    const timer = setInterval(() => {
      sent++;
      client.send('{"type":"ping"}').catch(() => {});
    }, 50);
    try {
      await h.delay(3500);
    } finally {
      clearInterval(timer);
    }
    try {
      await client.waitFor(1 + sent);
      assert.equal(pings.length, 0, 'no protocol ping while the client sent every 50 ms');
      assert.deepEqual(client.messages.slice(1), Array(sent).fill('{"type":"pong"}'));
      assert.equal(client.closeInfo, null);
      await client.close();
    } finally {
      await quiet.close();
    }
  });

  test('{"type":"ping"} is answered with exactly {"type":"pong"}, one for each, in order with events', async () => {
    const c = await h.connectReady(h.wsUrl(server));
    clients.push(c);
    await c.send('{"type":"ping"}');
    assert.equal(await c.next(), '{"type":"pong"}');
    // Spacing and extra fields do not matter; the answer is the same exact frame.
    await c.send(' { "type" : "ping", "id": 7 } ');
    assert.equal(await c.next(), '{"type":"pong"}');
    await rt.publishParcelUpdate('hb-between');
    assert.equal(await c.next(), h.frame('hb-between'));
    for (let i = 0; i < 5; i++) await c.send('{"type":"ping"}');
    for (let i = 0; i < 5; i++) assert.equal(await c.next(), '{"type":"pong"}');
    await rt.publishParcelUpdate('hb-sentinel');
    assert.equal(await c.next(), h.frame('hb-sentinel'));
    await c.close();
  });
});

describe('heartbeat settings', () => {
  test('pingIntervalMs 0 turns heartbeats off: a silent client is never pinged nor dropped', async () => {
    const server = await rt.startServer({ ...BASE, port: 0, pingIntervalMs: 0, pongTimeoutMs: 50 });
    let client;
    try {
      ({ client } = await silentClient(server));
      const pings = recordPings(client);
      await h.delay(1000);
      assert.equal(pings.length, 0);
      assert.equal(client.closeInfo, null);
      assert.equal(server.clientCount, 1);
      await rt.publishParcelUpdate('hb-off');
      assert.equal(await client.next(), h.frame('hb-off'));
    } finally {
      await client?.close();
      await server.close();
    }
  });

  test('REALTIME_PING_INTERVAL_MS / REALTIME_PONG_TIMEOUT_MS are the fallbacks', async () => {
    const server = await h.withEnv({ REALTIME_PING_INTERVAL_MS: '150', REALTIME_PONG_TIMEOUT_MS: '1000' }, () =>
      rt.startServer({ ...BASE, port: 0 }));
    const clients = [];
    try {
      const alive = await h.connectReady(h.wsUrl(server));
      clients.push(alive);
      const { client: silent, pings } = await silentClient(server);
      clients.push(silent);
      await h.expectClose(silent, 4408, 'no answer to ping', 10_000);
      assert.equal(pings.length, 1);
      await h.waitUntil(() => server.clientCount === 1, 'clientCount is 1');
      assert.equal(alive.closeInfo, null);
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await server.close();
    }
  });

  test('an explicit option wins over the environment', async () => {
    const server = await h.withEnv({ REALTIME_PING_INTERVAL_MS: '100', REALTIME_PONG_TIMEOUT_MS: '100' }, () =>
      rt.startServer({ ...BASE, port: 0, pingIntervalMs: 0 }));
    let client;
    try {
      ({ client } = await silentClient(server));
      const pings = recordPings(client);
      await h.delay(600);
      assert.equal(pings.length, 0);
      assert.equal(client.closeInfo, null);
    } finally {
      await client?.close();
      await server.close();
    }
  });

  test('by default (25 s) an idle client is not pinged within the first second', async () => {
    const server = await rt.startServer({ ...BASE, port: 0 });
    let client;
    try {
      let pings;
      ({ client, pings } = await silentClient(server));
      await h.delay(1000);
      assert.equal(pings.length, 0);
      assert.equal(client.closeInfo, null);
    } finally {
      await client?.close();
      await server.close();
    }
  });
});
