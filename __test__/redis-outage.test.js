// The shared Redis history and Redis outages: resuming on another instance, resync after FLUSHALL,
// a Redis SIGKILL + restart while a separate process publishes continuously (every client of every
// instance gets every event, in order), and the publisher's buffer while Redis is unreachable.
// Servers and publishers run in child processes (one process has one bus); clients are real `ws`
// clients; Redis is a private redis-server (no persistence) killed and restarted on its port.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');
const {
  offsetOf, cmpOffset, welcomeWith, resumedFrame, isEvent, eventsOf, welcomeOffset, waitForRaw,
  waitForEvent, since,
} = require('./offsets');

const PKG = JSON.stringify(h.PKG);
const CHANNEL = 'parcel_events';

// ---------------------------------------------------------------------------------------------
// Small tools

/** A child process running a server on the Redis bus (redisRequired, so never a silent fallback). */
async function serverProcess(redisUrl) {
  const p = h.spawnServer({ redisUrl, redisRequired: true, pingIntervalMs: 0 }, { env: h.cleanEnv({ LOG_LEVEL: 'info' }) });
  const [, port, mode] = await p.waitForOutput(/^ready (\d+) (\w+)\n/m, { ms: 10_000 });
  assert.equal(mode, 'redis');
  return { proc: p, port: Number(port), url: h.wsUrl(Number(port)) };
}

/** A publish-only child process: publishes `ids` in call order and exits by itself. */
async function publishFrom(redisUrl, ids) {
  const p = h.spawnNodeScript(`
    const rt = require(${PKG});
    Promise.all(${JSON.stringify(ids)}.map((id) => rt.publishParcelUpdate(id)))
      .then(() => console.log('published'), (err) => { console.log('failed ' + err.code); process.exitCode = 3; });
  `, { env: h.cleanEnv({ REDIS_URL: redisUrl, REDIS_REQUIRED: '1' }) });
  assert.deepEqual(await p.waitForExit(10_000), { code: 0, signal: null }, `${p.out()} ${p.err()}`);
  assert.equal(p.out(), 'published\n');
}

/** The entry ids of the history stream, oldest first. */
function streamIds(redisPort) {
  const r = h.redisCli(redisPort, ['XRANGE', `{${CHANNEL}}:history`, '-', '+']);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter((l) => /^\d+-\d+$/.test(l.trim())).map((l) => l.trim());
}

// ---------------------------------------------------------------------------------------------

const skip = h.redisSkipReason();

