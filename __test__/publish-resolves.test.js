// When `await publishParcelUpdate()` resolves in memory mode (issue 11): by default as soon as the
// bus's queue took the event, with REALTIME_PUBLISH_RESOLVES=dispatched once it was dispatched.
// Read once per process, so each scenario runs in a child process. No timing assertion: order,
// completeness, what a client connecting afterwards gets, and the process exiting by itself.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const CHILD = `
const rt = require(${JSON.stringify(path.join(__dirname, '..'))});
const WebSocket = require('ws');
const h = require(${JSON.stringify(path.join(__dirname, 'helpers.js'))});
const ids = (d) => [...d.toString().matchAll(/"parcel_id":"([^"]+)"/g)].map((m) => m[1]);
const offset = (d) => /"offset":"([^"]+)"/.exec(d.toString())?.[1];
(async () => {
  const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET });
  const url = \`ws://127.0.0.1:\${server.port}/ws?token=\${h.sign()}\`;
  const ws = new WebSocket(url);
  const got = [];
  ws.on('message', (d) => got.push(...ids(d)));
  const welcome = await new Promise((resolve) => ws.once('message', resolve));
  const since = offset(welcome);
  const sent = [];
  let resolvedInOrder = true;
  let last = -1;
  // Awaited one by one, as a request handler would.
  for (let i = 0; i < 300; i++) {
    sent.push('a' + i);
    await rt.publishParcelUpdate('a' + i);
  }
  // A burst without awaiting each: every promise resolves, in call order.
  const burst = [];
  for (let i = 0; i < 3000; i++) {
    sent.push('b' + i);
    burst.push(rt.publishParcelUpdate('b' + i).then(() => {
      if (i < last) resolvedInOrder = false;
      last = i;
    }));
  }
  await Promise.all(burst);
  // Connected after every promise resolved: the whole burst is in its replay (between its welcome
  // and its "resumed"), none of it live.
  const late = new WebSocket(\`\${url}&since=\${since}\`);
  const replayed = [];
  let resumed = false;
  late.on('message', (d) => {
    if (/"type":"resumed"/.test(d.toString())) resumed = true;
    else if (!resumed) replayed.push(...ids(d));
  });
  while (got.length < sent.length || !resumed) await new Promise((r) => setTimeout(r, 10));
  ws.close();
  late.close();
  await server.close();
  // Fire and forget: the process must still deliver it to the bus before it exits by itself.
  rt.publishParcelUpdate('after-close').then(() => {
    process.stdout.write(JSON.stringify({
      same: JSON.stringify(got) === JSON.stringify(sent),
      count: got.length,
      resolvedInOrder,
      replayedAll: JSON.stringify(replayed) === JSON.stringify(sent),
    }) + '\\n');
  });
})().catch((e) => { console.error(e); process.exit(1); });
`;

for (const [name, value] of [['default (accepted)', undefined], ['dispatched', 'dispatched']]) {
  test(`REALTIME_PUBLISH_RESOLVES ${name}: publishes resolve in call order, every event reaches the client once, in order; a client connecting after the awaits replays them all; the process exits by itself`, () => {
    const env = { ...process.env, LOG_LEVEL: 'warn' };
    if (value === undefined) delete env.REALTIME_PUBLISH_RESOLVES;
    else env.REALTIME_PUBLISH_RESOLVES = value;
    const r = spawnSync(process.execPath, ['-e', CHILD], { env, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `child failed: ${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split('\n').pop());
    assert.deepEqual(out, { same: true, count: 3300, resolvedInOrder: true, replayedAll: true });
  });
}
