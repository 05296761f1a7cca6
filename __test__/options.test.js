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

describe('one rule for every option, and typos name what was meant', () => {
  test('a near miss is refused with "did you mean"', async () => {
    const cases = [
      [{ secret: 'x' }, 'jwtSecret'],
      [{ redisURL: 'redis://127.0.0.1:1' }, 'redisUrl'],
      [{ pingIntervalMS: 1000 }, 'pingIntervalMs'],
      [{ maxConection: 5 }, 'maxConnections'],
      [{ allowedOrigin: ['https://a.example'] }, 'allowedOrigins'],
    ];
    for (const [options, meant] of cases) {
      await assert.rejects(rt.startServer({ ...BASE, ...options }), (err) => {
        assert.equal(err.code, 'ERR_INVALID_OPTION');
        assert.match(err.message, new RegExp(`unknown option "${Object.keys(options)[0]}"; did you mean "${meant}"\\?`));
        return true;
      });
    }
    await assert.rejects(rt.startServer({ ...BASE, colour: 'blue' }), (err) => {
      assert.match(err.message, /unknown option "colour"$/, 'no guess for what resembles nothing');
      return true;
    });
  });

  test('a number given as a string is refused for every numeric option, port included, with a hint', async () => {
    for (const key of ['port', 'pingIntervalMs', 'maxConnections', 'messagesPerSecond', 'historySize', 'drainMs']) {
      await assert.rejects(rt.startServer({ ...BASE, [key]: '1000' }), (err) => {
        assert.ok(err instanceof TypeError, key);
        assert.equal(err.code, 'ERR_INVALID_OPTION', key);
        assert.match(err.message, /pass Number\("1000"\)/, key);
        return true;
      });
    }
  });

  test('environment variables are strings, parsed by the same rule', async () => {
    const port = await h.freePort();
    const child = h.spawnNodeScript(`
      const rt = require(${JSON.stringify(h.PKG)});
      rt.startServer({ host: '127.0.0.1', redisUrl: null, jwtSecret: 's' })
        .then(async (s) => { console.log('port ' + s.port); await s.close(); })
        .catch((e) => { console.log('error ' + e.code); });
    `, { env: { ...h.cleanEnv(), REALTIME_PORT: String(port) } });
    await child.exited;
    assert.match(child.out(), new RegExp(`port ${port}`));
  });

  test('the missing-secret error names .env as one way to set it', async () => {
    const saved = process.env.JWT_SECRET;
    delete process.env.JWT_SECRET;
    try {
      await assert.rejects(rt.startServer({ host: '127.0.0.1', port: 0, redisUrl: null }), (err) => {
        assert.equal(err.code, 'ERR_MISSING_JWT_SECRET');
        assert.match(err.message, /\.env/);
        return true;
      });
    } finally {
      if (saved !== undefined) process.env.JWT_SECRET = saved;
    }
  });
});