describe('resume across instances on one Redis', { skip }, () => {
  let redis;
  let a;
  let b;
  const clients = [];

  async function open(u) {
    const c = await h.connectReady(u);
    clients.push(c);
    return c;
  }

  before(async () => {
    redis = await h.startRedis();
    [a, b] = await Promise.all([serverProcess(redis.url), serverProcess(redis.url)]);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all([a, b].filter(Boolean).map((s) => s.proc.stop()));
    await redis?.stop();
  });

  test('a client of A disconnects; a third process publishes; the client resumes on B: exact replay, same offsets', async () => {
    const onA = await open(a.url);
    const watchB = await open(b.url); // stays connected: the offsets B's clients see live
    assert.match(welcomeOffset(onA), /^\d+-0$/, 'an empty history: "<epoch>-0"');
    await publishFrom(redis.url, ['x-1', 'x-2', 'x-3']);
    await waitForEvent(onA, 'x-3');
    await waitForEvent(watchB, 'x-3');
    assert.deepEqual(onA.raw.slice(1), watchB.raw.slice(1), 'the same frames, offsets included, on both instances');
    const seen = eventsOf(onA);
    assert.deepEqual(seen.map((e) => e.id), ['x-1', 'x-2', 'x-3']);
    assert.deepEqual(seen.map((e) => e.offset), streamIds(redis.port), 'offsets are the stream entry ids');
    const last = seen[2].offset;
    await onA.close();

    const missed = ['y-1', 'y-2', 'y-3', 'y-4', 'y-5'];
    await publishFrom(redis.url, missed);
    await waitForEvent(watchB, 'y-5');
    const missedFrames = watchB.raw.slice(4);
    assert.deepEqual(missedFrames.map((r) => JSON.parse(r).parcel_id), missed);

    const onB = await open(since(b.url, last));
    assert.equal(onB.raw[0], welcomeWith(offsetOf(missedFrames[4])), 'B announces the newest offset');
    await waitForRaw(onB, (r) => r.startsWith('{"type":"resumed"'), 'resumed');
    assert.deepEqual(onB.raw.slice(1), [...missedFrames, resumedFrame(last, 5)], 'exactly the missed frames, same offsets, then resumed');

    // The same offset resumes on A as well (one history for all).
    const againOnA = await open(since(a.url, last));
    await waitForRaw(againOnA, (r) => r.startsWith('{"type":"resumed"'), 'resumed on A');
    assert.deepEqual(againOnA.raw.slice(1), [...missedFrames, resumedFrame(last, 5)]);

    // Then live, once each, with the offsets every instance agrees on.
    await publishFrom(redis.url, ['z-1', 'z-2']);
    for (const c of [onB, againOnA, watchB]) await waitForEvent(c, 'z-2');
    const live = watchB.raw.slice(9);
    assert.equal(live.length, 2);
    assert.deepEqual(onB.raw.slice(7), live);
    assert.deepEqual(againOnA.raw.slice(7), live);
    assert.deepEqual(streamIds(redis.port).slice(-2), live.map(offsetOf));

    // Resuming on B with the resume message, from the middle of the missed ones.
    const mid = await open(b.url);
    await mid.send(JSON.stringify({ type: 'resume', since: offsetOf(missedFrames[2]) }));
    await waitForRaw(mid, (r) => r.startsWith('{"type":"resumed"'), 'resumed (message)');
    assert.deepEqual(mid.raw.slice(1), [...missedFrames.slice(3), ...live, resumedFrame(offsetOf(missedFrames[2]), 4)]);
  });

  test('a bare redis-cli PUBLISH is broadcast without offset and is not replayed', async () => {
    const c = await open(a.url);
    const w = await open(b.url);
    const start = welcomeOffset(c);
    const r = h.redisCli(redis.port, ['PUBLISH', CHANNEL, '{"type":"parcel_updated","parcel_id":"bare"}']);
    assert.equal(r.stdout.trim(), '2', 'both instances subscribe');
    assert.equal(await waitForEvent(c, 'bare'), h.frame('bare'), 'no offset');
    await publishFrom(redis.url, ['after-bare']);
    const after = await waitForEvent(c, 'after-bare');
    assert.equal(await waitForEvent(w, 'after-bare'), after);
    const d = await open(since(b.url, start));
    await waitForRaw(d, (x) => x.startsWith('{"type":"resumed"'), 'resumed');
    assert.deepEqual(d.raw.slice(1), [after, resumedFrame(start, 1)], 'the bare event is not in the history');
  });

  test('after FLUSHALL an old offset gets resync_required; the new history resumes', async () => {
    const c = await open(a.url);
    await publishFrom(redis.url, ['pre-flush-1', 'pre-flush-2']);
    const old = offsetOf(await waitForEvent(c, 'pre-flush-1'));
    const oldHead = offsetOf(await waitForEvent(c, 'pre-flush-2'));
    const r = h.redisCli(redis.port, ['FLUSHALL']);
    assert.equal(r.stdout.trim(), 'OK', r.stderr);
    assert.deepEqual(streamIds(redis.port), []);

    // Before anything new: an offset older than the newest one cannot be answered.
    const x = await open(since(b.url, old));
    const current = welcomeOffset(x);
    assert.equal(current, oldHead, 'the welcome still names the newest offset this instance knows');
    await x.next();
    assert.equal(x.raw[1], `{"type":"resync_required","since":"${old}","offset":"${current}"}`);

    await publishFrom(redis.url, ['post-flush-1', 'post-flush-2', 'post-flush-3']);
    const fresh = eventsOf(await (async () => {
      await waitForEvent(c, 'post-flush-3');
      return c;
    })()).slice(-3);
    assert.deepEqual(fresh.map((e) => e.id), ['post-flush-1', 'post-flush-2', 'post-flush-3']);
    assert.deepEqual(fresh.map((e) => e.offset), streamIds(redis.port), 'the new stream\'s ids');
    assert.ok(cmpOffset(fresh[0].offset, oldHead) > 0, 'new ids come after the old ones');
    assert.equal(await waitForEvent(x, 'post-flush-1'), fresh[0].raw, 'the resync\'d client gets the new events live');
    assert.equal(await waitForEvent(x, 'post-flush-3'), fresh[2].raw);

    // Old offsets (even the old head): resync_required, on both instances.
    for (const s of [a, b]) {
      for (const o of [old, oldHead]) {
        const y = await open(since(s.url, o));
        await y.next();
        assert.equal(y.raw[1], `{"type":"resync_required","since":"${o}","offset":"${fresh[2].offset}"}`, `since ${o} on ${s.port}`);
      }
    }
    // New offsets resume normally.
    const z = await open(since(b.url, fresh[0].offset));
    await waitForRaw(z, (m) => m.startsWith('{"type":"resumed"'), 'resumed');
    assert.deepEqual(z.raw.slice(1), [fresh[1].raw, fresh[2].raw, resumedFrame(fresh[0].offset, 2)]);
  });
});

