// Broadcasting (memory bus): fan-out to many clients, exactly once and in order; id encoding;
// client counting; clean close; invalid ids; startServer's errors.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null };

describe('fan-out', () => {
  let server;
  let clients = [];

  before(async () => {
    server = await rt.startServer({ ...BASE, port: 0 });
    assert.equal(server.busMode, 'memory');
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
  });

  test('20 clients each receive all 200 events exactly once, in publish order', async () => {
    clients = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      h.connectReady(h.wsUrl(server, { token: h.sign({ sub: `user-${i}` }) }))));
    const ids = Array.from({ length: 200 }, (_, i) => `parcel-${i}`);
    // Published without awaiting each: order must still be call order.
    await Promise.all(ids.map((id) => rt.publishParcelUpdate(id)));
    await rt.publishParcelUpdate('sentinel');
    const expected = [h.WELCOME, ...ids.map(h.frame), h.frame('sentinel')];
    await Promise.all(clients.map(async (c, i) => {
      const got = await c.waitFor(expected.length);
      assert.deepEqual(got, expected, `client ${i}`);
    }));
    // Nothing more trails behind: the next event is the next frame for everyone.
    await rt.publishParcelUpdate('after-sentinel');
    for (const c of clients) {
      c.cursor = expected.length;
      assert.equal(await c.next(), h.frame('after-sentinel'));
    }
  });

  test('ids with quotes, backslashes, newlines, emoji and non-ASCII arrive intact', async () => {
    const [c] = clients;
    const start = c.messages.length;
    c.cursor = start;
    const ids = [
      'with "double" quotes',
      "it's single",
      'back\\slash\\\\',
      'new\nline\r\n',
      'tab\there',
      'control\u0001\u001f',
      'emoji 📦🚀',
      'non-ASCII: Ωmega ñ 日本語 Ä',
      '</script><b>html</b>',
      '{"type":"connected"}',
      'x'.repeat(rt.MAX_PARCEL_ID_BYTES),
      '日'.repeat(Math.floor(rt.MAX_PARCEL_ID_BYTES / 3)),
    ];
    await Promise.all(ids.map((id) => rt.publishParcelUpdate(id)));
    for (const id of ids) {
      const raw = await c.next();
      const parsed = JSON.parse(raw);
      assert.deepEqual(parsed, { type: 'parcel_updated', parcel_id: id });
      assert.equal(raw, h.frame(id));
    }
    // Every other client saw the same frames.
    for (const other of clients.slice(1)) {
      const got = await other.waitFor(start + ids.length);
      assert.deepEqual(got.slice(start), ids.map(h.frame));
    }
  });
});

describe('client count and close', () => {
  test('clientCount goes up on connect and back down after clients close', async () => {
    const server = await rt.startServer({ ...BASE, port: 0 });
    const clients = [];
    try {
      assert.equal(server.clientCount, 0);
      for (let i = 1; i <= 3; i++) {
        clients.push(await h.connectReady(h.wsUrl(server)));
        await h.waitUntil(() => server.clientCount === i, `clientCount is ${i}`);
      }
      await clients[0].close();
      await h.waitUntil(() => server.clientCount === 2, 'clientCount is 2 after a clean close');
      await clients[1].terminate(); // no close handshake: a dropped TCP connection
      await h.waitUntil(() => server.clientCount === 1, 'clientCount is 1 after a dropped connection');
      await clients[2].close();
      await h.waitUntil(() => server.clientCount === 0, 'clientCount is 0');
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await server.close();
    }
  });

  test('server.close() sends 1001 to every client and frees the port', async () => {
    const server = await rt.startServer({ ...BASE, port: 0 });
    const port = server.port;
    assert.ok(port > 0);
    const clients = await Promise.all([1, 2, 3].map(() => h.connectReady(h.wsUrl(server))));
    let second;
    try {
      await server.close();
      const closes = await Promise.all(clients.map((c) => h.withTimeout(c.closed, 5000, 'close frame')));
      for (const info of closes) assert.equal(info.code, 1001);
      assert.equal(server.clientCount, 0);
      // Calling close again is harmless and resolves.
      await server.close();
      // The port is free right away: a second server listens on it.
      second = await rt.startServer({ ...BASE, port });
      assert.equal(second.port, port);
      const c = await h.connectReady(h.wsUrl(second));
      await c.close();
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      await second?.close();
    }
  });

  test('a closed server refuses new connections', async () => {
    const server = await rt.startServer({ ...BASE, port: 0 });
    const port = server.port;
    await server.close();
    await assert.rejects(h.connect(`ws://127.0.0.1:${port}/ws?token=${h.sign()}`), /ECONNREFUSED/);
  });
});

