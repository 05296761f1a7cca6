// Test tools for offsets and the frames around them (resume, history, Redis outages): reading
// the offset a frame carries, comparing offsets, the exact frames the server sends, and waiting
// for a frame on a test client (`helpers.Client`).
'use strict';

const assert = require('node:assert/strict');

const h = require('./helpers');

/** An offset as the last field of a frame. */
const OFFSET_RE = /,"offset":"(\d+-\d+)"\}$/;

/** The offset a raw frame carries as its last field, or null. */
function offsetOf(raw) {
  const m = OFFSET_RE.exec(raw);
  return m ? m[1] : null;
}

function parseOffset(o) {
  const [ms, seq] = o.split('-').map(BigInt);
  return { ms, seq };
}

/** -1, 0, 1 as offsets compare (pairs of integers). */
function cmpOffset(a, b) {
  const x = parseOffset(a);
  const y = parseOffset(b);
  if (x.ms !== y.ms) return x.ms < y.ms ? -1 : 1;
  if (x.seq !== y.seq) return x.seq < y.seq ? -1 : 1;
  return 0;
}

/** The offset `n` events after `o` in a dense memory history. */
function plus(o, n) {
  const { ms, seq } = parseOffset(o);
  return `${ms}-${seq + BigInt(n)}`;
}

function welcomeWith(offset) {
  return `{"type":"connected","message":"WebSocket connection established","offset":"${offset}"}`;
}

function resumedFrame(since, replayed) {
  return `{"type":"resumed","since":"${since}","replayed":${replayed}}`;
}

function isEvent(raw) {
  return typeof raw === 'string' && raw.startsWith('{"type":"parcel_updated"');
}

/** The parcel_updated frames a client received: [{id, offset, raw, index}]. */
function eventsOf(client) {
  const out = [];
  client.raw.forEach((raw, index) => {
    if (isEvent(raw)) out.push({ id: JSON.parse(raw).parcel_id, offset: offsetOf(raw), raw, index });
  });
  return out;
}

/** The client's welcome offset (its first raw frame). */
function welcomeOffset(client) {
  const w = JSON.parse(client.raw[0]);
  assert.equal(w.type, 'connected');
  return w.offset;
}

/** Waits until a raw frame satisfies `pred`; returns its index. */
async function waitForRaw(client, pred, what, ms = h.DEFAULT_TIMEOUT) {
  const i = await h.waitUntil(() => {
    const k = client.raw.findIndex(pred);
    return k >= 0 ? k + 1 : 0;
  }, `${what}; last frames ${JSON.stringify(client.raw.slice(-4))}`, ms, 5);
  return i - 1;
}

/** Waits until the client received the event `id`; returns its raw frame. */
async function waitForEvent(client, id, ms = h.DEFAULT_TIMEOUT) {
  const i = await waitForRaw(client, (r) => isEvent(r) && JSON.parse(r).parcel_id === id, `event ${id}`, ms);
  return client.raw[i];
}

/** `url` asking to resume after `offset`. */
function since(url, offset) {
  return `${url}&since=${encodeURIComponent(offset)}`;
}

module.exports = {
  offsetOf,
  parseOffset,
  cmpOffset,
  plus,
  welcomeWith,
  resumedFrame,
  isEvent,
  eventsOf,
  welcomeOffset,
  waitForRaw,
  waitForEvent,
  since,
};