// ---------------------------------------------------------------------------------------------

/**
 * A publish-only child process that publishes seq-0 .. seq-(n-1) every `everyMs`:
 * - 'await': awaits each publish before waiting for the next tick (at most one pending);
 * - 'timer': fires on the timer without waiting (publishes pile up in the buffer while Redis is
 *   away).
 * Prints "fired i" and "ok i" / "err i CODE"; exits by itself once all have settled.
 */
function sequencePublisher(redisUrl, mode, n, everyMs) {
  return h.spawnNodeScript(`
    const rt = require(${PKG});
    const n = ${n};
    const settle = (i) => (p) => p.then(() => console.log('ok ' + i), (e) => console.log('err ' + i + ' ' + e.code));
    if (${JSON.stringify(mode)} === 'await') {
      (async () => {
        for (let i = 0; i < n; i++) {
          console.log('fired ' + i);
          await settle(i)(rt.publishParcelUpdate('seq-' + i));
          await new Promise((r) => setTimeout(r, ${everyMs}));
        }
      })();
    } else {
      let i = 0;
      const timer = setInterval(() => {
        const k = i++;
        console.log('fired ' + k);
        settle(k)(rt.publishParcelUpdate('seq-' + k));
        if (i === n) clearInterval(timer);
      }, ${everyMs});
    }
  `, { env: h.cleanEnv({ REDIS_URL: redisUrl, REDIS_REQUIRED: '1', LOG_LEVEL: 'info' }) });
}

/** Lines "ok i" in the order printed. */
function settled(proc, word = 'ok') {
  return [...proc.out().matchAll(new RegExp(`^${word} (\\d+)`, 'gm'))].map((m) => Number(m[1]));
}

/**
 * What a client received of seq-0 .. seq-(n-1): missing numbers, duplicates, whether the first
 * occurrences are in order, and the other frames it got.
 */
function analyse(client, n) {
  const seqs = eventsOf(client).filter((e) => e.id.startsWith('seq-')).map((e) => Number(e.id.slice(4)));
  const seen = new Set();
  const firsts = [];
  const dupes = [];
  for (const s of seqs) {
    if (seen.has(s)) dupes.push(s);
    else {
      seen.add(s);
      firsts.push(s);
    }
  }
  const missing = [];
  for (let i = 0; i < n; i++) if (!seen.has(i)) missing.push(i);
  const inOrder = firsts.every((s, i) => i === 0 || s > firsts[i - 1]);
  const others = client.raw.slice(1).filter((r) => !isEvent(r));
  const offsets = eventsOf(client).map((e) => e.offset);
  const offsetsIncrease = offsets.every((o, i) => i === 0 || (o && offsets[i - 1] && cmpOffset(offsets[i - 1], o) < 0));
  return { count: seqs.length, missing, dupes, inOrder, others, offsetsIncrease, seqs };
}

