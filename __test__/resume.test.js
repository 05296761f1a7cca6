// Offsets and resume in memory mode: `?since=` and the `resume` message replay exactly what a
// client missed (no gap, no duplicate at the seam with the live stream), `resync_required` when
// the history cannot tell, filtered replays, and history turned off. One server runs in this
// process; other settings (historySize, historyTtlMs, another history) run in child processes,
// since one process has one bus.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const h = require('./helpers');
const {
  offsetOf, parseOffset, cmpOffset, plus, welcomeWith, resumedFrame, isEvent, eventsOf,
  welcomeOffset, waitForRaw, waitForEvent, since,
} = require('./offsets');

// ---------------------------------------------------------------------------------------------
// Small tools

/** The next frame not consumed by next(), as received (offset included). */
async function nextRaw(client, ms) {
  await client.next(ms);
  return client.raw[client.cursor - 1];
}

/**
 * Asserts the frames a resuming client got after its welcome: `replayed` events, then exactly
 * one `resumed` with that count, then live events, nothing else; the events are `expectedIds` in
 * order with dense offsets right after `from`; the replayed ones are at or before the welcome
 * offset and the live ones after it.
 */
function assertResumedStream(client, from, expectedIds, { dense = true } = {}) {
  const welcome = welcomeOffset(client);
  const rest = client.raw.slice(1);
  const resumedAt = rest.findIndex((r) => typeof r === 'string' && r.startsWith('{"type":"resumed"'));
  assert.ok(resumedAt >= 0, `a resumed frame: ${JSON.stringify(rest)}`);
  const others = rest.filter((r, i) => i !== resumedAt && !isEvent(r));
  assert.deepEqual(others, [], 'nothing but events and one resumed frame');
  const replayed = rest.slice(0, resumedAt);
  assert.ok(replayed.every(isEvent), 'only events before resumed');
  assert.equal(rest[resumedAt], resumedFrame(from, replayed.length), 'resumed counts the replayed events');
  const events = eventsOf(client);
  assert.deepEqual(events.map((e) => e.id), expectedIds, 'exactly the events after the offset, in order, once each');
  events.forEach((e, i) => {
    assert.ok(e.offset, `event ${e.id} has an offset`);
    if (dense) assert.equal(e.offset, plus(from, i + 1), `dense offsets (event ${e.id})`);
    const isReplayed = i < replayed.length;
    assert.equal(cmpOffset(e.offset, welcome) <= 0, isReplayed,
      `${e.id} (${e.offset}) is ${isReplayed ? 'replayed: at or before' : 'live: after'} the welcome offset ${welcome}`);
  });
  return { replayed: replayed.length, welcome };
}

/** A child process running a memory-mode server with `options`; publishes on stdin lines. */
async function childServer(options = {}) {
  const p = h.spawnServer({ redisUrl: null, ...options });
  const [, port, mode] = await p.waitForOutput(/^ready (\d+) (\w+)\n/m, { ms: 10_000 });
  assert.equal(mode, 'memory');
  return {
    proc: p,
    port: Number(port),
    async publish(prefix, n) {
      p.write(`publish ${prefix} ${n}`);
      const [, outcome] = await p.waitForOutput(new RegExp(`^(published|failed) ${prefix}\\b.*\\n`, 'm'));
      assert.equal(outcome, 'published', p.out());
    },
  };
}

// ---------------------------------------------------------------------------------------------

