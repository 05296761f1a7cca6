// Highly available Redis (issue 12): offsets that show a hole (an epoch plus a contiguous
// sequence), Sentinel and Cluster failovers under a steady stream of publishes, and the codes a
// misconfigured topology rejects with. Every server runs in a child process (one process has one
// bus); every Redis is a private redis-server on a free loopback port (`redis-topology.js`).
'use strict';

const { test, describe, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');
const topo = require('./redis-topology');
const { offsetOf, parseOffset, eventsOf, waitForRaw, waitForEvent, since, resumedFrame } = require('./offsets');

const skip = h.redisSkipReason();
const CHANNEL = 'parcel_events';
const HISTORY = `{${CHANNEL}}:history`;

/** A server child process on `redisUrl`; resolves with `{proc, port, url}` once it is ready. */
async function serverOn(redisUrl, options = {}, env = {}) {
  const proc = h.spawnServer({ redisUrl, pingIntervalMs: 0, ...options },
    { env: h.cleanEnv({ LOG_LEVEL: 'warn', ...env }) });
  const [, port, mode] = await proc.waitForOutput(/^ready (\d+) (\w+)\n/m, { ms: 20_000 });
  assert.equal(mode, 'redis', `${proc.out()} ${proc.err()}`);
  return { proc, port: Number(port), url: h.wsUrl(Number(port)) };
}

/** Opens a client and waits for its welcome. */
async function open(url, list) {
  const c = await h.connectReady(url);
  list.push(c);
  return c;
}

/** The first frame after the welcome of a client that asked to resume: `resumed`/`resync_required` and what came before. */
async function resumeOutcome(client) {
  const i = await waitForRaw(client, (r) => /^\{"type":"(resumed|resync_required)"/.test(r), 'resumed or resync_required');
  return { kind: JSON.parse(client.raw[i]).type, before: client.raw.slice(1, i), frame: client.raw[i] };
}

describe('no silent gaps: epoch + contiguous sequence', { skip }, () => {
  const clients = [];
  const procs = [];
  let redis;
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(procs.map((p) => p.proc.stop()));
    await redis?.kill();
  });

  test('offsets are <epoch>-<seq> with contiguous sequences; a partial loss, an old-format offset and a restart without persistence get resync_required, never a replay with a hole', async () => {
    redis = await h.startRedis();
    const a = await serverOn(redis.url);
    const b = await serverOn(redis.url);
    procs.push(a, b);
    const live = await open(a.url, clients);
    const watchB = await open(b.url, clients);
    const start = parseOffset(JSON.parse(live.raw[0]).offset);
    assert.equal(start.seq, 0n, 'an empty history starts at <epoch>-0');
    assert.ok(start.ms > 10n ** 15n, 'the epoch is the master\'s clock in microseconds');
    a.proc.write('publish g 5');
    await a.proc.waitForOutput(/^published g$/m);
    await waitForEvent(live, 'g-5');
    const seen = eventsOf(live);
    assert.deepEqual(seen.map((e) => e.id), ['g-1', 'g-2', 'g-3', 'g-4', 'g-5']);
    assert.deepEqual(seen.map((e) => parseOffset(e.offset)), [1n, 2n, 3n, 4n, 5n].map((seq) => ({ ms: start.ms, seq })),
      'one epoch, sequence 1, 2, 3, ...');
    const stream = h.redisCli(redis.port, ['XRANGE', HISTORY, '-', '+']).stdout;
    for (const e of seen) assert.ok(stream.includes(e.offset), `${e.offset} is the stream entry id`);
    for (const key of [`{${CHANNEL}}:epoch`, `{${CHANNEL}}:seq`]) {
      assert.equal(h.redisCli(redis.port, ['EXISTS', key]).stdout.trim(), '1', `${key} exists`);
    }

    // A partial loss: g-3 deleted from the stream.
    assert.equal(h.redisCli(redis.port, ['XDEL', HISTORY, seen[2].offset]).stdout.trim(), '1');
    const hole = await open(since(b.url, seen[1].offset), clients);
    const holeOutcome = await resumeOutcome(hole);
    assert.equal(holeOutcome.kind, 'resync_required', `a replay would skip g-3: ${JSON.stringify(holeOutcome)}`);
    assert.deepEqual(holeOutcome.before, [], 'nothing replayed');
    // After the hole the history is whole again.
    const whole = await open(since(b.url, seen[2].offset), clients);
    const wholeOutcome = await resumeOutcome(whole);
    assert.deepEqual([...wholeOutcome.before, wholeOutcome.frame], [seen[3].raw, seen[4].raw, resumedFrame(seen[2].offset, 2)]);

    // An offset of the old format (a stream id in milliseconds), or of an unknown epoch.
    for (const o of ['1732590000000-3', `${start.ms - 1n}-3`]) {
      const old = await open(since(a.url, o), clients);
      assert.equal((await resumeOutcome(old)).kind, 'resync_required', o);
    }

    // A restart without persistence: the history is gone; the next epoch begins.
    await redis.restart();
    a.proc.write('publish after-restart');
    await a.proc.waitForOutput(/^published after-restart$/m, { ms: 30_000 });
    const fresh = offsetOf(await waitForEvent(live, 'after-restart'));
    assert.ok(parseOffset(fresh).ms > start.ms, 'a new epoch, after the old one');
    // Connected clients stay and go on (nothing was published while Redis was down; only
    // resuming from the old epoch is refused).
    for (const c of [live, watchB]) {
      assert.equal(await waitForEvent(c, 'after-restart'), `{"type":"parcel_updated","parcel_id":"after-restart","offset":"${fresh}"}`);
    }
    for (const s of [a, b]) {
      const back = await open(since(s.url, seen[4].offset), clients);
      const outcome = await resumeOutcome(back);
      assert.equal(outcome.kind, 'resync_required', `${s.port}: ${JSON.stringify(outcome)}`);
      assert.deepEqual(outcome.before, []);
    }
  });
});
