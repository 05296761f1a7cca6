// Operations endpoints on the WebSocket port (memory bus): /health, /metrics (validated by a
// strict Prometheus text parser), /stats and server.stats(), the dashboard switch, and the new
// options' validation.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');

const rt = require('..');
const h = require('./helpers');
const prom = require('./prometheus');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null };

/** GET /metrics, parsed strictly. */
async function scrape(server) {
  const r = await h.httpGet(server.port, '/metrics');
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  return prom.parse(r.raw);
}

/** Sends raw bytes and returns everything the server answers until it closes. */
function rawRequest(port, text) {
  return h.withTimeout(new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(text));
    const chunks = [];
    socket.on('data', (c) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.on('error', reject);
  }), 5000, 'a raw HTTP answer');
}

const EXPECTED_FAMILIES = {
  realtime_build_info: 'gauge',
  realtime_uptime_seconds: 'gauge',
  realtime_ready: 'gauge',
  realtime_draining: 'gauge',
  realtime_connections_open: 'gauge',
  realtime_connections_total: 'counter',
  realtime_connections_closed_total: 'counter',
  realtime_refusals_total: 'counter',
  realtime_events_published_total: 'counter',
  realtime_events_publish_failed_total: 'counter',
  realtime_publish_queue: 'gauge',
  realtime_events_received_total: 'counter',
  realtime_deliveries_total: 'counter',
  realtime_deliveries_dropped_total: 'counter',
  realtime_bytes_sent_total: 'counter',
  realtime_publish_paced_seconds_total: 'counter',
  realtime_bus_info: 'gauge',
  realtime_redis_connected: 'gauge',
  realtime_redis_reconnects_total: 'counter',
  realtime_redis_master_info: 'gauge',
  realtime_redis_failovers_total: 'counter',
  realtime_redis_replication_waits_total: 'counter',
  realtime_redis_replication_wait_seconds_total: 'counter',
  realtime_redis_replication_failures_total: 'counter',
  realtime_publish_to_send_seconds: 'histogram',
  realtime_log_records_dropped_total: 'counter',
};

describe('the Prometheus test parser is strict', () => {
  const ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 3\n';
  test('accepts a valid exposition', () => {
    const f = prom.parse(ok);
    assert.equal(prom.value(f, 'a_total', { x: '1' }), 3);
  });
  const bad = {
    'no final newline': ok.trimEnd(),
    'a bad metric name': '# TYPE 1a counter\n',
    'an unknown type': '# TYPE a widget\n',
    'a second TYPE': '# TYPE a gauge\n# TYPE a gauge\n',
    'TYPE after samples': 'a 1\n# TYPE a gauge\n',
    'a bad escape': 'a{x="\\t"} 1\n',
    'an unterminated label': 'a{x="1} 1\n',
    'a duplicate series': 'a{x="1"} 1\na{x="1"} 2\n',
    'a negative counter': '# TYPE a_total counter\na_total -1\n',
    'a bad value': 'a one\n',
    'interleaved families': 'a 1\nb 1\na{x="2"} 1\n',
    'a histogram without +Inf': '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
    'decreasing buckets': '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="2"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 2\n',
    'unsorted bounds': '# TYPE h histogram\nh_bucket{le="2"} 1\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    '_count differing from +Inf': '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n',
    'a reserved label': 'a{__x="1"} 1\n',
    'an empty line': 'a 1\n\nb 1\n',
  };
  for (const [what, text] of Object.entries(bad)) {
    test(`rejects ${what}`, () => {
      assert.throws(() => prom.parse(text), prom.ParseError);
    });
  }
});

