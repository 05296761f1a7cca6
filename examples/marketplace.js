#!/usr/bin/env node
// A marketplace API process with the realtime server beside it: the shape of the integration the
// back end uses. Buying or listing a parcel answers the HTTP request, then `publishParcelEvent`
// tells every WebSocket client (with the new owner and price, so they need not refetch).
//
//   npm install                          # in this repository (express and jsonwebtoken are dev
//   node examples/marketplace.js         # dependencies); prints URLs, a token and curl commands
//
// Environment: PORT (API, 3000), REALTIME_PORT (WebSocket, 3006), JWT_SECRET (a random one for
// the demo when unset), REDIS_URL (several API processes sharing events).
'use strict';

const crypto = require('node:crypto');
const express = require('express');
const jwt = require('jsonwebtoken');
const rt = require('realtime-events');

const JWT_SECRET = process.env.JWT_SECRET || crypto.randomBytes(32).toString('hex');

// The marketplace's database, reduced to a Map.
const parcels = new Map([
  ['p1', { id: 'p1', owner_id: null, listed: true, price: 120 }],
  ['p2', { id: 'p2', owner_id: 'u7', listed: false, price: null }],
]);

/** The Auth module's middleware: the same HS256 secret the realtime server checks. */
function authenticateToken(req, res, next) {
  const m = /^Bearer (.+)$/.exec(req.get('authorization') || '');
  try {
    req.user = jwt.verify(m ? m[1] : '', JWT_SECRET, { algorithms: ['HS256'] });
    next();
  } catch {
    res.status(401).json({ error: 'unauthorized' });
  }
}

/** Responds, then calls next() so that publishParcelEvent runs (it publishes only on 2xx). */
function buyParcel(req, res, next) {
  const parcel = parcels.get(req.params.parcel_id);
  if (!parcel) res.status(404).json({ error: 'no such parcel' });
  else if (!parcel.listed) res.status(409).json({ error: 'not for sale' });
  else {
    Object.assign(parcel, { owner_id: req.user.sub, listed: false, price: null });
    res.locals.parcelEventData = { owner_id: parcel.owner_id, listed: false };
    res.json(parcel);
  }
  next();
}

function listParcel(req, res, next) {
  const parcel = parcels.get(req.params.parcel_id);
  const price = Number(req.body?.price);
  if (!parcel) res.status(404).json({ error: 'no such parcel' });
  else if (parcel.owner_id !== req.user.sub) res.status(403).json({ error: 'not your parcel' });
  else if (!(price > 0)) res.status(400).json({ error: 'price must be a positive number' });
  else {
    Object.assign(parcel, { listed: true, price });
    res.locals.parcelEventData = { listed: true, price };
    res.json(parcel);
  }
  next();
}

async function main() {
  const app = express();
  app.use(express.json());
  app.get('/parcels/:parcel_id', (req, res) => {
    const parcel = parcels.get(req.params.parcel_id);
    if (parcel) res.json(parcel);
    else res.status(404).json({ error: 'no such parcel' });
  });
  app.post('/buy/:parcel_id', authenticateToken, buyParcel, rt.publishParcelEvent);
  app.post('/list/:parcel_id', authenticateToken, listParcel, rt.publishParcelEvent);

  const realtime = await rt.startServer({
    port: Number(process.env.REALTIME_PORT ?? 3006),
    jwtSecret: JWT_SECRET,
  });
  const api = await new Promise((resolve, reject) => {
    const s = app.listen(Number(process.env.PORT ?? 3000), () => resolve(s)).once('error', reject);
  });

  const token = jwt.sign({ sub: 'u1' }, JWT_SECRET, { expiresIn: '1h' });
  const apiUrl = `http://localhost:${api.address().port}`;
  console.log(`API:       ${apiUrl}`);
  console.log(`WebSocket: ws://localhost:${realtime.port}/ws?token=${token}`);
  console.log(`buy:       curl -X POST -H 'Authorization: Bearer ${token}' ${apiUrl}/buy/p1`);
  console.log(`relist:    curl -X POST -H 'Authorization: Bearer ${token}' -H 'Content-Type: application/json' -d '{"price":150}' ${apiUrl}/list/p1`);

  // Stop taking requests, move the WebSocket clients away, then let the process end.
  const stop = async () => {
    api.close();
    await realtime.close();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err) => {
  console.error(`${err.code ?? 'error'}: ${err.message}`);
  process.exit(1);
});
