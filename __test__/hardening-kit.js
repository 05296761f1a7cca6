// Tools of the hardening suites (issue 10): a hostile client's view of the server. Raw TCP
// sockets speaking HTTP/1.1 and WebSocket frames by hand (so that a test can send exactly what an
// attacker sends: partial heads, fragments, duplicated headers, and read as little as it likes),
// and a server child running under a lowered open-file limit. Loopback only.
'use strict';

const crypto = require('node:crypto');
const net = require('node:net');

const h = require('./helpers');

const BASE = { host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, port: 0 };

/** A client frame (masked, as RFC 6455 requires of clients). */
function clientFrame(opcode, payload = Buffer.alloc(0), fin = true) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const len = data.length;
  const head = len < 126 ? Buffer.alloc(2) : len < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
  head[0] = (fin ? 0x80 : 0) | opcode;
  if (len < 126) head[1] = 0x80 | len;
  else if (len < 65536) {
    head[1] = 0x80 | 126;
    head.writeUInt16BE(len, 2);
  } else {
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  const mask = crypto.randomBytes(4);
  const body = Buffer.alloc(len);
  for (let i = 0; i < len; i++) body[i] = data[i] ^ mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

/**
 * Parses the server's (unmasked) frames from a byte stream: `push(chunk)` returns the complete
 * frames [{opcode, fin, payload}] found so far.
 */
function frameParser() {
  let buf = Buffer.alloc(0);
  return {
    push(chunk) {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const out = [];
      for (;;) {
        if (buf.length < 2) break;
        let len = buf[1] & 0x7f;
        let at = 2;
        if (len === 126) {
          if (buf.length < 4) break;
          len = buf.readUInt16BE(2);
          at = 4;
        } else if (len === 127) {
          if (buf.length < 10) break;
          len = Number(buf.readBigUInt64BE(2));
          at = 10;
        }
        if (buf.length < at + len) break;
        out.push({ opcode: buf[0] & 0x0f, fin: (buf[0] & 0x80) !== 0, payload: buf.subarray(at, at + len) });
        buf = buf.subarray(at + len);
      }
      return out;
    },
  };
}

/** The head of an upgrade request; `headers` is a list of [name, value] (duplicates allowed). */
function upgradeHead({ path = '/ws', query = '', headers, version = '1.1', host = '127.0.0.1' } = {}) {
  const list = headers ?? [
    ['Host', host],
    ['Upgrade', 'websocket'],
    ['Connection', 'Upgrade'],
    ['Sec-WebSocket-Key', crypto.randomBytes(16).toString('base64')],
    ['Sec-WebSocket-Version', '13'],
  ];
  return `GET ${path}${query} HTTP/${version}\r\n${list.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`;
}

/** The usual upgrade headers, plus `extra`, in order. */
function upgradeHeaders(extra = [], { host = '127.0.0.1', key = crypto.randomBytes(16).toString('base64') } = {}) {
  return [
    ...(host == null ? [] : [['Host', host]]),
    ['Upgrade', 'websocket'],
    ['Connection', 'Upgrade'],
    ['Sec-WebSocket-Key', key],
    ['Sec-WebSocket-Version', '13'],
    ...extra,
  ];
}

/**
 * A raw TCP connection to the server. Records every byte; `response()` resolves with the HTTP
 * response head {status, headers (lower-case names; repeated ones joined by ', '), raw} once
 * it is complete; after a 101, `frames` holds the server's frames as they arrive and
 * `closeFrame()` resolves with the close {code, reason} (or null if the socket ends without one).
 */
function rawClient(port, { localAddress } = {}) {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  const state = {
    socket,
    bytes: 0,
    frames: [],
    ended: false,
    error: null,
    listeners: new Set(),
  };
  let head = null;
  let pending = Buffer.alloc(0);
  const parser = frameParser();
  const notify = () => {
    for (const l of [...state.listeners]) l();
  };
  socket.on('data', (chunk) => {
    state.bytes += chunk.length;
    if (!head) {
      pending = Buffer.concat([pending, chunk]);
      const end = pending.indexOf('\r\n\r\n');
      if (end < 0) return notify();
      const text = pending.subarray(0, end).toString('latin1');
      const [statusLine, ...lines] = text.split('\r\n');
      const headers = {};
      for (const line of lines) {
        const i = line.indexOf(':');
        const name = line.slice(0, i).trim().toLowerCase();
        const value = line.slice(i + 1).trim();
        headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
      }
      head = { status: Number(statusLine.split(' ')[1]), headers, raw: text, body: '' };
      chunk = pending.subarray(end + 4);
      pending = null;
      if (head.status !== 101) {
        head.body = chunk.toString('utf8');
        return notify();
      }
    } else if (head.status !== 101) {
      head.body += chunk.toString('utf8');
      return notify();
    }
    for (const f of parser.push(chunk)) state.frames.push(f);
    notify();
  });
  socket.on('error', (err) => {
    state.error = err;
    notify();
  });
  socket.on('close', () => {
    state.ended = true;
    notify();
  });
  const connected = new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const until = (check, what, ms = h.DEFAULT_TIMEOUT) => h.withTimeout(new Promise((resolve) => {
    const l = () => {
      const v = check();
      if (v !== undefined) {
        state.listeners.delete(l);
        resolve(v);
      }
    };
    state.listeners.add(l);
    l();
  }), ms, what).finally(() => {});
  Object.assign(state, {
    connected,
    write(data) {
      return new Promise((resolve) => {
        if (socket.destroyed) return resolve(false);
        socket.write(data, () => resolve(true));
      });
    },
    /** Resolves with the response head; null if the socket closed before one came. */
    response(ms) {
      return until(() => (head ? head : state.ended ? null : undefined), 'an HTTP response', ms);
    },
    /** The response with its body once the server closed the socket (for refusals). */
    async fullResponse(ms) {
      const r = await state.response(ms);
      await until(() => (state.ended ? true : undefined), 'the server to close', ms);
      return r;
    },
    texts() {
      return state.frames.filter((f) => f.opcode === 1).map((f) => f.payload.toString('utf8'));
    },
    /** The server's close frame {code, reason}, or null if the socket closed without one. */
    closeFrame(ms) {
      return until(() => {
        const f = state.frames.find((x) => x.opcode === 8);
        if (f) return { code: f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005, reason: f.payload.subarray(2).toString('utf8') };
        return state.ended ? null : undefined;
      }, 'a close frame', ms);
    },
    until,
    destroy() {
      socket.destroy();
    },
  });
  return state;
}

/** A raw client upgraded with a token; resolves once the welcome frame arrived. */
async function rawSession(port, { token = h.sign(), query = '', extraHeaders = [], localAddress } = {}) {
  const c = rawClient(port, { localAddress });
  await c.connected;
  const q = `?token=${encodeURIComponent(token)}${query}`;
  await c.write(upgradeHead({ query: q, headers: upgradeHeaders(extraHeaders) }));
  const r = await c.response();
  if (!r || r.status !== 101) throw new Error(`upgrade refused: ${r ? r.raw : 'closed'}`);
  await c.until(() => (c.texts().length ? true : undefined), 'the welcome frame');
  return c;
}

/** Runs `fn(server)` against an in-process server with `options`; always closes it. */
async function withServer(options, fn) {
  const rt = require('..');
  const server = await rt.startServer({ ...BASE, ...options });
  try {
    return await fn(server);
  } finally {
    await server.close({ graceMs: 2000 });
  }
}

/**
 * A server child under `ulimit -n nofile`: prints `ready PORT` (and its logs on stderr);
 * `publish ID` publishes, `close` closes. LOG_LEVEL=info so that the startup line is visible.
 */
function spawnLimitedServer(nofile, options = {}, env = {}) {
  const all = { port: 0, host: '127.0.0.1', jwtSecret: h.SECRET, redisUrl: null, ...options };
  const script = `
    const rt = require(${JSON.stringify(h.PKG)});
    const readline = require('node:readline');
    (async () => {
      const server = await rt.startServer(${JSON.stringify(all)});
      console.log('ready ' + server.port);
      const rl = readline.createInterface({ input: process.stdin });
      rl.on('line', async (line) => {
        const [cmd, arg] = line.split(' ');
        if (cmd === 'publish') {
          await rt.publishParcelUpdate(arg);
          console.log('published ' + arg);
        } else if (cmd === 'clients') {
          console.log('clients ' + server.clientCount);
        } else if (cmd === 'close') {
          rl.close();
          process.stdin.destroy();
          await server.close({ graceMs: 1000 });
          console.log('closed');
        }
      });
    })().catch((err) => { console.error(err); process.exit(2); });
  `;
  return h.spawnProcess('bash', ['-c', `ulimit -n ${nofile} && exec "${process.execPath}" -e "$HARDENING_SCRIPT"`], {
    env: h.cleanEnv({ HARDENING_SCRIPT: script, LOG_LEVEL: 'info', LOG_FORMAT: 'text', ...env }),
  });
}

/** `n` copies of `bytes` of JSON-safe filler: an event's `data` of about that size. */
function filler(bytes) {
  return { note: 'x'.repeat(Math.max(0, bytes - 12)) };
}

/** The offset carried by a frame, or null. */
function offsetOf(text) {
  const m = /"offset":"(\d+-\d+)"/.exec(text);
  return m ? m[1] : null;
}

module.exports = {
  BASE, clientFrame, frameParser, upgradeHead, upgradeHeaders, rawClient, rawSession, withServer,
  spawnLimitedServer, filler, offsetOf,
};
