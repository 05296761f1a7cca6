// Hardening (issue 10), items 2 and 3: nobody locks new users out.
// 2. Token-less sockets that send a partial request head (and reopen when answered) must not
//    hold the server at its open-file limit: legitimate clients still connect.
// 3. The defaults bound connections: one IP with one token cannot take every slot, and a server
//    at its open-file limit refuses with a clear 503 instead of leaving handshakes hanging.
// The server runs in a child under a lowered `ulimit -n`, so that a few hundred sockets suffice.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');
const k = require('./hardening-kit');

/**
 * `sockets` raw connections from `localAddress`, each sending half a request head, reopened
 * (after 20 ms) whenever the server closes it, until `stop()`.
 */
function halfOpenFlood(port, sockets, localAddress) {
  let running = true;
  let opened = 0;
  const live = new Set();
  const open = () => {
    if (!running) return;
    opened++;
    const c = k.rawClient(port, { localAddress });
    live.add(c);
    c.connected.then(() => c.write('GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n'), () => {});
    c.socket.on('close', () => {
      live.delete(c);
      setTimeout(open, 20);
    });
  };
  for (let i = 0; i < sockets; i++) open();
  return {
    get opened() {
      return opened;
    },
    stop() {
      running = false;
      for (const c of live) c.destroy();
    },
  };
}

async function readyServer(nofile, options, env) {
  const proc = k.spawnLimitedServer(nofile, options, env);
  const [, port] = await proc.waitForOutput(/ready (\d+)/, { ms: 20_000 });
  return { proc, port: Number(port) };
}

/** One WebSocket attempt: {opened} or {status, code} or {error}; never hangs past `ms`. */
async function attempt(port, token, ms) {
  try {
    const c = await h.connect(`ws://127.0.0.1:${port}/ws?token=${encodeURIComponent(token)}`, {}, ms);
    return { opened: c };
  } catch (err) {
    const m = /HTTP (\d+)/.exec(err.message);
    return m ? { status: Number(m[1]) } : { error: err.message };
  }
}

describe('hardening: a half-open handshake flood (item 2)', () => {
  test('under ulimit -n 256, 600 token-less half-open sockets from one address do not lock out 20 legitimate clients', async () => {
    const { proc, port } = await readyServer(256, { maxConnections: 1000, maxConnectionsPerIp: 100 });
    const flood = halfOpenFlood(port, 600, '127.0.0.2');
    const legit = [];
    try {
      await h.delay(2000); // the flood is in place
      const results = [];
      for (let i = 0; i < 20; i++) {
        const r = await attempt(port, h.sign({ sub: `legit-${i}` }), 8000);
        results.push(r);
        if (r.opened) legit.push(r.opened);
        if (results.filter((x) => !x.opened).length >= 3) break; // locked out: no need to wait more
      }
      const failed = results.map((r, i) => (r.opened ? null : `#${i}: ${r.status ?? r.error}`)).filter(Boolean);
      assert.deepEqual(failed, [], `every legitimate client connected while ${flood.opened} flood sockets were opened`);
      // They are served: one event reaches all of them.
      proc.write('publish during-flood');
      await proc.waitForOutput(/published during-flood/);
      for (const c of legit) {
        assert.equal(h.withoutOffset(await c.next()), h.WELCOME);
        assert.match(await c.next(), /"parcel_id":"during-flood"/);
      }
    } finally {
      flood.stop();
      await Promise.all(legit.map((c) => c.terminate()));
      await proc.stop();
    }
  });
});

describe('hardening: safe default limits (item 3)', () => {
  test('with no limit set, a server under ulimit -n 256 reports its limits, admits what its file descriptors allow and refuses the rest with 503', async () => {
    const { proc, port } = await readyServer(256, {});
    const admitted = [];
    try {
      // The startup log names the limits it derived.
      const [, max, perIp] = await proc.waitForOutput(/maxConnections=(\d+) maxConnectionsPerIp=(\d+)/, { stream: 'stderr' });
      assert.ok(Number(max) > 0 && Number(max) < 256, `maxConnections ${max} is below the open-file limit`);
      assert.ok(Number(perIp) > 0, `maxConnectionsPerIp ${perIp} is on`);
      // One IP, one token, 300 attempts (20 at a time): each is answered, none hangs.
      const token = h.sign({ sub: 'greedy' });
      const results = [];
      for (let i = 0; i < 300; i += 20) {
        results.push(...(await Promise.all(Array.from({ length: 20 }, () => attempt(port, token, 8000)))));
      }
      for (const r of results) if (r.opened) admitted.push(r.opened);
      const hung = results.filter((r) => r.error);
      assert.deepEqual(hung.map((r) => r.error).slice(0, 3), [], `${hung.length} attempts got no answer`);
      assert.ok(admitted.length <= Math.min(Number(max), Number(perIp)), `${admitted.length} admitted`);
      const refused = results.filter((r) => r.status);
      assert.ok(refused.length > 0 && refused.every((r) => r.status === 503 || r.status === 429), `refusals: ${JSON.stringify(refused.slice(0, 3))}`);
      // Once one leaves, another (from another address) gets in.
      await admitted.pop().close();
      const other = await h.connect(`ws://127.0.0.1:${port}/ws?token=${encodeURIComponent(h.sign({ sub: 'late' }))}`, { localAddress: '127.0.0.3' }, 8000);
      admitted.push(other);
    } finally {
      await Promise.all(admitted.map((c) => c.terminate()));
      await proc.stop();
    }
  });

  test('the per-IP default is on: from one address, at most maxConnectionsPerIp are admitted (429 beyond), another address still gets in', async () => {
    const { proc, port } = await readyServer(4096, {});
    const admitted = [];
    try {
      const [, perIp] = await proc.waitForOutput(/maxConnectionsPerIp=(\d+)/, { stream: 'stderr' });
      const limit = Number(perIp);
      assert.ok(limit > 0 && limit <= 1000, `maxConnectionsPerIp defaults to ${limit}`);
      const token = h.sign({ sub: 'one-ip' });
      const results = [];
      // 20 at a time: under the per-address handshake limit, so only the connection limit speaks.
      for (let i = 0; i < limit + 20; i += 20) {
        const n = Math.min(20, limit + 20 - i);
        results.push(...(await Promise.all(Array.from({ length: n }, () => attempt(port, token, 8000)))));
      }
      for (const r of results) if (r.opened) admitted.push(r.opened);
      assert.equal(admitted.length, limit);
      assert.equal(results.filter((r) => r.status === 429).length, 20);
      const other = await h.connect(`ws://127.0.0.1:${port}/ws?token=${encodeURIComponent(token)}`, { localAddress: '127.0.0.4' }, 8000);
      admitted.push(other);
    } finally {
      await Promise.all(admitted.map((c) => c.terminate()));
      await proc.stop();
    }
  });
});
