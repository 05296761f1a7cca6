// Events addressed to users across instances (Redis mode), against a private redis-server: two
// server processes, a publisher that runs no server, an outside redis-cli publisher; delivery to
// the user's connections only, presence over every instance (and its end when an instance is
// SIGKILLed), the inbox in Redis, and resume on another instance. A bystander never receives
// another user's event.
'use strict';

const { test, describe, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');

const PKG = JSON.stringify(h.PKG);
const CHANNEL = 'parcel_events';
// The documented bound (README, PRESENCE_WINDOW) is 15 s; polled with room for a loaded machine.
const PRESENCE_BOUND_MS = 40_000;

/**
 * A server process on the Redis bus. Prints `ready PORT MODE`, then obeys stdin lines:
 * `publish ID [u1,u2]` → `published ID` (or `failed ID CODE`);
 * `presence TAG u1,u2` → `presence TAG {json}` (or `failed TAG CODE`);
 * `close` → `closed` once `server.close()` resolved;
 * `subscribe` → `subscribed`, then `event {json}` for every event its callback sees.
 */
function spawnInstance(redisUrl) {
  const options = { port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl, redisRequired: true };
  return h.spawnNodeScript(`
    const rt = require(${PKG});
    const readline = require('node:readline');
    (async () => {
      const server = await rt.startServer(${JSON.stringify(options)});
      console.log('ready ' + server.port + ' ' + server.busMode);
      readline.createInterface({ input: process.stdin }).on('line', async (line) => {
        const [cmd, arg, list] = line.split(' ');
        try {
          if (cmd === 'publish') {
            await rt.publishParcelUpdate(arg, undefined, list ? { users: list.split(',') } : undefined);
            console.log('published ' + arg);
          } else if (cmd === 'presence') {
            console.log('presence ' + arg + ' ' + JSON.stringify(await rt.presence(list.split(','))));
          } else if (cmd === 'subscribe') {
            rt.subscribeToParcelEvents((e) => console.log('event ' + JSON.stringify(e)));
            console.log('subscribed');
          } else if (cmd === 'close') {
            await server.close();
            console.log('closed');
          }
        } catch (err) {
          console.log('failed ' + arg + ' ' + err.code);
        }
      });
    })().catch((err) => { console.error(err); process.exit(2); });
  `);
}

/** Publishes `id` (to `users` if given) from a process that runs no server (REDIS_URL only). */
async function publishFromOutsideServer(redisUrl, id, users, env = {}) {
  const p = h.spawnNodeScript(`
    const rt = require(${PKG});
    rt.publishParcelUpdate(${JSON.stringify(id)}, undefined, ${users ? JSON.stringify({ users }) : 'undefined'})
      .then(() => console.log('published'), (err) => { console.log('failed ' + err.code); process.exitCode = 1; });
  `, { env: h.cleanEnv({ REDIS_URL: redisUrl, ...env }) });
  const exit = await p.waitForExit(15_000);
  assert.equal(exit.code, 0, `publisher: ${p.out()} ${p.err()}`);
  assert.match(p.out(), /^published$/m);
}

async function command(proc, line, done) {
  proc.write(line);
  const m = await proc.waitForOutput(done, { ms: 10_000 });
  return m;
}

async function publishVia(proc, id, users) {
  const m = await command(proc, `publish ${id}${users ? ` ${users.join(',')}` : ''}`, new RegExp(`^(published|failed) ${id}( \\w+)?$`, 'm'));
  assert.equal(m[1], 'published', m[0]);
}

let presenceTag = 0;
async function presenceVia(proc, users) {
  const tag = `q${++presenceTag}`;
  const m = await command(proc, `presence ${tag} ${users.join(',')}`, new RegExp(`^(presence|failed) ${tag} (.*)$`, 'm'));
  assert.equal(m[1], 'presence', m[0]);
  return JSON.parse(m[2]);
}

/** A client of `port` authenticated as `user` (or anonymous with `null`), welcome consumed. */
function connect(port, user, params = {}) {
  const token = h.sign(user === null ? { role: 'guest' } : { sub: user });
  const query = Object.entries(params).map(([k, v]) => `&${k}=${encodeURIComponent(v)}`).join('');
  return h.connectReady(h.wsUrl(port, { token }) + query);
}

/** The parcel ids of the `parcel_updated` frames a client received, in order. */
function parcels(client) {
  return client.raw.map((m) => JSON.parse(m)).filter((m) => m.type === 'parcel_updated').map((m) => m.parcel_id);
}

/** Waits until `client` has received the event `id` (so every event published before it too). */
function received(client, id) {
  return h.waitUntil(() => parcels(client).includes(id), `${id} arrives`, 10_000);
}

const skip = h.redisSkipReason();

describe('events addressed to users, Redis mode, two instances', { skip }, () => {
  let redis;
  let one;
  let two;
  let port1;
  let port2;
  const open = [];
  const track = (client) => {
    open.push(client);
    return client;
  };

  before(async () => {
    redis = await h.startRedis();
    one = spawnInstance(redis.url);
    two = spawnInstance(redis.url);
    const [, p1, mode1] = await one.waitForOutput(/^ready (\d+) (\w+)$/m, { ms: 15_000 });
    const [, p2, mode2] = await two.waitForOutput(/^ready (\d+) (\w+)$/m, { ms: 15_000 });
    assert.equal(mode1, 'redis');
    assert.equal(mode2, 'redis');
    [port1, port2] = [Number(p1), Number(p2)];
  });

  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.close()));
  });

  after(async () => {
    await Promise.all(open.map((c) => c.close()));
    await Promise.all([one, two].filter(Boolean).map((p) => p.stop()));
    await redis?.stop();
  });

  test('an event for a, published through instance 1 and from a process with no server, reaches a on instance 2 only', async () => {
    const a = track(await connect(port2, 'a'));
    const bOn1 = track(await connect(port1, 'b'));
    const bOn2 = track(await connect(port2, 'b'));
    const anonymous = track(await connect(port2, null));
    const aFiltered = track(await connect(port1, 'a', { parcels: 'elsewhere' }));
    await publishVia(one, 'for-a-1', ['a']);
    await publishFromOutsideServer(redis.url, 'for-a-2', ['a', 'nobody']);
    await publishVia(one, 'everyone');
    await received(a, 'everyone');
    await received(aFiltered, 'for-a-2');
    for (const c of [bOn1, bOn2, anonymous]) await received(c, 'everyone');
    assert.deepEqual(parcels(a), ['for-a-1', 'for-a-2', 'everyone']);
    assert.equal(h.redisCli(redis.port, ['XLEN', `{${CHANNEL}}:history`]).stdout.trim(), '3', 'addressed events are in the history');
    assert.deepEqual(parcels(aFiltered), ['for-a-1', 'for-a-2'], 'addressed to a: delivered whatever the filter');
    for (const c of [bOn1, bOn2, anonymous]) assert.deepEqual(parcels(c), ['everyone'], 'bystanders get the broadcast only');
    const frame = JSON.parse(a.raw.find((m) => m.includes('for-a-1')));
    assert.deepEqual(Object.keys(frame), ['type', 'parcel_id', 'offset'], 'the ordinary frame: no users field');
    // Every process's subscribers see the addressed events, with their users.
    await command(two, 'subscribe', /^subscribed$/m);
    await publishVia(one, 'for-a-seen', ['a', 'c']);
    const [, seen] = await two.waitForOutput(/^event (.*"for-a-seen".*)$/m);
    assert.deepEqual(JSON.parse(seen).users, ['a', 'c']);
    await received(a, 'for-a-seen');
    // a was online on every publish: nothing waits in a's inbox.
    assert.equal(h.redisCli(redis.port, ['EXISTS', `{${CHANNEL}}:inbox:a`]).stdout.trim(), '0');
    assert.equal(h.redisCli(redis.port, ['EXISTS', `{${CHANNEL}}:inbox:nobody`]).stdout.trim(), '1');
  });

  test('presence from instance 1 counts the connections of every instance', async () => {
    await h.waitUntil(async () => (await presenceVia(one, ['a'])).a === 0, 'the previous test\'s a is gone', 10_000, 100);
    track(await connect(port2, 'a'));
    track(await connect(port1, 'b'));
    track(await connect(port2, 'b'));
    track(await connect(port2, null));
    assert.deepEqual(await presenceVia(one, ['a', 'b', 'z']), { a: 1, b: 2, z: 0 });
    assert.deepEqual(await presenceVia(two, ['z', 'a']), { z: 0, a: 1 });
    const a2 = await connect(port1, 'a');
    assert.deepEqual(await presenceVia(two, ['a']), { a: 2 });
    await a2.close();
    await h.waitUntil(async () => (await presenceVia(one, ['a'])).a === 1, 'a\'s closed connection stops counting', 10_000, 100);
  });

  test('an outside Redis client PUBLISHes {"users": [...]} to reach those users only', async () => {
    const a = track(await connect(port1, 'a'));
    const b = track(await connect(port2, 'b'));
    const pub = (json) => assert.equal(h.redisCli(redis.port, ['PUBLISH', CHANNEL, json]).status, 0);
    pub('{"type":"parcel_updated","parcel_id":"outside-for-a","data":{"n":1},"users":["a"]}');
    // Users that are not a non-empty array of non-empty strings: refused, never broadcast.
    pub('{"type":"parcel_updated","parcel_id":"bad-1","users":[1]}');
    pub('{"type":"parcel_updated","parcel_id":"bad-2","users":[]}');
    pub('{"type":"parcel_updated","parcel_id":"bad-3","users":"a"}');
    pub('{"type":"parcel_updated","parcel_id":"outside-everyone"}');
    await received(a, 'outside-everyone');
    await received(b, 'outside-everyone');
    assert.deepEqual(parcels(a), ['outside-for-a', 'outside-everyone']);
    assert.deepEqual(parcels(b), ['outside-everyone']);
    assert.equal(a.raw[1], '{"type":"parcel_updated","parcel_id":"outside-for-a","data":{"n":1}}',
      'as published, without users (no offset: not in the history)');
  });

  test('a user with no connection anywhere gets the event from the Redis inbox at the next connection, on either instance, once', async () => {
    const bystander = track(await connect(port2, 'b'));
    await publishVia(one, 'for-z-1', ['z']);
    await publishVia(two, 'while-z-away');
    await publishFromOutsideServer(redis.url, 'for-z-2', ['z']);
    await publishVia(one, 'for-y', ['y']);
    assert.equal(h.redisCli(redis.port, ['LLEN', `{${CHANNEL}}:inbox:z`]).stdout.trim(), '2');
    const z = track(await connect(port2, 'z'));
    await publishVia(one, 'live');
    await received(z, 'live');
    assert.deepEqual(parcels(z), ['for-z-1', 'for-z-2', 'live']);
    assert.equal(JSON.parse(z.raw[1]).parcel_id, 'for-z-1', 'right after the welcome');
    assert.ok(JSON.parse(z.raw[1]).offset, 'with its offset');
    // The inbox went to the first connection: the next one, on the other instance, gets nothing.
    const zAgain = track(await connect(port1, 'z'));
    await publishVia(two, 'live-2');
    await received(zAgain, 'live-2');
    assert.deepEqual(parcels(zAgain), ['live-2']);
    // y's inbox, delivered on instance 1, right after the welcome, before live events.
    const y = track(await connect(port1, 'y'));
    await publishVia(two, 'live-3');
    await received(y, 'live-3');
    assert.deepEqual(parcels(y), ['for-y', 'live-3']);
    assert.equal(JSON.parse(y.raw[1]).parcel_id, 'for-y', 'the inbox comes first');
    assert.equal(h.redisCli(redis.port, ['EXISTS', `{${CHANNEL}}:inbox:y`]).stdout.trim(), '0', 'taken: empty');
    await received(bystander, 'live-3');
    assert.deepEqual(parcels(bystander), ['while-z-away', 'live', 'live-2', 'live-3']);
  });

  test('an inboxed event older than inboxTtlMs never arrives', async () => {
    await publishFromOutsideServer(redis.url, 'for-x-expired', ['x'], { REALTIME_INBOX_TTL_MS: '1' });
    await h.waitUntil(() => h.redisCli(redis.port, ['EXISTS', `{${CHANNEL}}:inbox:x`]).stdout.trim() === '0', 'the inbox expired');
    const x = track(await connect(port1, 'x'));
    await publishVia(two, 'x-live', ['x']);
    await received(x, 'x-live');
    assert.deepEqual(parcels(x), ['x-live']);
  });

  test('an inbox keeps the newest inboxSize events, in order', async () => {
    for (let i = 1; i <= 4; i++) await publishFromOutsideServer(redis.url, `v-${i}`, ['v'], { REALTIME_INBOX_SIZE: '3' });
    const v = track(await connect(port2, 'v'));
    await publishVia(one, 'v-live', ['v']);
    await received(v, 'v-live');
    assert.deepEqual(parcels(v), ['v-2', 'v-3', 'v-4', 'v-live']);
  });

  test('an inbox delivers every event in order, once', async () => {
    for (let i = 1; i <= 5; i++) await publishVia(i % 2 ? one : two, `w-${i}`, ['w']);
    const w = track(await connect(port1, 'w'));
    await publishVia(two, 'w-live', ['w']);
    await received(w, 'w-live');
    assert.deepEqual(parcels(w), ['w-1', 'w-2', 'w-3', 'w-4', 'w-5', 'w-live']);
  });

  test('two connections of a user opening at once on two instances: each inboxed event reaches exactly one of them', async () => {
    for (let i = 1; i <= 3; i++) await publishVia(one, `t-${i}`, ['twice']);
    const [t1, t2] = await Promise.all([connect(port1, 'twice'), connect(port2, 'twice')]);
    track(t1);
    track(t2);
    await publishVia(two, 't-live', ['twice']);
    await received(t1, 't-live');
    await received(t2, 't-live');
    const inboxed = [...parcels(t1), ...parcels(t2)].filter((id) => id !== 't-live').sort();
    assert.deepEqual(inboxed, ['t-1', 't-2', 't-3'], 'every inboxed event once, over both');
    for (const c of [t1, t2]) {
      const own = parcels(c);
      assert.deepEqual(own.slice(-1), ['t-live']);
      assert.deepEqual(own.slice(0, -1), own.slice(0, -1).slice().sort(), 'in order');
    }
  });

  test('resume on the other instance: a\'s missed addressed events interleaved in order with broadcasts, no gap, no duplicate, never b\'s', async () => {
    await h.waitUntil(async () => (await presenceVia(one, ['a'])).a === 0, 'no a connected', 10_000, 100);
    const a = await connect(port2, 'a', { parcels: 'seen' });
    await publishVia(one, 'seen');
    await received(a, 'seen');
    const since = a.raw.map((m) => JSON.parse(m)).find((m) => m.parcel_id === 'seen').offset;
    await a.close();
    // a may still count on instance 2 for a moment after the close: wait until it does not, so
    // that a's missed event is also inboxed (the replay must then not deliver it twice).
    await h.waitUntil(async () => (await presenceVia(one, ['a'])).a === 0, 'a\'s closed connection stops counting', 10_000, 100);
    const b = track(await connect(port1, 'b'));
    await publishVia(one, 'missed-1');
    await publishVia(two, 'missed-for-a', ['a']);
    await publishFromOutsideServer(redis.url, 'missed-for-b', ['b']);
    await publishVia(two, 'missed-2');
    const back = track(await connect(port1, 'a', { since }));
    await h.waitUntil(() => back.raw.some((m) => JSON.parse(m).type === 'resumed'), 'resumed', 10_000);
    assert.deepEqual(parcels(back), ['missed-1', 'missed-for-a', 'missed-2']);
    const resumed = JSON.parse(back.raw.find((m) => JSON.parse(m).type === 'resumed'));
    assert.equal(resumed.replayed, 3);
    await publishVia(one, 'after-resume');
    await received(back, 'after-resume');
    assert.deepEqual(parcels(back), ['missed-1', 'missed-for-a', 'missed-2', 'after-resume'], 'no inbox on top of the replay');
    const offsets = back.raw.map((m) => JSON.parse(m)).filter((m) => m.offset && m.type === 'parcel_updated').map((m) => m.offset);
    assert.equal(new Set(offsets).size, offsets.length, 'no duplicate');
    await received(b, 'after-resume');
    assert.deepEqual(parcels(b), ['missed-1', 'missed-for-b', 'missed-2', 'after-resume']);
    // The inbox was taken by the resuming connection: a fresh one gets nothing more.
    const fresh = track(await connect(port2, 'a'));
    await publishVia(one, 'after-fresh');
    await received(fresh, 'after-fresh');
    assert.deepEqual(parcels(fresh), ['after-fresh']);
  });

  test('a publisher with historySize 0 (no offsets) still addresses users and fills inboxes', async () => {
    const a = track(await connect(port1, 'a'));
    const bystander = track(await connect(port2, 'b'));
    await publishFromOutsideServer(redis.url, 'no-history', ['a', 'h0'], { REALTIME_HISTORY_SIZE: '0' });
    await publishVia(one, 'sentinel-h');
    await received(a, 'sentinel-h');
    await received(bystander, 'sentinel-h');
    assert.deepEqual(parcels(a), ['no-history', 'sentinel-h']);
    assert.equal(a.raw[1], '{"type":"parcel_updated","parcel_id":"no-history"}', 'no offset');
    assert.deepEqual(parcels(bystander), ['sentinel-h']);
    const h0 = track(await connect(port2, 'h0'));
    await publishVia(one, 'h0-live', ['h0']);
    await received(h0, 'h0-live');
    assert.deepEqual(parcels(h0), ['no-history', 'h0-live']);
  });

  test('presence with Redis configured but unreachable rejects with ERR_REDIS_UNAVAILABLE, never a wrong 0', async () => {
    const deadPort = await h.freePort();
    const p = h.spawnNodeScript(`
      const rt = require(${PKG});
      rt.presence(['a']).then((r) => console.log('presence ' + JSON.stringify(r)), (err) => console.log('failed ' + err.code));
    `, { env: h.cleanEnv({ REDIS_URL: `redis://127.0.0.1:${deadPort}`, LOG_LEVEL: 'off' }) });
    await p.waitForExit(20_000);
    assert.match(p.out(), /^failed ERR_REDIS_UNAVAILABLE$/m, p.out() + p.err());
  });

  test('presence that Redis lost is written again by the next heartbeat', async () => {
    track(await connect(port1, 'heal'));
    assert.deepEqual(await presenceVia(two, ['heal']), { heal: 1 });
    const keys = h.redisCli(redis.port, ['--scan', '--pattern', `{${CHANNEL}}:presence:*`]).stdout.split('\n').filter(Boolean);
    assert.ok(keys.length >= 1, 'one presence hash per instance with users');
    h.redisCli(redis.port, ['DEL', ...keys]);
    assert.deepEqual(await presenceVia(two, ['heal']), { heal: 0 }, 'lost');
    await h.waitUntil(async () => (await presenceVia(two, ['heal'])).heal === 1, 'written again', 30_000, 250);
  });

  test('a server that closed no longer counts its connections once close() resolved', async () => {
    const three = spawnInstance(redis.url);
    try {
      const [, p3] = await three.waitForOutput(/^ready (\d+) (\w+)$/m, { ms: 15_000 });
      const c = track(await connect(Number(p3), 'closing'));
      assert.deepEqual(await presenceVia(one, ['closing']), { closing: 1 });
      await command(three, 'close', /^closed$/m);
      await c.closed;
      assert.deepEqual(await presenceVia(one, ['closing']), { closing: 0 });
    } finally {
      await three.stop();
    }
  });

  test('after instance 2 is SIGKILLed, its connections stop counting within the documented window', async () => {
    const a = track(await connect(port2, 'a-killed'));
    const bystander = track(await connect(port1, 'b-killed'));
    assert.deepEqual(await presenceVia(one, ['a-killed']), { 'a-killed': 1 });
    await two.stop('SIGKILL');
    two = null;
    await a.closed;
    await h.waitUntil(async () => (await presenceVia(one, ['a-killed']))['a-killed'] === 0,
      'a-killed stops counting', PRESENCE_BOUND_MS, 500);
    // Now offline everywhere: the next event for a-killed goes to the inbox.
    await publishVia(one, 'after-kill', ['a-killed']);
    const again = track(await connect(port1, 'a-killed'));
    await publishVia(one, 'after-kill-live');
    await received(again, 'after-kill-live');
    assert.deepEqual(parcels(again), ['after-kill', 'after-kill-live']);
    await received(bystander, 'after-kill-live');
    assert.deepEqual(parcels(bystander), ['after-kill-live'], 'the broadcast only');
  });
});
