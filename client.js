/**
 * realtime-events/client: a small, dependency-free, reconnecting client for the realtime-events
 * WebSocket server, for browsers and Node.
 *
 * - Node (CommonJS):  const { RealtimeClient } = require('realtime-events/client');
 * - Browser:          <script src="client.js"></script>  then  new RealtimeEvents.RealtimeClient({...})
 *   (a plain script defines globalThis.RealtimeEvents = { RealtimeClient, compareOffsets }; an AMD
 *   loader gets the same object; no build step).
 *
 * @example
 * const client = new RealtimeClient({
 *   url: 'ws://localhost:3006/ws',
 *   getToken: async () => fetchTokenFromAuth(), // before every (re)connect; a string or a Promise
 *   WebSocket: require('ws'),                   // optional where globalThis.WebSocket exists
 *   parcels: ['p1', 'p2'],                      // optional: follow only these (restored on reconnect)
 * });
 * client.on('parcel_updated', (event) => refreshParcel(event.parcel_id, event.data));
 * client.on('resync_required', () => refetchEverything());
 * client.on('state', (state) => showBadge(state));
 * client.on('error', (err) => console.warn(err.code, err.message));
 *
 * What it does for you:
 * - sends the token as the `bearer.<JWT>` subprotocol (never in the URL), asking `getToken()` for a
 *   fresh one before every connection attempt;
 * - reconnects with exponential backoff and full jitter (at once, with jitter, when a server goes
 *   away with 1001; at least half of `maxDelayMs` after 4429 "rate limited"), never two sockets at
 *   once, never after `close()`;
 * - remembers the last event offset and resumes with `?since=<offset>` so that events published
 *   while it was away are replayed; drops replayed duplicates (an event whose offset is not after
 *   the last one seen); reports `resync_required` when the server cannot replay;
 * - restores the subscription filter on every reconnect (`?parcels=` in the URL, atomically) and
 *   only delivers events of the parcels you follow;
 * - sends an application-level `{"type":"ping"}` every `pingIntervalMs` and reconnects when nothing
 *   arrived for twice that long (a half-open connection);
 * - never throws out of a callback: listener errors, `getToken` rejections and server error frames
 *   are reported on 'error'.
 */
