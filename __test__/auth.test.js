// Authentication: accepted tokens get the welcome frame; every refusal is HTTP before the upgrade
// with a JSON body {error, code}.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const jwt = require('jsonwebtoken');

const rt = require('..');
const h = require('./helpers');

const now = () => Math.floor(Date.now() / 1000);
const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

describe('authentication', () => {
  let server;
  const clients = [];

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
  });

  test('a valid token in ?token= gets exactly the welcome frame first', async () => {
    const c = await h.connect(h.wsUrl(server, { token: h.sign({ sub: 'u-query' }) }));
    clients.push(c);
    assert.equal(await c.next(), '{"type":"connected","message":"WebSocket connection established"}');
    // The connection stays open and nothing else was sent before an event.
    await rt.publishParcelUpdate('after-welcome');
    assert.equal(await c.next(), h.frame('after-welcome'));
  });

  test('a valid token in Authorization: Bearer gets exactly the welcome frame first', async () => {
    const c = await h.connect(h.wsUrl(server, { token: null }), {
      headers: { Authorization: `Bearer ${h.sign({ sub: 'u-header' })}` },
    });
    clients.push(c);
    assert.equal(await c.next(), h.WELCOME);
  });

  test('a token without exp (and without iat) is accepted', async () => {
    const token = h.sign({ sub: 'no-exp' }, { noTimestamp: true });
    assert.equal(jwt.decode(token).exp, undefined);
    assert.equal(jwt.decode(token).iat, undefined);
    const c = await h.connectReady(h.wsUrl(server, { token }));
    clients.push(c);
  });

  test('a token that expires in the future is accepted', async () => {
    const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'u' }, { expiresIn: 3600 }) }));
    clients.push(c);
  });

  test('missing token: 401 TOKEN_MISSING', async () => {
    await h.expectRefusal(h.wsUrl(server, { token: null }), {}, 401, 'TOKEN_MISSING');
    // An empty ?token= is missing too.
    await h.expectRefusal(`ws://127.0.0.1:${server.port}/ws?token=`, {}, 401, 'TOKEN_MISSING');
    // A non-Bearer Authorization header carries no token.
    await h.expectRefusal(h.wsUrl(server, { token: null }), {
      headers: { Authorization: `Basic ${Buffer.from('a:b').toString('base64')}` },
    }, 401, 'TOKEN_MISSING');
  });

  test('garbage token: 401 TOKEN_MALFORMED', async () => {
    await h.expectRefusal(h.wsUrl(server, { token: 'garbage' }), {}, 401, 'TOKEN_MALFORMED');
    await h.expectRefusal(h.wsUrl(server, { token: null }), {
      headers: { Authorization: 'Bearer not.a.jwt' },
    }, 401, 'TOKEN_MALFORMED');
  });

  test('token signed with another secret: 401 TOKEN_INVALID_SIGNATURE', async () => {
    const token = h.sign({ sub: 'u' }, {}, 'some-other-secret');
    await h.expectRefusal(h.wsUrl(server, { token }), {}, 401, 'TOKEN_INVALID_SIGNATURE');
  });

  test('a tampered payload: 401 TOKEN_INVALID_SIGNATURE', async () => {
    const [header, , signature] = h.sign({ sub: 'user-1', role: 'user' }).split('.');
    const forged = `${header}.${b64url({ sub: 'user-1', role: 'admin' })}.${signature}`;
    await h.expectRefusal(h.wsUrl(server, { token: forged }), {}, 401, 'TOKEN_INVALID_SIGNATURE');
  });

  test('expired token: 401 TOKEN_EXPIRED', async () => {
    await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'u' }, { expiresIn: -3600 }) }), {}, 401, 'TOKEN_EXPIRED');
    // Expired by a little over a minute: beyond any clock-skew leeway.
    const token = h.sign({ sub: 'u', exp: now() - 61 });
    await h.expectRefusal(h.wsUrl(server, { token }), {}, 401, 'TOKEN_EXPIRED');
  });

  test('nbf in the future: 401 TOKEN_NOT_YET_VALID', async () => {
    await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'u' }, { notBefore: 3600 }) }), {}, 401, 'TOKEN_NOT_YET_VALID');
  });

  test('alg none: 401 TOKEN_ALGORITHM_NOT_ALLOWED', async () => {
    const none = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ sub: 'user-1', iat: now() })}.`;
    await h.expectRefusal(h.wsUrl(server, { token: none }), {}, 401, 'TOKEN_ALGORITHM_NOT_ALLOWED');
    // Even with a (meaningless) signature appended, and spelled in capitals.
    const none2 = `${b64url({ alg: 'NONE', typ: 'JWT' })}.${b64url({ sub: 'user-1' })}.c2ln`;
    await h.expectRefusal(h.wsUrl(server, { token: none2 }), {}, 401, 'TOKEN_ALGORITHM_NOT_ALLOWED');
  });

  test('RS256-signed token: 401 TOKEN_ALGORITHM_NOT_ALLOWED', async () => {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const token = jwt.sign({ sub: 'user-1' }, privateKey, { algorithm: 'RS256' });
    assert.equal(jwt.decode(token, { complete: true }).header.alg, 'RS256');
    await h.expectRefusal(h.wsUrl(server, { token }), {}, 401, 'TOKEN_ALGORITHM_NOT_ALLOWED');
  });

  test('HS512 with the right secret: 401 TOKEN_ALGORITHM_NOT_ALLOWED (HS256 only)', async () => {
    const token = jwt.sign({ sub: 'user-1' }, h.SECRET, { algorithm: 'HS512' });
    await h.expectRefusal(h.wsUrl(server, { token }), {}, 401, 'TOKEN_ALGORITHM_NOT_ALLOWED');
  });

  test('another path: 404 NOT_FOUND', async () => {
    await h.expectRefusal(h.wsUrl(server, { path: '/nope' }), {}, 404, 'NOT_FOUND');
    await h.expectRefusal(h.wsUrl(server, { path: '/ws/' }), {}, 404, 'NOT_FOUND');
  });

  test('plain HTTP GET on /ws (no upgrade): 426 with a JSON body', async () => {
    const r = await h.httpGet(server.port, '/ws');
    assert.equal(r.status, 426);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.equal(r.headers.upgrade, 'websocket');
    assert.deepEqual(Object.keys(r.body).sort(), ['code', 'error']);
    assert.equal(r.body.code, 'UPGRADE_REQUIRED');
    assert.equal(typeof r.body.error, 'string');
    // A plain GET elsewhere (not an operations endpoint) is a 404, also as JSON.
    const other = await h.httpGet(server.port, '/nope');
    assert.equal(other.status, 404);
    assert.equal(other.body.code, 'NOT_FOUND');
  });

  test('refusals do not count as clients', async () => {
    await h.waitUntil(() => server.clientCount === clients.filter((c) => !c.closeInfo).length,
      'clientCount equals the connected clients');
  });
});

describe('validateUser', () => {
  const servers = [];
  const clients = [];
  const start = async (validateUser) => {
    const s = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, validateUser });
    servers.push(s);
    return s;
  };

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(servers.map((s) => s.close()));
  });

  test('returning false: 403 USER_REJECTED', async () => {
    const seen = [];
    const s = await start((claims) => {
      seen.push(claims.sub);
      return claims.sub !== 'banned';
    });
    await h.expectRefusal(h.wsUrl(s, { token: h.sign({ sub: 'banned' }) }), {}, 403, 'USER_REJECTED');
    const ok = await h.connectReady(h.wsUrl(s, { token: h.sign({ sub: 'allowed' }) }));
    clients.push(ok);
    assert.deepEqual(seen, ['banned', 'allowed']);
  });

  test('a truthy non-boolean is not a yes: 403', async () => {
    const s = await start(() => 'yes');
    await h.expectRefusal(h.wsUrl(s), {}, 403, 'USER_REJECTED');
  });

  test('throwing: 403', async () => {
    const s = await start(() => {
      throw new Error('database down (expected in this test)');
    });
    await h.expectRefusal(h.wsUrl(s), {}, 403, 'USER_REJECTED');
  });

  test('rejecting: 403', async () => {
    const s = await start(async () => {
      await h.delay(5);
      throw new Error('async database down (expected in this test)');
    });
    await h.expectRefusal(h.wsUrl(s), {}, 403, 'USER_REJECTED');
  });

  test('async validateUser receives the decoded claims', async () => {
    const seen = [];
    const s = await start(async (claims) => {
      seen.push(claims);
      await h.delay(10);
      return claims.role === 'buyer';
    });
    const iat = now();
    const c = await h.connectReady(h.wsUrl(s, { token: h.sign({ sub: 'user-42', role: 'buyer', iat }) }));
    clients.push(c);
    assert.equal(seen.length, 1);
    assert.deepEqual(seen[0], { sub: 'user-42', role: 'buyer', iat });
    await h.expectRefusal(h.wsUrl(s, { token: h.sign({ sub: 'user-43', role: 'seller' }) }), {}, 403, 'USER_REJECTED');
    assert.equal(seen.length, 2);
    assert.equal(seen[1].sub, 'user-43');
  });

  test('a validateUser that never answers: 408 HANDSHAKE_TIMEOUT once the handshake time is up', async () => {
    const s = await rt.startServer({
      port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, handshakeTimeoutMs: 300,
      validateUser: (claims) => (claims.sub === 'stuck' ? new Promise(() => {}) : true),
    });
    servers.push(s);
    await h.expectRefusal(h.wsUrl(s, { token: h.sign({ sub: 'stuck' }) }), {}, 408, 'HANDSHAKE_TIMEOUT');
    const c = await h.connectReady(h.wsUrl(s, { token: h.sign({ sub: 'prompt' }) }));
    clients.push(c);
  });

  test('close() while a validateUser is pending drops that connection and resolves', async () => {
    let called;
    const pending = new Promise((resolve) => {
      called = resolve;
    });
    const s = await rt.startServer({
      port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null,
      validateUser: () => {
        called();
        return new Promise(() => {});
      },
    });
    const c = new h.Client(new (require('ws'))(h.wsUrl(s)));
    await h.withTimeout(pending, 5000, 'validateUser to be called');
    await h.withTimeout(s.close(), 8000, 'close() to resolve');
    const info = await h.withTimeout(c.closed, 5000, 'the pending connection to be dropped');
    assert.equal(info.code, 1006, 'no upgrade happened: an abnormal close');
    assert.deepEqual(c.messages, []);
    assert.equal(s.clientCount, 0);
  });

  test('the token is found among other query parameters', async () => {
    const s = await start(() => true);
    const token = h.sign({ sub: 'u' });
    const c = await h.connectReady(`ws://127.0.0.1:${s.port}/ws?room=a&token=${token}&x=1`);
    clients.push(c);
  });

  test('validateUser is not called for an invalid token', async () => {
    let calls = 0;
    const s = await start(() => {
      calls += 1;
      return true;
    });
    await h.expectRefusal(h.wsUrl(s, { token: h.sign({ sub: 'u' }, {}, 'wrong') }), {}, 401, 'TOKEN_INVALID_SIGNATURE');
    assert.equal(calls, 0);
  });
});
