// The runnable examples, run as a user would: examples/marketplace.js (Express routes with
// publishParcelEvent beside the realtime server), driven over real HTTP and a real WebSocket.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const h = require('./helpers');

test('examples/marketplace.js: buying and listing reach a WebSocket client with their data; a refused request publishes nothing; SIGTERM ends it', async (t) => {
  const p = h.spawnProcess(process.execPath, [path.join(h.PKG, 'examples', 'marketplace.js')], {
    env: h.cleanEnv({ PORT: '0', REALTIME_PORT: '0', JWT_SECRET: h.SECRET, LOG_LEVEL: 'warn' }),
  });
  t.after(() => p.stop());
  const [, apiPort] = await p.waitForOutput(/^API:\s+http:\/\/localhost:(\d+)\n/m, { ms: 10_000 });
  const [, wsPort, token] = await p.waitForOutput(/^WebSocket: ws:\/\/localhost:(\d+)\/ws\?token=(\S+)\n/m);
  const [, buyCommand] = await p.waitForOutput(/^buy:\s+(curl .*)\n/m);
  assert.match(buyCommand, new RegExp(`Bearer ${token}' http://localhost:${apiPort}/buy/p1$`));

  const client = await h.connectReady(`ws://127.0.0.1:${wsPort}/ws?token=${token}`);
  const api = (method, route, body, auth = token) => fetch(`http://127.0.0.1:${apiPort}${route}`, {
    method,
    headers: { ...(auth ? { Authorization: `Bearer ${auth}` } : {}), ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });

  assert.equal((await api('POST', '/buy/p1')).status, 200);
  assert.equal(h.withoutOffset(await client.next()), h.dataFrame('p1', { owner_id: 'u1', listed: false }));

  // Refused requests publish nothing: the next frame is the relisting's.
  assert.equal((await api('POST', '/buy/p1')).status, 409);
  assert.equal((await api('POST', '/buy/p2', undefined, null)).status, 401);
  assert.equal((await api('POST', '/list/p1', { price: 0 })).status, 400);
  assert.equal((await api('POST', '/list/p1', { price: 150 })).status, 200);
  assert.equal(h.withoutOffset(await client.next()), h.dataFrame('p1', { listed: true, price: 150 }));
  assert.deepEqual(await (await api('GET', '/parcels/p1')).json(), { id: 'p1', owner_id: 'u1', listed: true, price: 150 });

  p.child.kill('SIGTERM');
  assert.equal((await h.withTimeout(client.closed, 5000, 'close 1001')).code, 1001);
  assert.deepEqual(await p.waitForExit(8000), { code: 0, signal: null }, p.err());
});
