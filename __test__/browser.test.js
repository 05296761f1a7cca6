// A real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core): subprotocol
// auth (`new WebSocket(url, ['realtime-events', 'bearer.' + token])`), events, app-level ping, and
// the Origin allow-list as a browser meets it. Skipped without Chromium, except under CI.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');

const rt = require('..');
const h = require('./helpers');

const CHROMIUM = '/usr/bin/chromium';
const LAUNCH_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

/**
 * A frame without a trailing "offset" field (added by the resume feature, which this suite does
 * not judge; the Node suites strip it the same way in helpers.Client).
 */
function stripOffset(frame) {
  return typeof frame === 'string' ? frame.replace(/,"offset":"\d+-\d+"\}$/, '}') : frame;
}

/** page.evaluate(pageConnect, ...) with the frames' offsets stripped. */
async function connectInPage(page, args) {
  const result = await page.evaluate(pageConnect, args);
  return { ...result, messages: result.messages.map(stripOffset) };
}

function skipReason() {
  if (fs.existsSync(CHROMIUM)) return false;
  if (process.env.CI) return false; // under CI a missing browser is a failure, not a skip
  return `${CHROMIUM} is missing (apt-get install chromium); under CI this fails instead`;
}

/** Runs in the page: opens a WebSocket and records everything on window.rt. */
function pageConnect({ url, protocols }) {
  return new Promise((resolve) => {
    const state = { protocol: null, opened: false, messages: [], errors: 0, close: null };
    window.rt = state;
    const ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    state.ws = ws;
    const finish = () => resolve({ protocol: state.protocol, opened: state.opened, messages: state.messages.slice(), errors: state.errors, close: state.close });
    ws.onopen = () => {
      state.opened = true;
      state.protocol = ws.protocol;
    };
    ws.onmessage = (e) => {
      state.messages.push(e.data);
      if (state.messages.length === 1) finish(); // the welcome
    };
    ws.onerror = () => {
      state.errors++;
    };
    ws.onclose = (e) => {
      state.close = { code: e.code, wasClean: e.wasClean, reason: e.reason };
      finish();
    };
  });
}