describe('resume in memory mode', () => {
  let server;
  let url;
  const clients = [];
  const children = [];

  async function open(u) {
    const c = await h.connectReady(u);
    clients.push(c);
    return c;
  }

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
    url = h.wsUrl(server);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(children.map((c) => c.proc.stop()));
    await server?.close();
  });

  test('welcome and events carry offsets "<boot ms>-<n>", dense; subscribers see the same offsets', async () => {
    const c = await open(url);
    const w = welcomeOffset(c);
    assert.match(w, /^\d+-\d+$/);
    assert.equal(c.raw[0], welcomeWith(w), 'the welcome byte for byte, offset last');
    const seen = [];
    const unsubscribe = rt.subscribeToParcelEvents((e) => seen.push(e));
    try {
      for (const id of ['o-1', 'o-2', 'o-3']) await rt.publishParcelUpdate(id);
      await rt.publishParcelUpdate('o-data', { price: 5 });
      await c.waitFor(5);
      await h.waitUntil(() => seen.length >= 4, 'subscriber got 4 events');
    } finally {
      unsubscribe();
    }
    const events = c.raw.slice(1);
    assert.deepEqual(events, [
      `{"type":"parcel_updated","parcel_id":"o-1","offset":"${plus(w, 1)}"}`,
      `{"type":"parcel_updated","parcel_id":"o-2","offset":"${plus(w, 2)}"}`,
      `{"type":"parcel_updated","parcel_id":"o-3","offset":"${plus(w, 3)}"}`,
      `{"type":"parcel_updated","parcel_id":"o-data","data":{"price":5},"offset":"${plus(w, 4)}"}`,
    ]);
    assert.deepEqual(seen.map((e) => e.offset), [1, 2, 3, 4].map((n) => plus(w, n)), 'callbacks get the same offsets');
    // The boot part is this process's start, not the time of the event.
    assert.ok(Number(parseOffset(w).ms) <= Date.now());
    // A new client's welcome is the newest offset.
    const d = await open(url);
    assert.equal(d.raw[0], welcomeWith(plus(w, 4)));
  });

  test('disconnect, events while away, reconnect with ?since=: exactly the missed events, resumed, then live', async () => {
    const a = await open(url);
    await rt.publishParcelUpdate('away-before-1');
    await rt.publishParcelUpdate('away-before-2');
    const last = offsetOf(await waitForEvent(a, 'away-before-2'));
    await a.close();
    const missed = Array.from({ length: 5 }, (_, i) => `away-missed-${i + 1}`);
    for (const id of missed) await rt.publishParcelUpdate(id);
    const b = await open(since(url, last));
    assert.equal(b.raw[0], welcomeWith(plus(last, 5)), 'the welcome announces the newest offset');
    await waitForRaw(b, (r) => r.startsWith('{"type":"resumed"'), 'resumed');
    await rt.publishParcelUpdate('away-live-1');
    await rt.publishParcelUpdate('away-live-2');
    await waitForEvent(b, 'away-live-2');
    await rt.publishParcelUpdate('away-sentinel');
    await waitForEvent(b, 'away-sentinel');
    const { replayed } = assertResumedStream(b, last, [...missed, 'away-live-1', 'away-live-2', 'away-sentinel']);
    assert.equal(replayed, 5);
    assert.equal(b.raw[6], resumedFrame(last, 5));
  });

  test('resuming from the newest offset replays nothing: resumed with 0, then live', async () => {
    const a = await open(url);
    await rt.publishParcelUpdate('caught-up-1');
    const last = offsetOf(await waitForEvent(a, 'caught-up-1'));
    await a.close();
    const b = await open(since(url, last));
    assert.equal(b.raw[0], welcomeWith(last));
    assert.equal(await nextRaw(b), resumedFrame(last, 0));
    await rt.publishParcelUpdate('caught-up-2');
    assert.equal(await nextRaw(b), `{"type":"parcel_updated","parcel_id":"caught-up-2","offset":"${plus(last, 1)}"}`);
  });

  test('events published WHILE the client reconnects: replay + live is exact, in order, no duplicate (20 rounds)', async () => {
    let dupes = 0;
    for (let round = 0; round < 20; round++) {
      const a = await open(url);
      await rt.publishParcelUpdate(`race-${round}-seen`);
      const last = offsetOf(await waitForEvent(a, `race-${round}-seen`));
      await a.close();
      const ids = [];
      const publish = (id) => {
        ids.push(id);
        return rt.publishParcelUpdate(id);
      };
      for (let i = 0; i < 3; i++) await publish(`race-${round}-missed-${i}`);
      // Publishes fired concurrently with the connect, spread over a few milliseconds so that
      // some land before the welcome, some during the replay, some after.
      const pubs = [];
      const spread = 1 + (round % 5);
      for (let i = 0; i < 12; i++) {
        pubs.push(new Promise((resolve, reject) => {
          setTimeout(() => publish(`race-${round}-during-${i}`).then(resolve, reject), (i * spread) / 4);
        }));
      }
      const connecting = open(since(url, last));
      await Promise.all(pubs);
      const b = await connecting;
      await waitForRaw(b, (r) => r.startsWith('{"type":"resumed"'), `round ${round}: resumed`);
      await publish(`race-${round}-tail`);
      await waitForEvent(b, `race-${round}-tail`);
      // Publishes were fired in timer order; their offsets are in call order (one queue).
      const got = eventsOf(b).map((e) => e.id);
      if (new Set(got).size !== got.length) dupes++;
      assertResumedStream(b, last, ids);
      await b.close();
    }
    assert.equal(dupes, 0);
  });

  test('the resume message mid-connection replays only what the connection did not get live', async () => {
    const old = await open(url);
    await rt.publishParcelUpdate('msg-seen');
    const last = offsetOf(await waitForEvent(old, 'msg-seen'));
    await old.close();
    for (const id of ['msg-missed-1', 'msg-missed-2', 'msg-missed-3']) await rt.publishParcelUpdate(id);
    const c = await open(url); // fresh, without since
    const welcome = welcomeOffset(c);
    assert.equal(welcome, plus(last, 3));
    await rt.publishParcelUpdate('msg-live-1');
    await rt.publishParcelUpdate('msg-live-2');
    await waitForEvent(c, 'msg-live-2');
    await c.send(JSON.stringify({ type: 'resume', since: last }));
    const at = await waitForRaw(c, (r) => r.startsWith('{"type":"resumed"'), 'resumed');
    assert.deepEqual(c.raw.slice(3, at + 1), [
      `{"type":"parcel_updated","parcel_id":"msg-missed-1","offset":"${plus(last, 1)}"}`,
      `{"type":"parcel_updated","parcel_id":"msg-missed-2","offset":"${plus(last, 2)}"}`,
      `{"type":"parcel_updated","parcel_id":"msg-missed-3","offset":"${plus(last, 3)}"}`,
      resumedFrame(last, 3),
    ], 'the 3 missed events (not the 2 it got live), then resumed');
    await rt.publishParcelUpdate('msg-live-3');
    assert.equal(await waitForEvent(c, 'msg-live-3'), `{"type":"parcel_updated","parcel_id":"msg-live-3","offset":"${plus(last, 6)}"}`);
    assert.equal(c.raw.length, 8, JSON.stringify(c.raw));

    // Resuming from an offset it already got live (after the welcome): nothing to replay.
    const live1 = plus(last, 4);
    await c.send(JSON.stringify({ type: 'resume', since: live1 }));
    await c.waitFor(9);
    assert.equal(c.raw[8], resumedFrame(live1, 0));
    await rt.publishParcelUpdate('msg-live-4');
    await waitForEvent(c, 'msg-live-4');
    assert.equal(c.raw.length, 10, JSON.stringify(c.raw));
  });

  test('the resume message sent at once while events flow: replay + live exact, no duplicate (20 rounds)', async () => {
    for (let round = 0; round < 20; round++) {
      const a = await open(url);
      await rt.publishParcelUpdate(`msgrace-${round}-seen`);
      const last = offsetOf(await waitForEvent(a, `msgrace-${round}-seen`));
      await a.close();
      const ids = [];
      const publish = (id) => {
        ids.push(id);
        return rt.publishParcelUpdate(id);
      };
      for (let i = 0; i < 3; i++) await publish(`msgrace-${round}-missed-${i}`);
      const pubs = [];
      for (let i = 0; i < 10; i++) {
        pubs.push(new Promise((resolve, reject) => {
          setTimeout(() => publish(`msgrace-${round}-during-${i}`).then(resolve, reject), (i * (1 + (round % 4))) / 4);
        }));
      }
      const b = await open(url);
      await b.send(JSON.stringify({ type: 'resume', since: last }));
      await Promise.all(pubs);
      await waitForRaw(b, (r) => r.startsWith('{"type":"resumed"'), `round ${round}: resumed`);
      await publish(`msgrace-${round}-tail`);
      await waitForEvent(b, `msgrace-${round}-tail`);
      const rest = b.raw.slice(1);
      const resumedAt = rest.findIndex((r) => r.startsWith('{"type":"resumed"'));
      const dump = `round ${round}: ${JSON.stringify(rest)}`;
      assert.ok(rest.every((r, i) => i === resumedAt || isEvent(r)), dump);
      const got = eventsOf(b).map((e) => e.id);
      assert.deepEqual([...got].sort(), [...ids].sort(), `every event exactly once; ${dump}`);
      // Events the connection got live before its resume message was handled come first (after
      // the welcome offset); then the replayed ones (up to the welcome offset, the count that
      // resumed reports); then live again, continuing where the first live ones stopped.
      const welcome = welcomeOffset(b);
      const before = rest.slice(0, resumedAt).map(offsetOf);
      const liveFirst = before.filter((o) => cmpOffset(o, welcome) > 0);
      const replayed = before.slice(liveFirst.length);
      assert.deepEqual(before.slice(0, liveFirst.length), liveFirst, `live events, then replayed ones; ${dump}`);
      assert.equal(rest[resumedAt], resumedFrame(last, replayed.length), dump);
      const dense = (from, n) => Array.from({ length: n }, (_, i) => plus(from, i + 1));
      assert.equal(welcome, plus(last, replayed.length), dump);
      assert.deepEqual(replayed, dense(last, replayed.length), dump);
      const live = [...liveFirst, ...rest.slice(resumedAt + 1).map(offsetOf)];
      assert.deepEqual(live, dense(welcome, live.length), dump);
      await b.close();
    }
  });

  test('resync_required for an offset from another process, from the future, or older than the history', async () => {
    // Another process's history (its own boot time).
    const other = await childServer();
    children.push(other);
    const oc = await h.connectReady(h.wsUrl(other.port));
    clients.push(oc);
    await other.publish('other', 2);
    await waitForEvent(oc, 'other-2');
    const foreign = offsetOf(oc.raw[2]);

    const probe = await open(url);
    const current = welcomeOffset(probe);
    assert.notEqual(parseOffset(foreign).ms, parseOffset(current).ms, 'two processes, two boot times');
    const f = await open(since(url, foreign));
    assert.equal(f.raw[0], welcomeWith(current));
    assert.equal(await nextRaw(f), `{"type":"resync_required","since":"${foreign}","offset":"${current}"}`);
    await rt.publishParcelUpdate('after-resync-foreign');
    assert.equal(await f.next(), h.frame('after-resync-foreign'), 'then live');
    assert.equal(offsetOf(f.raw[2]), plus(current, 1));

    // From the future: a sequence number never assigned, or a later boot time.
    const now = plus(current, 1);
    for (const future of [plus(now, 1), plus(now, 1000), `${parseOffset(now).ms + 1n}-0`]) {
      const c = await open(since(url, future));
      assert.equal(await nextRaw(c), `{"type":"resync_required","since":"${future}","offset":"${now}"}`, `since=${future}`);
      await c.close();
    }
    // Before this process existed ("0-0" in particular).
    for (const ancient of ['0-0', '1-1', `${parseOffset(now).ms - 1n}-1`]) {
      const c = await open(since(url, ancient));
      assert.equal(await nextRaw(c), `{"type":"resync_required","since":"${ancient}","offset":"${now}"}`, `since=${ancient}`);
      await c.close();
    }
    // The resume message answers the same way, and the connection carries on. The offset it
    // names is the current one (here: that of the event this connection just got live), not the
    // one its welcome announced: a client restarts from it, and must not go back.
    await f.send(JSON.stringify({ type: 'resume', since: foreign }));
    const midConnection = await nextRaw(f);
    assert.deepEqual(Object.keys(JSON.parse(midConnection)), ['type', 'since', 'offset']);
    assert.equal(JSON.parse(midConnection).type, 'resync_required');
    assert.equal(JSON.parse(midConnection).since, foreign);
    await rt.publishParcelUpdate('after-resync-message');
    assert.equal(await f.next(), h.frame('after-resync-message'));
    assert.equal(midConnection, `{"type":"resync_required","since":"${foreign}","offset":"${now}"}`,
      'resync_required mid-connection names the current offset (the newest this connection got), not the welcome\'s');
  });

  test('historySize 5 (child): 20 events, resume from the 1st → resync_required; from the 15th → the last 5', async () => {
    const child = await childServer({ historySize: 5 });
    children.push(child);
    const curl = h.wsUrl(child.port);
    const watcher = await h.connectReady(curl);
    clients.push(watcher);
    await child.publish('small', 20);
    await waitForEvent(watcher, 'small-20');
    const offsets = eventsOf(watcher).map((e) => e.offset);
    assert.equal(offsets.length, 20);
    const head = offsets[19];

    const first = await h.connectReady(since(curl, offsets[0]));
    clients.push(first);
    assert.equal(await nextRaw(first), `{"type":"resync_required","since":"${offsets[0]}","offset":"${head}"}`);

    // The 14th: the 15th was trimmed, so something is missing.
    const gap = await h.connectReady(since(curl, offsets[13]));
    clients.push(gap);
    assert.equal(await nextRaw(gap), `{"type":"resync_required","since":"${offsets[13]}","offset":"${head}"}`);

    // The 15th: everything after it (16..20) is still kept.
    const ok = await h.connectReady(since(curl, offsets[14]));
    clients.push(ok);
    await waitForRaw(ok, (r) => r.startsWith('{"type":"resumed"'), 'resumed');
    assert.deepEqual(ok.raw.slice(1), [
      ...offsets.slice(15).map((o, i) => `{"type":"parcel_updated","parcel_id":"small-${16 + i}","offset":"${o}"}`),
      resumedFrame(offsets[14], 5),
    ]);

    // Then live: the resync'd client gets new events.
    await child.publish('small-live', 1);
    assert.equal(await first.next(), h.frame('small-live-1'));
    assert.equal(await waitForEvent(ok, 'small-live-1'), `{"type":"parcel_updated","parcel_id":"small-live-1","offset":"${plus(head, 1)}"}`);
    assert.equal(ok.raw.length, 8);
  });

  test('historyTtlMs 300 (child): events older than the TTL are forgotten → resync_required; the newest offset still resumes', async () => {
    const child = await childServer({ historyTtlMs: 300 });
    children.push(child);
    const curl = h.wsUrl(child.port);
    const watcher = await h.connectReady(curl);
    clients.push(watcher);
    await child.publish('ttl', 3);
    await waitForEvent(watcher, 'ttl-3');
    const offsets = eventsOf(watcher).map((e) => e.offset);
    // Within the TTL: replayable.
    const fresh = await h.connectReady(since(curl, offsets[0]));
    clients.push(fresh);
    await waitForRaw(fresh, (r) => r.startsWith('{"type":"resumed"'), 'resumed');
    assert.equal(fresh.raw.length, 4);
    assert.equal(fresh.raw[3], resumedFrame(offsets[0], 2));
    await h.delay(600);
    const stale = await h.connectReady(since(curl, offsets[0]));
    clients.push(stale);
    assert.equal(await nextRaw(stale), `{"type":"resync_required","since":"${offsets[0]}","offset":"${offsets[2]}"}`);
    // Caught up at the newest offset: nothing was missed, whatever the TTL.
    const caughtUp = await h.connectReady(since(curl, offsets[2]));
    clients.push(caughtUp);
    assert.equal(await nextRaw(caughtUp), resumedFrame(offsets[2], 0));
  });

  test('a malformed ?since= is refused with HTTP 400 INVALID_OFFSET', async () => {
    for (const bad of ['abc', '12', '1-', '-1', '1-x', '1-2-3', '1.5-2', ' 1-2', '1_2', '123456789012345678901-1', '1-123456789012345678901']) {
      await h.expectRefusal(since(url, bad), {}, 400, 'INVALID_OFFSET');
    }
  });

  test('a malformed resume message gets an INVALID_OFFSET error frame and the connection stays open', async () => {
    const c = await open(url);
    for (const bad of ['abc', '', '1-x', '1-2-3', '123456789012345678901-1']) {
      await c.send(JSON.stringify({ type: 'resume', since: bad }));
      const reply = await c.nextJson();
      assert.equal(reply.type, 'error', JSON.stringify(reply));
      assert.equal(reply.code, 'INVALID_OFFSET', JSON.stringify(reply));
      assert.equal(typeof reply.message, 'string');
    }
    // Not a string at all: an error too (of the message shape), still open.
    for (const bad of [{ type: 'resume' }, { type: 'resume', since: 5 }, { type: 'resume', since: null }]) {
      await c.send(JSON.stringify(bad));
      const reply = await c.nextJson();
      assert.equal(reply.type, 'error', JSON.stringify(reply));
      assert.ok(['INVALID_OFFSET', 'INVALID_MESSAGE'].includes(reply.code), JSON.stringify(reply));
    }
    await c.send('{"type":"ping"}');
    assert.equal(await c.next(), '{"type":"pong"}');
    await rt.publishParcelUpdate('after-bad-resume');
    assert.equal(await c.next(), h.frame('after-bad-resume'));
    assert.equal(c.closeInfo, null);
  });

  test('filtered resume (?parcels=a&since=X): only parcel a is replayed, then only a live', async () => {
    const old = await open(url);
    await rt.publishParcelUpdate('f-seen');
    const last = offsetOf(await waitForEvent(old, 'f-seen'));
    await old.close();
    for (const id of ['fa', 'fb', 'fa', 'fc', 'fb', 'fa']) await rt.publishParcelUpdate(id);
    const c = await open(`${since(url, last)}&parcels=fa`);
    await waitForRaw(c, (r) => r.startsWith('{"type":"resumed"'), 'resumed');
    assert.deepEqual(c.raw.slice(1), [
      '{"type":"subscribed","all":false,"parcel_ids":["fa"]}',
      `{"type":"parcel_updated","parcel_id":"fa","offset":"${plus(last, 1)}"}`,
      `{"type":"parcel_updated","parcel_id":"fa","offset":"${plus(last, 3)}"}`,
      `{"type":"parcel_updated","parcel_id":"fa","offset":"${plus(last, 6)}"}`,
      resumedFrame(last, 3),
    ]);
    await rt.publishParcelUpdate('fb');
    await rt.publishParcelUpdate('fa');
    await c.waitFor(7);
    assert.equal(c.raw[6], `{"type":"parcel_updated","parcel_id":"fa","offset":"${plus(last, 8)}"}`);
    await rt.publishParcelUpdate('fa');
    await c.waitFor(8);
    assert.equal(c.raw[7], `{"type":"parcel_updated","parcel_id":"fa","offset":"${plus(last, 9)}"}`);
    assert.equal(c.raw.length, 8, JSON.stringify(c.raw));

    // The same with the subscribe and resume messages on a fresh connection.
    const d = await open(url);
    await d.send(JSON.stringify({ type: 'subscribe', parcel_ids: ['fb'] }));
    assert.equal(await d.next(), '{"type":"subscribed","all":false,"parcel_ids":["fb"]}');
    await d.send(JSON.stringify({ type: 'resume', since: last }));
    await waitForRaw(d, (r) => r.startsWith('{"type":"resumed"'), 'resumed');
    assert.deepEqual(d.raw.slice(2), [
      `{"type":"parcel_updated","parcel_id":"fb","offset":"${plus(last, 2)}"}`,
      `{"type":"parcel_updated","parcel_id":"fb","offset":"${plus(last, 5)}"}`,
      `{"type":"parcel_updated","parcel_id":"fb","offset":"${plus(last, 7)}"}`,
      resumedFrame(last, 3),
    ]);
  });

  test('filtered resume with events published WHILE connecting: only parcel a, in offset order, once each (20 rounds)', async () => {
    const problems = [];
    for (let round = 0; round < 20; round++) {
      const old = await open(url);
      await rt.publishParcelUpdate(`fr${round}-seen`);
      const last = offsetOf(await waitForEvent(old, `fr${round}-seen`));
      await old.close();
      const a = `fr${round}-a`;
      const b = `fr${round}-b`;
      const published = [];
      const publish = (id) => {
        published.push(id);
        return rt.publishParcelUpdate(id);
      };
      for (const id of [a, b, a]) await publish(id);
      const pubs = [];
      for (let i = 0; i < 12; i++) {
        const id = i % 2 ? b : a;
        pubs.push(new Promise((resolve, reject) => {
          setTimeout(() => publish(id).then(resolve, reject), (i * (1 + (round % 5))) / 4);
        }));
      }
      const connecting = open(`${since(url, last)}&parcels=${a}`);
      await Promise.all(pubs);
      const c = await connecting;
      await waitForRaw(c, (r) => r.startsWith('{"type":"resumed"'), `round ${round}: resumed`);
      await publish(a);
      const expected = published.map((id, i) => ({ id, offset: plus(last, i + 1) })).filter((e) => e.id === a);
      await h.waitUntil(() => eventsOf(c).length >= expected.length, `round ${round}: ${expected.length} events`, 5000, 5);
      await h.delay(20);
      const got = eventsOf(c).map(({ id, offset }) => ({ id, offset }));
      try {
        assert.deepEqual(got, expected, 'exactly the a events, each once, in offset order');
        assert.equal(c.raw[1], `{"type":"subscribed","all":false,"parcel_ids":["${a}"]}`, 'the subscribed answer right after the welcome');
      } catch (err) {
        problems.push(`round ${round}: ${err.message.split('\n')[0]}\n  frames: ${JSON.stringify(c.raw.slice(1))}`);
      }
      await c.close();
    }
    assert.deepEqual(problems, [], problems.join('\n'));
  });
});

