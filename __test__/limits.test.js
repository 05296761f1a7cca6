// Limits: maxConnections (503), maxConnectionsPerIp (429) and the inbound message rate (4429).
// Every test also checks that the server keeps serving the others afterwards.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

async function withServer(options, fn) {
  const server = await rt.startServer({ ...BASE, ...options });
  const clients = [];
  try {
    return await fn(server, clients);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
  }
}

/** Opens `n` handshakes at once; resolves with {admitted: Client[], refused: [{status, code}]}. */
async function connectMany(url, n, options = {}) {
  const WebSocket = require('ws');
  const attempts = Array.from({ length: n }, () => new Promise((resolve) => {
    const ws = new WebSocket(url, options);
    const client = new h.Client(ws);
    ws.once('open', () => resolve({ client }));
    ws.once('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        req.destroy();
        let code;
        try {
          code = JSON.parse(Buffer.concat(chunks).toString()).code;
        } catch {}
        resolve({ refused: { status: res.statusCode, code } });
      });
    });
    ws.once('error', (err) => resolve({ error: err }));
  }));
  const results = await h.withTimeout(Promise.all(attempts), 10_000, `${n} handshakes`);
  const errors = results.filter((r) => r.error);
  assert.deepEqual(errors.map((r) => r.error.message), [], 'no handshake failed otherwise');
  return {
    admitted: results.filter((r) => r.client).map((r) => r.client),
    refused: results.filter((r) => r.refused).map((r) => r.refused),
  };
}

describe('maxConnections', () => {
  test('the N+1th handshake gets 503 TOO_MANY_CONNECTIONS; after one leaves, a new one is admitted', () =>
    withServer({ maxConnections: 2 }, async (server, clients) => {
      const a = await h.connectReady(h.wsUrl(server));
      const b = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'other-user' }) }));
      clients.push(a, b);
      await h.expectRefusal(h.wsUrl(server), {}, 503, 'TOO_MANY_CONNECTIONS');
      await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'third' }) }), {}, 503, 'TOO_MANY_CONNECTIONS');
      assert.equal(server.clientCount, 2);
      // The admitted clients are served as before.
      await rt.publishParcelUpdate('mc-1');
      assert.equal(await a.next(), h.frame('mc-1'));
      assert.equal(await b.next(), h.frame('mc-1'));
      // One leaves: room for exactly one more.
      await a.close();
      await h.waitUntil(() => server.clientCount === 1, 'clientCount is 1');
      const c = await h.connectReady(h.wsUrl(server));
      clients.push(c);
      await h.expectRefusal(h.wsUrl(server), {}, 503, 'TOO_MANY_CONNECTIONS');
      await rt.publishParcelUpdate('mc-2');
      assert.equal(await b.next(), h.frame('mc-2'));
      assert.equal(await c.next(), h.frame('mc-2'));
    }));

  test('a dropped connection (no close handshake) frees its place too', () =>
    withServer({ maxConnections: 1 }, async (server, clients) => {
      const a = await h.connectReady(h.wsUrl(server));
      await h.expectRefusal(h.wsUrl(server), {}, 503, 'TOO_MANY_CONNECTIONS');
      await a.terminate();
      await h.waitUntil(() => server.clientCount === 0, 'clientCount is 0');
      const b = await h.connectReady(h.wsUrl(server));
      clients.push(b);
      await rt.publishParcelUpdate('mc-drop');
      assert.equal(await b.next(), h.frame('mc-drop'));
    }));

  test('10 simultaneous handshakes with maxConnections 3: exactly 3 admitted, 7 refused', () =>
    withServer({ maxConnections: 3 }, async (server, clients) => {
      const { admitted, refused } = await connectMany(h.wsUrl(server), 10);
      clients.push(...admitted);
      assert.equal(admitted.length, 3, `admitted ${admitted.length}`);
      assert.deepEqual(refused, Array(7).fill({ status: 503, code: 'TOO_MANY_CONNECTIONS' }));
      await h.waitUntil(() => server.clientCount === 3, 'clientCount is 3');
    }));

  test('the limit holds while validateUser is thinking (simultaneous handshakes)', () =>
    // validateUser is typically a database lookup: the handshakes overlap for its duration.
    withServer({ maxConnections: 2, validateUser: () => h.delay(100).then(() => true) }, async (server, clients) => {
      const { admitted, refused } = await connectMany(h.wsUrl(server), 6);
      clients.push(...admitted);
      await h.delay(100);
      assert.equal(admitted.length, 2, `admitted ${admitted.length} with maxConnections 2 (clientCount ${server.clientCount})`);
      assert.equal(server.clientCount, 2);
      assert.deepEqual(refused, Array(4).fill({ status: 503, code: 'TOO_MANY_CONNECTIONS' }));
    }));

  test('maxConnections 0 means no limit; REALTIME_MAX_CONNECTIONS is the fallback', async () => {
    await withServer({ maxConnections: 0 }, async (server, clients) => {
      const { admitted, refused } = await connectMany(h.wsUrl(server), 20);
      clients.push(...admitted);
      assert.equal(admitted.length, 20);
      assert.deepEqual(refused, []);
    });
    const server = await h.withEnv({ REALTIME_MAX_CONNECTIONS: '1' }, () => rt.startServer(BASE));
    try {
      const a = await h.connectReady(h.wsUrl(server));
      await h.expectRefusal(h.wsUrl(server), {}, 503, 'TOO_MANY_CONNECTIONS');
      await a.close();
    } finally {
      await server.close();
    }
  });
});

