// Validation of the heartbeat, origin, limit and rate options (and their environment fallbacks):
// a wrong type or value rejects with a TypeError, code ERR_INVALID_OPTION, and starts nothing.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

async function rejectsInvalidOption(promise, what) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof TypeError, `${what}: expected a TypeError, got ${err && err.constructor.name}: ${err && err.message}`);
    assert.equal(err.code, 'ERR_INVALID_OPTION', `${what}: ${err.message}`);
    assert.ok(err.message.length > 0);
    return true;
  }, what);
}

const INVALID = {
  pingIntervalMs: [-1, 'x', '200', 1.5, NaN, Infinity, true, {}],
  pongTimeoutMs: [0, -1, 'x', 2.5, NaN],
  allowedOrigins: ['http://a.example', ['not an origin'], [5], [null], ['http://a.example/path'], ['a.example'], {}, true],
  maxConnections: [1.5, -1, 'x', '10', NaN, Infinity],
  maxConnectionsPerIp: [1.5, -1, 'x'],
  maxSubscriptions: [-1, 2.5, 'x'],
  messagesPerSecond: [-1, 'x', NaN, Infinity, '20'],
  messageBurst: [0, -1, 'x', NaN],
};

describe('option validation', () => {
  for (const [key, values] of Object.entries(INVALID)) {
    test(`${key}: wrong values reject with TypeError ERR_INVALID_OPTION`, async () => {
      for (const value of values) {
        await rejectsInvalidOption(rt.startServer({ ...BASE, [key]: value }), `${key}: ${String(JSON.stringify(value))}`);
      }
    });
  }

  test('boundary values that are allowed start a server', async () => {
    const server = await rt.startServer({
      ...BASE,
      pingIntervalMs: 0,
      pongTimeoutMs: 1,
      allowedOrigins: ['https://Market.example.com', 'http://127.0.0.1:3000/'],
      maxConnections: 0,
      maxConnectionsPerIp: 0,
      maxSubscriptions: 0,
      messagesPerSecond: 0.5,
      messageBurst: 1,
    });
    try {
      const c = await h.connectReady(h.wsUrl(server), { origin: 'http://127.0.0.1:3000' });
      await c.close();
    } finally {
      await server.close();
    }
  });

  test('a refused option leaves nothing listening and nothing running', async () => {
    const port = await h.freePort();
    await rejectsInvalidOption(rt.startServer({ ...BASE, port, messageBurst: 0 }), 'messageBurst 0');
    // The port is free: a valid server takes it.
    const server = await rt.startServer({ ...BASE, port });
    assert.equal(server.port, port);
    await server.close();
  });
});

describe('environment fallbacks are validated too', () => {
  const cases = {
    REALTIME_PING_INTERVAL_MS: ['x', '-1', '1.5'],
    REALTIME_PONG_TIMEOUT_MS: ['0', 'abc'],
    REALTIME_ALLOWED_ORIGINS: ['not an origin', 'http://a.example,nope'],
    REALTIME_MAX_CONNECTIONS: ['1.5', '-2', 'many'],
    REALTIME_MAX_CONNECTIONS_PER_IP: ['x', '0.5'],
    REALTIME_MAX_SUBSCRIPTIONS: ['-1', 'lots'],
    REALTIME_MESSAGES_PER_SECOND: ['-1', 'fast'],
    REALTIME_MESSAGE_BURST: ['0', 'x'],
  };
  for (const [name, values] of Object.entries(cases)) {
    test(`${name}: wrong values reject with TypeError ERR_INVALID_OPTION`, async () => {
      for (const value of values) {
        await h.withEnv({ [name]: value }, () =>
          rejectsInvalidOption(rt.startServer(BASE), `${name}=${JSON.stringify(value)}`));
      }
    });
  }

  test('an explicit valid option wins over a wrong variable', async () => {
    const server = await h.withEnv({ REALTIME_MAX_CONNECTIONS: 'x', REALTIME_MESSAGE_BURST: '0' }, () =>
      rt.startServer({ ...BASE, maxConnections: 5, messageBurst: 3 }));
    await server.close();
  });
});