describe('invalid parcel ids', () => {
  let server;
  let client;

  before(async () => {
    server = await rt.startServer({ ...BASE, port: 0 });
    client = await h.connectReady(h.wsUrl(server));
  });

  after(async () => {
    await client?.close();
    await server?.close();
  });

  const invalid = [
    ['a number', 42],
    ['null', null],
    ['undefined', undefined],
    ['an object', { id: 'p1' }],
    ['an empty string', ''],
    ['a 300-character string', 'p'.repeat(300)],
    ['257 bytes', 'p'.repeat(257)],
    ['a 100-character string of 3-byte characters (300 bytes)', '日'.repeat(100)],
  ];

  for (const [name, id] of invalid) {
    test(`publishing ${name} rejects with TypeError ERR_INVALID_PARCEL_ID`, async () => {
      await assert.rejects(rt.publishParcelUpdate(id), (err) => {
        assert.ok(err instanceof TypeError, `TypeError, got ${err && err.constructor.name}: ${err}`);
        assert.equal(err.code, 'ERR_INVALID_PARCEL_ID');
        return true;
      });
    });
  }

  test('nothing was broadcast: the next frame is the next valid event', async () => {
    await rt.publishParcelUpdate('valid-after-invalid');
    assert.equal(await client.next(), h.frame('valid-after-invalid'));
    assert.equal(client.messages.length, 2);
  });
});

describe('startServer errors', () => {
  test('port in use: ERR_PORT_IN_USE', async () => {
    const first = await rt.startServer({ ...BASE, port: 0 });
    try {
      await assert.rejects(rt.startServer({ ...BASE, port: first.port }), (err) => {
        assert.equal(err.code, 'ERR_PORT_IN_USE');
        assert.ok(err instanceof Error);
        return true;
      });
      // And a port held by a plain Node server.
      const blocker = net.createServer();
      await new Promise((resolve) => blocker.listen(0, '127.0.0.1', resolve));
      try {
        await assert.rejects(rt.startServer({ ...BASE, port: blocker.address().port }), { code: 'ERR_PORT_IN_USE' });
      } finally {
        await new Promise((resolve) => blocker.close(resolve));
      }
    } finally {
      await first.close();
    }
  });

  test('no secret anywhere: ERR_MISSING_JWT_SECRET', async () => {
    const saved = process.env.JWT_SECRET;
    delete process.env.JWT_SECRET;
    try {
      await assert.rejects(rt.startServer({ port: 0, host: '127.0.0.1', redisUrl: null }), (err) => {
        assert.equal(err.code, 'ERR_MISSING_JWT_SECRET');
        assert.match(err.message, /JWT_SECRET/);
        return true;
      });
      await assert.rejects(rt.startServer({ port: 0, host: '127.0.0.1', redisUrl: null, jwtSecret: '' }),
        { code: 'ERR_MISSING_JWT_SECRET' });
      // JWT_SECRET from the environment is used when the option is absent.
      process.env.JWT_SECRET = 'from-the-environment';
      const s = await rt.startServer({ port: 0, host: '127.0.0.1', redisUrl: null });
      try {
        await h.connectReady(h.wsUrl(s, { token: h.sign({ sub: 'u' }, {}, 'from-the-environment') })).then((c) => c.close());
        await h.expectRefusal(h.wsUrl(s, { token: h.sign() }), {}, 401, 'TOKEN_INVALID_SIGNATURE');
      } finally {
        await s.close();
      }
    } finally {
      if (saved === undefined) delete process.env.JWT_SECRET;
      else process.env.JWT_SECRET = saved;
    }
  });

  const badOptions = [
    ['port "abc"', { port: 'abc' }],
    ['port 70000', { port: 70000 }],
    ['port -1', { port: -1 }],
    ['port 1.5', { port: 1.5 }],
    ['validateUser 5', { port: 0, validateUser: 5 }],
    ['an unknown option', { port: 0, bogus: true }],
    ['jwtSecret 123', { port: 0, jwtSecret: 123 }],
    ['path without a slash', { port: 0, path: 'ws' }],
    ['redisUrl 5', { port: 0, redisUrl: 5 }],
    ['maxMessageBytes 0', { port: 0, maxMessageBytes: 0 }],
  ];
  for (const [name, options] of badOptions) {
    test(`${name}: TypeError ERR_INVALID_OPTION`, async () => {
      await assert.rejects(rt.startServer({ ...BASE, ...options }), (err) => {
        assert.ok(err instanceof TypeError, `TypeError, got ${err && err.constructor.name}: ${err}`);
        assert.equal(err.code, 'ERR_INVALID_OPTION');
        return true;
      });
    });
  }

  test('an invalid redisUrl: TypeError ERR_INVALID_OPTION, and the process can still start a server', async () => {
    // A fresh process: this one already runs its (memory) bus.
    const p = h.spawnNodeScript(`
      const rt = require(${JSON.stringify(h.PKG)});
      (async () => {
        try {
          await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: 's', redisUrl: 'http://127.0.0.1:1' });
          console.log('started');
        } catch (err) {
          console.log('rejected ' + err.name + ' ' + err.code);
        }
        const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: 's', redisUrl: null });
        console.log('then ' + server.busMode);
        await server.close();
      })().catch((err) => { console.error(err); process.exit(2); });
    `);
    try {
      assert.deepEqual(await p.waitForExit(10_000), { code: 0, signal: null }, p.err());
      assert.equal(p.out(), 'rejected TypeError ERR_INVALID_OPTION\nthen memory\n');
    } finally {
      await p.stop();
    }
  });

  test('options that are not an object: TypeError ERR_INVALID_OPTION', async () => {
    await assert.rejects(rt.startServer('port=0'), { name: 'TypeError', code: 'ERR_INVALID_OPTION' });
    await assert.rejects(rt.startServer([1]), { name: 'TypeError', code: 'ERR_INVALID_OPTION' });
  });
});
