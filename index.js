// realtime-events: the JS face of the Rust engine.
//
// This file only loads the addon, resolves options (with their environment fallbacks), turns
// native errors into `Error`s with a `code`, and keeps the list of JS subscribers. All fan-out,
// JSON encoding, WebSocket and Redis work happens on the engine's tokio threads.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const native = loadAddon();
native.initLogging(process.env.LOG_LEVEL, process.env.LOG_FORMAT);
// What the engine holds and this file must agree with: defaults, the codes raised as TypeError,
// the log level and format in force (see `facts` in src/addon.rs).
const facts = native.facts();

const { port: DEFAULT_PORT, channel: DEFAULT_CHANNEL } = facts.defaults;

function loadAddon() {
  const file = path.join(__dirname, 'realtime_events.node');
  try {
    return require(file);
  } catch (err) {
    const e = new Error(
      `realtime-events: cannot load the native addon (${file}). It is compiled when the ` +
        'package is installed; run `npm run build` in the package folder (needs Rust/cargo). ' +
        `Cause: ${err.message}`,
    );
    e.code = 'ERR_ADDON_NOT_BUILT';
    e.cause = err;
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

const TYPE_ERROR_CODES = new Set(facts.typeErrorCodes);

function makeError(code, message) {
  const err = TYPE_ERROR_CODES.has(code) ? new TypeError(message) : new Error(message);
  err.code = code;
  return err;
}

/** Native errors cross as "CODE: message"; give them back their code. */
function fromNative(err) {
  const m = err && typeof err.message === 'string' && /^(ERR_[A-Z0-9_]+): ([\s\S]*)$/.exec(err.message);
  return m ? makeError(m[1], m[2]) : err;
}

function callNative(fn) {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Logging. The engine logs through Rust's `log` (JSON lines, or text on a terminal; LOG_LEVEL,
// LOG_FORMAT); this file's own few messages take the same path. setLogger() routes both to a JS
// function instead of stderr.

const LEVELS = { off: 0, error: 1, warn: 2, info: 3, debug: 4, trace: 5 };
// As the engine resolved LOG_LEVEL and LOG_FORMAT.
const logLevel = LEVELS[facts.log.level];
const logJson = facts.log.format === 'json';

let logHook = null;

function callHook(hook, record) {
  try {
    const result = hook(record);
    if (result && typeof result.then === 'function') result.then(undefined, hookFailed);
  } catch (err) {
    hookFailed(err);
  }
}

function hookFailed(err) {
  process.stderr.write(`[realtime-events] the setLogger() function threw: ${err && err.stack ? err.stack : err}\n`);
}

/** A log record from this file (module "js"), through the same path as the engine's. */
function log(level, message, err) {
  if (LEVELS[level] > logLevel) return;
  const fields = {};
  if (err !== undefined) {
    fields.error = err && err.stack ? String(err.stack) : String(err);
    if (err && err.code) fields.code = String(err.code);
  }
  const time = new Date().toISOString();
  // Without a hook the line goes through console.error (so whatever already captures the
  // process's console sees it too), formatted like the engine's lines.
  if (logHook) {
    callHook(logHook, { level, message, fields, time, module: 'js' });
  } else if (logJson) {
    console.error(JSON.stringify({ time, level, module: 'js', msg: message, ...fields }));
  } else {
    console.error(`[realtime-events] ${level.toUpperCase()} ${message}${fields.error ? `\n${fields.error}` : ''}`);
  }
}

/**
 * Routes every log record of this module (engine and JS) to `fn({ level, message, fields, time,
 * module })` instead of stderr; `null` restores stderr. LOG_LEVEL still filters. Records come
 * asynchronously on the JS thread; if it falls 1,024 records behind, the excess is dropped and
 * counted (`logRecordsDropped` in stats, `realtime_log_records_dropped_total`).
 */
function setLogger(fn) {
  if (fn != null && typeof fn !== 'function') {
    throw makeError('ERR_INVALID_OPTION', 'setLogger(fn): fn must be a function ({level, message, fields, time, module}) => void, or null');
  }
  logHook = fn ?? null;
  if (!logHook) {
    native.setLogHook(null);
    return;
  }
  const hook = logHook;
  native.setLogHook((json) => {
    let record;
    try {
      record = JSON.parse(json);
    } catch {
      return;
    }
    const { time, level, module, msg, ...fields } = record;
    callHook(hook, { level, message: msg, fields, time, module });
  });
}

// ---------------------------------------------------------------------------------------------
// Keeping the process alive: tokio threads do not, so a running server or an active subscription
// holds one referenced timer, like a listening http.Server holds its socket.

let holds = 0;
let holdTimer = null;

function hold() {
  if (holds++ === 0) holdTimer = setInterval(() => {}, 1 << 30);
}

function release() {
  if (holds > 0 && --holds === 0) {
    clearInterval(holdTimer);
    holdTimer = null;
  }
}

// ---------------------------------------------------------------------------------------------
// Options

const MAX_U32 = 0xffffffff;

const invalid = (message) => makeError('ERR_INVALID_OPTION', message);

function envFlag(value) {
  return value === '1' || value === 'true' || value === 'yes';
}

/**
 * One rule for every option: given in code, it has its type (a number is a number); only
 * environment variables, which are strings, are parsed. A numeric string in code is refused with
 * a hint, never silently taken for a number.
 */
function numberHint(value) {
  return typeof value === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(value)
    ? ` (a string: pass Number(${JSON.stringify(value)}), or set it through its environment variable)`
    : '';
}

// Checks: `(value, key) => value to use`, or a throw. `undefined` leaves the engine's default.

/** A number at least `min`: an integer up to 2^32 - 1, or with `integer` false any finite number. */
const atLeast = (min, integer = true) => (value, key) => {
  if (value == null) return undefined;
  const ok = typeof value === 'number' && Number.isFinite(value) && value >= min &&
    (!integer || (Number.isInteger(value) && value <= MAX_U32));
  if (!ok) {
    throw invalid(`${key} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${JSON.stringify(value)}${numberHint(value)}`);
  }
  return value;
};

/** An integer from `min` to `max`. */
const integerFrom = (min, max) => (value, key) => {
  if (value != null && (!Number.isInteger(value) || value < min || value > max)) {
    throw invalid(`${key} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}${numberHint(value)}`);
  }
  return value ?? undefined;
};

/** A value of `type` (`message` otherwise); `nonEmpty` refuses ''. */
const ofType = (type, message, { nonEmpty = false } = {}) => (value) => {
  if (value != null && (typeof value !== type || (nonEmpty && value === ''))) throw invalid(message);
  return value ?? undefined;
};

/** drainMs: an integer of milliseconds, from an option or a REALTIME_DRAIN_MS-style string. */
function resolveDrainMs(value, what) {
  // From the environment a string of digits; in code a number (one rule for every option).
  const v = what.startsWith('REALTIME_') && typeof value === 'string' && /^\s*\d+\s*$/.test(value) ? Number(value) : value;
  if (!Number.isInteger(v) || v < 0 || v > MAX_U32) {
    throw invalid(`${what} must be a non-negative integer of milliseconds, got ${JSON.stringify(value)}${numberHint(value)}`);
  }
  return v;
}

// Environment parsers: `(text, name) => value`, or undefined when unset.

const envText = (text) => text;
const envNonEmpty = (text) => text || undefined;
/** A number; an empty variable is unset, one that is not a number is refused. */
const envNumber = (text, name) => {
  if (text === '') return undefined;
  const value = Number(text);
  if (Number.isNaN(value)) throw invalid(`${name} must be a number, got ${JSON.stringify(text)}`);
  return value;
};

/** `redisTls: {ca, cert, key, rejectUnauthorized}` (PEM strings), else REDIS_TLS_*_FILE paths. */
function redisTlsFrom(options, env) {
  let tls = options.redisTls;
  if (tls == null) {
    const files = { ca: env.REDIS_TLS_CA_FILE, cert: env.REDIS_TLS_CERT_FILE, key: env.REDIS_TLS_KEY_FILE };
    if (!Object.values(files).some(Boolean)) return undefined;
    tls = {};
    for (const [key, file] of Object.entries(files)) {
      if (!file) continue;
      try {
        tls[key] = fs.readFileSync(file, 'utf8');
      } catch (err) {
        throw invalid(`REDIS_TLS_${key.toUpperCase()}_FILE: cannot read ${file}: ${err.message}`);
      }
    }
  }
  if (typeof tls !== 'object' || Array.isArray(tls)) {
    throw invalid('redisTls must be an object { ca?, cert?, key?, rejectUnauthorized? }');
  }
  for (const key of Object.keys(tls)) {
    if (!['ca', 'cert', 'key', 'rejectUnauthorized'].includes(key)) {
      throw invalid(`redisTls: unknown field "${key}" (ca, cert, key, rejectUnauthorized)`);
    }
  }
  for (const key of ['ca', 'cert', 'key']) {
    if (tls[key] != null && (typeof tls[key] !== 'string' || !tls[key].includes('-----BEGIN'))) {
      throw invalid(`redisTls.${key} must be PEM text (-----BEGIN ...)`);
    }
  }
  if (tls.rejectUnauthorized != null && typeof tls.rejectUnauthorized !== 'boolean') {
    throw invalid('redisTls.rejectUnauthorized must be a boolean');
  }
  return { ca: tls.ca ?? undefined, cert: tls.cert ?? undefined, key: tls.key ?? undefined, rejectUnauthorized: tls.rejectUnauthorized ?? undefined };
}

/**
 * Every startServer option, in the order they are checked. A row says:
 * - `env`: the environment variable used when the option is not given, parsed by `fromEnv`
 *   (default: taken as is);
 * - `given(options, key)`: whether the option counts as given (default: not null/undefined);
 * - `default`: the value when neither is set (from the engine's facts where it has one);
 * - `check(value, key)`: the value to use, or a throw (`undefined`: the engine's default);
 * - `to`: where it goes: the native server options (default), the native bus options (`'bus'`,
 *   also used by processes that only publish), or kept here (`'js'`);
 * - `resolve(options, env)`: for an option that does not fit the above (replaces it all).
 * Adding an option is one row here, and its field in src/addon.rs and src/config.rs.
 */
const OPTIONS = {
  port: {
    env: 'REALTIME_PORT',
    fromEnv: (text) => (text === '' ? undefined : /^\s*\d+\s*$/.test(text) ? Number(text) : text),
    default: facts.defaults.port,
    check: integerFrom(0, 65535),
  },
  host: { env: 'REALTIME_HOST', default: facts.defaults.host, check: ofType('string', 'host must be a non-empty string', { nonEmpty: true }) },
  path: {
    default: facts.defaults.path,
    check: (value) => {
      if (typeof value !== 'string' || !value.startsWith('/')) throw invalid('path must be a string starting with "/"');
      return value;
    },
  },
  jwtSecret: {
    env: 'JWT_SECRET',
    check: (value) => {
      if (value != null && typeof value !== 'string') throw invalid('jwtSecret must be a string');
      if (!value) {
        throw makeError('ERR_MISSING_JWT_SECRET', 'a JWT secret is required: set JWT_SECRET (in the environment, or in a .env file beside your app) or pass jwtSecret (the Auth module\'s HS256 secret)');
      }
      return value;
    },
  },
  jwtAudience: { env: 'JWT_AUDIENCE', fromEnv: envNonEmpty, check: ofType('string', 'jwtAudience must be a non-empty string', { nonEmpty: true }) },
  jwtIssuer: { env: 'JWT_ISSUER', fromEnv: envNonEmpty, check: ofType('string', 'jwtIssuer must be a non-empty string', { nonEmpty: true }) },
  jwtRequireExp: { env: 'JWT_REQUIRE_EXP', fromEnv: envFlag, default: false, check: ofType('boolean', 'jwtRequireExp must be a boolean') },
  validateUser: { to: 'js', check: ofType('function', 'validateUser must be a function (claims) => boolean | Promise<boolean>') },
  maxMessageBytes: { check: atLeast(1) },
  handshakeTimeoutMs: { check: atLeast(1) },
  pingIntervalMs: { env: 'REALTIME_PING_INTERVAL_MS', fromEnv: envNumber, check: atLeast(0) },
  pongTimeoutMs: { env: 'REALTIME_PONG_TIMEOUT_MS', fromEnv: envNumber, check: atLeast(1) },
  maxConnections: { env: 'REALTIME_MAX_CONNECTIONS', fromEnv: envNumber, check: atLeast(0) },
  maxConnectionsPerIp: { env: 'REALTIME_MAX_CONNECTIONS_PER_IP', fromEnv: envNumber, check: atLeast(0) },
  maxHandshakes: { env: 'REALTIME_MAX_HANDSHAKES', fromEnv: envNumber, check: atLeast(0) },
  maxHandshakesPerIp: { env: 'REALTIME_MAX_HANDSHAKES_PER_IP', fromEnv: envNumber, check: atLeast(0) },
  headTimeoutMs: { env: 'REALTIME_HEAD_TIMEOUT_MS', fromEnv: envNumber, check: atLeast(1) },
  maxSubscriptions: { env: 'REALTIME_MAX_SUBSCRIPTIONS', fromEnv: envNumber, check: atLeast(0) },
  messagesPerSecond: { env: 'REALTIME_MESSAGES_PER_SECOND', fromEnv: envNumber, check: atLeast(0, false) },
  messageBurst: { env: 'REALTIME_MESSAGE_BURST', fromEnv: envNumber, check: atLeast(1, false) },
  drainMs: {
    to: 'js',
    env: 'REALTIME_DRAIN_MS',
    fromEnv: (text, name) => resolveDrainMs(text, name),
    default: facts.defaults.drainMs,
    check: resolveDrainMs,
  },
  allowedOrigins: {
    env: 'REALTIME_ALLOWED_ORIGINS',
    fromEnv: (text) => (text ? text.split(',').map((o) => o.trim()).filter(Boolean) : undefined),
    check: (origins) => {
      if (origins == null) return undefined;
      if (!Array.isArray(origins) || !origins.every((o) => typeof o === 'string' && /^[a-z][a-z0-9+.-]*:\/\/[^/\s]+\/?$/i.test(o))) {
        throw invalid('allowedOrigins must be an array of origins like "https://market.example.com"');
      }
      return origins;
    },
  },
  allowedHosts: {
    env: 'REALTIME_ALLOWED_HOSTS',
    fromEnv: (text) => (text ? text.split(',').map((o) => o.trim()).filter(Boolean) : undefined),
    check: (hosts) => {
      if (hosts == null) return undefined;
      if (!Array.isArray(hosts) || !hosts.every((o) => typeof o === 'string' && /^(\*|\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?)$/i.test(o))) {
        throw invalid('allowedHosts must be an array of host names (no port): "realtime.internal", ".svc.cluster.local" (a suffix) or "*" (any)');
      }
      return hosts;
    },
  },
  opsToken: {
    env: 'REALTIME_OPS_TOKEN',
    fromEnv: envNonEmpty,
    check: (token) => {
      if (token == null) return undefined;
      if (typeof token !== 'string' || token.length < 16) throw invalid('opsToken must be a string of at least 16 characters');
      return token;
    },
  },
  dashboard: {
    env: 'REALTIME_DASHBOARD',
    given: (options, key) => options[key] !== undefined,
    fromEnv: (text) => !['0', 'false', 'no', 'off'].includes(text.trim().toLowerCase()),
    default: true,
    check: (value) => {
      if (typeof value !== 'boolean') throw invalid('dashboard must be a boolean');
      return value;
    },
  },
  redisUrl: {
    to: 'bus',
    env: 'REDIS_URL',
    given: (options, key) => key in options,
    check: (value) => {
      if (value != null && typeof value !== 'string') throw invalid('redisUrl must be a string (redis://host:port, rediss://, redis+sentinel://, redis+cluster://) or null');
      return value || undefined;
    },
  },
  redisTls: { to: 'bus', resolve: redisTlsFrom },
  channel: { to: 'bus', env: 'REDIS_CHANNEL', default: facts.defaults.channel, check: ofType('string', 'channel must be a non-empty string', { nonEmpty: true }) },
  redisRequired: { to: 'bus', env: 'REDIS_REQUIRED', fromEnv: envFlag, default: false, check: ofType('boolean', 'redisRequired must be a boolean') },
  historySize: { to: 'bus', env: 'REALTIME_HISTORY_SIZE', fromEnv: (text) => (text === '' ? undefined : Number(text)), check: integerFrom(0, 1_000_000) },
  historyTtlMs: { to: 'bus', env: 'REALTIME_HISTORY_TTL_MS', fromEnv: (text) => (text === '' ? undefined : Number(text)), check: integerFrom(0, MAX_U32) },
  inboxSize: { to: 'bus', env: 'REALTIME_INBOX_SIZE', fromEnv: (text) => (text === '' ? undefined : Number(text)), check: integerFrom(0, 10_000) },
  inboxTtlMs: { to: 'bus', env: 'REALTIME_INBOX_TTL_MS', fromEnv: (text) => (text === '' ? undefined : Number(text)), check: integerFrom(0, MAX_U32) },
  redisWaitReplicas: { to: 'bus', env: 'REDIS_WAIT_REPLICAS', fromEnv: (text) => (text === '' ? undefined : Number(text)), check: integerFrom(0, 100) },
  redisWaitTimeoutMs: { to: 'bus', env: 'REDIS_WAIT_TIMEOUT_MS', fromEnv: (text) => (text === '' ? undefined : Number(text)), check: integerFrom(0, 3_600_000) },
};

/** One option's value from `options`, else its environment variable, else its default; checked. */
function resolveOption(key, options, env) {
  const spec = OPTIONS[key];
  if (spec.resolve) return spec.resolve(options, env);
  let value;
  if (spec.given ? spec.given(options, key) : options[key] != null) value = options[key];
  else if (spec.env && env[spec.env] !== undefined) value = (spec.fromEnv ?? envText)(env[spec.env], spec.env);
  return spec.check(value === undefined ? spec.default : value, key);
}

/**
 * The options resolved in table order (the first wrong one is the one reported), grouped by
 * destination: `{ js, server, bus }`; with `only`, just that destination's.
 */
function resolveOptions(options, env, only) {
  const out = { js: {}, server: {}, bus: {} };
  for (const [key, spec] of Object.entries(OPTIONS)) {
    const to = spec.to ?? 'server';
    if (!only || to === only) out[to][key] = resolveOption(key, options, env);
  }
  return out;
}

/** Options a typo is likely to have meant, beyond near spellings. */
const OPTION_ALIASES = { secret: 'jwtSecret', jwt: 'jwtSecret', token: 'jwtSecret', url: 'redisUrl', redis: 'redisUrl' };

function editDistance(a, b) {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const here = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = here;
    }
  }
  return row[b.length];
}

/** The known option `key` most likely meant, or undefined. */
function didYouMean(key, known) {
  const lower = key.toLowerCase().replace(/[_-]/g, '');
  const alias = OPTION_ALIASES[lower];
  if (alias) return alias;
  let best;
  let bestDistance = Infinity;
  for (const name of known) {
    const d = name.toLowerCase() === lower ? 0 : editDistance(lower, name.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [name, d];
  }
  return bestDistance <= Math.max(1, Math.floor(key.length / 4)) ? best : undefined;
}

function resolveServerOptions(options, env = process.env) {
  if (options == null) options = {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw invalid('startServer(options): options must be an object');
  }
  for (const key of Object.keys(options)) {
    if (!Object.hasOwn(OPTIONS, key)) {
      const meant = didYouMean(key, Object.keys(OPTIONS));
      throw invalid(`startServer: unknown option "${key}"${meant ? `; did you mean "${meant}"?` : ''}`);
    }
  }
  const { js, server, bus } = resolveOptions(options, env);
  return { ...js, native: { ...server, bus } };
}

// ---------------------------------------------------------------------------------------------
// The bus a process without a server uses: started from the environment on first use.

let busStarted = false;

function ensureBus() {
  if (!busStarted) {
    callNative(() => native.ensureBus(resolveOptions({}, process.env, 'bus').bus));
    busStarted = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Server

// Running servers stay referenced until closed, as http.Server does: dropping the last
// reference to a listening server must not let the garbage collector stop it.
const running = new Set();

/** A running WebSocket server. Created by `startServer`. */
class Server {
  #native;
  #closing = null;
  #drainMs;

  constructor(nativeServer, drainMs = 0) {
    this.#native = nativeServer;
    this.#drainMs = drainMs;
    running.add(this);
    hold();
  }

  /** The port the server listens on (useful with `port: 0`). */
  get port() {
    return this.#native.port;
  }

  /** WebSocket clients connected right now. */
  get clientCount() {
    return this.#native.clientCount;
  }

  /** 'memory' or 'redis'. */
  get busMode() {
    return this.#native.busMode;
  }

  /** True once close() has started (the server is draining or closing). */
  get draining() {
    return this.#native.draining;
  }

  /**
   * Every operations figure now: the same object `GET /stats` serves and the same numbers as
   * `GET /metrics` (see the README's Operations section).
   */
  stats() {
    return JSON.parse(this.#native.statsJson());
  }

  /** The Prometheus text exposition `GET /metrics` serves (to merge into another endpoint). */
  metrics() {
    return this.#native.metricsText();
  }

  /**
   * Graceful drain, then close. From the first instant `/health` answers 503 and new upgrades are
   * refused (503 DRAINING); the connected clients get a `{"type":"reconnect"}` notice and then
   * close code 1001 at moments spread over `drainMs` (default: the server's `drainMs` option,
   * else 0, which closes everyone at once); then the port is freed. Resolves once the port is
   * free and the connections are gone (waiting at most `graceMs` after the drain, default 5000).
   * Calling it again returns the same promise.
   */
  close(options = {}) {
    if (!this.#closing) {
      if (options == null || typeof options !== 'object') options = {};
      for (const key of Object.keys(options)) {
        if (key !== 'graceMs' && key !== 'drainMs') {
          return Promise.reject(makeError('ERR_INVALID_OPTION', `close: unknown option "${key}"`));
        }
      }
      const graceMs = options.graceMs ?? facts.defaults.graceMs;
      if (!Number.isInteger(graceMs) || graceMs < 0 || graceMs > MAX_U32) {
        return Promise.reject(makeError('ERR_INVALID_OPTION', 'graceMs must be a non-negative integer'));
      }
      let drainMs;
      try {
        drainMs = options.drainMs == null ? this.#drainMs : resolveDrainMs(options.drainMs, 'drainMs');
      } catch (err) {
        return Promise.reject(err);
      }
      this.#closing = callNative(() => this.#native.close(graceMs, drainMs)).finally(() => {
        running.delete(this);
        release();
      });
    }
    return this.#closing;
  }
}

function wrapValidateUser(validateUser) {
  // The engine awaits a boolean; a throw or rejection counts as "no" and is reported.
  return (claimsJson) =>
    (async () => {
      try {
        return (await validateUser(JSON.parse(claimsJson))) === true;
      } catch (err) {
        log('warn', 'validateUser threw; connection refused', err);
        return false;
      }
    })();
}

/**
 * Starts the WebSocket server. Resolves once it listens; rejects with a coded Error when the
 * port is taken (ERR_PORT_IN_USE), the secret is missing (ERR_MISSING_JWT_SECRET), an option is
 * wrong (TypeError, ERR_INVALID_OPTION) or Redis is required but unreachable (ERR_REDIS_UNAVAILABLE).
 */
async function startServer(options) {
  const resolved = resolveServerOptions(options);
  const validate = resolved.validateUser ? wrapValidateUser(resolved.validateUser) : undefined;
  try {
    const nativeServer = await native.startServer(resolved.native, validate);
    busStarted = true;
    return new Server(nativeServer, resolved.drainMs);
  } catch (err) {
    throw fromNative(err);
  }
}

// ---------------------------------------------------------------------------------------------
// Publishing

function checkParcelId(parcelId) {
  if (typeof parcelId !== 'string') {
    throw makeError('ERR_INVALID_PARCEL_ID', `parcelId must be a string, got ${parcelId === null ? 'null' : typeof parcelId}`);
  }
}

/** `data` as JSON text for the engine (which checks its size), or undefined. */
function encodeData(data) {
  if (data === undefined || data === null) return undefined;
  const proto = typeof data === 'object' ? Object.getPrototypeOf(data) : undefined;
  if (typeof data !== 'object' || (proto !== Object.prototype && proto !== null)) {
    // Arrays, Maps, Sets, Dates, class instances: JSON.stringify would silently mangle them.
    throw makeError('ERR_INVALID_DATA', 'data must be a plain object, e.g. { owner_id, price }');
  }
  try {
    return JSON.stringify(data);
  } catch (err) {
    throw makeError('ERR_INVALID_DATA', `data cannot be encoded as JSON: ${err.message}`);
  }
}

/** The `users` of publish options (`{ users: ['u1', ...] }`), or undefined for a broadcast. */
function publishUsers(options) {
  if (options === undefined || options === null) return undefined;
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw makeError('ERR_INVALID_OPTION', 'publish options must be an object, e.g. { users: ["u1"] }');
  }
  for (const key of Object.keys(options)) {
    if (key !== 'users') throw makeError('ERR_INVALID_OPTION', `unknown publish option "${key}" (known: users)`);
  }
  const { users } = options;
  if (users === undefined) return undefined;
  if (!Array.isArray(users) || users.length === 0) {
    throw makeError('ERR_INVALID_USERS', 'users must be a non-empty array of user ids (strings)');
  }
  if (users.length > native.MAX_USERS) {
    throw makeError('ERR_INVALID_USERS', `users lists ${users.length} ids; the limit is ${native.MAX_USERS}`);
  }
  for (const user of users) {
    if (typeof user !== 'string') {
      throw makeError('ERR_INVALID_USERS', `user ids must be strings (a numeric claim matches its decimal string); got ${user === null ? 'null' : typeof user}`);
    }
    if (user === '' || Buffer.byteLength(user) > native.MAX_USER_ID_BYTES) {
      throw makeError('ERR_INVALID_USERS', `each user id must be a non-empty string of at most ${native.MAX_USER_ID_BYTES} bytes`);
    }
  }
  return users;
}

/**
 * Publishes `{type:'parcel_updated', parcel_id[, data]}` to every client of every server on the
 * bus, or with `{ users }` only to those users' connections (kept in their inbox while they
 * have none). Resolves once the bus has taken the event (with Redis: once Redis acknowledged it).
 */
function publishParcelUpdate(parcelId, data, options) {
  try {
    checkParcelId(parcelId);
    const json = encodeData(data);
    const users = publishUsers(options);
    ensureBus();
    const number = callNative(() => native.publishNumbered(THREAD, parcelId, json, users));
    if (pending.size === 0) hold(); // a publish in flight keeps the process alive
    if (number < 0 && waitingForDispatch === 0) {
      // Memory mode, queue not backed up: accepted in order for good. It resolves on the next
      // turn of the event loop (not as a microtask: a loop of awaited publishes still lets I/O
      // run). The entry only keeps the process alive until the engine has dispatched it.
      // (Not while an earlier publish waits for its dispatch: it must resolve first.)
      pending.set(-number, null);
      return new Promise((resolve) => {
        if (acceptedNow.length === 0) setImmediate(resolveAccepted);
        acceptedNow.push(resolve);
      });
    }
    waitingForDispatch += 1;
    return new Promise((resolve, reject) => {
      pending.set(Math.abs(number), { resolve, reject });
    });
  } catch (err) {
    return Promise.reject(err);
  }
}

// Publishes in flight, by number (in increasing order: a Map iterates in insertion order). The
// engine settles them a batch at a time: "everything up to `through`", resolved or rejected.
// `null`: resolved already when the engine took it (memory mode), kept until dispatched.
const pending = new Map();
// Resolvers of publishes accepted at once, called together on the next turn of the event loop.
let acceptedNow = [];
// Entries of `pending` that are not null: publishes that resolve only when the engine settles
// them. While there are any, later publishes wait for the engine too, so that promises resolve in
// call order (the engine may accept a publish at once again as soon as its queue has drained).
let waitingForDispatch = 0;

function resolveAccepted() {
  const accepted = acceptedNow;
  acceptedNow = [];
  for (const resolve of accepted) resolve();
}

function settle({ through, error, events }) {
  // Publishes accepted at once were made before the ones settled here: they resolve first.
  if (acceptedNow.length > 0) resolveAccepted();
  // The events dispatched before these publishes were settled may still be on their way to
  // this thread's subscribers (another queue): the process stays alive until they arrived.
  if (subscribers.size > 0 && events > eventsReceived) {
    eventsAwaited = events;
    if (!holdingForEvents) {
      holdingForEvents = true;
      hold();
    }
  }
  const err = error ? fromNative(new Error(error)) : null;
  for (const [number, entry] of pending) {
    if (number > through) break;
    pending.delete(number);
    if (entry === null) continue; // resolved when accepted
    waitingForDispatch -= 1;
    if (err) entry.reject(err);
    else entry.resolve();
  }
  if (pending.size === 0) release();
}
// This JS thread (the main thread or a worker): its publishes are settled here, and its
// subscribers' events come here, never to another thread that loaded the package.
const THREAD = native.registerThread(settle);

/**
 * Fire and forget: publishes without waiting. Bus failures are logged, never thrown; a
 * non-string id throws a TypeError at once (a programming error). The process stays alive until
 * the event has reached the bus.
 */
function publishParcelUpdateDirect(parcelId, data, options) {
  checkParcelId(parcelId);
  encodeData(data);
  publishUsers(options);
  publishParcelUpdate(parcelId, data, options).catch((err) => {
    log('error', `publishParcelUpdateDirect(${JSON.stringify(parcelId)}) failed: ${err.message} (${err.code})`);
  });
}

// Responses publishParcelEvent already watches (one publish per response), and the routes
// already warned about running it twice.
const watchedResponses = new WeakSet();
const warnedTwice = new Set();

/**
 * Express middleware: publishes `req.params.parcel_id` once the response has been sent with a
 * 2xx status. Works after the handler (which calls next()) or before it. A handler may attach
 * data to the event by setting `res.locals.parcelEventData`.
 */
function publishParcelEvent(req, res, next) {
  const parcelId = req && req.params ? req.params.parcel_id : undefined;
  if (typeof parcelId !== 'string' || parcelId === '') {
    log('error', 'publishParcelEvent: no req.params.parcel_id on this route; nothing published');
  } else if (res && typeof res === 'object' && watchedResponses.has(res)) {
    // Placed twice on one route (both placements, or beside publishesParcelEvent): once is enough.
    const route = req.route && req.route.path ? req.route.path : req.originalUrl || req.url;
    if (!warnedTwice.has(route)) {
      warnedTwice.add(route);
      log('warn', `publishParcelEvent ran twice for one response on route ${route}: published once (use one placement, or publishesParcelEvent alone)`);
    }
  } else {
    if (res && typeof res === 'object') watchedResponses.add(res);
    const publishIfOk = () => {
      if (res.statusCode >= 200 && res.statusCode < 300) {
        const data = res.locals ? res.locals.parcelEventData : undefined;
        try {
          publishParcelUpdateDirect(parcelId, data);
        } catch (err) {
          log('error', `publishParcelEvent: ${err.message} (${err.code}); nothing published`);
        }
      }
    };
    if (res.writableFinished) publishIfOk();
    else res.once('finish', publishIfOk);
  }
  if (typeof next === 'function') next();
}

/**
 * How many connections each of `userIds` has open now: `{ [userId]: count }`, over every
 * instance in Redis mode (an instance that died stops counting within 15 s), in this process in
 * memory mode.
 */
async function presence(userIds) {
  if (!Array.isArray(userIds) || userIds.some((u) => typeof u !== 'string')) {
    throw makeError('ERR_INVALID_USERS', 'presence(userIds): userIds must be an array of user ids (strings)');
  }
  if (userIds.length > native.MAX_USERS) {
    throw makeError('ERR_INVALID_USERS', `presence(userIds): ${userIds.length} ids; the limit is ${native.MAX_USERS}`);
  }
  ensureBus();
  let counts;
  try {
    counts = await callNative(() => native.presence(userIds));
  } catch (err) {
    throw fromNative(err);
  }
  const out = {};
  userIds.forEach((user, i) => { out[user] = counts[i]; });
  return out;
}

/**
 * Wraps an Express handler so that its route publishes `req.params.parcel_id` once the handler's
 * response has been sent with a 2xx status, whether or not the handler calls next(): the
 * placement of `publishParcelEvent` cannot be got wrong. A handler that throws or rejects is
 * passed to next(err) (Express 4 does not catch rejections) and its error response publishes
 * nothing.
 */
function publishesParcelEvent(handler) {
  if (typeof handler !== 'function') {
    throw makeError('ERR_INVALID_OPTION', 'publishesParcelEvent(handler): handler must be an Express handler (req, res, next) => void');
  }
  return function publishingHandler(req, res, next) {
    const forward = typeof next === 'function' ? next : () => {};
    // Listens for the response first, then lets the handler respond.
    publishParcelEvent(req, res, () => {});
    let result;
    try {
      result = handler.call(this, req, res, forward);
    } catch (err) {
      forward(err);
      return;
    }
    if (result && typeof result.then === 'function') result.then(undefined, forward);
  };
}

// ---------------------------------------------------------------------------------------------
// Subscribing

const subscribers = new Set();

function report(err) {
  log('error', 'a subscribeToParcelEvents callback threw', err);
}

// Events this thread's subscribers received, and the count a settled publish asked to wait for
// (see settle()).
let eventsReceived = 0;
let eventsAwaited = 0;
let holdingForEvents = false;

function stopHoldingForEvents() {
  if (holdingForEvents) {
    holdingForEvents = false;
    release();
  }
}

function dispatch(frame) {
  eventsReceived += 1;
  if (holdingForEvents && eventsReceived >= eventsAwaited) stopHoldingForEvents();
  // The exact frame WebSocket clients receive: {type, parcel_id[, data]}.
  const event = JSON.parse(frame);
  for (const sub of subscribers) {
    try {
      const result = sub.callback(event);
      if (result && typeof result.then === 'function') result.then(undefined, report);
    } catch (err) {
      report(err);
    }
  }
}

/**
 * Calls `callback({type:'parcel_updated', parcel_id})` for every event on the bus (from any
 * process in Redis mode). Returns `unsubscribe()`. A subscription keeps the process alive only
 * while events can come from outside it: in Redis mode (like a Redis subscriber connection),
 * not in memory mode, where only this process publishes (like an EventEmitter's listeners).
 */
function subscribeToParcelEvents(callback) {
  if (typeof callback !== 'function') {
    throw makeError('ERR_INVALID_OPTION', 'subscribeToParcelEvents(callback): callback must be a function');
  }
  ensureBus();
  const sub = { callback };
  subscribers.add(sub);
  if (subscribers.size === 1) native.setEventSink(THREAD, dispatch);
  // Without Redis nothing can arrive from outside: the subscription does not hold the process.
  // (Decided by the configuration, not the mode of the moment: a bus still connecting, or one
  // that fell back to memory and retries, will carry other processes' events.)
  const keepsAlive = native.busInfo().redisConfigured;
  if (keepsAlive) hold();
  let active = true;
  return function unsubscribe() {
    if (!active) return;
    active = false;
    subscribers.delete(sub);
    if (subscribers.size === 0) {
      native.setEventSink(THREAD, null);
      stopHoldingForEvents(); // nobody left to receive them
    }
    if (keepsAlive) release();
  };
}

// Every export by name (no `a: b.c` values): Node's ESM loader finds the names of a CommonJS
// module by scanning this literal, and stops at the first entry that is not a plain name.
const { MAX_PARCEL_ID_BYTES } = native;
const _busInfo = () => native.busInfo();
const _facts = () => native.facts();

module.exports = {
  startServer,
  publishParcelUpdate,
  publishParcelUpdateDirect,
  presence,
  publishParcelEvent,
  publishesParcelEvent,
  subscribeToParcelEvents,
  setLogger,
  Server,
  MAX_PARCEL_ID_BYTES,
  DEFAULT_PORT,
  DEFAULT_CHANNEL,
  /** @internal for tests and diagnostics */
  _busInfo,
  /** @internal the engine's facts (defaults, subprotocol, close codes), for tests */
  _facts,
};
