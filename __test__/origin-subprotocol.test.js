// Handshake auth for browsers (the token in a `bearer.<JWT>` subprotocol) and the Origin
// allow-list, from Node clients. browser.test.js proves the same from a real Chromium.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

describe('subprotocol auth', () => {
  let server;
  let url; // no ?token=

  before(async () => {
    server = await rt.startServer(BASE);
    url = h.wsUrl(server, { token: null });
  });

  after(() => server?.close());

  test('offering realtime-events and bearer.<JWT>: admitted, the server answers "realtime-events"', async () => {
    const token = h.sign({ sub: 'sp-user' });
    for (const protocols of [['realtime-events', `bearer.${token}`], [`bearer.${token}`, 'realtime-events']]) {
      const c = await h.connectProtocols(url, protocols);
      try {
        assert.equal(c.ws.protocol, 'realtime-events', JSON.stringify(protocols));
        assert.equal(await c.next(), h.WELCOME);
        await rt.publishParcelUpdate('sp-event');
        assert.equal(await c.next(), h.frame('sp-event'));
        await c.send('{"type":"ping"}');
        assert.equal(await c.next(), '{"type":"pong"}');
      } finally {
        await c.close();
      }
    }
  });

  test('the Sec-WebSocket-Protocol response header is exactly "realtime-events"', async () => {
    const token = h.sign({ sub: 'sp-header' });
    const WebSocket = require('ws');
    const ws = new WebSocket(url, ['realtime-events', `bearer.${token}`]);
    const headers = await h.withTimeout(new Promise((resolve, reject) => {
      ws.once('upgrade', (res) => resolve(res.headers));
      ws.once('error', reject);
    }), 5000, 'the upgrade response');
    assert.equal(headers['sec-websocket-protocol'], 'realtime-events');
    await new h.Client(ws).close();
  });

  test('offering only bearer.<JWT>: refused with 400 SUBPROTOCOL_REQUIRED (the token is never echoed)', async () => {
    const token = h.sign({ sub: 'sp-only-bearer' });
    const r = await h.refusalProtocols(url, [`bearer.${token}`]);
    h.assertRefusal(r, 400, 'SUBPROTOCOL_REQUIRED');
    assert.ok(!r.raw.includes(token) && !JSON.stringify(r.headers).includes(token));
  });

  test('a bad token in the subprotocol is refused like any bad token (401)', async () => {
    const cases = [
      [['realtime-events', `bearer.${h.sign({ sub: 'x' }, {}, 'wrong-secret')}`], 'TOKEN_INVALID_SIGNATURE'],
      [['realtime-events', `bearer.${h.sign({ sub: 'x', exp: h.nowSeconds() - 60 })}`], 'TOKEN_EXPIRED'],
      [['realtime-events', 'bearer.garbage'], 'TOKEN_MALFORMED'],
      [['realtime-events'], 'TOKEN_MISSING'],
    ];
    for (const [protocols, code] of cases) {
      h.assertRefusal(await h.refusalProtocols(url, protocols), 401, code);
    }
    // Still serving.
    const c = await h.connectProtocols(url, ['realtime-events', `bearer.${h.sign({ sub: 'after' })}`]);
    assert.equal(await c.next(), h.WELCOME);
    await c.close();
  });

  test('?token= takes precedence over the subprotocol token', async () => {
    const good = h.sign({ sub: 'prec' });
    const bad = h.sign({ sub: 'prec' }, {}, 'wrong-secret');
    // Good query token, garbage subprotocol token: admitted (and the protocol still answered).
    const c = await h.connectProtocols(h.wsUrl(server, { token: good }), ['realtime-events', 'bearer.garbage']);
    assert.equal(c.ws.protocol, 'realtime-events');
    assert.equal(await c.next(), h.WELCOME);
    await c.close();
    // Bad query token, good subprotocol token: the query token is the one judged.
    h.assertRefusal(
      await h.refusalProtocols(h.wsUrl(server, { token: bad }), ['realtime-events', `bearer.${good}`]),
      401, 'TOKEN_INVALID_SIGNATURE',
    );
  });

  test('Authorization: Bearer takes precedence over the subprotocol token', async () => {
    const good = h.sign({ sub: 'prec-header' });
    const bad = h.sign({ sub: 'prec-header', exp: h.nowSeconds() - 60 });
    const c = await h.connectProtocols(url, ['realtime-events', 'bearer.garbage'], {
      headers: { Authorization: `Bearer ${good}` },
    });
    assert.equal(await c.next(), h.WELCOME);
    await c.close();
    h.assertRefusal(
      await h.refusalProtocols(url, ['realtime-events', `bearer.${good}`], { headers: { Authorization: `Bearer ${bad}` } }),
      401, 'TOKEN_EXPIRED',
    );
  });

  test('the subprotocol token identifies the user for refresh', async () => {
    const c = await h.connectProtocols(url, ['realtime-events', `bearer.${h.sign({ sub: 'sp-refresh' })}`]);
    assert.equal(await c.next(), h.WELCOME);
    const exp = h.nowSeconds() + 600;
    await c.send(JSON.stringify({ type: 'refresh', token: h.sign({ sub: 'sp-refresh', exp }) }));
    assert.equal(await c.next(), `{"type":"refreshed","exp":${exp}}`);
    await c.send(JSON.stringify({ type: 'refresh', token: h.sign({ sub: 'not-sp-refresh' }) }));
    await h.expectClose(c, 4403, 'refresh token is for another user');
  });
});

