// Hardening (issue 10), items 4 and 5: what a client sends is charged for what it costs.
// 4. Empty continuation frames (a message that never ends) are charged per frame and capped per
//    message: the connection is closed, not served forever.
// 5. Small requests do not buy huge answers: repeated resumes of the whole history and
//    unsubscribes answered with a 1,000-id state stay within a byte budget.
'use strict';

const { test, describe } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');
const k = require('./hardening-kit');

describe('hardening: a continuation-frame flood (item 4)', () => {
  test('after one non-final text frame, a stream of empty continuation frames is closed within a bounded count', () =>
    k.withServer({}, async (server) => {
      const c = await k.rawSession(server.port);
      try {
        await c.write(k.clientFrame(0x1, '{', false));
        // Empty masked continuation frames, 1,000 per write, until the server says it closed the
        // flooder (its own count: the client's writes land in socket buffers long before the
        // server reads them, so the client cannot tell how many frames the server took). Today's
        // code never closes it.
        const empty = Buffer.concat(Array.from({ length: 1000 }, () => k.clientFrame(0x0, Buffer.alloc(0), false)));
        const cut = () => {
          const closed = server.stats().connections.closed;
          return closed.too_large + closed.rate_limited;
        };
        const deadline = Date.now() + 30_000;
        let sent = 0;
        while (cut() === 0 && !c.ended && Date.now() < deadline) {
          if (!(await c.write(empty))) break;
          sent += 1000;
          if (sent % 20_000 === 0) await h.delay(5); // let the server catch up with the buffers
        }
        await h.waitUntil(() => cut() === 1, 'the flooder is closed (1009 or 4429)');
        // The close frame may be lost to the reset our own late writes provoke.
        const close = await c.closeFrame(5000);
        // (The fragment cap, 64, meets it before the frame rate's burst, 160: 1009.)
        if (close) assert.ok([1009, 4429].includes(close.code), `closed with ${close.code} ${close.reason}`);
        // The others are served as before.
        const other = await h.connectReady(h.wsUrl(server));
        await rt.publishParcelUpdate('after-flood');
        assert.equal(await other.next(), h.frame('after-flood'));
        await other.close();
      } finally {
        c.destroy();
      }
    }));

  test('with the message rate limit off, a message in more than the allowed fragments is still closed (1009)', () =>
    k.withServer({ messagesPerSecond: 0 }, async (server) => {
      const c = await k.rawSession(server.port);
      try {
        await c.write(k.clientFrame(0x1, '{', false));
        const empty = Buffer.concat(Array.from({ length: 1000 }, () => k.clientFrame(0x0, Buffer.alloc(0), false)));
        for (let i = 0; i < 50 && !c.ended && !c.frames.some((f) => f.opcode === 8); i++) await c.write(empty);
        const close = await c.closeFrame(5000);
        if (close) assert.equal(close.code, 1009, `closed with ${JSON.stringify(close)}`);
        await h.waitUntil(() => server.stats().connections.closed.too_large === 1, 'the flooder is closed (1009)');
      } finally {
        c.destroy();
      }
    }));
});

/** Publishes `n` events of `bytes` of data (in chunks) and returns the offset before them. */
async function history(server, n, bytes) {
  const seed = await h.connectReady(h.wsUrl(server));
  await rt.publishParcelUpdate('seed');
  await seed.waitFor(2);
  const since = k.offsetOf(seed.raw[1]);
  await seed.close();
  const data = k.filler(bytes);
  for (let i = 0; i < n; i += 500) {
    await Promise.all(Array.from({ length: Math.min(500, n - i) }, (_, j) => rt.publishParcelUpdate(`hist-${i + j}`, data)));
  }
  return since;
}

describe('hardening: egress amplification (item 5)', () => {
  test('40 resumes of the whole history (1 MB each) within the rate limit draw a bounded number of bytes', () =>
    k.withServer({}, async (server) => {
      const since = await history(server, 2000, 500);
      const c = await k.rawSession(server.port);
      try {
        const resume = k.clientFrame(0x1, JSON.stringify({ type: 'resume', since }));
        assert.ok(resume.length < 64);
        for (let i = 0; i < 40; i++) await c.write(resume);
        // Every resume is answered (resumed, resync_required or an error), or the client cut.
        const answered = () => c.texts().filter((t) => /^\{"type":"(resumed|resync_required|error)"/.test(t)).length;
        await c.until(() => (answered() >= 40 || c.ended || c.frames.some((f) => f.opcode === 8) ? true : undefined), 'every resume answered', 30_000);
        const replayed = c.texts().filter((t) => t.startsWith('{"type":"resumed"')).length;
        assert.ok(c.bytes < 12 * 2 ** 20, `the client drew ${(c.bytes / 2 ** 20).toFixed(1)} MiB for 40 requests of ${resume.length} bytes (${replayed} full replays)`);
      } finally {
        c.destroy();
      }
    }));

  test('unsubscribes of an unknown id, each answered with a 1,000-id state, draw a bounded number of bytes', () =>
    k.withServer({}, async (server) => {
      const c = await k.rawSession(server.port, { token: h.sign({ sub: 'amplifier' }) });
      try {
        // 1,000 ids of 200 bytes: a ~200 KB state, subscribed in chunks that fit maxMessageBytes.
        const ids = Array.from({ length: 1000 }, (_, i) => `${String(i).padStart(4, '0')}-${'p'.repeat(195)}`);
        for (let i = 0; i < 1000; i += 50) {
          await c.write(k.clientFrame(0x1, JSON.stringify({ type: 'subscribe', parcel_ids: ids.slice(i, i + 50) })));
          await h.delay(60); // under the message rate
        }
        await c.until(() => (c.texts().filter((t) => t.startsWith('{"type":"subscribed"')).length >= 20 ? true : undefined), 'the subscriptions', 10_000);
        const before = c.bytes;
        const unsubscribe = k.clientFrame(0x1, JSON.stringify({ type: 'unsubscribe', parcel_ids: ['unknown'] }));
        for (let i = 0; i < 200; i++) {
          if (c.ended || c.frames.some((f) => f.opcode === 8)) break;
          await c.write(unsubscribe);
          await h.delay(55); // under the message rate: 18/s
        }
        await h.delay(500);
        const drawn = c.bytes - before;
        assert.ok(drawn < 12 * 2 ** 20, `200 unsubscribes of ${unsubscribe.length} bytes drew ${(drawn / 2 ** 20).toFixed(1)} MiB`);
      } finally {
        c.destroy();
      }
    }));
});
