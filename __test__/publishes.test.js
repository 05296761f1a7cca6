// rt.publishesParcelEvent(handler) (issue 14.6): a route whose handler never calls next()
// publishes on a 2xx response all the same; an error response, a throw or a rejection publish
// nothing; the handler's errors reach Express's error handler.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const express = require('express');

const rt = require('..');
const h = require('./helpers');

describe('publishesParcelEvent(handler)', () => {
  let server;
  let httpServer;
  let client;
  const handled = [];

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
    client = await h.connectReady(h.wsUrl(server));
    const app = express();
    // None of these handlers calls next(): with publishParcelEvent placed after them, nothing
    // would be published.
    app.post('/buy/:parcel_id', rt.publishesParcelEvent((req, res) => {
      res.locals.parcelEventData = { owner_id: 'u1' };
      res.json({ ok: true });
    }));
    app.post('/async/:parcel_id', rt.publishesParcelEvent(async (req, res) => {
      await h.delay(5);
      res.status(201).json({ ok: true });
    }));
    app.post('/conflict/:parcel_id', rt.publishesParcelEvent((req, res) => res.status(409).json({ ok: false })));
    app.post('/throws/:parcel_id', rt.publishesParcelEvent(() => {
      throw new Error('sync failure');
    }));
    app.post('/rejects/:parcel_id', rt.publishesParcelEvent(async () => {
      throw new Error('async failure');
    }));
    // Both placements on one route, and the wrapper with the middleware after it: once each.
    app.post('/twice/:parcel_id', rt.publishParcelEvent, (req, res, next) => {
      res.json({ ok: true });
      next();
    }, rt.publishParcelEvent);
    app.post('/wrapped-twice/:parcel_id', rt.publishesParcelEvent((req, res, next) => {
      res.json({ ok: true });
      next();
    }), rt.publishParcelEvent);
    app.use((err, req, res, next) => { // eslint-disable-line no-unused-vars
      handled.push(err.message);
      res.status(500).json({ error: err.message });
    });
    httpServer = await h.serveApp(app);
  });

  after(async () => {
    await client?.close();
    await httpServer?.close();
    await server?.close();
  });

  const post = (path) => httpServer.post(path);

  test('2xx responses publish (sync and async handlers, with data); errors publish nothing and reach next(err)', async () => {
    assert.equal(await post('/buy/w-1'), 200);
    assert.equal(await post('/conflict/w-2'), 409);
    assert.equal(await post('/throws/w-3'), 500);
    assert.equal(await post('/rejects/w-4'), 500);
    assert.equal(await post('/async/w-5'), 201);
    await rt.publishParcelUpdate('w-sentinel');
    assert.equal(h.withoutOffset(await client.next()), '{"type":"parcel_updated","parcel_id":"w-1","data":{"owner_id":"u1"}}');
    assert.equal(h.withoutOffset(await client.next()), h.frame('w-5'));
    assert.equal(h.withoutOffset(await client.next()), h.frame('w-sentinel'), 'nothing from the error responses');
    assert.deepEqual(handled, ['sync failure', 'async failure']);
  });

  test('placed twice on one route it publishes once per response, and warns once per route', async () => {
    const records = [];
    rt.setLogger((r) => records.push(r));
    try {
      assert.equal(await post('/twice/t-1'), 200);
      assert.equal(await post('/twice/t-2'), 200);
      assert.equal(await post('/wrapped-twice/t-3'), 200);
      await rt.publishParcelUpdate('t-sentinel');
      for (const id of ['t-1', 't-2', 't-3', 't-sentinel']) assert.equal(h.withoutOffset(await client.next()), h.frame(id));
      const warnings = records.filter((r) => r.level === 'warn' && /ran twice/.test(r.message));
      assert.deepEqual(warnings.map((r) => r.message.match(/route (\S+):/)[1]), ['/twice/:parcel_id', '/wrapped-twice/:parcel_id']);
    } finally {
      rt.setLogger(null);
    }
  });

  test('a handler that is not a function is refused with ERR_INVALID_OPTION', () => {
    assert.throws(() => rt.publishesParcelEvent('buyParcel'), { name: 'TypeError', code: 'ERR_INVALID_OPTION' });
  });
});