describe('headless Chromium', { skip: skipReason() }, () => {
  let browser;
  let page;
  let httpServer;
  let pageOrigin;
  let server; // allows the page's origin
  let strict; // allows another origin only

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is required under CI (apt-get install chromium)`);
    const { chromium } = require('playwright-core');
    httpServer = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end('<!doctype html><html><head><title>realtime-events test page</title></head><body>ok</body></html>');
    });
    await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    pageOrigin = `http://127.0.0.1:${httpServer.address().port}`;
    server = await rt.startServer({ ...BASE, allowedOrigins: [pageOrigin] });
    strict = await rt.startServer({ ...BASE, allowedOrigins: ['http://other.example'] });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS, timeout: 30_000 });
    page = await browser.newPage();
    await page.goto(`${pageOrigin}/`);
    assert.equal(await page.evaluate(() => location.origin), pageOrigin);
  });

  after(async () => {
    await browser?.close();
    await server?.close();
    await strict?.close();
    httpServer?.closeAllConnections?.();
    await new Promise((resolve) => (httpServer ? httpServer.close(resolve) : resolve()));
  });

  /** Waits until the page's socket received `n` messages; returns them. */
  async function pageMessages(n) {
    await page.waitForFunction((count) => window.rt.messages.length >= count, n, { timeout: 5000 });
    return (await page.evaluate(() => window.rt.messages.slice())).map(stripOffset);
  }

  test('the browser authenticates with bearer.<JWT>: protocol, welcome, events with data, pong, refresh', async () => {
    const token = h.sign({ sub: 'browser-user' });
    const url = `ws://127.0.0.1:${server.port}/ws`;
    const result = await connectInPage(page, { url, protocols: ['realtime-events', `bearer.${token}`] });
    assert.equal(result.opened, true, `the browser connected (close: ${JSON.stringify(result.close)})`);
    assert.equal(result.protocol, 'realtime-events');
    assert.deepEqual(result.messages, [h.WELCOME]);
    await h.waitUntil(() => server.clientCount === 1, 'the server counts the browser');

    await rt.publishParcelUpdate('browser-1');
    await rt.publishParcelUpdate('browser-2', { owner_id: 'u7', price: 120 });
    assert.deepEqual((await pageMessages(3)).slice(1), [
      h.frame('browser-1'),
      '{"type":"parcel_updated","parcel_id":"browser-2","data":{"owner_id":"u7","price":120}}',
    ]);

    await page.evaluate(() => window.rt.ws.send(JSON.stringify({ type: 'ping' })));
    assert.equal((await pageMessages(4))[3], '{"type":"pong"}');

    const exp = h.nowSeconds() + 600;
    await page.evaluate((t) => window.rt.ws.send(JSON.stringify({ type: 'refresh', token: t })), h.sign({ sub: 'browser-user', exp }));
    assert.equal((await pageMessages(5))[4], `{"type":"refreshed","exp":${exp}}`);

    await page.evaluate(() => window.rt.ws.close(1000, 'done'));
    await h.waitUntil(() => server.clientCount === 0, 'the server saw the browser leave');
  });

  test('the browser\'s close is answered: a clean close with its code, not 1006', async () => {
    const token = h.sign({ sub: 'browser-closer' });
    const result = await connectInPage(page, { url: `ws://127.0.0.1:${server.port}/ws`, protocols: ['realtime-events', `bearer.${token}`] });
    assert.equal(result.opened, true);
    // The server must answer the browser's Close frame (RFC 6455 5.5.1); otherwise the browser
    // reports an abnormal closure (1006, wasClean false) for its own, orderly close.
    await page.evaluate(() => window.rt.ws.close(1000, 'done'));
    await page.waitForFunction(() => window.rt.close !== null, null, { timeout: 5000 });
    const close = await page.evaluate(() => window.rt.close);
    assert.deepEqual({ code: close.code, wasClean: close.wasClean }, { code: 1000, wasClean: true });
    await h.waitUntil(() => server.clientCount === 0, 'the server saw the browser leave');
  });

  test('offering only bearer.<JWT> fails (400 SUBPROTOCOL_REQUIRED: the token is never echoed)', async () => {
    const token = h.sign({ sub: 'browser-only-bearer' });
    const result = await connectInPage(page, { url: `ws://127.0.0.1:${server.port}/ws`, protocols: [`bearer.${token}`] });
    assert.equal(result.opened, false);
    assert.deepEqual(result.messages, []);
    assert.equal(result.close.code, 1006);
    assert.equal(server.clientCount, 0);
  });

  test('a bad token in the subprotocol: the browser\'s connection fails (1006)', async () => {
    const bad = h.sign({ sub: 'x' }, {}, 'wrong-secret');
    const result = await connectInPage(page, { url: `ws://127.0.0.1:${server.port}/ws`, protocols: ['realtime-events', `bearer.${bad}`] });
    assert.equal(result.opened, false);
    assert.deepEqual(result.messages, []);
    assert.equal(result.errors, 1);
    assert.equal(result.close.code, 1006);
    assert.equal(result.close.wasClean, false);
    assert.equal(server.clientCount, 0);
  });

  test('an Origin not in allowedOrigins: the browser fails (1006), a Node client gets 403 ORIGIN_NOT_ALLOWED', async () => {
    const token = h.sign({ sub: 'browser-user' });
    const result = await connectInPage(page, { url: `ws://127.0.0.1:${strict.port}/ws`, protocols: ['realtime-events', `bearer.${token}`] });
    assert.equal(result.opened, false, 'the browser must not connect from a foreign origin');
    assert.deepEqual(result.messages, []);
    assert.equal(result.errors, 1);
    assert.equal(result.close.code, 1006);
    assert.equal(strict.clientCount, 0);
    // What the browser could not read: the refusal, as a Node client with the page's Origin sees it.
    h.assertRefusal(
      await h.refusalProtocols(`ws://127.0.0.1:${strict.port}/ws`, ['realtime-events', `bearer.${token}`], { origin: pageOrigin }),
      403, 'ORIGIN_NOT_ALLOWED',
    );
    // The same token from a client without an Origin (a server, a CLI) is admitted.
    const c = await h.connectReady(h.wsUrl(strict, { token }));
    await c.close();
    // The server that allows the page's origin still takes the browser.
    const ok = await connectInPage(page, { url: `ws://127.0.0.1:${server.port}/ws`, protocols: ['realtime-events', `bearer.${token}`] });
    assert.equal(ok.opened, true);
    assert.deepEqual(ok.messages, [h.WELCOME]);
    await page.evaluate(() => window.rt.ws.close());
  });
});