describe('maxConnectionsPerIp', () => {
  test('the N+1th from one address gets 429; another address is still admitted; leaving frees a place', () =>
    withServer({ maxConnectionsPerIp: 2 }, async (server, clients) => {
      const a = await h.connectReady(h.wsUrl(server));
      const b = await h.connectReady(h.wsUrl(server));
      clients.push(a, b);
      await h.expectRefusal(h.wsUrl(server), {}, 429, 'TOO_MANY_CONNECTIONS_FROM_IP');
      // Another loopback address has its own count.
      const other = await h.connectReady(h.wsUrl(server), { localAddress: '127.0.0.2' });
      clients.push(other);
      const other2 = await h.connectReady(h.wsUrl(server), { localAddress: '127.0.0.2' });
      clients.push(other2);
      await h.expectRefusal(h.wsUrl(server), { localAddress: '127.0.0.2' }, 429, 'TOO_MANY_CONNECTIONS_FROM_IP');
      assert.equal(server.clientCount, 4);
      await rt.publishParcelUpdate('ip-1');
      for (const c of [a, b, other, other2]) assert.equal(await c.next(), h.frame('ip-1'));
      await a.close();
      await h.waitUntil(() => server.clientCount === 3, 'clientCount is 3');
      const c = await h.connectReady(h.wsUrl(server));
      clients.push(c);
      await h.expectRefusal(h.wsUrl(server), {}, 429, 'TOO_MANY_CONNECTIONS_FROM_IP');
      await rt.publishParcelUpdate('ip-2');
      for (const x of [b, other, other2, c]) assert.equal(await x.next(), h.frame('ip-2'));
    }));

  test('refused handshakes (bad token, bad ?parcels=) do not use up the address\'s places', () =>
    withServer({ maxConnectionsPerIp: 1 }, async (server, clients) => {
      for (let i = 0; i < 5; i++) {
        await h.expectRefusal(h.wsUrl(server, { token: 'garbage' }), {}, 401, 'TOKEN_MALFORMED');
        await h.expectRefusal(`${h.wsUrl(server)}&parcels=${'x'.repeat(300)}`, {}, 400, 'INVALID_PARCELS');
      }
      const a = await h.connectReady(h.wsUrl(server));
      clients.push(a);
      await h.expectRefusal(h.wsUrl(server), {}, 429, 'TOO_MANY_CONNECTIONS_FROM_IP');
    }));

  test('simultaneous handshakes from one address: exactly the limit is admitted', () =>
    withServer({ maxConnectionsPerIp: 2 }, async (server, clients) => {
      const { admitted, refused } = await connectMany(h.wsUrl(server), 8);
      clients.push(...admitted);
      assert.equal(admitted.length, 2);
      assert.deepEqual(refused, Array(6).fill({ status: 429, code: 'TOO_MANY_CONNECTIONS_FROM_IP' }));
    }));

  test('REALTIME_MAX_CONNECTIONS_PER_IP is the fallback', async () => {
    const server = await h.withEnv({ REALTIME_MAX_CONNECTIONS_PER_IP: '1' }, () => rt.startServer(BASE));
    try {
      const a = await h.connectReady(h.wsUrl(server));
      await h.expectRefusal(h.wsUrl(server), {}, 429, 'TOO_MANY_CONNECTIONS_FROM_IP');
      await a.close();
    } finally {
      await server.close();
    }
  });
});

