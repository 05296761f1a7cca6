// Token expiry and refresh: a connection ends with 4401 "token expired" when its token's exp
// (+5 s leeway) passes; {"type":"refresh","token":...} with a valid token of the same user answers
// {"type":"refreshed","exp":...} and moves the deadline; anything else closes with 4403.
//
// The suites run their tests concurrently (most of them wait for a deadline ~6 s away), each on
// its own server; since every server in a process shares one bus, they publish no events.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };
const LEEWAY_MS = 5000;
/**
 * How late after its deadline a close may come (scheduling on a loaded machine): wide, yet below
 * the 5 s leeway, so a leeway applied twice still fails.
 */
const LATE_MS = 4500;

/** Starts a server, runs fn(server), closes it. */
async function withServer(options, fn) {
  const server = await rt.startServer({ ...BASE, ...options });
  try {
    return await fn(server);
  } finally {
    await server.close();
  }
}

/** Epoch ms at which a token with this `exp` stops being honoured. */
function deadline(exp) {
  return exp * 1000 + LEEWAY_MS;
}

/** Waits for a 4401 close and checks it came at the deadline, not before. */
async function expectExpiredAt(client, exp, what) {
  const info = await h.expectClose(client, 4401, 'token expired', deadline(exp) - Date.now() + LATE_MS + 2000);
  const at = Date.now();
  assert.ok(at >= deadline(exp) - 150, `${what}: closed ${deadline(exp) - at} ms before exp + 5 s`);
  assert.ok(at <= deadline(exp) + LATE_MS, `${what}: closed ${at - deadline(exp)} ms after exp + 5 s`);
  return info;
}

function refresh(client, token) {
  return client.send(JSON.stringify({ type: 'refresh', token }));
}

describe('token expiry', { concurrency: true }, () => {
  test('an unrefreshed token closes the connection with 4401 "token expired" at exp + 5 s', () =>
    withServer({}, async (server) => {
      const exp = h.nowSeconds() + 1;
      const token = h.sign({ sub: 'exp-user', exp });
      const viaQuery = await h.connectReady(h.wsUrl(server, { token }));
      const viaHeader = await h.connectReady(h.wsUrl(server, { token: null }), {
        headers: { Authorization: `Bearer ${token}` },
      });
      const browserLike = await h.connectProtocols(h.wsUrl(server, { token: null }), ['realtime-events', `bearer.${token}`]);
      assert.equal(await browserLike.next(), h.WELCOME);
      const forever = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'no-exp' }) }));
      await h.waitUntil(() => server.clientCount === 4, 'four clients');
      // Until then they are served. (Tests here run concurrently on one process-wide bus, so
      // liveness is checked with pings rather than published events.)
      for (const c of [viaQuery, viaHeader, browserLike, forever]) {
        await c.send('{"type":"ping"}');
        assert.equal(await c.next(), '{"type":"pong"}');
      }
      await Promise.all([
        expectExpiredAt(viaQuery, exp, '?token='),
        expectExpiredAt(viaHeader, exp, 'Authorization'),
        expectExpiredAt(browserLike, exp, 'subprotocol'),
      ]);
      await h.waitUntil(() => server.clientCount === 1, 'only the token without exp is left');
      assert.equal(forever.closeInfo, null);
      for (const c of [viaQuery, viaHeader, browserLike]) {
        assert.deepEqual(c.messages, [h.WELCOME, '{"type":"pong"}']);
      }
      await forever.close();
    }));

  test('refresh before expiry answers {"type":"refreshed","exp":<new exp>} and the connection outlives the old deadline', () =>
    withServer({}, async (server) => {
      const exp = h.nowSeconds() + 1;
      const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'ref-user', exp }) }));
      const newExp = h.nowSeconds() + 120;
      await refresh(c, h.sign({ sub: 'ref-user', exp: newExp, role: 'buyer' }));
      assert.equal(await c.next(), `{"type":"refreshed","exp":${newExp}}`);
      await h.delay(deadline(exp) - Date.now() + 1500);
      assert.equal(c.closeInfo, null, `closed: ${JSON.stringify(c.closeInfo)}`);
      assert.equal(server.clientCount, 1);
      await c.send('{"type":"ping"}');
      assert.equal(await c.next(), '{"type":"pong"}');
      await c.close();
    }));

  test('refresh with a token without exp, on a connection whose token had one, is refused (4403): it would never expire', () =>
    withServer({}, async (server) => {
      const exp = h.nowSeconds() + 60;
      const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'ref-null', exp }) }));
      await refresh(c, h.sign({ sub: 'ref-null' }));
      await h.expectClose(c, 4403, 'refresh token has no exp');
    }));

  test('a connection without exp may refresh with a token without exp ("exp":null)', () =>
    withServer({}, async (server) => {
      const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'ref-none' }) }));
      await refresh(c, h.sign({ sub: 'ref-none' }));
      assert.equal(await c.next(), '{"type":"refreshed","exp":null}');
      await c.close();
    }));

  test('refreshes chain: each is answered, the last one sets the deadline', () =>
    withServer({}, async (server) => {
      const exp = h.nowSeconds() + 1;
      const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'chain', exp }) }));
      const exp2 = h.nowSeconds() + 2;
      await refresh(c, h.sign({ sub: 'chain', exp: exp2 }));
      assert.equal(await c.next(), `{"type":"refreshed","exp":${exp2}}`);
      const exp3 = h.nowSeconds() + 3;
      await refresh(c, h.sign({ sub: 'chain', exp: exp3 }));
      assert.equal(await c.next(), `{"type":"refreshed","exp":${exp3}}`);
      await expectExpiredAt(c, exp3, 'after two refreshes');
      assert.equal(c.messages.length, 3);
    }));

  test('a refresh with a token that expires sooner moves the deadline earlier', () =>
    withServer({}, async (server) => {
      // Connected with a long-lived token (and one without exp), then handed a short one: the
      // new token is the one that counts.
      const long = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'short', exp: h.nowSeconds() + 3600 }) }));
      const noExp = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'short' }) }));
      const exp = h.nowSeconds() + 1;
      await refresh(long, h.sign({ sub: 'short', exp }));
      await refresh(noExp, h.sign({ sub: 'short', exp }));
      assert.equal(await long.next(), `{"type":"refreshed","exp":${exp}}`);
      assert.equal(await noExp.next(), `{"type":"refreshed","exp":${exp}}`);
      await Promise.all([
        expectExpiredAt(long, exp, 'long-lived token refreshed with a short one'),
        expectExpiredAt(noExp, exp, 'token without exp refreshed with a short one'),
      ]);
      await h.waitUntil(() => server.clientCount === 0, 'both gone');
    }));
});

