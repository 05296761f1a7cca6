// The publish contract seen from outside (issue 11 follow-up): promises resolve in call order per
// JS thread, nothing published is lost (to WebSocket clients nor to subscribeToParcelEvents
// callbacks), and the process exits by itself. Each scenario runs in a child process (the bus,
// its ack sink and REALTIME_PUBLISH_RESOLVES are per process). No timing assertion: the spawn
// timeout only turns a hang into a failure.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const PKG = JSON.stringify(path.join(__dirname, '..'));
const HELPERS = JSON.stringify(path.join(__dirname, 'helpers.js'));

function run(script, value) {
  const env = { ...process.env, LOG_LEVEL: 'warn' };
  if (value === undefined) delete env.REALTIME_PUBLISH_RESOLVES;
  else env.REALTIME_PUBLISH_RESOLVES = value;
  const r = spawnSync(process.execPath, ['-e', script], { env, encoding: 'utf8', timeout: 30_000 });
  const lines = r.stdout.trim().split('\n').filter((l) => l.startsWith('{'));
  return { r, out: lines.map((l) => JSON.parse(l)) };
}

// A worker thread that loads the package (a worker pool importing a module that imports it)
// while the main thread publishes. Each thread publishes a burst and checks that its own promises
// all resolve, in call order; a client checks that each thread's events arrive, in order.
const BURST = `
const rt = require(${PKG});
const N = 3000;
async function burst(prefix) {
  let last = -1, inOrder = true, resolved = 0;
  const all = [];
  for (let i = 0; i < N; i++) {
    all.push(rt.publishParcelUpdate(prefix + i).then(() => {
      if (i < last) inOrder = false;
      last = i;
      resolved += 1;
    }));
  }
  await Promise.all(all);
  return { prefix, resolved, inOrder };
}
`;

const WORKER = `${BURST}
const { parentPort } = require('node:worker_threads');
parentPort.postMessage('ready');
parentPort.once('message', async () => parentPort.postMessage(await burst('w')));
`;

const THREADS = `${BURST}
const { Worker } = require('node:worker_threads');
const WebSocket = require('ws');
const h = require(${HELPERS});
(async () => {
  const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET });
  const ws = new WebSocket(\`ws://127.0.0.1:\${server.port}/ws?token=\${h.sign()}\`);
  const got = [];
  ws.on('message', (d) => { const m = /"parcel_id":"([^"]+)"/.exec(d.toString()); if (m) got.push(m[1]); });
  await new Promise((resolve) => ws.once('message', resolve));
  const worker = new Worker(${JSON.stringify(WORKER)}, { eval: true });
  worker.on('error', (e) => { console.error(e); process.exit(1); });
  await new Promise((resolve) => worker.once('message', resolve)); // the worker loaded the package
  const workerDone = new Promise((resolve) => worker.once('message', resolve));
  worker.postMessage('go');
  process.stdout.write(JSON.stringify(await burst('m')) + '\\n');
  process.stdout.write(JSON.stringify(await workerDone) + '\\n');
  while (got.length < 2 * N) await new Promise((r) => setTimeout(r, 10));
  const inOrder = (p) => got.filter((id) => id.startsWith(p)).every((id, i) => id === p + i);
  process.stdout.write(JSON.stringify({ delivered: got.length, mainInOrder: inOrder('m'), workerInOrder: inOrder('w') }) + '\\n');
  ws.close();
  await worker.terminate();
  await server.close();
  process.stdout.write(JSON.stringify({ closed: true }) + '\\n');
  // Nothing holds the process any more: it must exit by itself.
})().catch((e) => { console.error(e); process.exit(1); });
`;

for (const [name, value] of [['default (accepted)', undefined], ['dispatched', 'dispatched']]) {
  test(`REALTIME_PUBLISH_RESOLVES ${name}: with a worker thread that loaded the package, each thread's publishes resolve, in call order, every event is delivered, and the process exits by itself`, () => {
    const { r, out } = run(THREADS, value);
    assert.deepEqual(out, [
      { prefix: 'm', resolved: 3000, inOrder: true },
      { prefix: 'w', resolved: 3000, inOrder: true },
      { delivered: 6000, mainInOrder: true, workerInOrder: true },
      { closed: true },
    ], `stdout: ${r.stdout} stderr: ${r.stderr.slice(-2000)}`);
    assert.equal(r.signal, null, 'the process did not exit by itself (killed by the spawn timeout)');
    assert.equal(r.status, 0, `child failed: ${r.stderr.slice(-2000)}`);
  });
}

// Memory mode: a subscription does not hold the process (README), but the events published
// before it exits must still reach the callbacks, in order, like an EventEmitter's listeners.
const SUBSCRIBER = `
const rt = require(${PKG});
const N = 3000;
const seen = [];
rt.subscribeToParcelEvents((event) => seen.push(event.parcel_id));
let resolved = false;
process.on('exit', () => {
  process.stdout.write(JSON.stringify({
    resolved,
    seen: seen.length,
    inOrder: seen.every((id, i) => id === 'p' + i),
  }) + '\\n');
});
(async () => {
  const all = [];
  for (let i = 0; i < N; i++) all.push(rt.publishParcelUpdate('p' + i));
  await Promise.all(all);
  resolved = true;
})();
`;

for (const [name, value] of [['default (accepted)', undefined], ['dispatched', 'dispatched']]) {
  test(`REALTIME_PUBLISH_RESOLVES ${name}: a subscriber receives every event published before the process exits by itself`, () => {
    const { r, out } = run(SUBSCRIBER, value);
    assert.equal(r.signal, null, 'the process did not exit by itself (killed by the spawn timeout)');
    assert.equal(r.status, 0, `child failed: ${r.stderr.slice(-2000)}`);
    assert.deepEqual(out, [{ resolved: true, seen: 3000, inOrder: true }]);
  });
}