describe('message rate (token bucket)', () => {
  /** Sends `n` app-level pings at once. */
  async function flood(c, n) {
    await Promise.all(Array.from({ length: n }, () => c.send('{"type":"ping"}').catch(() => {})));
  }

  test('more than messageBurst at once closes with 4429; exactly the burst is answered; others keep receiving', () =>
    withServer({ messagesPerSecond: 1, messageBurst: 5 }, async (server, clients) => {
      const calm = await h.connectReady(h.wsUrl(server));
      const noisy = await h.connectReady(h.wsUrl(server));
      clients.push(calm, noisy);
      await flood(noisy, 12);
      await h.expectClose(noisy, 4429, 'too many messages');
      assert.deepEqual(noisy.messages.slice(1), Array(5).fill('{"type":"pong"}'));
      await h.waitUntil(() => server.clientCount === 1, 'the noisy client is gone');
      await rt.publishParcelUpdate('rate-1');
      assert.equal(await calm.next(), h.frame('rate-1'));
      // The calm client may still talk.
      await calm.send('{"type":"ping"}');
      assert.equal(await calm.next(), '{"type":"pong"}');
      // And a new client is admitted and served.
      const fresh = await h.connectReady(h.wsUrl(server));
      clients.push(fresh);
      await rt.publishParcelUpdate('rate-2');
      assert.equal(await calm.next(), h.frame('rate-2'));
      assert.equal(await fresh.next(), h.frame('rate-2'));
    }));

  test('defaults (20/s, burst 40): a flood of 100 closes with 4429 after about 40 answers', () =>
    withServer({}, async (server, clients) => {
      const calm = await h.connectReady(h.wsUrl(server));
      const noisy = await h.connectReady(h.wsUrl(server));
      clients.push(calm, noisy);
      await flood(noisy, 100);
      await h.expectClose(noisy, 4429, 'too many messages');
      const pongs = noisy.messages.slice(1);
      assert.ok(pongs.every((m) => m === '{"type":"pong"}'));
      // 40 from the bucket, plus what refilled while the flood arrived (20/s): up to a second of
      // it on a loaded machine.
      assert.ok(pongs.length >= 40 && pongs.length <= 60, `${pongs.length} answers`);
      await rt.publishParcelUpdate('rate-default');
      assert.equal(await calm.next(), h.frame('rate-default'));
    }));

  test('every client message counts: protocol pings and invalid messages too', () =>
    withServer({ messagesPerSecond: 1, messageBurst: 3 }, async (server, clients) => {
      const pinger = await h.connectReady(h.wsUrl(server));
      clients.push(pinger);
      for (let i = 0; i < 6; i++) pinger.ws.ping();
      await h.expectClose(pinger, 4429, 'too many messages');

      const junk = await h.connectReady(h.wsUrl(server));
      clients.push(junk);
      for (let i = 0; i < 6; i++) junk.send('not json').catch(() => {});
      await h.expectClose(junk, 4429, 'too many messages');
      assert.equal(junk.messages.length, 1 + 3, 'three error frames, then the close');
      assert.ok(junk.messages.slice(1).every((m) => JSON.parse(m).code === 'INVALID_JSON'));
    }));

  test('a client that stays under the rate is never cut', () =>
    withServer({ messagesPerSecond: 10, messageBurst: 2 }, async (server, clients) => {
      const c = await h.connectReady(h.wsUrl(server));
      clients.push(c);
      for (let i = 0; i < 12; i++) {
        await c.send('{"type":"ping"}');
        assert.equal(await c.next(), '{"type":"pong"}');
        await h.delay(200); // 5 per second
      }
      assert.equal(c.closeInfo, null);
    }));

  test('the bucket refills at messagesPerSecond', () =>
    withServer({ messagesPerSecond: 4, messageBurst: 2 }, async (server, clients) => {
      const c = await h.connectReady(h.wsUrl(server));
      clients.push(c);
      await flood(c, 2); // empties the bucket
      assert.deepEqual(await Promise.all([c.next(), c.next()]), ['{"type":"pong"}', '{"type":"pong"}']);
      await h.delay(600); // refills two tokens (capped at the burst of 2)
      await flood(c, 2);
      assert.deepEqual(await Promise.all([c.next(), c.next()]), ['{"type":"pong"}', '{"type":"pong"}']);
      await flood(c, 1); // nothing left (at most 0.1 token refilled meanwhile)
      await h.expectClose(c, 4429, 'too many messages');
    }));

  test('REALTIME_MESSAGES_PER_SECOND / REALTIME_MESSAGE_BURST are the fallbacks', async () => {
    const server = await h.withEnv({ REALTIME_MESSAGES_PER_SECOND: '1', REALTIME_MESSAGE_BURST: '2' }, () =>
      rt.startServer(BASE));
    try {
      const c = await h.connectReady(h.wsUrl(server));
      await flood(c, 5);
      await h.expectClose(c, 4429, 'too many messages');
      assert.deepEqual(c.messages.slice(1), ['{"type":"pong"}', '{"type":"pong"}']);
    } finally {
      await server.close();
    }
  });
});
