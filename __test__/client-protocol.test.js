// client.js cannot load the addon (it runs in browsers), so it keeps its own copy of what it
// must agree on with the server. This test holds the copy to the engine's tables (src/protocol.rs
// through the addon's facts): the subprotocol, the token's subprotocol prefix, every close code
// the client treats specially, its own close code, the longest parcel id and message.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');

const rt = require('..');
const { _protocol: client } = require('../client');

const facts = rt._facts();

test('client.js speaks the subprotocol the server accepts', () => {
  assert.equal(client.subprotocol, facts.subprotocol);
  assert.equal(client.bearerPrefix, facts.bearerPrefix);
});

test("client.js's close codes are the server's, by name", () => {
  for (const [name, code] of Object.entries(client.closeCodes)) {
    assert.equal(code, facts.closeCodes[name], `close code ${name}`);
  }
  // The reconnect-at-once codes and the rate limit are all of them.
  assert.deepEqual(Object.keys(client.closeCodes).sort(),
    ['rateLimited', 'refreshRefused', 'serverShutdown', 'tokenExpired', 'tooSlow']);
});

test("client.js's own close code (no frame for too long) is none of the server's", () => {
  assert.ok(!Object.values(facts.closeCodes).includes(client.ownCloseCode), client.ownCloseCode);
});

test("client.js's parcel id limit is the server's", () => {
  assert.equal(client.maxParcelIdBytes, rt.MAX_PARCEL_ID_BYTES);
});

test('the exported defaults are the engine\'s', () => {
  assert.equal(rt.DEFAULT_PORT, facts.defaults.port);
  assert.equal(rt.DEFAULT_CHANNEL, facts.defaults.channel);
  assert.ok(client.maxMessageBytes <= facts.defaults.maxMessageBytes, "client.js's largest (un)subscribe message fits the server's default limit");
});
