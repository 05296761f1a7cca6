#!/usr/bin/env node
// The server under test: this package (Rust engine) hosted by a Node process, publishing through
// the public JS API exactly as the marketplace does. Controlled by bench/lib/control.js.
//
//   node bench/server-rt.js --secret S [--port 0] [--host 127.0.0.1] [--redis redis://...]
//   node bench/server-rt.js --publisher-only --redis redis://...   (a separate publisher process)
'use strict';

const rt = require('..');
const { serve, parseArgs } = require('./lib/control');

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
