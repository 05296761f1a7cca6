// REALTIME_PUBLISH_RESOLVES=accepted (issue 11): memory-mode publishes resolve when the bus's
// queue takes them. Read once per process, so the scenario runs in a child process. No timing
// assertion: order, completeness and the process exiting by itself are what is checked.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const CHILD = `
const rt = require(${JSON.stringify(path.join(__dirname, '..'))});
const WebSocket = require('ws');
const h = require(${JSON.stringify(path.join(__dirname, 'helpers.js'))});
(async () => {
  const server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET });
  const ws = new WebSocket(\`ws://127.0.0.1:\${server.port}/ws?token=\${h.sign()}\`);
  const got = [];
  ws.on('message', (d) => {
    const m = /"parcel_id":"([^"]+)"/.exec(d.toString());
    if (m) got.push(m[1]);
  });
  await new Promise((resolve) => ws.once('message', resolve)); // the welcome
  const ids = [];
  let resolvedInOrder = true;
  let last = -1;
  // Awaited one by one, as a request handler would.
  for (let i = 0; i < 300; i++) {
    ids.push('a' + i);
    await rt.publishParcelUpdate('a' + i);
  }
  // A burst without awaiting each: every promise resolves, in call order.
  const burst = [];
  for (let i = 0; i < 3000; i++) {
    ids.push('b' + i);
    burst.push(rt.publishParcelUpdate('b' + i).then(() => {
      if (i < last) resolvedInOrder = false;
      last = i;
    }));
  }
  await Promise.all(burst);
  while (got.length < ids.length) await new Promise((r) => setTimeout(r, 10));
  ws.close();
  await server.close();
  // Fire and forget: the process must still deliver it to the bus before it exits by itself.
  rt.publishParcelUpdate('after-close').then(() => {
    process.stdout.write(JSON.stringify({ same: JSON.stringify(got) === JSON.stringify(ids), count: got.length, resolvedInOrder }) + '\\n');
  });
})().catch((e) => { console.error(e); process.exit(1); });
`;

test('REALTIME_PUBLISH_RESOLVES=accepted: awaited and burst publishes resolve in call order, every event reaches the client once, in order; the process exits by itself', () => {
  const r = spawnSync(process.execPath, ['-e', CHILD], {
    env: { ...process.env, REALTIME_PUBLISH_RESOLVES: 'accepted', LOG_LEVEL: 'warn' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop());
  assert.deepEqual(out, { same: true, count: 3300, resolvedInOrder: true });
});