describe('operations endpoints', () => {
  let server;
  const clients = [];

  before(async () => {
    server = await rt.startServer({ ...BASE, port: 0 });
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
  });

  test('GET /health: 200 with status, bus mode, Redis, clients, uptime and version', async () => {
    const r = await h.httpGet(server.port, '/health');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.equal(r.headers.connection, 'close');
    assert.deepEqual(Object.keys(r.body), ['status', 'bus', 'redis', 'clients', 'uptimeSeconds', 'version', 'draining']);
    assert.equal(r.body.status, 'ok');
    assert.equal(r.body.bus, 'memory');
    assert.deepEqual(r.body.redis, { configured: false, required: false, connected: false });
    assert.equal(r.body.clients, 0);
    assert.equal(typeof r.body.uptimeSeconds, 'number');
    assert.ok(r.body.uptimeSeconds >= 0);
    assert.equal(r.body.version, require('../package.json').version);
    assert.equal(r.body.draining, false);
  });

  test('HEAD /health has the status and no body; other methods get 405', async () => {
    const head = await h.httpGet(server.port, '/health', {}, 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.raw, '');
    assert.ok(Number(head.headers['content-length']) > 0);
    const post = await h.httpGet(server.port, '/health', {}, 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.body.code, 'METHOD_NOT_ALLOWED');
    assert.equal(post.headers.allow, 'GET, HEAD');
  });

  test('GET /metrics is valid Prometheus text with every documented family', async () => {
    const families = await scrape(server);
    for (const [name, type] of Object.entries(EXPECTED_FAMILIES)) {
      const f = families.get(name);
      assert.ok(f, `family ${name} is exposed`);
      assert.equal(f.type, type, `type of ${name}`);
      assert.ok(f.help && f.help.length > 10, `${name} has a HELP text`);
      assert.ok(f.samples.length > 0, `${name} has samples`);
    }
    for (const name of families.keys()) assert.ok(name in EXPECTED_FAMILIES, `undocumented family ${name}`);
    assert.equal(prom.value(families, 'realtime_build_info', { version: require('../package.json').version }), 1);
    assert.equal(prom.value(families, 'realtime_ready'), 1);
    assert.equal(prom.value(families, 'realtime_bus_info', { mode: 'memory', redis_required: 'false' }), 1);
    // Every refusal code and close reason is reported from the start (at 0).
    for (const code of ['TOKEN_MISSING', 'TOKEN_EXPIRED', 'USER_REJECTED', 'NOT_FOUND', 'DRAINING', 'HANDSHAKE_TIMEOUT',
      'ORIGIN_NOT_ALLOWED', 'TOO_MANY_CONNECTIONS', 'TOO_MANY_CONNECTIONS_FROM_IP', 'INVALID_PARCELS', 'INVALID_OFFSET']) {
      assert.notEqual(prom.value(families, 'realtime_refusals_total', { reason: code }), undefined, code);
    }
    for (const reason of ['client', 'shutdown', 'too_slow', 'stuck', 'too_large', 'protocol_error',
      'token_expired', 'refresh_refused', 'heartbeat_timeout', 'rate_limited']) {
      assert.notEqual(prom.value(families, 'realtime_connections_closed_total', { reason }), undefined, reason);
    }
    // Scraping is not a refusal and not a connection.
    const again = await scrape(server);
    assert.equal(prom.value(again, 'realtime_refusals_total', { reason: 'NOT_FOUND' }), 0);
    assert.equal(prom.value(again, 'realtime_connections_total'), 0);
  });

  test('the figures follow connections, events, refusals and closes', async () => {
    const before = await scrape(server);
    const v0 = (name, labels) => prom.value(before, name, labels);
    for (let i = 0; i < 5; i++) clients.push(await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: `u${i}` }) })));
    const ids = Array.from({ length: 100 }, (_, i) => `metric-${i}`);
    await Promise.all(ids.map((id) => rt.publishParcelUpdate(id)));
    await Promise.all(clients.map((c) => c.waitFor(1 + ids.length)));
    await h.expectRefusal(h.wsUrl(server, { token: null }), {}, 401, 'TOKEN_MISSING');
    await h.expectRefusal(h.wsUrl(server, { token: h.sign({ sub: 'x' }, { expiresIn: -60 }) }), {}, 401, 'TOKEN_EXPIRED');
    // What the clients received (welcome and events, offsets included), as WebSocket frames.
    const wire = (text) => {
      const n = Buffer.byteLength(text);
      return n + (n < 126 ? 2 : n < 65536 ? 4 : 10);
    };
    const received = clients.reduce((sum, c) => sum + c.raw.reduce((s2, m) => s2 + wire(m), 0), 0);
    const gone = clients.pop();
    await gone.close();
    await h.waitUntil(() => server.clientCount === 4, 'the closed client is counted out');

    const after = await scrape(server);
    const v = (name, labels) => prom.value(after, name, labels);
    assert.equal(v('realtime_connections_open'), 4);
    assert.equal(v('realtime_connections_total') - v0('realtime_connections_total'), 5);
    assert.equal(v('realtime_connections_closed_total', { reason: 'client' }) - v0('realtime_connections_closed_total', { reason: 'client' }), 1);
    assert.equal(v('realtime_events_published_total') - v0('realtime_events_published_total'), 100);
    assert.equal(v('realtime_events_received_total') - v0('realtime_events_received_total'), 100);
    assert.equal(v('realtime_deliveries_total') - v0('realtime_deliveries_total'), 500, '100 events × 5 clients');
    assert.equal(v('realtime_bytes_sent_total') - v0('realtime_bytes_sent_total'), received,
      'bytes: every event frame and welcome, with its 2-byte WebSocket header');
    assert.equal(v('realtime_refusals_total', { reason: 'TOKEN_MISSING' }) - v0('realtime_refusals_total', { reason: 'TOKEN_MISSING' }), 1);
    assert.equal(v('realtime_refusals_total', { reason: 'TOKEN_EXPIRED' }) - v0('realtime_refusals_total', { reason: 'TOKEN_EXPIRED' }), 1);
    const count = v('realtime_publish_to_send_seconds_count') - v0('realtime_publish_to_send_seconds_count');
    assert.ok(count >= 5 && count <= 500, `one latency observation per flushed batch: ${count}`);
    assert.ok(v('realtime_publish_to_send_seconds_sum') > v0('realtime_publish_to_send_seconds_sum'));
    assert.ok(v('realtime_uptime_seconds') >= v0('realtime_uptime_seconds'));
  });

  test('server.stats() and GET /stats carry the same figures as /metrics', async () => {
    const fromJs = server.stats();
    const r = await h.httpGet(server.port, '/stats');
    assert.equal(r.status, 200);
    const families = await scrape(server);
    for (const stats of [fromJs, r.body]) {
      assert.equal(stats.version, require('../package.json').version);
      assert.equal(stats.status, 'ok');
      assert.equal(stats.ready, true);
      assert.equal(stats.draining, false);
      assert.equal(stats.wsPath, '/ws');
      assert.equal(stats.bus.mode, 'memory');
      assert.equal(stats.connections.open, prom.value(families, 'realtime_connections_open'));
      assert.equal(stats.connections.total, prom.value(families, 'realtime_connections_total'));
      assert.equal(stats.connections.closed.client, prom.value(families, 'realtime_connections_closed_total', { reason: 'client' }));
      assert.equal(stats.refusals.TOKEN_MISSING, prom.value(families, 'realtime_refusals_total', { reason: 'TOKEN_MISSING' }));
      assert.equal(stats.events.published, prom.value(families, 'realtime_events_published_total'));
      assert.equal(stats.events.received, prom.value(families, 'realtime_events_received_total'));
      assert.equal(stats.events.delivered, prom.value(families, 'realtime_deliveries_total'));
      assert.equal(stats.events.dropped, prom.value(families, 'realtime_deliveries_dropped_total'));
      assert.equal(stats.bytesSent, prom.value(families, 'realtime_bytes_sent_total'));
      assert.equal(stats.latency.count, prom.value(families, 'realtime_publish_to_send_seconds_count'));
      assert.equal(stats.latency.buckets.length, 17);
      assert.equal(stats.latency.buckets.at(-1).le, '+Inf');
      assert.equal(stats.latency.buckets.at(-1).count, stats.latency.count);
      assert.equal(stats.logRecordsDropped, 0);
    }
  });

  test('the dashboard page is served at / with a strict content security policy', async () => {
    const r = await h.httpGet(server.port, '/');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
    assert.match(r.headers['content-security-policy'], /default-src 'none'/);
    assert.match(r.raw, /^<!doctype html>/i);
    assert.doesNotMatch(r.raw, /https?:\/\//, 'nothing is loaded from another origin');
  });

  test('a WebSocket upgrade on an operations path is answered as the endpoint, never upgraded', async () => {
    const answer = await rawRequest(server.port,
      'GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(answer, /"status":"ok"/);
  });
});

