// The engine's threads as the environment configures them when the addon loads:
// REALTIME_WORKER_THREADS (how many) and REALTIME_WORKER_NICE (their scheduling priority), read
// from /proc in a child process (each setting needs a fresh process: the runtime starts once).
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const os = require('node:os');

const h = require('./helpers');

/** Starts a server in a child with `env`; resolves with its threads [{ name, nice }] and stderr. */
async function threadsWith(env) {
  const p = h.spawnNodeScript(`
    const fs = require('node:fs');
    const rt = require(${JSON.stringify(h.PKG)});
    rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: 'x' }).then(async (server) => {
      const threads = fs.readdirSync('/proc/self/task').map((tid) => {
        const stat = fs.readFileSync('/proc/self/task/' + tid + '/stat', 'utf8');
        // Fields after the command name (which may hold spaces): state is field 3, nice field 19.
        const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return { name: fs.readFileSync('/proc/self/task/' + tid + '/comm', 'utf8').trim(), nice: Number(rest[16]) };
      });
      console.log(JSON.stringify(threads));
      await server.close();
    });
  `, { env: h.cleanEnv(env) });
  const [, json] = await p.waitForOutput(/^(\[.*\])$/m, { ms: 10_000 });
  assert.deepEqual(await p.waitForExit(10_000), { code: 0, signal: null }, p.err());
  return { threads: JSON.parse(json), stderr: p.err() };
}

const engine = (threads) => threads.filter((t) => t.name === 'realtime-events');

test('REALTIME_WORKER_THREADS sets how many engine threads run; they are named realtime-events', async () => {
  const { threads } = await threadsWith({ REALTIME_WORKER_THREADS: '3' });
  assert.equal(engine(threads).length, 3, JSON.stringify(threads));
});

test('REALTIME_WORKER_NICE lowers the engine threads\' priority only; the JS thread keeps its own', async () => {
  const { threads } = await threadsWith({ REALTIME_WORKER_THREADS: '2', REALTIME_WORKER_NICE: '7' });
  assert.equal(engine(threads).length, 2, JSON.stringify(threads));
  // threads[0] is the main (JS) thread; the test run may itself be niced.
  const js = threads[0].nice;
  assert.deepEqual(engine(threads).map((t) => t.nice), [Math.min(19, js + 7), Math.min(19, js + 7)], JSON.stringify(threads));
  assert.equal(js, os.getPriority(), 'the JS thread keeps the priority it started with');
});

test('the engine threads run at the JS thread\'s priority by default; an invalid REALTIME_WORKER_NICE warns and is ignored', async () => {
  const same = ({ threads }) => engine(threads).length >= 1 && engine(threads).every((t) => t.nice === threads[0].nice);
  const plain = await threadsWith({});
  assert.ok(same(plain), JSON.stringify(plain.threads));
  for (const bad of ['-5', '20', 'low']) {
    const { threads, stderr } = await threadsWith({ REALTIME_WORKER_NICE: bad });
    assert.ok(same({ threads }), JSON.stringify(threads));
    assert.match(stderr, new RegExp(`REALTIME_WORKER_NICE must be an integer from 0 to 19, got "${bad}"; using 0`));
  }
});
