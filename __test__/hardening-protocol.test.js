// Hardening (issue 10), item 7: the smaller findings.
// - a token offered as subprotocol is never echoed back;
// - a refresh keeps an `exp`, and the same user claim with the same type;
// - optional audience / issuer checks and a require-exp option;
// - the operations endpoints do not answer any Host (DNS rebinding): an allow-list, or a token;
// - RFC 6455 refusals: HTTP/1.0, no Host, a bad Sec-WebSocket-Key, duplicated credentials
//   headers (400), invalid UTF-8 in a text frame (1007).
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');
const k = require('./hardening-kit');

/** Sends `head` on a raw socket and returns the whole response {status, headers, body, raw}. */
async function rawRequest(port, head) {
  const c = k.rawClient(port);
  await c.connected;
  await c.write(head);
  const r = await c.response();
  if (r && r.status !== 101) await c.until(() => (c.ended ? true : undefined), 'the server to close');
  c.destroy();
  return r;
}

function bodyCode(r) {
  try {
    return JSON.parse(r.body).code;
  } catch {
    return undefined;
  }
}

describe('hardening: the token is never echoed (item 7)', () => {
  test('offering only bearer.<JWT> is refused with 400 SUBPROTOCOL_REQUIRED, and no part of the answer holds the token', () =>
    k.withServer({}, async (server) => {
      const token = h.sign({ sub: 'echo' });
      const r = await rawRequest(server.port, k.upgradeHead({ headers: k.upgradeHeaders([['Sec-WebSocket-Protocol', `bearer.${token}`]]) }));
      assert.equal(r.status, 400, r.raw);
      assert.equal(bodyCode(r), 'SUBPROTOCOL_REQUIRED');
      assert.ok(!r.raw.includes(token) && !r.body.includes(token), 'the token is not in the answer');
      // Beside realtime-events, it authenticates and realtime-events is the one echoed.
      const ok = await rawRequest(server.port, k.upgradeHead({ headers: k.upgradeHeaders([['Sec-WebSocket-Protocol', `realtime-events, bearer.${token}`]]) }));
      assert.equal(ok.status, 101);
      assert.equal(ok.headers['sec-websocket-protocol'], 'realtime-events');
      assert.ok(!ok.raw.includes(token));
    }));
});

describe('hardening: refresh keeps the guarantees of the first token (item 7)', () => {
  const cases = [
    ['a token without exp cannot replace one with exp', { sub: 'r1' }, { sub: 'r1' }],
    ['{id} cannot refresh {sub} of the same value', { sub: 'r2' }, { id: 'r2' }],
    ['a number cannot refresh the same id as a string', { sub: '7' }, { sub: 7 }],
  ];
  for (const [name, first, second] of cases) {
    test(`${name}: closed with 4403`, () =>
      k.withServer({}, async (server) => {
        const c = await h.connectReady(h.wsUrl(server, { token: h.sign(first, { expiresIn: 60 }) }));
        const withExp = name.startsWith('a token without exp') ? {} : { expiresIn: 120 };
        await c.send(JSON.stringify({ type: 'refresh', token: h.sign(second, withExp) }));
        await h.expectClose(c, 4403);
      }));
  }

  test('a refresh with exp for the same claim is still accepted', () =>
    k.withServer({}, async (server) => {
      const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'r4' }, { expiresIn: 60 }) }));
      await c.send(JSON.stringify({ type: 'refresh', token: h.sign({ sub: 'r4' }, { expiresIn: 120 }) }));
      assert.match(await c.next(), /^\{"type":"refreshed","exp":\d+\}$/);
      await c.close();
    }));
});

describe('hardening: audience, issuer and exp checks (item 7)', () => {
  test('jwtAudience and jwtIssuer, when set, refuse other tokens with 401', () =>
    k.withServer({ jwtAudience: 'marketplace', jwtIssuer: 'auth.example' }, async (server) => {
      const url = (claims) => h.wsUrl(server, { token: h.sign(claims) });
      await h.expectRefusal(url({ sub: 'a', aud: 'other', iss: 'auth.example' }), {}, 401, 'TOKEN_AUDIENCE_INVALID');
      await h.expectRefusal(url({ sub: 'a', iss: 'auth.example' }), {}, 401, 'TOKEN_AUDIENCE_INVALID');
      await h.expectRefusal(url({ sub: 'a', aud: 'marketplace', iss: 'evil' }), {}, 401, 'TOKEN_ISSUER_INVALID');
      const c = await h.connectReady(url({ sub: 'a', aud: 'marketplace', iss: 'auth.example' }));
      await c.close();
    }));

  test('jwtRequireExp refuses a token without exp (401 TOKEN_EXP_REQUIRED), also from JWT_REQUIRE_EXP=1', async () => {
    await k.withServer({ jwtRequireExp: true }, async (server) => {
      await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'e' }) }), {}, 401, 'TOKEN_EXP_REQUIRED');
      const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'e' }, { expiresIn: 60 }) }));
      await c.close();
    });
    await h.withEnv({ JWT_REQUIRE_EXP: '1', JWT_AUDIENCE: 'm' }, () => k.withServer({}, async (server) => {
      await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'e', aud: 'm' }) }), {}, 401, 'TOKEN_EXP_REQUIRED');
      await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'e' }, { expiresIn: 60 }) }), {}, 401, 'TOKEN_AUDIENCE_INVALID');
    }));
  });
});

