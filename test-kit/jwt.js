// Tokens signed as the Auth module signs them (HS256, npm jsonwebtoken).
'use strict';

const jwt = require('jsonwebtoken');

/** The secret the test servers are started with. */
const SECRET = 'test-secret-for-realtime-events';

/** An HS256 token of `claims`; `options` as jsonwebtoken takes them (expiresIn, ...). */
function sign(claims = { sub: 'user-1' }, options = {}, secret = SECRET) {
  return jwt.sign(claims, secret, { algorithm: 'HS256', ...options });
}

/** Seconds since the epoch, as JWT `exp` counts them. */
function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

module.exports = { SECRET, sign, nowSeconds };