describe('refresh refusals (4403)', { concurrency: true }, () => {
  const user = { sub: 'u-4403' };

  /** Connects as `user`, sends a refresh with `token`, expects close 4403 with `reason`. */
  async function refused(server, token, reason) {
    const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ ...user, exp: h.nowSeconds() + 600 }) }));
    await refresh(c, token);
    await h.expectClose(c, 4403, reason, 3000);
    assert.deepEqual(c.messages, [h.WELCOME], 'no reply frame before the close');
  }

  test('invalid tokens close with 4403 "refresh token refused"; others stay served', () =>
    withServer({}, async (server) => {
      const bystander = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'bystander' }) }));
      const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(JSON.stringify(user)).toString('base64url')}.`;
      const cases = {
        'bad signature': h.sign(user, {}, 'another-secret'),
        'expired (exp a minute ago)': h.sign({ ...user, exp: h.nowSeconds() - 60 }),
        'not yet valid (nbf in 10 min)': h.sign({ ...user, nbf: h.nowSeconds() + 600 }),
        'alg none': none,
        'garbage': 'garbage',
        'three garbage parts': 'not.a.jwt',
        'empty string': '',
      };
      for (const [what, token] of Object.entries(cases)) {
        await refused(server, token, 'refresh token refused').catch((err) => {
          err.message = `${what}: ${err.message}`;
          throw err;
        });
      }
      await h.waitUntil(() => server.clientCount === 1, 'only the bystander left');
      await bystander.send('{"type":"ping"}');
      assert.equal(await bystander.next(), '{"type":"pong"}');
      await bystander.close();
    }));

  test('a valid token of another user closes with 4403 "refresh token is for another user"', () =>
    withServer({}, async (server) => {
      await refused(server, h.sign({ sub: 'someone-else', exp: h.nowSeconds() + 600 }), 'refresh token is for another user');
      await refused(server, h.sign({ exp: h.nowSeconds() + 600 }), 'refresh token is for another user');
      // The user is compared by the claim the original token named it with.
      const byId = await h.connectReady(h.wsUrl(server, { token: h.sign({ id: 'id-1' }) }));
      await refresh(byId, h.sign({ id: 'id-2' }));
      await h.expectClose(byId, 4403, 'refresh token is for another user', 3000);
      const byUserId = await h.connectReady(h.wsUrl(server, { token: h.sign({ userId: 41 }) }));
      await refresh(byUserId, h.sign({ userId: 42 }));
      await h.expectClose(byUserId, 4403, 'refresh token is for another user', 3000);
      await h.waitUntil(() => server.clientCount === 0, 'all closed');
    }));

  test('the same user under id, userId (number) or user_id is accepted', () =>
    withServer({}, async (server) => {
      for (const claims of [{ id: 'abc' }, { userId: 42 }, { user_id: 'snake' }, { sub: 'subject' }]) {
        const c = await h.connectReady(h.wsUrl(server, { token: h.sign(claims) }));
        const exp = h.nowSeconds() + 300;
        await refresh(c, h.sign({ ...claims, exp }));
        assert.equal(await c.next(), `{"type":"refreshed","exp":${exp}}`, JSON.stringify(claims));
        assert.equal(c.closeInfo, null);
        await c.close();
      }
    }));

  test('malformed refresh messages get an error frame and change nothing', () =>
    withServer({}, async (server) => {
      const exp = h.nowSeconds() + 600;
      const c = await h.connectReady(h.wsUrl(server, { token: h.sign({ ...user, exp }) }));
      for (const bad of ['{"type":"refresh"}', '{"type":"refresh","token":5}', '{"type":"refresh","token":null}']) {
        await c.send(bad);
        const reply = JSON.parse(await c.next());
        assert.deepEqual(Object.keys(reply), ['type', 'code', 'message'], bad);
        assert.equal(reply.type, 'error', bad);
        assert.equal(reply.code, 'INVALID_MESSAGE', bad);
      }
      const exp2 = h.nowSeconds() + 900;
      await refresh(c, h.sign({ ...user, exp: exp2 }));
      assert.equal(await c.next(), `{"type":"refreshed","exp":${exp2}}`);
      await c.close();
    }));
});
