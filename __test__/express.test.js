// The Express middleware publishParcelEvent and publishParcelUpdateDirect, in a real express app.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const express = require('express');
const jwt = require('jsonwebtoken');

const rt = require('..');
const h = require('./helpers');

describe('express middleware', () => {
  let server;
  let client;
  let httpServer;
  let base;
  // Resolves once the response to `${method} ${url}` has finished and every 'finish' listener
  // (publishParcelEvent's included) has run.
  const finished = new Map();

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
    client = await h.connectReady(h.wsUrl(server));

    const app = express();
    app.use((req, res, next) => {
      const key = `${req.method} ${req.originalUrl}`;
      finished.set(key, new Promise((resolve) => res.on('finish', () => setImmediate(resolve))));
      next();
    });

    // The marketplace's auth middleware: a real JWT check.
    const auth = (req, res, next) => {
      const m = /^Bearer (.+)$/.exec(req.get('authorization') || '');
      try {
        req.user = jwt.verify(m ? m[1] : '', h.SECRET, { algorithms: ['HS256'] });
        next();
      } catch {
        res.status(401).json({ error: 'unauthorized' });
      }
    };

    // Handler first, then the middleware: the handler responds and calls next().
    const buy = (req, res, next) => {
      const id = req.params.parcel_id;
      if (id.startsWith('missing')) res.status(404).json({ error: 'no such parcel' });
      else if (id.startsWith('conflict')) res.status(409).json({ error: 'already sold' });
      else if (id.startsWith('boom')) res.status(500).json({ error: 'database error' });
      else if (id.startsWith('created')) res.status(201).json({ bought: id });
      else res.json({ bought: id, by: req.user.sub });
      next();
    };
    // Middleware first, then the handler (which does not call next()).
    const buyAfter = async (req, res) => {
      await h.delay(5); // an async handler: the response comes after publishParcelEvent ran
      const id = req.params.parcel_id;
      if (id.startsWith('missing')) res.status(404).json({ error: 'no such parcel' });
      else if (id.startsWith('boom')) res.status(503).json({ error: 'try later' });
      else res.json({ bought: id });
    };

    const router = express.Router();
    router.post('/buy/:parcel_id', auth, buy, rt.publishParcelEvent);
    router.post('/v2/buy/:parcel_id', auth, rt.publishParcelEvent, buyAfter);
    // Placed before auth: a 401 from auth must not publish.
    router.post('/v3/buy/:parcel_id', rt.publishParcelEvent, auth, buyAfter);
    // No :parcel_id on the route: nothing is published and the chain goes on.
    router.post('/misc', rt.publishParcelEvent, (req, res) => res.json({ ok: true }));
    app.use(router);

    httpServer = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    base = `http://127.0.0.1:${httpServer.address().port}`;
  });

  after(async () => {
    await client?.close();
    if (httpServer) {
      httpServer.closeAllConnections?.();
      await new Promise((resolve) => httpServer.close(resolve));
    }
    await server?.close();
  });

  const bearer = { authorization: `Bearer ${h.sign({ sub: 'buyer-7' })}` };

  async function post(path, headers = bearer) {
    const res = await fetch(base + path, { method: 'POST', headers });
    const body = await res.json();
    const done = finished.get(`POST ${path}`);
    assert.ok(done, `the app saw POST ${path}`);
    await h.withTimeout(done, 5000, `the response to ${path} to finish`);
    return { status: res.status, body };
  }

  /** After a refused request: nothing was published, so a sentinel is the next frame. */
  async function expectNothingPublished(label) {
    const sentinel = `sentinel-${label}`;
    await rt.publishParcelUpdate(sentinel);
    assert.equal(await client.next(), h.frame(sentinel), `nothing published for ${label}`);
  }

  test('handler then middleware: a 200 publishes the parcel id', async () => {
    const r = await post('/buy/parcel-200');
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { bought: 'parcel-200', by: 'buyer-7' });
    assert.equal(await client.next(), h.frame('parcel-200'));
  });

  test('handler then middleware: a 201 publishes too', async () => {
    const r = await post('/buy/created-1');
    assert.equal(r.status, 201);
    assert.equal(await client.next(), h.frame('created-1'));
  });

  test('handler then middleware: an encoded id is published decoded', async () => {
    const id = 'parcel "é" 7';
    const r = await post(`/buy/${encodeURIComponent(id)}`);
    assert.equal(r.status, 200);
    assert.equal(await client.next(), h.frame(id));
  });

  for (const [id, status] of [['missing-1', 404], ['conflict-1', 409], ['boom-1', 500]]) {
    test(`handler then middleware: a ${status} does not publish`, async () => {
      const r = await post(`/buy/${id}`);
      assert.equal(r.status, status);
      await expectNothingPublished(id);
    });
  }

  test('handler then middleware: a 401 from auth does not publish', async () => {
    const r = await post('/buy/parcel-noauth', {});
    assert.equal(r.status, 401);
    await expectNothingPublished('noauth');
  });

  test('middleware before the handler: a 200 publishes once the response is sent', async () => {
    const r = await post('/v2/buy/parcel-v2');
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { bought: 'parcel-v2' });
    assert.equal(await client.next(), h.frame('parcel-v2'));
  });

  test('middleware before the handler: 404 and 503 do not publish', async () => {
    assert.equal((await post('/v2/buy/missing-2')).status, 404);
    assert.equal((await post('/v2/buy/boom-2')).status, 503);
    await expectNothingPublished('v2-errors');
  });

  test('middleware before auth: a 401 does not publish, a 200 does', async () => {
    assert.equal((await post('/v3/buy/parcel-v3-noauth', {})).status, 401);
    await expectNothingPublished('v3-noauth');
    assert.equal((await post('/v3/buy/parcel-v3')).status, 200);
    assert.equal(await client.next(), h.frame('parcel-v3'));
  });

  test('a route without :parcel_id publishes nothing and still responds', async () => {
    const r = await post('/misc');
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { ok: true });
    await expectNothingPublished('misc');
  });

  test('each successful request publishes exactly once, in order', async () => {
    for (const id of ['seq-1', 'seq-2', 'seq-3']) {
      assert.equal((await post(`/buy/${id}`)).status, 200);
    }
    await rt.publishParcelUpdate('seq-end');
    assert.deepEqual(
      [await client.next(), await client.next(), await client.next(), await client.next()],
      ['seq-1', 'seq-2', 'seq-3', 'seq-end'].map(h.frame),
    );
  });

  test('publishParcelUpdateDirect delivers', async () => {
    assert.equal(rt.publishParcelUpdateDirect('direct-1'), undefined);
    rt.publishParcelUpdateDirect('direct-2');
    assert.equal(await client.next(), h.frame('direct-1'));
    assert.equal(await client.next(), h.frame('direct-2'));
  });

  test('publishParcelUpdateDirect with a non-string throws TypeError at once', async () => {
    for (const bad of [42, null, undefined, { id: 'x' }]) {
      assert.throws(() => rt.publishParcelUpdateDirect(bad), (err) => {
        assert.ok(err instanceof TypeError);
        assert.equal(err.code, 'ERR_INVALID_PARCEL_ID');
        return true;
      });
    }
    await expectNothingPublished('direct-bad');
  });
});