describe('filtered resume under a continuous burst (memory)', () => {
  let server;
  let url;
  const clients = [];

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
    url = h.wsUrl(server);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
  });

  test('?parcels=a&since=X while events flow without pause: a events in offset order, once each, subscribed first (100 rounds x 10 clients)', async (t) => {
    const problems = [];
    let seamEvents = 0;
    let connections = 0;
    for (let round = 0; round < 100 && problems.length < 3; round++) {
      const old = await h.connectReady(url);
      clients.push(old);
      await rt.publishParcelUpdate(`burst${round}-seen`);
      const last = offsetOf(await waitForEvent(old, `burst${round}-seen`));
      await old.close();
      const a = `burst${round}-a`;
      const b = `burst${round}-b`;
      // A continuous stream a, b, a, b... from before the connects until after they resumed:
      // 11 events per millisecond at most (an awaited publish resolves as soon as the bus took
      // it, so without the timer the stream would outrun the 10,000 events of history while the
      // clients connect).
      const published = [];
      let stop = false;
      const pump = (async () => {
        while (!stop) {
          for (let i = 0; i < 10; i++) {
            published.push(published.length % 2 ? b : a);
            rt.publishParcelUpdateDirect(published[published.length - 1]);
          }
          published.push(a);
          await rt.publishParcelUpdate(a);
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      })();
      // Ten clients connect at once, each a chance to start in the middle of a dispatch.
      const cs = await Promise.all(Array.from({ length: 10 }, () => h.connectReady(`${since(url, last)}&parcels=${a}`)));
      clients.push(...cs);
      try {
        await Promise.all(cs.map((c) => waitForRaw(c, (r) => r.startsWith('{"type":"resumed"'), `round ${round}: resumed`)));
      } finally {
        stop = true; // also when it failed: the stream must not outlive the test
        await pump;
      }
      published.push(a);
      await rt.publishParcelUpdate(a);
      const expected = [];
      published.forEach((id, i) => {
        if (id === a) expected.push(plus(last, i + 1));
      });
      for (const c of cs) {
        connections++;
        await h.waitUntil(() => eventsOf(c).some((e) => e.offset === expected[expected.length - 1]), `round ${round}: the last a event`, 10_000, 5);
        const got = eventsOf(c).map((e) => e.offset);
        const frames = c.raw.slice(1).filter((r) => !isEvent(r));
        const subscribedAt = c.raw.findIndex((r) => r.startsWith('{"type":"subscribed"'));
        seamEvents += Math.max(0, subscribedAt - 1);
        try {
          const outOfOrder = got.findIndex((o, i) => i > 0 && cmpOffset(got[i - 1], o) >= 0);
          assert.equal(outOfOrder, -1, `events out of offset order at #${outOfOrder}: ${got[outOfOrder - 1]} then ${got[outOfOrder]}`);
          assert.deepEqual(got, expected, 'every a event once');
          assert.equal(c.raw[1], `{"type":"subscribed","all":false,"parcel_ids":["${a}"]}`, 'the subscribed answer comes right after the welcome');
          assert.equal(frames.length, 2);
          assert.equal(frames[1], resumedFrame(last, Number(JSON.parse(frames[1]).replayed)));
        } catch (err) {
          const firstFrames = c.raw.slice(1, 8).map((r) => r.replace('"type":"parcel_updated",', ''));
          problems.push(`round ${round} (welcome ${welcomeOffset(c)}, since ${last}): ${err.message.split('\n')[0]}\n  first frames: ${firstFrames.join(' ')}`);
        }
      }
      await Promise.all(cs.map((c) => c.close()));
    }
    t.diagnostic(`${connections} connections; events delivered before the subscribed answer (the ?parcels= seam): ${seamEvents}`);
    assert.deepEqual(problems, [], problems.join('\n'));
  });
});