describe('options of the operations features', () => {
  test('dashboard: false (or REALTIME_DASHBOARD=0) turns off / and /stats; /health and /metrics stay', async () => {
    const off = await rt.startServer({ ...BASE, port: 0, dashboard: false });
    process.env.REALTIME_DASHBOARD = '0';
    let offByEnv;
    try {
      offByEnv = await rt.startServer({ ...BASE, port: 0 });
    } finally {
      delete process.env.REALTIME_DASHBOARD;
    }
    try {
      for (const s of [off, offByEnv]) {
        assert.equal((await h.httpGet(s.port, '/')).body.code, 'NOT_FOUND');
        assert.equal((await h.httpGet(s.port, '/stats')).status, 404);
        assert.equal((await h.httpGet(s.port, '/health')).status, 200);
        assert.equal((await h.httpGet(s.port, '/metrics')).status, 200);
      }
    } finally {
      await off.close();
      await offByEnv.close();
    }
  });

  test('with path "/" the WebSocket path wins over the dashboard', async () => {
    const s = await rt.startServer({ ...BASE, port: 0, path: '/' });
    try {
      const plain = await h.httpGet(s.port, '/');
      assert.equal(plain.status, 426);
      const c = await h.connectReady(h.wsUrl(s, { path: '/' }));
      await c.close();
      assert.equal((await h.httpGet(s.port, '/health')).status, 200);
    } finally {
      await s.close();
    }
  });

  test('wrong values are refused like every other option', async () => {
    const invalid = async (options) => {
      await assert.rejects(rt.startServer({ ...BASE, port: 0, ...options }), (err) => {
        assert.ok(err instanceof TypeError, String(err));
        assert.equal(err.code, 'ERR_INVALID_OPTION');
        return true;
      });
    };
    await invalid({ dashboard: 'yes' });
    await invalid({ drainMs: -1 });
    await invalid({ drainMs: 1.5 });
    await invalid({ drainMs: '500ms' });
    await invalid({ drain: 500 });
    process.env.REALTIME_DRAIN_MS = 'soon';
    try {
      await invalid({});
    } finally {
      delete process.env.REALTIME_DRAIN_MS;
    }
    const s = await rt.startServer({ ...BASE, port: 0, drainMs: 0 });
    await assert.rejects(s.close({ drain: 100 }), { code: 'ERR_INVALID_OPTION' });
    await assert.rejects(s.close({ drainMs: -5 }), { code: 'ERR_INVALID_OPTION' });
    await s.close();
    assert.throws(() => rt.setLogger('console'), { code: 'ERR_INVALID_OPTION' });
  });
});

