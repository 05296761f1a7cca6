// realtime-events/client in headless Chromium (playwright-core driving the system Chromium):
// client.js loaded with a plain <script>, the browser's own WebSocket, a token fetched from an
// auth endpoint, events published from Node, a server restart on the same port, close(); and the
// example page in examples/browser/.
//
// Without playwright-core or Chromium the tests are skipped with the reason, unless CI is set,
// in which case they fail.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const rt = require('..');
const h = require('./helpers');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const LAUNCH_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null };

let chromium = null;
let unavailable = null;
try {
  ({ chromium } = require('playwright-core'));
} catch {
  unavailable = 'playwright-core is not installed (npm install --save-dev playwright-core)';
}
if (!unavailable && !fs.existsSync(CHROMIUM)) unavailable = `no Chromium at ${CHROMIUM} (apt-get install -y chromium)`;

const TEST_PAGE = `<!doctype html>
<meta charset="utf-8">
<title>client.js under test</title>
<script src="/client.js"></script>
<script>
  'use strict';
  window.rec = { events: [], states: [], errors: [], disconnects: [], frames: [] };
  window.startClient = (url) => {
    const client = new RealtimeEvents.RealtimeClient({
      url,
      // Like an app: ask the auth endpoint before every (re)connect.
      getToken: async () => (await fetch('/token')).text(),
      minDelayMs: 50,
      maxDelayMs: 300,
    });
    client.on('parcel_updated', (e) => rec.events.push(e));
    client.on('state', (s) => rec.states.push(s));
    client.on('error', (e) => rec.errors.push({ code: e.code, closeCode: e.closeCode, message: e.message }));
    client.on('disconnect', (d) => rec.disconnects.push(d));
    client.on('message', (f) => rec.frames.push(f));
    window.client = client;
  };
</script>`;