describe('historySize 0 (child process): no offsets, resume → resync_required', () => {
  let child;
  const clients = [];

  before(async () => {
    child = await childServer({ historySize: 0 });
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await child?.proc.stop();
  });

  test('frames carry no offset, ?since= and the resume message answer resync_required', async () => {
    const curl = h.wsUrl(child.port);
    const c = await h.connectReady(curl);
    clients.push(c);
    assert.equal(c.raw[0], h.WELCOME, 'the original welcome, byte for byte');
    await child.publish('nohist', 3);
    await c.waitFor(4);
    assert.deepEqual(c.raw.slice(1), ['nohist-1', 'nohist-2', 'nohist-3'].map(h.frame), 'no offsets');

    const r = await h.connectReady(since(curl, '1700000000000-1'));
    clients.push(r);
    assert.equal(r.raw[0], h.WELCOME);
    const reply = await r.nextJson();
    assert.equal(reply.type, 'resync_required', JSON.stringify(reply));
    assert.equal(reply.since, '1700000000000-1');
    assert.deepEqual(Object.keys(reply), ['type', 'since', 'offset']);
    assert.equal(reply.offset, null, 'no current offset without history');

    c.cursor = c.raw.length;
    await c.send(JSON.stringify({ type: 'resume', since: '0-0' }));
    const reply2 = await c.nextJson();
    assert.equal(reply2.type, 'resync_required', JSON.stringify(reply2));
    assert.equal(reply2.since, '0-0');

    await child.publish('nohist-live', 1);
    assert.equal(await c.next(), h.frame('nohist-live-1'));
    assert.equal(await r.next(), h.frame('nohist-live-1'));
    assert.equal(r.raw[2], h.frame('nohist-live-1'), 'raw: no offset either');
    // A malformed offset is still refused.
    await h.expectRefusal(since(curl, 'nope'), {}, 400, 'INVALID_OFFSET');
  });
});
