// The live dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core): the page loads from the server alone (no other origin), shows the clients,
// a token pasted into it opens the live feed, published events appear in the feed and move the
// chart. Saves a screenshot to __test__/artifacts/dashboard.png (UPDATE_DOCS_SCREENSHOT=1 also
// copies it to docs/dashboard.png for the README).
//
// Without Chromium the test is skipped with a reason, except in CI (CI=true), where it must run.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const rt = require('..');
const h = require('./helpers');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(__dirname, 'artifacts');
const skip = fs.existsSync(CHROMIUM) || process.env.CI
  ? false
  : `Chromium is not installed at ${CHROMIUM} (apt-get install chromium); this test is never skipped in CI`;

describe('dashboard in headless Chromium', { skip }, () => {
  let server;
  let browser;
  let userDataDir;
  const clients = [];

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
    const { chromium } = require('playwright-core');
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtime-events-chromium-'));
    browser = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 860 },
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
  });

  after(async () => {
    await browser?.close();
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
    await Promise.all(clients.map((c) => c.close()));
    await server?.close();
  });

  test('shows clients, streams a pasted token\'s feed, and the chart moves with the events', async () => {
    const origin = `127.0.0.1:${server.port}`;
    for (let i = 0; i < 24; i++) clients.push(await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: `viewer-${i}` }) })));

    const page = browser.pages()[0] ?? (await browser.newPage());
    const requests = [];
    const errors = [];
    page.on('request', (r) => requests.push(r.url()));
    page.on('websocket', (ws) => requests.push(ws.url()));
    page.on('pageerror', (err) => errors.push(err.message));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });

    const response = await page.goto(`http://${origin}/`);
    assert.equal(response.status(), 200);
    await page.waitForFunction(() => document.getElementById('status').textContent === 'ok', null, { timeout: 5000 });
    await page.waitForFunction(() => document.getElementById('clients').textContent === '24', null, { timeout: 5000 });
    assert.match(await page.textContent('#meta'), /bus memory/);
    assert.equal(await page.textContent('#redis'), 'off');

    // A wrong token: the page says so.
    await page.fill('#token', h.sign({ sub: 'dev' }, {}, 'not-the-secret'));
    await page.click('#connect');
    await page.waitForFunction(() => /refused/.test(document.getElementById('ws-state').textContent), null, { timeout: 5000 });
    // The browser itself reports the refused WebSocket (401) on its console; nothing else may.
    assert.ok(errors.every((e) => /WebSocket connection to .* failed/.test(e)), String(errors));
    errors.length = 0;

    // Paste a real one and watch the stream.
    await page.fill('#token', h.sign({ sub: 'developer' }));
    await page.click('#connect');
    await page.waitForSelector('#ws-state.open', { timeout: 5000 });
    await h.waitUntil(() => server.clientCount === 25, 'the page is connected');
    const chartBefore = await page.evaluate(() => document.getElementById('chart').toDataURL());

    // About 8 s of events at a varying rate, so the chart has a shape.
    let n = 0;
    const started = Date.now();
    while (Date.now() - started < 8000) {
      const t = (Date.now() - started) / 1000;
      const perTick = Math.round(3 + 12 * (1 + Math.sin(t * 0.9)));
      await Promise.all(Array.from({ length: perTick }, () => rt.publishParcelUpdate(`parcel-${n++}`)));
      await h.delay(50);
    }
    const last = `parcel-${n - 1}`;
    await page.waitForFunction((id) => document.querySelector('#feed li .v')?.textContent === id, last, { timeout: 5000 });
    const feed = await page.$$eval('#feed li .v', (els) => els.slice(0, 5).map((e) => e.textContent));
    assert.deepEqual(feed, Array.from({ length: 5 }, (_, i) => `parcel-${n - 1 - i}`), 'newest first, in order');
    assert.equal(await page.textContent('#feed li .k'), 'parcel_updated');

    await page.waitForFunction(() => document.getElementById('chart').dataset.series.split(',').filter((v) => Number(v) > 0).length >= 3,
      null, { timeout: 5000 });
    const series = (await page.getAttribute('#chart', 'data-series')).split(',').map(Number);
    assert.ok(Math.max(...series) > 5, `the chart shows the event rate: ${series}`);
    const chartAfter = await page.evaluate(() => document.getElementById('chart').toDataURL());
    assert.notEqual(chartAfter, chartBefore, 'the chart was redrawn with the new figures');
    assert.ok(Number((await page.textContent('#rate')).replace(/[^\d.]/g, '')) > 0, 'events per second shown');
    assert.equal(await page.textContent('#clients'), '25');

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, 'dashboard.png');
    await page.screenshot({ path: shot });
    assert.ok(fs.statSync(shot).size > 10_000, 'a real screenshot');
    if (process.env.UPDATE_DOCS_SCREENSHOT === '1') {
      fs.mkdirSync(path.join(h.PKG, 'docs'), { recursive: true });
      fs.copyFileSync(shot, path.join(h.PKG, 'docs', 'dashboard.png'));
    }

    assert.deepEqual(errors, [], 'no errors in the page');
    const foreign = requests.filter((u) => !u.startsWith(`http://${origin}/`) && !u.startsWith(`ws://${origin}/`) && !u.startsWith('data:'));
    assert.deepEqual(foreign, [], 'the page loads nothing from another origin');
    await page.close();
  });

  test('a token in the address fragment connects at once', async () => {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${server.port}/#token=${h.sign({ sub: 'linked' })}`);
    await page.waitForSelector('#ws-state.open', { timeout: 5000 });
    await rt.publishParcelUpdate('via-fragment');
    await page.waitForFunction(() => document.querySelector('#feed li .v')?.textContent === 'via-fragment', null, { timeout: 5000 });
    await page.close();
  });
});