describe('Origin allow-list', () => {
  let server;

  before(async () => {
    server = await rt.startServer({ ...BASE, allowedOrigins: ['http://allowed.example', 'https://shop.example:8443/'] });
  });

  after(() => server?.close());

  test('an Origin not in the list gets 403 ORIGIN_NOT_ALLOWED, even with a valid token', async () => {
    for (const origin of [
      'http://evil.example',
      'https://allowed.example', // other scheme
      'http://allowed.example:8080', // other port
      'http://allowed.example.evil.example',
      'http://sub.allowed.example',
      'https://shop.example', // listed with a port
      'null', // sandboxed iframes, file://
    ]) {
      await h.expectRefusal(h.wsUrl(server), { origin }, 403, 'ORIGIN_NOT_ALLOWED').catch((err) => {
        err.message = `Origin ${origin}: ${err.message}`;
        throw err;
      });
    }
    assert.equal(server.clientCount, 0);
  });

  test('a listed Origin is admitted: case-insensitive, trailing slash ignored', async () => {
    for (const origin of [
      'http://allowed.example',
      'HTTP://Allowed.EXAMPLE',
      'http://allowed.example/',
      'https://shop.example:8443', // listed with a trailing slash
    ]) {
      const c = await h.connect(h.wsUrl(server), { origin }).catch((err) => {
        err.message = `Origin ${origin}: ${err.message}`;
        throw err;
      });
      assert.equal(await c.next(), h.WELCOME);
      await c.close();
    }
  });

  test('a listed Origin still needs a valid token', async () => {
    await h.expectRefusal(h.wsUrl(server, { token: null }), { origin: 'http://allowed.example' }, 401, 'TOKEN_MISSING');
    await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'x' }, {}, 'nope') }), { origin: 'http://allowed.example' },
      401, 'TOKEN_INVALID_SIGNATURE');
  });

  test('without an Origin header the token alone decides', async () => {
    const c = await h.connectReady(h.wsUrl(server));
    await rt.publishParcelUpdate('origin-less');
    assert.equal(await c.next(), h.frame('origin-less'));
    await h.expectRefusal(h.wsUrl(server, { token: null }), {}, 401, 'TOKEN_MISSING');
    // After all those refusals, the admitted client is still served.
    await h.expectRefusal(h.wsUrl(server), { origin: 'http://evil.example' }, 403, 'ORIGIN_NOT_ALLOWED');
    await rt.publishParcelUpdate('origin-still');
    assert.equal(await c.next(), h.frame('origin-still'));
    await c.close();
  });

  test('without allowedOrigins every Origin is admitted', async () => {
    const open = await rt.startServer(BASE);
    try {
      for (const origin of ['http://evil.example', 'null', 'https://anything.example:1234']) {
        const c = await h.connect(h.wsUrl(open), { origin });
        assert.equal(await c.next(), h.WELCOME);
        await c.close();
      }
    } finally {
      await open.close();
    }
  });

  test('REALTIME_ALLOWED_ORIGINS (comma-separated) is the fallback', async () => {
    const fromEnv = await h.withEnv({ REALTIME_ALLOWED_ORIGINS: 'http://a.example, https://b.example' }, () => rt.startServer(BASE));
    try {
      for (const origin of ['http://a.example', 'https://b.example']) {
        const c = await h.connect(h.wsUrl(fromEnv), { origin });
        assert.equal(await c.next(), h.WELCOME);
        await c.close();
      }
      await h.expectRefusal(h.wsUrl(fromEnv), { origin: 'http://c.example' }, 403, 'ORIGIN_NOT_ALLOWED');
      await h.expectRefusal(h.wsUrl(fromEnv), { origin: 'https://a.example' }, 403, 'ORIGIN_NOT_ALLOWED');
    } finally {
      await fromEnv.close();
    }
    // The option wins over the variable.
    const fromOption = await h.withEnv({ REALTIME_ALLOWED_ORIGINS: 'http://a.example' }, () =>
      rt.startServer({ ...BASE, allowedOrigins: ['http://z.example'] }));
    try {
      const c = await h.connect(h.wsUrl(fromOption), { origin: 'http://z.example' });
      assert.equal(await c.next(), h.WELCOME);
      await c.close();
      await h.expectRefusal(h.wsUrl(fromOption), { origin: 'http://a.example' }, 403, 'ORIGIN_NOT_ALLOWED');
    } finally {
      await fromOption.close();
    }
  });

  test('the Origin check works together with subprotocol auth', async () => {
    const token = h.sign({ sub: 'browser-like' });
    const c = await h.connectProtocols(h.wsUrl(server, { token: null }), ['realtime-events', `bearer.${token}`], {
      origin: 'http://allowed.example',
    });
    assert.equal(c.ws.protocol, 'realtime-events');
    assert.equal(await c.next(), h.WELCOME);
    await c.close();
    h.assertRefusal(
      await h.refusalProtocols(h.wsUrl(server, { token: null }), ['realtime-events', `bearer.${token}`], {
        origin: 'http://evil.example',
      }),
      403, 'ORIGIN_NOT_ALLOWED',
    );
  });
});