describe('Redis SIGKILLed and restarted while another process publishes continuously', { skip }, () => {
  let redis;
  let servers = [];
  const clients = [];
  const procs = [];

  before(async () => {
    redis = await h.startRedis();
    servers = await Promise.all([serverProcess(redis.url), serverProcess(redis.url)]);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(procs.map((p) => p.stop()));
    await Promise.all(servers.map((s) => s.proc.stop()));
    await redis?.stop();
  });

  for (const mode of ['await', 'timer']) {
    test(`publisher ${mode === 'await' ? 'awaiting each publish' : 'firing every 20 ms without waiting'}: every client of both instances gets seq-0..149 once each, in order`, async (t) => {
      const N = 150;
      const mine = [];
      for (const s of servers) {
        for (let k = 0; k < 2; k++) {
          const c = await h.connectReady(s.url);
          clients.push(c);
          mine.push(c);
        }
      }
      const pub = sequencePublisher(redis.url, mode, N, 20);
      procs.push(pub);
      await pub.waitForOutput(/^ok 40\n/m, { ms: 10_000 });
      const firedAtKill = settled(pub, 'fired').length;
      await redis.kill('SIGKILL');
      const killedAt = Date.now();
      // Some publishes stay pending meanwhile.
      await h.delay(1000);
      await redis.restart();
      const restartedAt = Date.now();
      await pub.waitForExit(30_000);
      const doneAt = Date.now();
      const oks = settled(pub);
      const errs = settled(pub, 'err');
      assert.deepEqual(errs, [], `no publish rejected: ${pub.out().match(/^err .*$/gm)}`);
      assert.deepEqual(oks, Array.from({ length: N }, (_, i) => i), 'every publish resolved, in order');

      await Promise.all(mine.map((c) => waitForEvent(c, `seq-${N - 1}`, 20_000)));
      await h.delay(300); // let any late duplicate arrive
      const reports = mine.map((c) => analyse(c, N));
      const dupTotal = reports.reduce((n, r) => n + r.dupes.length, 0);
      const resyncs = reports.map((r) => r.others.filter((o) => o.startsWith('{"type":"resync_required"')).length);
      t.diagnostic(`fired before the kill: ${firedAtKill}; outage ${restartedAt - killedAt} ms; publisher done ${doneAt - restartedAt} ms after the restart`);
      t.diagnostic(`duplicates per client: ${JSON.stringify(reports.map((r) => r.dupes))}; resync_required frames per client: ${JSON.stringify(resyncs)}`);
      t.diagnostic(`other frames: ${JSON.stringify(reports[0].others)}; offsets strictly increasing per client: ${JSON.stringify(reports.map((r) => r.offsetsIncrease))}`);
      reports.forEach((r, i) => {
        assert.deepEqual(r.missing, [], `client ${i}: no event lost`);
        assert.ok(r.inOrder, `client ${i}: in order: ${r.seqs.join(',')}`);
        assert.ok(r.others.every((o) => o === '{"type":"resync_required"}'), `client ${i}: nothing but events (and resync notices): ${JSON.stringify(r.others)}`);
      });
      // Exactly once (a batch re-sent after a lost reply would show here: at-least-once).
      assert.deepEqual(reports.map((r) => r.dupes), mine.map(() => []), 'no duplicates');

      // Redis restarted empty: an offset from before the kill cannot be resumed any more.
      const before = eventsOf(mine[0])[0].offset;
      const late = await h.connectReady(since(servers[1].url, before));
      clients.push(late);
      await late.next();
      assert.match(late.raw[1], new RegExp(`^\\{"type":"resync_required","since":"${before}","offset":"\\d+-\\d+"\\}$`));
      for (const c of mine) await c.close();
    });
  }
});

// ---------------------------------------------------------------------------------------------

/** A publish-only child process driven by stdin: "publish PREFIX N" fires PREFIX-1..N at once. */
function commandPublisher(redisUrl) {
  return h.spawnNodeScript(`
    const rt = require(${PKG});
    const readline = require('node:readline');
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      const [cmd, prefix, n] = line.split(' ');
      if (cmd === 'publish') {
        for (let i = 1; i <= Number(n); i++) {
          const id = prefix + '-' + i;
          rt.publishParcelUpdate(id).then(() => console.log('resolved ' + id), (e) => console.log('rejected ' + id + ' ' + e.code));
        }
        console.log('fired ' + prefix);
      } else if (cmd === 'exit') {
        rl.close();
        process.stdin.destroy();
      }
    });
    console.log('ready');
  `, { env: h.cleanEnv({ REDIS_URL: redisUrl, REDIS_REQUIRED: '1', LOG_LEVEL: 'info' }) });
}