describe('hardening: the operations endpoints and the Host header (item 7)', () => {
  test('by default /stats, /metrics, /health and / answer 403 HOST_NOT_ALLOWED to a foreign Host, and serve IP hosts and localhost', () =>
    k.withServer({}, async (server) => {
      for (const p of ['/stats', '/metrics', '/health', '/']) {
        const r = await h.httpGet(server.port, p, { Host: `rebound.example:${server.port}` });
        assert.equal(r.status, 403, `${p}: ${r.raw.slice(0, 200)}`);
        assert.equal(r.body?.code, 'HOST_NOT_ALLOWED');
        for (const host of [`127.0.0.1:${server.port}`, `localhost:${server.port}`, '[::1]']) {
          assert.equal((await h.httpGet(server.port, p, { Host: host })).status, 200, `${p} with Host ${host}`);
        }
      }
    }));

  test('allowedHosts adds names; with opsToken, the endpoints need it (401 without) whatever the Host', async () => {
    await k.withServer({ allowedHosts: ['realtime.internal'] }, async (server) => {
      assert.equal((await h.httpGet(server.port, '/stats', { Host: 'realtime.internal:3006' })).status, 200);
      assert.equal((await h.httpGet(server.port, '/stats', { Host: 'other.internal' })).status, 403);
    });
    await k.withServer({ opsToken: 'ops-secret-0123456789' }, async (server) => {
      const none = await h.httpGet(server.port, '/metrics', { Host: `127.0.0.1:${server.port}` });
      assert.equal(none.status, 401);
      assert.equal(none.body?.code, 'OPS_TOKEN_REQUIRED');
      const ok = await h.httpGet(server.port, '/metrics', { Host: 'anything.example', Authorization: 'Bearer ops-secret-0123456789' });
      assert.equal(ok.status, 200);
      // The dashboard's own fetches carry the page's ?ops_token= on; a wrong token is refused.
      assert.equal((await h.httpGet(server.port, '/stats?ops_token=ops-secret-0123456789', { Host: 'x.example' })).status, 200);
      assert.equal((await h.httpGet(server.port, '/stats?ops_token=ops-secret-0123456780')).status, 401);
      // The WebSocket path is not an operations endpoint: clients connect as before.
      const c = await h.connectReady(h.wsUrl(server));
      await c.close();
    });
  });
});

describe('hardening: RFC 6455 refusals (item 7)', () => {
  const token = () => `?token=${encodeURIComponent(h.sign({ sub: 'rfc' }))}`;
  const refusals = [
    ['an HTTP/1.0 upgrade', () => k.upgradeHead({ query: token(), version: '1.0' })],
    ['an upgrade without Host', () => k.upgradeHead({ query: token(), headers: k.upgradeHeaders([], { host: null }) })],
    ['a Sec-WebSocket-Key of 15 bytes', () => k.upgradeHead({ query: token(), headers: k.upgradeHeaders([], { key: Buffer.alloc(15, 1).toString('base64') }) })],
    ['a Sec-WebSocket-Key that is not base64', () => k.upgradeHead({ query: token(), headers: k.upgradeHeaders([], { key: 'not base64 at all!!!!!!!' }) })],
    ['two Sec-WebSocket-Key headers', () => k.upgradeHead({ query: token(), headers: k.upgradeHeaders([['Sec-WebSocket-Key', 'AQEBAQEBAQEBAQEBAQEBAQ==']]) })],
    ['two Authorization headers', () => k.upgradeHead({ headers: k.upgradeHeaders([['Authorization', `Bearer ${h.sign({ sub: 'a' })}`], ['Authorization', `Bearer ${h.sign({ sub: 'b' })}`]]) })],
    ['two Origin headers', () => k.upgradeHead({ query: token(), headers: k.upgradeHeaders([['Origin', 'https://a.example'], ['Origin', 'https://b.example']]) })],
  ];
  for (const [name, head] of refusals) {
    test(`${name} is refused with 400`, () =>
      k.withServer({}, async (server) => {
        const r = await rawRequest(server.port, head());
        assert.equal(r?.status, 400, r?.raw);
        assert.equal(bodyCode(r), 'BAD_REQUEST');
      }));
  }

  test('invalid UTF-8 in a text frame closes with 1007', () =>
    k.withServer({}, async (server) => {
      const c = await k.rawSession(server.port);
      try {
        await c.write(k.clientFrame(0x1, Buffer.from([0x7b, 0xff, 0xfe, 0x7d])));
        const close = await c.closeFrame();
        assert.equal(close?.code, 1007, JSON.stringify(close));
        const other = await h.connectReady(h.wsUrl(server));
        await rt.publishParcelUpdate('after-utf8');
        assert.equal(await other.next(), h.frame('after-utf8'));
        await other.close();
      } finally {
        c.destroy();
      }
    }));
});
