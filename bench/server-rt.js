#!/usr/bin/env node
// The server under test: this package (Rust engine) hosted by a Node process, publishing through
// the public JS API exactly as the marketplace does. Controlled by bench/lib/control.js.
//
//   node bench/server-rt.js --secret S [--port 0] [--host 127.0.0.1] [--redis redis://...]
//   node bench/server-rt.js --publisher-only --redis redis://...   (a separate publisher process)
'use strict';

const net = require('node:net');
const rt = require('..');
const { serve, parseArgs } = require('./lib/control');

/** `PING` over a connection of its own to the Redis at `url`: one bare round trip per call. */
function redisPinger(url) {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port || 6379), hostname);
  socket.setNoDelay(true);
  const waiting = [];
  let buffered = '';
  socket.on('data', (d) => {
    buffered += d.toString('latin1');
    let at;
    while ((at = buffered.indexOf('\r\n')) >= 0) {
      buffered = buffered.slice(at + 2);
      waiting.shift()?.();
    }
  });
  socket.on('error', () => {});
  socket.unref();
  return () => new Promise((resolve) => {
    waiting.push(resolve);
    socket.write('PING\r\n');
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const redisUrl = typeof args.redis === 'string' ? args.redis : undefined;
  if (args['publisher-only']) {
    // No server: publishParcelUpdate starts the bus from REDIS_URL on first use.
    if (redisUrl) process.env.REDIS_URL = redisUrl;
    process.env.REDIS_REQUIRED = '1';
    // One publish to bring the bus up before measuring.
    await rt.publishParcelUpdate('warmup');
    serve({
      publishOne: rt.publishParcelUpdate,
      clientCount: () => 0,
      close: async () => {},
      hello: { impl: 'rt', role: 'publisher' },
      probe: redisUrl ? redisPinger(redisUrl) : undefined,
    });
    return;
  }
  const server = await rt.startServer({
    port: Number(args.port ?? 0),
    host: args.host ?? '127.0.0.1',
    jwtSecret: args.secret,
    redisUrl: redisUrl ?? null,
    redisRequired: Boolean(redisUrl),
    // The load generators open thousands of connections (and hundreds of handshakes at once)
    // from one loopback address each: the per-address limits are for the open internet.
    maxConnectionsPerIp: 0,
    maxHandshakesPerIp: 0,
  });
  serve({
    publishOne: rt.publishParcelUpdate,
    clientCount: () => server.clientCount,
    close: () => server.close({ graceMs: 1000 }),
    hello: { impl: 'rt', role: 'server', port: server.port, bus: server.busMode },
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
