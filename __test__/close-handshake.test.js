// The closing handshake when the client closes: the server must answer the client's Close frame
// with a Close frame (RFC 6455, 5.5.1) before dropping the TCP connection; otherwise every
// client-initiated close ends as an abnormal closure (1006, wasClean false in browsers).
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');

describe('client-initiated close', () => {
  let server;

  before(async () => {
    server = await rt.startServer({ host: '127.0.0.1', port: 0, jwtSecret: h.SECRET, redisUrl: null });
  });

  after(() => server?.close());

  for (const [code, reason] of [[1000, 'bye'], [1001, 'page unloaded'], [4000, 'app-specific']]) {
    test(`close(${code}) is answered with a Close frame: the client sees ${code}, not 1006`, async () => {
      const c = await h.connectReady(h.wsUrl(server));
      await h.waitUntil(() => server.clientCount === 1, 'clientCount is 1');
      c.ws.close(code, reason);
      const info = await h.withTimeout(c.closed, 3000, 'the close');
      assert.equal(info.code, code, `the server did not echo the Close frame (got ${info.code})`);
      await h.waitUntil(() => server.clientCount === 0, 'clientCount is 0');
    });
  }

  test('a filtered client closing is answered too, and others keep receiving', async () => {
    const other = await h.connectReady(h.wsUrl(server));
    const c = await h.connectReady(`${h.wsUrl(server)}&parcels=a`);
    assert.equal(await c.next(), '{"type":"subscribed","all":false,"parcel_ids":["a"]}');
    c.ws.close(1000);
    const info = await h.withTimeout(c.closed, 3000, 'the close');
    assert.equal(info.code, 1000);
    await rt.publishParcelUpdate('after-close');
    assert.equal(await other.next(), h.frame('after-close'));
    await other.close();
  });
});
