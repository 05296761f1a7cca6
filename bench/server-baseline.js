#!/usr/bin/env node
// The yardstick: the original design in plain Node, kept here so that every benchmark figure is
// a ratio against it, measured in the same run on the same machine.
//
//   - npm `ws` WebSocketServer on /ws; the JWT (HS256, `?token=`) is checked by `verifyClient`
//     with `jsonwebtoken` before the upgrade (401 otherwise);
//   - welcome frame on connection, then `{"type":"parcel_updated","parcel_id":...}` to every
//     open client for each event;
//   - events travel on an EventEmitter (one process) or Redis pub/sub through node-redis
//     (channel `parcel_events`), the subscriber fanning out what Redis delivers.
//
//   node bench/server-baseline.js --secret S [--port 0] [--host 127.0.0.1] [--redis redis://...]
//   node bench/server-baseline.js --publisher-only --redis redis://...
'use strict';

const { EventEmitter } = require('node:events');
const http = require('node:http');
const jwt = require('jsonwebtoken');
const { WebSocketServer, WebSocket } = require('ws');
const { serve, parseArgs } = require('./lib/control');

const CHANNEL = 'parcel_events';
const WELCOME = JSON.stringify({ type: 'connected', message: 'WebSocket connection established' });

async function redisClient(url) {
  const { createClient } = require('redis');
  const client = createClient({ url });
  client.on('error', (err) => console.error('[baseline] redis:', err.message));
  await client.connect();
  return client;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const redisUrl = typeof args.redis === 'string' ? args.redis : undefined;

  if (args['publisher-only']) {
    const pub = await redisClient(redisUrl);
    serve({
      publishOne: (parcelId) =>
        pub.publish(CHANNEL, JSON.stringify({ type: 'parcel_updated', parcel_id: parcelId })),
      clientCount: () => 0,
      close: () => pub.quit(),
      hello: { impl: 'baseline', role: 'publisher' },
    });
    return;
  }

  const secret = args.secret;
  const server = http.createServer((req, res) => {
    res.writeHead(404).end();
  });
  // e.g. EMFILE at the file-descriptor limit (the scale scenario): log, keep serving.
  server.on('error', (err) => console.error('[baseline] server:', err.message));
  const wss = new WebSocketServer({
    server,
    path: '/ws',
    verifyClient: (info, done) => {
      const url = new URL(info.req.url, 'http://localhost');
      const token = url.searchParams.get('token');
      if (!token) return done(false, 401, 'Unauthorized');
      jwt.verify(token, secret, { algorithms: ['HS256'] }, (err, claims) => {
        if (err) return done(false, 401, 'Unauthorized');
        info.req.user = claims;
        done(true);
      });
    },
  });
  wss.on('connection', (ws) => {
    ws.send(WELCOME);
    ws.on('error', () => {});
  });

  const bus = new EventEmitter();
  bus.on('parcel_updated', (parcelId) => {
    const message = JSON.stringify({ type: 'parcel_updated', parcel_id: parcelId });
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(message);
    }
  });

  let publishOne;
  let pub = null;
  let sub = null;
  if (redisUrl) {
    pub = await redisClient(redisUrl);
    sub = pub.duplicate();
    sub.on('error', (err) => console.error('[baseline] redis sub:', err.message));
    await sub.connect();
    await sub.subscribe(CHANNEL, (message) => {
      try {
        const event = JSON.parse(message);
        if (event.type === 'parcel_updated') bus.emit('parcel_updated', event.parcel_id);
      } catch {
        // not an event
      }
    });
    publishOne = (parcelId) =>
      pub.publish(CHANNEL, JSON.stringify({ type: 'parcel_updated', parcel_id: parcelId }));
  } else {
    publishOne = (parcelId) => {
      bus.emit('parcel_updated', parcelId);
    };
  }

  await new Promise((resolve) => server.listen(Number(args.port ?? 0), args.host ?? '127.0.0.1', resolve));
  serve({
    publishOne,
    clientCount: () => wss.clients.size,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      await new Promise((resolve) => wss.close(resolve));
      await new Promise((resolve) => server.close(resolve));
      if (sub) await sub.quit();
      if (pub) await pub.quit();
    },
    hello: { impl: 'baseline', role: 'server', port: server.address().port, bus: redisUrl ? 'redis' : 'memory' },
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
