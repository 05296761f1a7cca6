// Bad input from clients and from raw TCP: each gets its exact answer, and the server (and a
// healthy observer client) carries on.
'use strict';

const { test, describe, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const crypto = require('node:crypto');

const rt = require('..');
const h = require('./helpers');

/** A raw TCP connection that records everything it receives until it closes. */
function rawSocket(port) {
  const sock = net.connect(port, '127.0.0.1');
  const state = { sock, data: Buffer.alloc(0), error: null, closed: false };
  sock.on('data', (d) => {
    state.data = Buffer.concat([state.data, d]);
  });
  sock.on('error', (err) => {
    state.error = err;
  });
  state.whenClosed = new Promise((resolve) => sock.on('close', () => {
    state.closed = true;
    resolve();
  }));
  state.connected = new Promise((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  return state;
}

/** A masked client text frame (payload < 126 bytes). */
function clientTextFrame(text) {
  const payload = Buffer.from(text);
  assert.ok(payload.length < 126);
  const mask = crypto.randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

/** Parses unmasked server text frames (payload < 64 KiB) from a buffer. */
function serverTextFrames(buf) {
  const frames = [];
  let i = 0;
  while (i + 2 <= buf.length) {
    const opcode = buf[i] & 0x0f;
    let len = buf[i + 1] & 0x7f;
    let off = i + 2;
    if (len === 126) {
      if (off + 2 > buf.length) break;
      len = buf.readUInt16BE(off);
      off += 2;
    }
    if (off + len > buf.length) break;
    frames.push({ opcode, text: buf.subarray(off, off + len).toString('utf8') });
    i = off + len;
  }
  return frames;
}

function upgradeRequest(port, token, extra = '') {
  return (
    `GET /ws?token=${token} HTTP/1.1\r\n` +
    `Host: 127.0.0.1:${port}\r\n` +
    'Upgrade: websocket\r\n' +
    'Connection: Upgrade\r\n' +
    `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\n` +
    'Sec-WebSocket-Version: 13\r\n' +
    extra +
    '\r\n'
  );
}

describe('bad input', () => {
  let server;
  let observer;
  const clients = [];
  const sockets = [];

  before(async () => {
    server = await rt.startServer({ port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null });
    observer = await h.connectReady(h.wsUrl(server, { token: h.sign({ sub: 'observer' }) }));
  });

  after(async () => {
    for (const s of sockets) s.sock.destroy();
    await Promise.all(clients.map((c) => c.close()));
    await observer?.close();
    await server?.close();
  });

  const client = async () => {
    const c = await h.connectReady(h.wsUrl(server));
    clients.push(c);
    return c;
  };

  test('invalid JSON gets an INVALID_JSON error frame and the connection stays open', async () => {
    const c = await client();
    await c.send('{oops');
    const reply = await c.nextJson();
    assert.deepEqual(Object.keys(reply).sort(), ['code', 'message', 'type']);
    assert.equal(reply.type, 'error');
    assert.equal(reply.code, 'INVALID_JSON');
    assert.equal(typeof reply.message, 'string');
    await c.send('{"type":"ping"}');
    assert.equal(await c.next(), '{"type":"pong"}');
    assert.equal(c.closeInfo, null);
  });

  test('a binary frame gets an UNSUPPORTED_MESSAGE error frame', async () => {
    const c = await client();
    await c.send(Buffer.from([0xde, 0xad, 0xbe, 0xef]));
    const raw = await c.next();
    assert.equal(typeof raw, 'string', 'the error is a text frame');
    const reply = JSON.parse(raw);
    assert.equal(reply.type, 'error');
    assert.equal(reply.code, 'UNSUPPORTED_MESSAGE');
    assert.equal(typeof reply.message, 'string');
  });

  test('{"type":"ping"} gets exactly {"type":"pong"}', async () => {
    const c = await client();
    await c.send('{"type":"ping"}');
    assert.equal(await c.next(), '{"type":"pong"}');
    await c.send('  { "type" : "ping", "extra": [1, 2] }  ');
    assert.equal(await c.next(), '{"type":"pong"}');
  });

  test('valid JSON of an unknown shape gets UNKNOWN_MESSAGE_TYPE', async () => {
    const c = await client();
    for (const msg of ['{"type":"dance"}', '[]', '{"kind":"ping"}', '42']) {
      await c.send(msg);
      const reply = await c.nextJson();
      assert.equal(reply.type, 'error', msg);
      assert.equal(reply.code, 'UNKNOWN_MESSAGE_TYPE', msg);
    }
  });

  test('an oversized message (100 KiB) closes the connection with 1009', async () => {
    const c = await client();
    c.ws.send('x'.repeat(100 * 1024));
    const info = await h.withTimeout(c.closed, 5000, 'close 1009');
    assert.equal(info.code, 1009);
  });

  test('raw TCP garbage instead of HTTP gets a 400 JSON response', async () => {
    const s = rawSocket(server.port);
    sockets.push(s);
    await s.connected;
    s.sock.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x0d, 0x0a]));
    await h.withTimeout(s.whenClosed, 5000, 'the server to close the garbage connection');
    const text = s.data.toString('utf8');
    assert.match(text, /^HTTP\/1\.1 400 Bad Request\r\n/);
    const body = JSON.parse(text.split('\r\n\r\n')[1]);
    assert.equal(body.code, 'BAD_REQUEST');
  });

  test('an oversized request head gets 431', async () => {
    const s = rawSocket(server.port);
    sockets.push(s);
    await s.connected;
    s.sock.write(`GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(10 * 1024)}\r\n\r\n`);
    await h.withTimeout(s.whenClosed, 5000, 'the server to close the oversized connection');
    assert.match(s.data.toString('utf8'), /^HTTP\/1\.1 431 /);
  });

  test('an unsupported WebSocket version gets 426 UNSUPPORTED_VERSION', async () => {
    const s = rawSocket(server.port);
    sockets.push(s);
    await s.connected;
    s.sock.write(upgradeRequest(server.port, h.sign()).replace('Sec-WebSocket-Version: 13', 'Sec-WebSocket-Version: 8'));
    await h.withTimeout(s.whenClosed, 5000, 'the refusal');
    const text = s.data.toString('utf8');
    assert.match(text, /^HTTP\/1\.1 426 /);
    assert.equal(JSON.parse(text.split('\r\n\r\n')[1]).code, 'UNSUPPORTED_VERSION');
  });

  test('half an upgrade request, then a TCP reset', async () => {
    const s = rawSocket(server.port);
    sockets.push(s);
    await s.connected;
    const half = upgradeRequest(server.port, h.sign()).slice(0, 60);
    await new Promise((resolve) => s.sock.write(half, resolve));
    await h.delay(50);
    s.sock.resetAndDestroy();
    await s.whenClosed;
    assert.equal(s.data.length, 0, 'nothing was answered before the reset');
  });

  test('a frame sent in the same packet as the upgrade request is answered', async () => {
    const s = rawSocket(server.port);
    sockets.push(s);
    await s.connected;
    s.sock.write(Buffer.concat([Buffer.from(upgradeRequest(server.port, h.sign())), clientTextFrame('{"type":"ping"}')]));
    await h.waitUntil(() => {
      const i = s.data.indexOf('\r\n\r\n');
      return i >= 0 && serverTextFrames(s.data.subarray(i + 4)).length >= 2;
    }, 'the 101, the welcome and the pong');
    const i = s.data.indexOf('\r\n\r\n');
    assert.match(s.data.subarray(0, i).toString(), /^HTTP\/1\.1 101 Switching Protocols\r\n/);
    assert.deepEqual(serverTextFrames(s.data.subarray(i + 4)).map((f) => ({ ...f, text: h.withoutOffset(f.text) })), [
      { opcode: 1, text: h.WELCOME },
      { opcode: 1, text: '{"type":"pong"}' },
    ]);
    s.sock.destroy();
  });

  test('after all that, the observer still receives events and new clients connect', async () => {
    await rt.publishParcelUpdate('still-alive');
    assert.equal(await observer.next(), h.frame('still-alive'));
    // The observer saw nothing of the other clients' errors.
    assert.deepEqual(observer.messages, [h.WELCOME, h.frame('still-alive')]);
    assert.equal(observer.closeInfo, null);
    const fresh = await client();
    await rt.publishParcelUpdate('for-the-fresh-one');
    assert.equal(await fresh.next(), h.frame('for-the-fresh-one'));
    assert.equal(await observer.next(), h.frame('for-the-fresh-one'));
  });
});

describe('maxMessageBytes', () => {
  test('messages up to the limit are answered; one byte more closes with 1009', async () => {
    const server = await rt.startServer({
      port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, maxMessageBytes: 100,
    });
    const c = await h.connectReady(h.wsUrl(server));
    try {
      const fits = `{"type":"ping","pad":"${'x'.repeat(100 - 24)}"}`;
      assert.equal(Buffer.byteLength(fits), 100);
      await c.send(fits);
      assert.equal(await c.next(), '{"type":"pong"}');
      await c.send(`{"type":"ping","pad":"${'x'.repeat(100 - 23)}"}`);
      assert.equal((await h.withTimeout(c.closed, 5000, 'close 1009')).code, 1009);
    } finally {
      await c.close();
      await server.close();
    }
  });
});

describe('handshake timeout', () => {
  test('a connection that never sends its request gets 408 HANDSHAKE_TIMEOUT', async () => {
    const server = await rt.startServer({
      port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, handshakeTimeoutMs: 200,
    });
    const s = rawSocket(server.port);
    try {
      await s.connected;
      await h.withTimeout(s.whenClosed, 5000, 'the server to give up on the silent connection');
      const text = s.data.toString('utf8');
      assert.match(text, /^HTTP\/1\.1 408 /);
      assert.equal(JSON.parse(text.split('\r\n\r\n')[1]).code, 'HANDSHAKE_TIMEOUT');
      // A prompt client is still served.
      const c = await h.connectReady(h.wsUrl(server));
      await c.close();
    } finally {
      s.sock.destroy();
      await server.close();
    }
  });
});