// Issue 14.7: a client that went away (its socket reset, or closed without a close frame) left;
// it did not break the protocol. In a child at LOG_LEVEL=info (npm test runs at warn).
describe('a client that goes away', () => {
  test('a reset or a bare FIN is logged and counted as the client leaving, not as a protocol error', async () => {
    const p = h.spawnServer({}, { env: h.cleanEnv({ LOG_LEVEL: 'info', LOG_FORMAT: 'json' }) });
    try {
      const [, port] = await p.waitForOutput(/^ready (\d+) /m, { ms: 10_000 });
      const reset = await h.connectReady(h.wsUrl(Number(port), { token: h.sign({ sub: 'resetter' }) }));
      const fin = await h.connectReady(h.wsUrl(Number(port), { token: h.sign({ sub: 'finisher' }) }));
      reset.ws._socket.resetAndDestroy(); // TCP RST
      fin.ws._socket.destroy(); // FIN, no close frame
      const closes = () => p.err().split('\n').filter((l) => l.includes('"connection_close"')).map((l) => JSON.parse(l));
      await h.waitUntil(() => closes().length === 2, `two close lines; stderr: ${p.err()}`);
      for (const r of closes()) {
        assert.equal(r.reason, 'client', JSON.stringify(r));
        assert.doesNotMatch(r.msg, /protocol error/, r.msg);
      }
      const families = prom.parse((await h.httpGet(Number(port), '/metrics')).raw);
      assert.equal(prom.value(families, 'realtime_connections_closed_total', { reason: 'client' }), 2);
      assert.equal(prom.value(families, 'realtime_connections_closed_total', { reason: 'protocol_error' }), 0);
    } finally {
      await p.stop();
    }
  });
});

// Issue 14.4: refusals are readable in the logs at the default level, without a flood.
describe('refusals in the logs', () => {
  test('logged at info (status, code, peer; never the token), 20 per 10 s, the rest at debug', async () => {
    const p = h.spawnServer({}, { env: h.cleanEnv({ LOG_LEVEL: 'debug', LOG_FORMAT: 'json' }) });
    try {
      const [, port] = await p.waitForOutput(/^ready (\d+) /m, { ms: 10_000 });
      const secretish = 'not-a-jwt-but-secret-7f3a';
      for (let i = 0; i < 30; i++) await h.expectRefusal(h.wsUrl(Number(port), { token: secretish }), {}, 401, 'TOKEN_MALFORMED');
      const refusals = () => p.err().split('\n').filter((l) => l.includes('"event":"refusal"')).map((l) => JSON.parse(l));
      await h.waitUntil(() => refusals().length === 30, `30 refusal lines; stderr: ${p.err()}`);
      const levels = refusals().map((r) => r.level);
      assert.equal(levels.filter((l) => l === 'info').length, 20, levels.join(','));
      assert.equal(levels.filter((l) => l === 'debug').length, 10, levels.join(','));
      assert.deepEqual(levels.slice(0, 20), Array(20).fill('info'), 'the first 20 at info');
      for (const r of refusals()) {
        assert.equal(r.status, 401);
        assert.equal(r.code, 'TOKEN_MALFORMED');
        assert.match(r.peer, /^127\.0\.0\.1:\d+$/);
      }
      assert.ok(!p.err().includes(secretish), 'the token is never logged');
    } finally {
      await p.stop();
    }
  });
});