(function (root, factory) {
  'use strict';
  /* global define */
  if (typeof module === 'object' && module && module.exports) {
    const api = factory();
    // One by one, so that Node's ESM loader finds the names: import { RealtimeClient } from ...
    module.exports.RealtimeClient = api.RealtimeClient;
    module.exports.compareOffsets = api.compareOffsets;
    module.exports._protocol = api._protocol;
  } else if (typeof define === 'function' && define.amd) {
    define([], factory);
  } else {
    root.RealtimeEvents = factory();
  }
})(globalThis, () => {
  'use strict';

  /**
   * What this client must agree on with the server (a test compares it with the engine's own
   * table, src/protocol.rs): the subprotocol, the prefix of the token's subprotocol, the close
   * codes it treats specially, the close code it sends itself (none of the server's), the longest
   * parcel id, and its largest (un)subscribe message (within the server's default limit).
   */
  const PROTOCOL = Object.freeze({
    subprotocol: 'realtime-events',
    bearerPrefix: 'bearer.',
    closeCodes: Object.freeze({
      serverShutdown: 1001,
      tooSlow: 1013,
      tokenExpired: 4401,
      refreshRefused: 4403,
      rateLimited: 4429,
    }),
    /** Close code this client uses for a connection it gives up on (no frame for too long). */
    ownCloseCode: 4000,
    maxParcelIdBytes: 256,
    /** Largest (un)subscribe message, in UTF-8 bytes (the server's default limit is 16384). */
    maxMessageBytes: 8000,
  });
  const CLOSE = PROTOCOL.closeCodes;
  /** Close codes after which the first reconnect is immediate (spread by jitter only). */
  const RECONNECT_AT_ONCE = new Set([CLOSE.serverShutdown, CLOSE.tooSlow, CLOSE.tokenExpired, CLOSE.refreshRefused]);
  const WS_CONNECTING = 0;
  const WS_OPEN = 1;
  /** A connection that stayed open this long resets the backoff. */
  const STABLE_MS = 5000;
  /** Largest `?parcels=` value (encoded) and id count put in the URL; beyond, see flush. */
  const URL_PARCELS_MAX_CHARS = 2000;
  const URL_PARCELS_MAX_IDS = 200;
  const CLOSE_HEARTBEAT = PROTOCOL.ownCloseCode;

  const EVENTS = ['parcel_updated', 'resync_required', 'resumed', 'state', 'error', 'disconnect', 'message'];

  const noop = () => {};
  const now = () => Date.now();

  /** A TypeError with a `code`, for a programming error in the caller. */
  function typeError(code, message) {
    const err = new TypeError(message);
    err.code = code;
    return err;
  }

  function makeError(code, message, extra) {
    const err = new Error(message);
    err.code = code;
    for (const [k, v] of Object.entries(extra ?? {})) {
      if (v !== undefined) err[k] = v;
    }
    return err;
  }

  const describe = (err) => (typeof err?.message === 'string' ? err.message : String(err));

  function utf8Length(s) {
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4;
        i++;
      } else n += 3;
    }
    return n;
  }

  const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?:^|[^\ud800-\udbff])[\udc00-\udfff]/;

  /** Throws a TypeError unless `ids` is an array of valid parcel ids; returns a copy. */
  function checkParcelIds(ids, what) {
    if (!Array.isArray(ids)) throw typeError('ERR_INVALID_PARCEL_ID', `${what} must be an array of parcel ids`);
    for (const id of ids) {
      if (typeof id !== 'string' || id === '') {
        throw typeError('ERR_INVALID_PARCEL_ID', `${what}: parcel ids must be non-empty strings (got ${JSON.stringify(id)})`);
      }
      if (utf8Length(id) > PROTOCOL.maxParcelIdBytes || LONE_SURROGATE.test(id)) {
        throw typeError('ERR_INVALID_PARCEL_ID', `${what}: parcel id ${JSON.stringify(id.slice(0, 40))}` +
          ` is longer than ${PROTOCOL.maxParcelIdBytes} UTF-8 bytes or not valid Unicode`);
      }
    }
    return [...ids];
  }

  /** "<ms>-<seq>" into two digit strings without leading zeros, or null. */
  function parseOffset(s) {
    const m = /^(\d+)-(\d+)$/.exec(s);
    if (!m) return null;
    return [m[1].replace(/^0+(?=\d)/, ''), m[2].replace(/^0+(?=\d)/, '')];
  }

  function compareDigits(a, b) {
    if (a.length !== b.length) return a.length < b.length ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
  }

  /**
   * Orders two offsets: negative if `a` comes before `b`, 0 if they are the same, positive if
   * after. Offsets are "<ms>-<seq>" pairs of integers of any size; two equal strings are the same
   * offset; offsets of another shape cannot be ordered (NaN).
   * @param {string} a
   * @param {string} b
   * @returns {number}
   */
  function compareOffsets(a, b) {
    if (a === b) return 0;
    const pa = typeof a === 'string' ? parseOffset(a) : null;
    const pb = typeof b === 'string' ? parseOffset(b) : null;
    if (!pa || !pb) return NaN;
    return compareDigits(pa[0], pb[0]) || compareDigits(pa[1], pb[1]);
  }

  /** An absolute ws:// or wss:// URL from what the caller gave (http(s):// and, in a page, relative URLs too). */
  function resolveUrl(url) {
    if (typeof url !== 'string' || url === '') throw typeError('ERR_INVALID_OPTION', 'options.url must be a ws:// or wss:// URL');
    const wrong = () => typeError('ERR_INVALID_OPTION', `options.url must be a ws:// or wss:// URL (got ${JSON.stringify(url)})`);
    let parsed;
    try {
      if (/^[a-z][a-z0-9+.-]*:/i.test(url)) parsed = new URL(url);
      else if (typeof location !== 'undefined' && location?.href) parsed = new URL(url, location.href);
      else throw new Error('relative');
    } catch {
      throw wrong();
    }
    if (parsed.protocol === 'http:') parsed.protocol = 'ws:';
    else if (parsed.protocol === 'https:') parsed.protocol = 'wss:';
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') throw wrong();
    parsed.hash = '';
    return parsed.toString();
  }

  function checkDelay(value, name, fallback, min) {
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
      throw typeError('ERR_INVALID_OPTION', `options.${name} must be a number >= ${min}`);
    }
    return value;
  }

  const allState = () => ({ all: true, ids: new Set() });
  const onlyState = (ids) => ({ all: false, ids: new Set(ids) });

  /** Splits ids into lists whose `{"type":...,"parcel_ids":[...]}` stays under maxMessageBytes. */
  function chunkIds(ids) {
    const chunks = [];
    let current = [];
    let size = 0;
    for (const id of ids) {
      const len = utf8Length(JSON.stringify(id)) + 1;
      if (current.length > 0 && size + len > PROTOCOL.maxMessageBytes - 64) {
        chunks.push(current);
        current = [];
        size = 0;
      }
      current.push(id);
      size += len;
    }
    if (current.length > 0) chunks.push(current);
    return chunks;
  }

  /**
   * A reconnecting client for the realtime-events server.
   *
   * Options:
   * - `url` (required): `ws://host:3006/ws` or `wss://...` (in a page also `/ws` or `https://...`).
   * - `getToken` (required): `() => string | Promise<string>`, the JWT; called before every
   *   connection attempt (and by `refreshToken()`). A throw, a rejection or a non-string is
   *   reported on 'error' (code `ERR_GET_TOKEN`) and retried with backoff.
   * - `WebSocket`: the WebSocket class (`require('ws')` in Node); default `globalThis.WebSocket`.
   * - `parcels`: follow only these parcel ids from the start (default: every event; `[]` follows
   *   none until `subscribe`). Up to 200 ids travel in the URL (`?parcels=`): keep the set within
   *   the server's `maxSubscriptions`, or every attempt is refused (HTTP 400). Ids added with
   *   subscribe() while connected are checked by the server; refused ones are dropped.
   * - `since`: resume from this offset on the first connection (e.g. a `lastOffset` you stored).
   * - `minDelayMs` (250), `maxDelayMs` (10000): reconnect backoff, exponential with full jitter.
   * - `pingIntervalMs` (20000): `{"type":"ping"}` interval while open; no frame within twice this
   *   closes the connection and reconnects. 0 turns it off.
   * - `connectTimeoutMs` (10000): a connection attempt (getToken, handshake, welcome) taking
   *   longer is abandoned and retried.
   *
   * Events (`on(name, listener)` / `off(name, listener)`):
   * - 'parcel_updated' `{type, parcel_id, data?, offset?}`: an event of a parcel you follow, once,
   *   in order.
   * - 'resync_required' `{type, offset}`: the server cannot replay what was missed (the resume
   *   point is too old or from another history): refetch everything. `lastOffset` becomes `offset`.
   * - 'resumed' `{type, since, replayed}`: a reconnect replayed the `replayed` missed events.
   * - 'state' `'connecting' | 'open' | 'reconnecting' | 'closed'`.
   * - 'disconnect' `{code, reason, delayMs}`: an open connection ended (1001 server going away,
   *   1013 too slow, 4401 token expired, 4403 refresh refused, 4408 no pong, 4429 rate limited,
   *   1006 dropped, 4000 no frame for 2 x pingIntervalMs); it reconnects in `delayMs`.
   * - 'error' `Error` with a `code`: `ERR_CONNECTION_FAILED` (an attempt failed: refused, HTTP
   *   error, unreachable; `closeCode`, `retryInMs`), `ERR_CONNECT_TIMEOUT`, `ERR_GET_TOKEN`
   *   (`cause`), `ERR_LISTENER` (a listener threw; `cause`, `event`), `ERR_BAD_FRAME`, or a server
   *   error frame's own code (e.g. `SUBSCRIPTION_LIMIT`; `frame`). Never thrown.
   * - 'message': every frame as it arrived (parsed JSON), before deduplication and filtering.
   */
  class RealtimeClient {
    #url;
    #getTokenFn;
    #WebSocket;
    #minDelay;
    #maxDelay;
    #pingInterval;
    #connectTimeout;

    #listeners = Object.create(null);
    #state = 'connecting';
    #closed = false;
    #lastOffset;
    /**
     * While a resume is under way (from the welcome of a connection opened with ?since= until
     * `resumed` or `resync_required`): the resume point, the offsets delivered since, and the
     * greatest of them. `lastOffset` only moves on once the replay is complete, so a connection
     * lost in the middle resumes from the same point, and what was already delivered is not
     * delivered twice, whatever order the replay and the first live events arrive in.
     */
    #resume = null; // {from, seen: Set, max}
    /** What the user asked to follow (restored on every reconnect). */
    #want;

    // Per connection:
    #ws = null;
    #gen = 0; // bumped whenever a socket or attempt is abandoned: stale callbacks check it
    #live = false; // the welcome arrived on this socket
    #openedAt = 0;
    #lastFrameAt = 0;
    #server = null; // the filter the server will hold once it has read everything sent
    #sent = []; // (un)subscribe requests awaiting their answer, oldest first
    #urlHadParcels = false;
    #resumeFrom = null;
    #socketError = null;
    #refreshWaiters = [];

    // Across connections:
    #attempt = 0; // failed or short-lived attempts in a row (drives the backoff)
    #flushQueued = false;
    #timers = { reconnect: null, connect: null, ping: null, watchdog: null };

    constructor(options) {
      if (!options || typeof options !== 'object') throw typeError('ERR_INVALID_OPTION', 'RealtimeClient needs an options object');
      if (typeof options.getToken !== 'function') throw typeError('ERR_INVALID_OPTION', 'options.getToken must be a function returning a token (or a Promise of one)');
      const WS = options.WebSocket || globalThis.WebSocket;
      if (typeof WS !== 'function') {
        throw typeError('ERR_INVALID_OPTION', 'no WebSocket implementation: pass options.WebSocket (in Node: require("ws"))');
      }
      if (options.since !== undefined && options.since !== null && (typeof options.since !== 'string' || options.since === '')) {
        throw typeError('ERR_INVALID_OPTION', 'options.since must be an offset string');
      }

      this.#url = resolveUrl(options.url);
      this.#getTokenFn = options.getToken;
      this.#WebSocket = WS;
      this.#minDelay = checkDelay(options.minDelayMs, 'minDelayMs', 250, 1);
      this.#maxDelay = checkDelay(options.maxDelayMs, 'maxDelayMs', Math.max(10000, this.#minDelay), 1);
      if (this.#maxDelay < this.#minDelay) throw typeError('ERR_INVALID_OPTION', 'options.maxDelayMs must be >= minDelayMs');
      this.#pingInterval = checkDelay(options.pingIntervalMs, 'pingIntervalMs', 20000, 0);
      this.#connectTimeout = checkDelay(options.connectTimeoutMs, 'connectTimeoutMs', 10000, 1);
      this.#lastOffset = options.since || null;
      this.#want = options.parcels === undefined || options.parcels === null
        ? allState()
        : onlyState(checkParcelIds(options.parcels, 'options.parcels'));

      // Next turn: the caller attaches listeners first.
      this.#timers.reconnect = setTimeout(() => {
        this.#timers.reconnect = null;
        this.#connect();
      }, 0);
    }

    /** 'connecting' | 'open' | 'reconnecting' | 'closed' */
    get state() {
      return this.#state;
    }

    /**
     * Where a reconnect resumes: the offset of the last event seen (or of the welcome, before any
     * event); during a resume it stays at the resume point until the replay is complete. Null if
     * none (a server without history).
     */
    get lastOffset() {
      return this.#lastOffset;
    }

    /** What this client follows: `{all: true, parcelIds: []}` or `{all: false, parcelIds: [...]}`. */
    get subscriptions() {
      return { all: this.#want.all, parcelIds: Array.from(this.#want.ids).sort() };
    }

    /** Adds a listener; returns the client. */
    on(event, listener) {
      if (!EVENTS.includes(event)) throw typeError('ERR_INVALID_ARGUMENT', `unknown event ${JSON.stringify(event)} (one of ${EVENTS.join(', ')})`);
      if (typeof listener !== 'function') throw typeError('ERR_INVALID_ARGUMENT', 'listener must be a function');
      (this.#listeners[event] ??= []).push(listener);
      return this;
    }

    /** Removes a listener added with on(); returns the client. */
    off(event, listener) {
      const list = this.#listeners[event];
      const i = list ? list.lastIndexOf(listener) : -1;
      if (i >= 0) list.splice(i, 1);
      return this;
    }

    /** Follows these parcels too (the first call narrows from "every event" to just these). */
    subscribe(parcelIds) {
      const ids = checkParcelIds(parcelIds, 'subscribe()');
      if (this.#closed || ids.length === 0) return;
      if (this.#want.all) this.#want = onlyState(ids);
      else for (const id of ids) this.#want.ids.add(id);
      this.#scheduleFlush();
    }

    /** Stops following these parcels (a client following every event stays so). */
    unsubscribe(parcelIds) {
      const ids = checkParcelIds(parcelIds, 'unsubscribe()');
      if (this.#closed || this.#want.all) return;
      for (const id of ids) this.#want.ids.delete(id);
      this.#scheduleFlush();
    }

    /** Receives every event again. */
    subscribeAll() {
      if (this.#closed) return;
      this.#want = allState();
      this.#scheduleFlush();
    }

    /**
     * Asks getToken() for a fresh token and sends `{"type":"refresh","token":...}` on the open
     * connection. Resolves true once the server confirmed (`refreshed`), false otherwise (not open,
     * getToken failed, or the connection ended first; a refused token closes it with 4403 and the
     * client reconnects with a new token). Never rejects.
     * @returns {Promise<boolean>}
     */
    refreshToken() {
      if (this.#closed) return Promise.resolve(false);
      return this.#fetchToken().then((token) => {
        if (token === null || this.#closed || !this.#live) return false;
        return new Promise((resolve) => {
          if (!this.#send({ type: 'refresh', token })) resolve(false);
          else this.#refreshWaiters.push(resolve);
        });
      });
    }

    /** Closes for good: no more reconnects, every timer cleared; state 'closed'. */
    close() {
      if (this.#closed) return;
      this.#closed = true;
      this.#clearTimer('reconnect');
      this.#teardown('close');
      this.#setState('closed');
    }

    // -----------------------------------------------------------------------------------------
    // Connecting

    #connect() {
      if (this.#closed) return;
      const gen = ++this.#gen;
      this.#urlHadParcels = false;
      this.#armTimer('connect', this.#connectTimeout, () => {
        if (gen !== this.#gen) return;
        this.#failAttempt(makeError('ERR_CONNECT_TIMEOUT', `no connection within ${this.#connectTimeout} ms`), 'terminate');
      });
      this.#fetchToken().then((token) => {
        if (gen !== this.#gen || this.#closed) return;
        if (token === null) {
          this.#failAttempt(null);
          return;
        }
        this.#open(gen, token);
      });
    }

    /** Resolves with getToken()'s token, or null after reporting why there is none. */
    #fetchToken() {
      let result;
      try {
        result = this.#getTokenFn();
      } catch (err) {
        result = Promise.reject(err);
      }
      return Promise.resolve(result).then((token) => {
        if (typeof token === 'string' && token !== '') return token;
        if (this.#closed) return null;
        this.#emitError(makeError('ERR_GET_TOKEN', `getToken() returned ${token === '' ? 'an empty string' : typeof token} instead of a token`));
        return null;
      }, (err) => {
        if (this.#closed) return null;
        this.#emitError(makeError('ERR_GET_TOKEN', `getToken() failed: ${describe(err)}`, { cause: err }));
        return null;
      });
    }

    #open(gen, token) {
      const url = new URL(this.#url);
      let server = allState();
      if (!this.#want.all) {
        const ids = Array.from(this.#want.ids);
        const value = ids.join(',');
        const fits = ids.length <= URL_PARCELS_MAX_IDS &&
          encodeURIComponent(value).length <= URL_PARCELS_MAX_CHARS &&
          ids.every((id) => !id.includes(','));
        if (fits) {
          url.searchParams.set('parcels', value);
          server = onlyState(ids);
          this.#urlHadParcels = true;
        }
        // Else too many (or comma-holding) ids for the URL: receive every event, filter here, and
        // narrow on the open connection when the set fits in one message (#flush).
      }
      if (this.#lastOffset !== null) url.searchParams.set('since', this.#lastOffset);
      if (this.#resume && this.#resume.from !== this.#lastOffset) this.#resume = null;
      this.#resumeFrom = this.#lastOffset;

      let ws;
      try {
        ws = new this.#WebSocket(url.toString(), [PROTOCOL.subprotocol, PROTOCOL.bearerPrefix + token]);
      } catch (err) {
        this.#failAttempt(makeError('ERR_CONNECTION_FAILED', `cannot create a WebSocket: ${describe(err)}`, { cause: err }));
        return;
      }
      this.#ws = ws;
      this.#live = false;
      this.#socketError = null;
      this.#server = server;
      this.#sent = this.#urlHadParcels ? [{ kind: 'url' }] : [];
      ws.onopen = noop;
      ws.onerror = (event) => {
        if (gen !== this.#gen) return;
        const detail = event && (event.error || event.message);
        this.#socketError = detail ? describe(detail) : null;
      };
      ws.onclose = (event) => {
        if (gen !== this.#gen) return;
        this.#onSocketClose(event ? event.code : 1006, event?.reason ? String(event.reason) : '');
      };
      ws.onmessage = (event) => {
        if (gen !== this.#gen) return;
        this.#onFrame(event.data);
      };
    }

    /** Abandons the current socket or attempt (its callbacks are ignored from now on). */
    #teardown(how) {
      this.#gen++;
      this.#clearTimer('connect');
      this.#clearTimer('ping');
      this.#clearTimer('watchdog');
      const ws = this.#ws;
      this.#ws = null;
      this.#live = false;
      this.#server = null;
      this.#sent = [];
      if (ws) {
        ws.onopen = null;
        ws.onmessage = null;
        ws.onclose = null;
        ws.onerror = noop; // `ws` (Node) throws on an 'error' nobody listens to
        if (ws.readyState === WS_CONNECTING || ws.readyState === WS_OPEN) {
          try {
            if (how === 'terminate' && typeof ws.terminate === 'function') ws.terminate();
            else if (how === 'terminate') ws.close(CLOSE_HEARTBEAT, 'no frame from the server');
            else ws.close(1000, 'client closed');
          } catch {
            // already closing
          }
        }
      }
      const waiters = this.#refreshWaiters;
      this.#refreshWaiters = [];
      for (const waiter of waiters) waiter(false);
    }

    /** An attempt failed before the welcome: report (unless already reported) and retry. */
    #failAttempt(err, how, closeCode) {
      this.#teardown(how);
      if (this.#closed) return;
      const delay = this.#nextDelay(closeCode, 0);
      if (err) {
        err.retryInMs = Math.round(delay);
        this.#emitError(err);
      }
      this.#scheduleReconnect(delay);
    }

    #onSocketClose(code, reason) {
      if (!this.#live) {
        const detail = this.#socketError ? `: ${this.#socketError}` : '';
        this.#failAttempt(makeError('ERR_CONNECTION_FAILED', `connection failed (close ${code}${reason ? ` ${reason}` : ''})${detail}`,
          { closeCode: code }), undefined, code);
        return;
      }
      this.#lost(code, reason);
    }

    /** An open connection ended. */
    #lost(code, reason, how) {
      const lived = now() - this.#openedAt;
      this.#teardown(how);
      if (this.#closed) return;
      const delay = this.#nextDelay(code, lived);
      this.#emit('disconnect', { code, reason, delayMs: Math.round(delay) });
      this.#scheduleReconnect(delay);
    }

    /** The wait before the next attempt, given how the last one ended. */
    #nextDelay(code, lived) {
      if (lived >= STABLE_MS) this.#attempt = 0;
      const attempt = this.#attempt++;
      if (code === CLOSE.rateLimited) {
        // Rate limited: back off long.
        return this.#maxDelay * (0.5 + Math.random() * 0.5);
      }
      if (attempt === 0 && RECONNECT_AT_ONCE.has(code)) {
        // Going away, too slow, token expired or refused: reconnect at once (spread by jitter).
        return Math.random() * this.#minDelay;
      }
      return Math.random() * Math.min(this.#maxDelay, this.#minDelay * 2 ** Math.min(attempt, 30));
    }

    #scheduleReconnect(delay) {
      if (this.#closed) return;
      this.#setState('reconnecting');
      if (this.#closed) return; // a 'state' listener closed it
      this.#armTimer('reconnect', delay, () => this.#connect());
    }

    // -----------------------------------------------------------------------------------------
    // Frames

    #onFrame(data) {
      this.#lastFrameAt = now();
      if (typeof data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        this.#emitError(makeError('ERR_BAD_FRAME', `the server sent a frame that is not JSON: ${data.slice(0, 100)}`));
        return;
      }
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
      this.#emit('message', msg);
      if (this.#closed || !this.#ws) return;
      switch (msg.type) {
        case 'connected':
          this.#onWelcome(msg);
          break;
        case 'parcel_updated':
          this.#onEvent(msg);
          break;
        case 'resync_required': {
          // Start over from the server's current offset (none if its history is empty: the next
          // welcome's offset is taken then), or from a later event this connection already sent.
          const head = typeof msg.offset === 'string' && msg.offset !== '' ? msg.offset : null;
          const seenMax = this.#resume ? this.#resume.max : null;
          this.#lastOffset = seenMax !== null && (head === null || compareOffsets(seenMax, head) > 0) ? seenMax : head;
          this.#resume = null;
          this.#emit('resync_required', msg);
          break;
        }
        case 'resumed':
          this.#endResume();
          this.#emit('resumed', msg);
          break;
        case 'subscribed':
        case 'unsubscribed':
          this.#onAck(msg);
          break;
        case 'refreshed':
          this.#refreshWaiters.shift()?.(true);
          break;
        case 'error':
          this.#onServerError(msg);
          break;
        default:
          break; // pong, and whatever a newer server adds
      }
    }

    #onWelcome(msg) {
      if (this.#live) return;
      this.#live = true;
      this.#openedAt = now();
      this.#clearTimer('connect');
      const hasHistory = typeof msg.offset === 'string' && msg.offset !== '';
      if (this.#lastOffset === null && hasHistory) this.#lastOffset = msg.offset;
      if (this.#resumeFrom !== null && hasHistory) {
        // The server answers ?since= with `resumed` or `resync_required` (one without history,
        // which sends no offset, ignores it).
        this.#resume ??= { from: this.#resumeFrom, seen: new Set(), max: null };
      } else {
        this.#resume = null;
      }
      if (this.#pingInterval > 0) {
        const gen = this.#gen;
        const interval = this.#pingInterval;
        const tick = () => {
          if (gen !== this.#gen) return;
          this.#send({ type: 'ping' });
          this.#armTimer('ping', interval, tick);
        };
        this.#armTimer('ping', interval, tick);
        this.#armWatchdog(2 * interval);
      }
      this.#flush();
      this.#setState('open');
    }

    #armWatchdog(ms) {
      const gen = this.#gen;
      this.#armTimer('watchdog', ms, () => {
        if (gen !== this.#gen) return;
        const limit = 2 * this.#pingInterval;
        const idle = now() - this.#lastFrameAt;
        if (idle >= limit) this.#lost(CLOSE_HEARTBEAT, `no frame from the server for ${idle} ms`, 'terminate');
        else this.#armWatchdog(limit - idle);
      });
    }

    #onEvent(msg) {
      if (typeof msg.parcel_id !== 'string') return;
      const offset = msg.offset;
      const resume = this.#resume;
      if (typeof offset === 'string' && offset !== '') {
        if (resume) {
          if (compareOffsets(offset, resume.from) <= 0 || resume.seen.has(offset)) return; // replayed twice
          if (resume.seen.size < 1000000) resume.seen.add(offset);
          if (resume.max === null || compareOffsets(offset, resume.max) > 0) resume.max = offset;
        } else {
          if (this.#lastOffset !== null && compareOffsets(offset, this.#lastOffset) <= 0) return; // replayed twice
          this.#lastOffset = offset;
        }
      }
      if (!this.#want.all && !this.#want.ids.has(msg.parcel_id)) return;
      this.#emit('parcel_updated', msg);
    }

    /** The replay is complete: continue from the greatest offset delivered. */
    #endResume() {
      const resume = this.#resume;
      this.#resume = null;
      if (resume && resume.max !== null && (this.#lastOffset === null || compareOffsets(resume.max, this.#lastOffset) > 0)) {
        this.#lastOffset = resume.max;
      }
    }

    #onAck(msg) {
      this.#sent.shift();
      if (this.#sent.length === 0 && this.#server) {
        // Nothing else on its way: the server's answer is the truth.
        this.#server = msg.all ? allState() : onlyState(Array.isArray(msg.parcel_ids) ? msg.parcel_ids : []);
      }
    }

    #onServerError(msg) {
      const code = typeof msg.code === 'string' ? msg.code : 'SERVER_ERROR';
      if (code === 'SUBSCRIPTION_LIMIT' || code === 'INVALID_SUBSCRIPTION') {
        // The oldest request in flight was refused and changed nothing: forget what it asked for,
        // so it is neither retried now nor restored on reconnect.
        const op = this.#sent.shift();
        if (op && op.kind === 'subscribe' && this.#server) {
          if (op.fromAll) {
            this.#server = allState();
            this.#want = allState();
          } else {
            for (const id of op.ids) {
              this.#server.ids.delete(id);
              this.#want.ids.delete(id);
            }
          }
        }
      }
      const text = typeof msg.message === 'string' ? msg.message : 'the server refused a message';
      this.#emitError(makeError(code, text, { frame: msg }));
    }

    // -----------------------------------------------------------------------------------------
    // Subscriptions

    #scheduleFlush() {
      if (this.#flushQueued) return;
      this.#flushQueued = true;
      Promise.resolve().then(() => {
        this.#flushQueued = false;
        this.#flush();
      });
    }

    /** Sends what it takes to bring the server's filter to what the user asked for. */
    #flush() {
      if (this.#closed || !this.#live || !this.#server) return;
      const want = this.#want;
      const server = this.#server;
      if (want.all) {
        if (!server.all && this.#send({ type: 'subscribe', all: true })) {
          this.#sent.push({ kind: 'all' });
          this.#server = allState();
        }
        return;
      }
      if (server.all) {
        // One message switches atomically; a set too large for one stays "every event" on the
        // server, filtered here (narrowing in steps would miss events of the later steps).
        const ids = Array.from(want.ids);
        if (chunkIds(ids).length <= 1 && this.#send({ type: 'subscribe', parcel_ids: ids })) {
          this.#sent.push({ kind: 'subscribe', ids, fromAll: true });
          this.#server = onlyState(ids);
        }
        return;
      }
      const removed = [...server.ids].filter((id) => !want.ids.has(id));
      const added = [...want.ids].filter((id) => !server.ids.has(id));
      for (const part of chunkIds(removed)) {
        if (!this.#send({ type: 'unsubscribe', parcel_ids: part })) return;
        this.#sent.push({ kind: 'unsubscribe', ids: part });
        for (const id of part) server.ids.delete(id);
      }
      for (const part of chunkIds(added)) {
        if (!this.#send({ type: 'subscribe', parcel_ids: part })) return;
        this.#sent.push({ kind: 'subscribe', ids: part, fromAll: false });
        for (const id of part) server.ids.add(id);
      }
    }

    // -----------------------------------------------------------------------------------------
    // Plumbing

    #send(message) {
      const ws = this.#ws;
      if (!ws || ws.readyState !== WS_OPEN) return false;
      try {
        ws.send(JSON.stringify(message));
        return true;
      } catch {
        return false;
      }
    }

    #armTimer(name, ms, fn) {
      this.#clearTimer(name);
      this.#timers[name] = setTimeout(() => {
        this.#timers[name] = null;
        fn();
      }, ms);
    }

    #clearTimer(name) {
      if (this.#timers[name] !== null) {
        clearTimeout(this.#timers[name]);
        this.#timers[name] = null;
      }
    }

    #setState(state) {
      if (this.#state === state) return;
      if (this.#state === 'closed') return;
      this.#state = state;
      this.#emit('state', state);
    }

    #emitError(err) {
      this.#emit('error', err);
    }

    #emit(event, arg) {
      const list = this.#listeners[event];
      if (!list || list.length === 0) return;
      for (const listener of list.slice()) {
        try {
          const result = listener.call(this, arg);
          if (typeof result?.then === 'function') {
            // An async listener that rejects is reported like one that throws.
            result.then(null, (err) => this.#listenerFailed(event, err));
          }
        } catch (err) {
          this.#listenerFailed(event, err);
        }
      }
    }

    #listenerFailed(event, err) {
      const errorListeners = this.#listeners.error;
      if (event !== 'error' && errorListeners && errorListeners.length > 0) {
        this.#emit('error', makeError('ERR_LISTENER', `a "${event}" listener threw: ${describe(err)}`, { cause: err, event }));
      } else if (typeof console !== 'undefined' && console.error) {
        console.error(`realtime-events/client: a "${event}" listener threw:`, err);
      }
    }
  }

  return { RealtimeClient, compareOffsets, _protocol: PROTOCOL };
});
