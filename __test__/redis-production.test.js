// Production Redis (issue 12): a misconfiguration fails loudly with a code of its own, never a
// silent fallback; a server that started while Redis was down joins Redis by itself once it
// answers, and `GET /ready` tells load balancers when it has. Every server runs in a child
// process (one process has one bus); Redis is a private redis-server on a free loopback port.
'use strict';

const { test, describe, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');
const topo = require('./redis-topology');

const skip = h.redisSkipReason();

describe('misconfiguration fails loudly', { skip }, () => {
  let redis;
  after(() => redis?.stop());

  test('a wrong password, a missing password and a wrong ACL user reject with ERR_REDIS_AUTH; the right ones start', async () => {
    redis = await topo.startAuthRedis('right-password');
    const base = `127.0.0.1:${redis.port}`;
    for (const url of [`redis://:wrong-password@${base}`, `redis://${base}`, `redis://app:not-app-pw@${base}`, `redis://nobody:x@${base}`]) {
      // Not redisRequired: a misconfiguration must not fall back to memory either.
      const r = await h.tryStart({ redisUrl: url });
      assert.ok(r.rejected, `${url} must be refused, got ${JSON.stringify(r)}`);
      assert.equal(r.rejected.code, 'ERR_REDIS_AUTH', `${url}: ${r.rejected.message}`);
      assert.match(r.rejected.message, /password in redisUrl/, 'the message names the fix');
      assert.doesNotMatch(r.rejected.message, /wrong-password|not-app-pw/, 'no secret in the message');
    }
    for (const url of [`redis://:right-password@${base}`, `redis://app:app-pw@${base}`]) {
      const r = await h.tryStart({ redisUrl: url, redisRequired: true });
      assert.deepEqual(r.ready && r.ready.mode, 'redis', `${url}: ${JSON.stringify(r)}`);
    }
  });
});

describe('rediss:// (TLS)', { skip: topo.tlsSkipReason() }, () => {
  let certs;
  let plain;
  let mutual;
  after(async () => {
    await plain?.stop();
    await mutual?.stop();
  });

  test('a private CA verifies the server; mutual TLS with a client certificate; events cross two servers over TLS', async () => {
    certs = topo.makeCertificates();
    plain = await topo.startTlsRedis(certs);
    mutual = await topo.startTlsRedis(certs, { mutual: true });
    const ca = certs.pem(certs.ca);
    const r = await h.tryStart({ redisUrl: plain.url, redisTls: { ca }, redisRequired: true });
    assert.equal(r.ready && r.ready.mode, 'redis', JSON.stringify(r));
    // Mutual TLS through the environment variables npm start reads (paths).
    const env = { REDIS_TLS_CA_FILE: certs.ca, REDIS_TLS_CERT_FILE: certs.client.cert, REDIS_TLS_KEY_FILE: certs.client.key };
    const m = await h.tryStart({ redisUrl: mutual.url, redisRequired: true }, env);
    assert.equal(m.ready && m.ready.mode, 'redis', JSON.stringify(m));

    const tlsOptions = { ca, cert: certs.pem(certs.client.cert), key: certs.pem(certs.client.key) };
    const a = h.spawnServer({ redisUrl: mutual.url, redisTls: tlsOptions, redisRequired: true, pingIntervalMs: 0 });
    const b = h.spawnServer({ redisUrl: mutual.url, redisTls: tlsOptions, redisRequired: true, pingIntervalMs: 0 });
    try {
      const [, aPort] = await a.waitForOutput(/^ready (\d+) redis\n/m, { ms: 15_000 });
      const [, bPort] = await b.waitForOutput(/^ready (\d+) redis\n/m, { ms: 15_000 });
      const onB = await h.connectReady(h.wsUrl(Number(bPort)));
      a.write('publish over-tls 3');
      await a.waitForOutput(/^published over-tls$/m);
      await onB.waitFor(4);
      assert.deepEqual(onB.messages.slice(1), [1, 2, 3].map((i) => h.frame(`over-tls-${i}`)));
      assert.ok(Number(aPort) > 0);
      await onB.close();
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  test('a wrong CA, no CA (system roots) and a missing client certificate reject with ERR_REDIS_TLS', async () => {
    const wrongCa = await h.tryStart({ redisUrl: plain.url, redisTls: { ca: certs.pem(certs.otherCa) } });
    assert.equal(wrongCa.rejected && wrongCa.rejected.code, 'ERR_REDIS_TLS', JSON.stringify(wrongCa));
    assert.match(wrongCa.rejected.message, /redisTls\.ca/, 'the message names the fix');
    const systemRoots = await h.tryStart({ redisUrl: plain.url });
    assert.equal(systemRoots.rejected && systemRoots.rejected.code, 'ERR_REDIS_TLS', JSON.stringify(systemRoots));
    const noClientCert = await h.tryStart({ redisUrl: mutual.url, redisTls: { ca: certs.pem(certs.ca) } });
    assert.ok(noClientCert.rejected, `mutual TLS without a client certificate must be refused: ${JSON.stringify(noClientCert)}`);
    assert.equal(noClientCert.rejected.code, 'ERR_REDIS_TLS', noClientCert.rejected.message);
    const bad = await h.tryStart({ redisUrl: plain.url, redisTls: { ca: 'not a pem' } });
    assert.equal(bad.rejected && bad.rejected.code, 'ERR_INVALID_OPTION');
    const notTls = await h.tryStart({ redisUrl: `redis://127.0.0.1:${plain.port}`, redisTls: { ca: certs.pem(certs.ca) } });
    assert.equal(notTls.rejected && notTls.rejected.code, 'ERR_INVALID_OPTION', JSON.stringify(notTls));
  });
});

describe('a bad start recovers', { skip }, () => {
  const procs = [];
  const clients = [];
  let redis;
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(procs.map((p) => p.stop()));
    await redis?.kill();
  });

  test('Redis down at start: memory with /ready 503; Redis appears: the server joins it by itself, /ready 200, its clients resync and then get another instance\'s events', async () => {
    const redisPort = await h.freePort();
    const redisUrl = `redis://127.0.0.1:${redisPort}`;
    const a = h.spawnServer({ redisUrl, pingIntervalMs: 0 }, { env: h.cleanEnv({ LOG_LEVEL: 'info', LOG_FORMAT: 'json' }) });
    procs.push(a);
    const [, portText, mode] = await a.waitForOutput(/^ready (\d+) (\w+)\n/m, { ms: 15_000 });
    const port = Number(portText);
    assert.equal(mode, 'memory', 'fell back to the in-memory bus');
    assert.match(a.err(), /falling back to the in-memory bus/);
    const notReady = await h.httpGet(port, '/ready');
    assert.equal(notReady.status, 503);
    assert.deepEqual(notReady.body, { ready: false, bus: 'memory', redisConfigured: true, draining: false });
    assert.equal((await h.httpGet(port, '/health')).status, 200, '/health: alive and serving');

    const c = await h.connectReady(h.wsUrl(port));
    clients.push(c);
    a.write('publish before-redis');
    await a.waitForOutput(/^published before-redis$/m);
    await c.waitFor(2);
    assert.equal(c.messages[1], h.frame('before-redis'), 'served in memory meanwhile');

    redis = await topo.startNode([], { port: redisPort });
    await h.waitUntil(async () => (await h.httpGet(port, '/ready')).status === 200, '/ready answers 200', 30_000, 100);
    assert.match(a.err(), /switched from the in-memory bus to Redis/, 'the switch is logged');
    await c.waitFor(3);
    assert.equal(c.messages[2], '{"type":"resync_required","since":null,"offset":null}', 'clients stay and are told to resync');

    // Another instance on the same Redis: events cross both ways.
    const b = h.spawnServer({ redisUrl, redisRequired: true, pingIntervalMs: 0 });
    procs.push(b);
    const [, bPort] = await b.waitForOutput(/^ready (\d+) redis\n/m, { ms: 15_000 });
    const onB = await h.connectReady(h.wsUrl(Number(bPort)));
    clients.push(onB);
    b.write('publish from-b');
    await b.waitForOutput(/^published from-b$/m);
    await c.waitFor(4);
    assert.equal(c.messages[3], h.frame('from-b'), 'A\'s client gets B\'s event');
    a.write('publish from-a');
    await a.waitForOutput(/^published from-a$/m);
    await onB.waitFor(3);
    assert.deepEqual(onB.messages.slice(1), [h.frame('from-b'), h.frame('from-a')]);
    await c.waitFor(5);
    assert.equal(c.messages.length, 5);
    assert.equal(c.messages[4], h.frame('from-a'));
    assert.equal((await h.httpGet(port, '/ready')).body.bus, 'redis');
  });

  test('redisRequired with Redis down still refuses to start', async () => {
    const r = await h.tryStart({ redisUrl: `redis://127.0.0.1:${await h.freePort()}`, redisRequired: true });
    assert.equal(r.rejected && r.rejected.code, 'ERR_REDIS_UNAVAILABLE', JSON.stringify(r));
  });
});