/** Serves the test page, client.js, the example page, and a token endpoint (the first token is bad). */
async function startStaticServer() {
  const state = { tokenCalls: 0 };
  const files = {
    '/client.js': [path.join(h.PKG, 'client.js'), 'text/javascript'],
    '/examples/browser/index.html': [path.join(h.PKG, 'examples/browser/index.html'), 'text/html'],
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/test.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(TEST_PAGE);
    } else if (url.pathname === '/token') {
      state.tokenCalls++;
      const token = state.tokenCalls === 1
        ? h.sign({ sub: 'browser-user' }, {}, 'not-the-server-secret') // refused: 401 before the upgrade
        : h.sign({ sub: 'browser-user', n: state.tokenCalls });
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      res.end(token);
    } else if (files[url.pathname]) {
      const [file, type] = files[url.pathname];
      res.writeHead(200, { 'content-type': `${type}; charset=utf-8`, 'cache-control': 'no-store' });
      res.end(fs.readFileSync(file));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.origin = `http://127.0.0.1:${server.address().port}`;
  state.close = () => new Promise((resolve) => {
    server.closeAllConnections?.();
    server.close(() => resolve());
  });
  return state;
}

describe('RealtimeClient in headless Chromium', { skip: unavailable && !process.env.CI ? unavailable : false }, () => {
  let browser = null;
  let launchError = null;
  let web;

  before(async () => {
    web = await startStaticServer();
    if (unavailable) return;
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
    } catch (err) {
      launchError = err;
    }
  });

  after(async () => {
    await browser?.close();
    await web?.close();
  });

  /** A fresh page; fails (CI) or skips when Chromium is unavailable. Collects page errors. */
  async function openPage(t, pathname) {
    if (unavailable) throw new Error(unavailable); // only reached with CI set
    if (launchError) {
      if (process.env.CI) throw launchError;
      t.skip(`Chromium did not start: ${launchError.message.split('\n')[0]}`);
      return null;
    }
    const context = await browser.newContext();
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (err) => pageErrors.push(err));
    t.after(() => context.close());
    await page.goto(`${web.origin}${pathname}`);
    return { page, pageErrors };
  }

  test('a plain <script> client receives events, reconnects after a restart on the same port, restores its filter and stops on close()', { timeout: 60_000 }, async (t) => {
    const opened = await openPage(t, '/test.html');
    if (!opened) return;
    const { page, pageErrors } = opened;
    const port = await h.freePort();
    const options = { ...BASE, port, allowedOrigins: [web.origin] };
    let server = await rt.startServer(options);
    t.after(() => server.close());

    // UMD: a plain script gets the global, no CommonJS or AMD involved.
    assert.deepEqual(await page.evaluate(() => [typeof RealtimeEvents.RealtimeClient, typeof RealtimeEvents.compareOffsets, typeof module, typeof define]),
      ['function', 'function', 'undefined', 'undefined']);

    const tokenCallsBefore = web.tokenCalls;
    await page.evaluate((url) => window.startClient(url), `ws://127.0.0.1:${port}/ws`);
    await page.waitForFunction(() => rec.states.includes('open'), null, { timeout: 10_000 });
    // The first token was refused with HTTP 401: browsers only see a failed connection (1006).
    const first = await page.evaluate(() => ({ errors: rec.errors, states: rec.states }));
    assert.equal(web.tokenCalls - tokenCallsBefore, 2, 'getToken before each attempt');
    assert.equal(first.errors.length, 1, JSON.stringify(first.errors));
    assert.equal(first.errors[0].code, 'ERR_CONNECTION_FAILED');
    assert.equal(first.errors[0].closeCode, 1006);
    assert.deepEqual(first.states, ['reconnecting', 'open']);
    assert.equal(server.clientCount, 1);

    await rt.publishParcelUpdate('p1', { price: 120 });
    await rt.publishParcelUpdate('p2');
    await page.waitForFunction(() => rec.events.length >= 2);
    const events = await page.evaluate(() => rec.events.map(({ offset, ...rest }) => rest));
    assert.deepEqual(events, [
      { type: 'parcel_updated', parcel_id: 'p1', data: { price: 120 } },
      { type: 'parcel_updated', parcel_id: 'p2' },
    ]);

    // Narrow to p3 from the page.
    await page.evaluate(() => client.subscribe(['p3']));
    await page.waitForFunction(() => rec.frames.some((f) => f.type === 'subscribed'));
    await rt.publishParcelUpdate('p2');
    await rt.publishParcelUpdate('p3');
    await page.waitForFunction(() => rec.events.length >= 3);
    await h.delay(100);
    assert.deepEqual(await page.evaluate(() => rec.events.slice(2).map((e) => e.parcel_id)), ['p3']);

    // Restart on the same port: 1001, failed attempts while it is down, then open again.
    await server.close();
    await page.waitForFunction(() => rec.disconnects.length === 1 && rec.states.at(-1) === 'reconnecting');
    assert.equal(await page.evaluate(() => rec.disconnects[0].code), 1001);
    await h.delay(400);
    server = await rt.startServer(options);
    await page.waitForFunction(() => rec.states.filter((s) => s === 'open').length === 2, null, { timeout: 10_000 });
    // The filter came back with the reconnect (?parcels=p3), acknowledged by the server.
    await page.waitForFunction(() => rec.frames.filter((f) => f.type === 'subscribed').length === 2);
    assert.deepEqual(await page.evaluate(() => rec.frames.filter((f) => f.type === 'subscribed')[1]),
      { type: 'subscribed', all: false, parcel_ids: ['p3'] });
    assert.equal(server.clientCount, 1);
    await rt.publishParcelUpdate('p2');
    await rt.publishParcelUpdate('p3');
    await page.waitForFunction(() => rec.events.length >= 4);
    await h.delay(100);
    assert.deepEqual(await page.evaluate(() => rec.events.map((e) => e.parcel_id)), ['p1', 'p2', 'p3', 'p3']);

    // close(): for good.
    assert.equal(await page.evaluate(() => {
      client.close();
      return client.state;
    }), 'closed');
    await h.waitUntil(() => server.clientCount === 0, 'the page client gone');
    await server.close();
    server = await rt.startServer(options);
    await h.delay(800); // more than twice maxDelayMs
    assert.equal(server.clientCount, 0, 'no reconnect after close()');
    assert.deepEqual(pageErrors, []);
  });

  test('the example page (examples/browser/index.html) connects with a pasted token and shows events', { timeout: 60_000 }, async (t) => {
    const opened = await openPage(t, '/examples/browser/index.html');
    if (!opened) return;
    const { page, pageErrors } = opened;
    const server = await rt.startServer({ ...BASE, port: 0, allowedOrigins: [web.origin] });
    t.after(() => server.close());

    await page.fill('#url', `ws://127.0.0.1:${server.port}/ws`);
    await page.fill('#token', h.sign({ sub: 'example-user' }));
    await page.click('#connect');
    await page.waitForFunction(() => document.getElementById('state').textContent === 'open', null, { timeout: 10_000 });
    await rt.publishParcelUpdate('p7', { price: 99 });
    await page.waitForFunction(() => document.getElementById('log').textContent.includes('parcel_updated p7 {"price":99}'));

    await page.fill('#ids', 'p8');
    await page.click('#subscribe');
    await rt.publishParcelUpdate('p7');
    await rt.publishParcelUpdate('p8');
    await page.waitForFunction(() => document.getElementById('log').textContent.includes('parcel_updated p8'));
    const log = await page.textContent('#log');
    assert.equal(log.split('parcel_updated p7').length - 1, 1, 'p7 is no longer followed');

    await page.click('#disconnect');
    assert.equal(await page.textContent('#state'), 'closed');
    await h.waitUntil(() => server.clientCount === 0, 'the example client gone');
    assert.deepEqual(pageErrors, []);
  });
});