describe('publisher buffer while Redis is unreachable', { skip }, () => {
  let redis;
  let server;
  let publisher;
  const clients = [];

  before(async () => {
    redis = await h.startRedis();
    server = await serverProcess(redis.url);
    publisher = commandPublisher(redis.url);
    await publisher.waitForOutput(/^ready\n/m);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await publisher?.stop();
    await server?.proc.stop();
    if (redis) {
      try {
        process.kill(redis.pid, 'SIGCONT');
      } catch {}
      await redis.stop();
    }
  });

  async function publishAndWait(prefix, n, ms = h.DEFAULT_TIMEOUT) {
    publisher.write(`publish ${prefix} ${n}`);
    await publisher.waitForOutput(new RegExp(`^resolved ${prefix}-${n}\\n`, 'm'), { ms });
  }

  /** Publishes while Redis is down (`down()`), checks they stay pending > 4 s, then `up()`. */
  async function heldPublishes(t, prefix, down, up) {
    const c = await h.connectReady(server.url);
    clients.push(c);
    await publishAndWait(`${prefix}-warm`, 1);
    await waitForEvent(c, `${prefix}-warm-1`);
    await down();
    const N = 20;
    publisher.write(`publish ${prefix} ${N}`);
    await publisher.waitForOutput(new RegExp(`^fired ${prefix}\\n`, 'm'));
    const firedAt = Date.now();
    await h.delay(4500);
    const settledEarly = publisher.out().split('\n').filter((l) => l.startsWith(`resolved ${prefix}-`) || l.startsWith(`rejected ${prefix}-`))
      .filter((l) => !l.startsWith(`resolved ${prefix}-warm`));
    assert.deepEqual(settledEarly, [], `publishes stay pending while Redis is away (${Date.now() - firedAt} ms)`);
    await up();
    const upAt = Date.now();
    await publisher.waitForOutput(new RegExp(`^resolved ${prefix}-${N}\\n`, 'm'), { ms: 20_000 });
    const resolvedIn = Date.now() - upAt;
    const lines = publisher.out().split('\n').filter((l) => new RegExp(`^(resolved|rejected) ${prefix}-\\d+$`).test(l));
    assert.deepEqual(lines, Array.from({ length: N }, (_, i) => `resolved ${prefix}-${i + 1}`), 'all resolve, in order, none rejected');
    await waitForEvent(c, `${prefix}-${N}`, 20_000);
    await publishAndWait(`${prefix}-after`, 1, 10_000);
    await waitForEvent(c, `${prefix}-after-1`, 10_000);
    await h.delay(200);
    const ids = eventsOf(c).map((e) => e.id).filter((id) => id.startsWith(`${prefix}-`) && !id.includes('warm') && !id.includes('after'));
    const firsts = [...new Set(ids)];
    const dupes = ids.length - firsts.length;
    const others = c.raw.slice(1).filter((r) => !isEvent(r));
    t.diagnostic(`resolved ${resolvedIn} ms after Redis came back; duplicates delivered: ${dupes}; other frames: ${JSON.stringify(others)}`);
    if (dupes) t.diagnostic(`delivered: ${ids.map((id) => id.slice(prefix.length + 1)).join(',')}`);
    assert.deepEqual(firsts, Array.from({ length: N }, (_, i) => `${prefix}-${i + 1}`), 'delivered: all, in order');
    assert.ok(others.every((o) => o === '{"type":"resync_required"}'), JSON.stringify(others));
    return { dupes, ids };
  }

  test('Redis killed: publishes stay pending (> 4 s), resolve after the restart and arrive in order, once', async (t) => {
    const { ids } = await heldPublishes(t, 'killed',
      () => redis.kill('SIGKILL'),
      () => redis.restart());
    assert.equal(ids.length, 20, `exactly once: ${ids.join(',')}`);
  });

  test('Redis frozen (SIGSTOP): publishes stay pending (> 4 s), resolve after SIGCONT and arrive in order (at-least-once)', async (t) => {
    await heldPublishes(t, 'frozen',
      async () => process.kill(redis.pid, 'SIGSTOP'),
      async () => process.kill(redis.pid, 'SIGCONT'));
  });
});
