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
    var api = factory();
    // One by one, so that Node's ESM loader finds the names: import { RealtimeClient } from ...
    module.exports.RealtimeClient = api.RealtimeClient;
    module.exports.compareOffsets = api.compareOffsets;
  } else if (typeof define === 'function' && define.amd) {
    define([], factory);
  } else {
    root.RealtimeEvents = factory();
  }
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  var SUBPROTOCOL = 'realtime-events';
  var WS_CONNECTING = 0;
  var WS_OPEN = 1;
  /** A connection that stayed open this long resets the backoff. */
  var STABLE_MS = 5000;
  /** Largest `?parcels=` value (encoded) and id count put in the URL; beyond, see flush. */
  var URL_PARCELS_MAX_CHARS = 2000;
  var URL_PARCELS_MAX_IDS = 200;
  /** Largest (un)subscribe message, in UTF-8 bytes (the server's default limit is 16384). */
  var MESSAGE_MAX_BYTES = 8000;
  /** Longest parcel id the server accepts, in UTF-8 bytes. */
  var MAX_PARCEL_ID_BYTES = 256;
  /** Close code this client uses for a connection it gives up on (no frame for too long). */
  var CLOSE_HEARTBEAT = 4000;

  var EVENTS = ['parcel_updated', 'resync_required', 'resumed', 'state', 'error', 'disconnect', 'message'];

  function noop() {}

  function now() {
    return Date.now();
  }

  /** A TypeError with a `code`, for a programming error in the caller. */
  function typeError(code, message) {
    var err = new TypeError(message);
    err.code = code;
    return err;
  }

  function makeError(code, message, extra) {
    var err = new Error(message);
    err.code = code;
    if (extra) {
      for (var k in extra) {
        if (Object.prototype.hasOwnProperty.call(extra, k) && extra[k] !== undefined) err[k] = extra[k];
      }
    }
    return err;
  }

  function describe(err) {
    if (err && typeof err.message === 'string') return err.message;
    return String(err);
  }

  function utf8Length(s) {
    var n = 0;
    for (var i = 0; i < s.length; i++) {
      var c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4;
        i++;
      } else n += 3;
    }
    return n;
  }

  var LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?:^|[^\ud800-\udbff])[\udc00-\udfff]/;

  /** Throws a TypeError unless `ids` is an array of valid parcel ids; returns a copy. */
  function checkParcelIds(ids, what) {
    if (!Array.isArray(ids)) throw typeError('ERR_INVALID_PARCEL_ID', what + ' must be an array of parcel ids');
    var out = [];
    for (var i = 0; i < ids.length; i++) {
      var id = ids[i];
      if (typeof id !== 'string' || id === '') {
        throw typeError('ERR_INVALID_PARCEL_ID', what + ': parcel ids must be non-empty strings (got ' + JSON.stringify(id) + ')');
      }
      if (utf8Length(id) > MAX_PARCEL_ID_BYTES || LONE_SURROGATE.test(id)) {
        throw typeError('ERR_INVALID_PARCEL_ID', what + ': parcel id ' + JSON.stringify(id.slice(0, 40)) +
          ' is longer than ' + MAX_PARCEL_ID_BYTES + ' UTF-8 bytes or not valid Unicode');
      }
      out.push(id);
    }
    return out;
  }

  /** "<ms>-<seq>" into two digit strings without leading zeros, or null. */
  function parseOffset(s) {
    var m = /^(\d+)-(\d+)$/.exec(s);
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
    var pa = typeof a === 'string' ? parseOffset(a) : null;
    var pb = typeof b === 'string' ? parseOffset(b) : null;
    if (!pa || !pb) return NaN;
    return compareDigits(pa[0], pb[0]) || compareDigits(pa[1], pb[1]);
  }

  /** An absolute ws:// or wss:// URL from what the caller gave (http(s):// and, in a page, relative URLs too). */
  function resolveUrl(url) {
    if (typeof url !== 'string' || url === '') throw typeError('ERR_INVALID_OPTION', 'options.url must be a ws:// or wss:// URL');
    var parsed;
    try {
      if (/^[a-z][a-z0-9+.-]*:/i.test(url)) parsed = new URL(url);
      else if (typeof location !== 'undefined' && location && location.href) parsed = new URL(url, location.href);
      else throw new Error('relative');
    } catch (e) {
      throw typeError('ERR_INVALID_OPTION', 'options.url must be a ws:// or wss:// URL (got ' + JSON.stringify(url) + ')');
    }
    if (parsed.protocol === 'http:') parsed.protocol = 'ws:';
    else if (parsed.protocol === 'https:') parsed.protocol = 'wss:';
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
      throw typeError('ERR_INVALID_OPTION', 'options.url must be a ws:// or wss:// URL (got ' + JSON.stringify(url) + ')');
    }
    parsed.hash = '';
    return parsed.toString();
  }

  function checkDelay(value, name, fallback, min) {
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'number' || !isFinite(value) || value < min) {
      throw typeError('ERR_INVALID_OPTION', 'options.' + name + ' must be a number >= ' + min);
    }
    return value;
  }

  function allState() {
    return { all: true, ids: new Set() };
  }

  function onlyState(ids) {
    return { all: false, ids: new Set(ids) };
  }

  /** Splits ids into lists whose `{"type":...,"parcel_ids":[...]}` stays under MESSAGE_MAX_BYTES. */
  function chunkIds(ids) {
    var chunks = [];
    var current = [];
    var size = 0;
    for (var i = 0; i < ids.length; i++) {
      var len = utf8Length(JSON.stringify(ids[i])) + 1;
      if (current.length > 0 && size + len > MESSAGE_MAX_BYTES - 64) {
        chunks.push(current);
        current = [];
        size = 0;
      }
      current.push(ids[i]);
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
  function RealtimeClient(options) {
    if (!(this instanceof RealtimeClient)) throw typeError('ERR_INVALID_ARGUMENT', "Class constructor RealtimeClient cannot be invoked without 'new'");
    if (!options || typeof options !== 'object') throw typeError('ERR_INVALID_OPTION', 'RealtimeClient needs an options object');
    if (typeof options.getToken !== 'function') throw typeError('ERR_INVALID_OPTION', 'options.getToken must be a function returning a token (or a Promise of one)');
    var WS = options.WebSocket || (typeof globalThis !== 'undefined' ? globalThis.WebSocket : undefined);
    if (typeof WS !== 'function') {
      throw typeError('ERR_INVALID_OPTION', 'no WebSocket implementation: pass options.WebSocket (in Node: require("ws"))');
    }
    if (options.since !== undefined && options.since !== null && (typeof options.since !== 'string' || options.since === '')) {
      throw typeError('ERR_INVALID_OPTION', 'options.since must be an offset string');
    }

    this._url = resolveUrl(options.url);
    this._getTokenFn = options.getToken;
    this._WebSocket = WS;
    this._minDelay = checkDelay(options.minDelayMs, 'minDelayMs', 250, 1);
    this._maxDelay = checkDelay(options.maxDelayMs, 'maxDelayMs', Math.max(10000, this._minDelay), 1);
    if (this._maxDelay < this._minDelay) throw typeError('ERR_INVALID_OPTION', 'options.maxDelayMs must be >= minDelayMs');
    this._pingInterval = checkDelay(options.pingIntervalMs, 'pingIntervalMs', 20000, 0);
    this._connectTimeout = checkDelay(options.connectTimeoutMs, 'connectTimeoutMs', 10000, 1);

    this._listeners = Object.create(null);
    this._state = 'connecting';
    this._closed = false;
    this._lastOffset = options.since || null;
    /**
     * While a resume is under way (from the welcome of a connection opened with ?since= until
     * `resumed` or `resync_required`): the resume point, the offsets delivered since, and the
     * greatest of them. `lastOffset` only moves on once the replay is complete, so a connection
     * lost in the middle resumes from the same point, and what was already delivered is not
     * delivered twice, whatever order the replay and the first live events arrive in.
     */
    this._resume = null; // {from, seen: Set, max}
    /** What the user asked to follow (restored on every reconnect). */
    this._want = options.parcels === undefined || options.parcels === null
      ? allState()
      : onlyState(checkParcelIds(options.parcels, 'options.parcels'));

    // Per connection:
    this._ws = null;
    this._gen = 0; // bumped whenever a socket or attempt is abandoned: stale callbacks check it
    this._live = false; // the welcome arrived on this socket
    this._openedAt = 0;
    this._lastFrameAt = 0;
    this._server = null; // the filter the server will hold once it has read everything sent
    this._sent = []; // (un)subscribe requests awaiting their answer, oldest first
    this._urlHadParcels = false;
    this._resumeFrom = null;
    this._socketError = null;
    this._refreshWaiters = [];

    // Across connections:
    this._attempt = 0; // failed or short-lived attempts in a row (drives the backoff)
    this._flushQueued = false;
    this._timers = { reconnect: null, connect: null, ping: null, watchdog: null };

    var self = this;
    // Next turn: the caller attaches listeners first.
    this._timers.reconnect = setTimeout(function () {
      self._timers.reconnect = null;
      self._connect();
    }, 0);
  }

  Object.defineProperty(RealtimeClient.prototype, 'state', {
    /** 'connecting' | 'open' | 'reconnecting' | 'closed' */
    get: function () {
      return this._state;
    },
  });

  Object.defineProperty(RealtimeClient.prototype, 'lastOffset', {
    /**
     * Where a reconnect resumes: the offset of the last event seen (or of the welcome, before any
     * event); during a resume it stays at the resume point until the replay is complete. Null if
     * none (a server without history).
     */
    get: function () {
      return this._lastOffset;
    },
  });

  Object.defineProperty(RealtimeClient.prototype, 'subscriptions', {
    /** What this client follows: `{all: true, parcelIds: []}` or `{all: false, parcelIds: [...]}`. */
    get: function () {
      return { all: this._want.all, parcelIds: Array.from(this._want.ids).sort() };
    },
  });

  /** Adds a listener; returns the client. */
  RealtimeClient.prototype.on = function (event, listener) {
    if (EVENTS.indexOf(event) < 0) throw typeError('ERR_INVALID_ARGUMENT', 'unknown event ' + JSON.stringify(event) + ' (one of ' + EVENTS.join(', ') + ')');
    if (typeof listener !== 'function') throw typeError('ERR_INVALID_ARGUMENT', 'listener must be a function');
    var list = this._listeners[event] || (this._listeners[event] = []);
    list.push(listener);
    return this;
  };

  /** Removes a listener added with on(); returns the client. */
  RealtimeClient.prototype.off = function (event, listener) {
    var list = this._listeners[event];
    if (list) {
      var i = list.lastIndexOf(listener);
      if (i >= 0) list.splice(i, 1);
    }
    return this;
  };

  /** Follows these parcels too (the first call narrows from "every event" to just these). */
  RealtimeClient.prototype.subscribe = function (parcelIds) {
    var ids = checkParcelIds(parcelIds, 'subscribe()');
    if (this._closed || ids.length === 0) return;
    if (this._want.all) this._want = onlyState(ids);
    else for (var i = 0; i < ids.length; i++) this._want.ids.add(ids[i]);
    this._scheduleFlush();
  };

  /** Stops following these parcels (a client following every event stays so). */
  RealtimeClient.prototype.unsubscribe = function (parcelIds) {
    var ids = checkParcelIds(parcelIds, 'unsubscribe()');
    if (this._closed || this._want.all) return;
    for (var i = 0; i < ids.length; i++) this._want.ids.delete(ids[i]);
    this._scheduleFlush();
  };

  /** Receives every event again. */
  RealtimeClient.prototype.subscribeAll = function () {
    if (this._closed) return;
    this._want = allState();
    this._scheduleFlush();
  };

  /**
   * Asks getToken() for a fresh token and sends `{"type":"refresh","token":...}` on the open
   * connection. Resolves true once the server confirmed (`refreshed`), false otherwise (not open,
   * getToken failed, or the connection ended first; a refused token closes it with 4403 and the
   * client reconnects with a new token). Never rejects.
   * @returns {Promise<boolean>}
   */
  RealtimeClient.prototype.refreshToken = function () {
    var self = this;
    if (this._closed) return Promise.resolve(false);
    return this._fetchToken().then(function (token) {
      if (token === null || self._closed || !self._live) return false;
      return new Promise(function (resolve) {
        if (!self._send({ type: 'refresh', token: token })) resolve(false);
        else self._refreshWaiters.push(resolve);
      });
    });
  };

  /** Closes for good: no more reconnects, every timer cleared; state 'closed'. */
  RealtimeClient.prototype.close = function () {
    if (this._closed) return;
    this._closed = true;
    this._clearTimer('reconnect');
    this._teardown('close');
    this._setState('closed');
  };

  // -------------------------------------------------------------------------------------------
  // Connecting

  RealtimeClient.prototype._connect = function () {
    if (this._closed) return;
    var self = this;
    var gen = ++this._gen;
    this._urlHadParcels = false;
    this._armTimer('connect', this._connectTimeout, function () {
      if (gen !== self._gen) return;
      self._failAttempt(makeError('ERR_CONNECT_TIMEOUT', 'no connection within ' + self._connectTimeout + ' ms'), 'terminate');
    });
    this._fetchToken().then(function (token) {
      if (gen !== self._gen || self._closed) return;
      if (token === null) {
        self._failAttempt(null);
        return;
      }
      self._open(gen, token);
    });
  };

  /** Resolves with getToken()'s token, or null after reporting why there is none. */
  RealtimeClient.prototype._fetchToken = function () {
    var self = this;
    var result;
    try {
      result = this._getTokenFn();
    } catch (err) {
      result = Promise.reject(err);
    }
    return Promise.resolve(result).then(function (token) {
      if (typeof token === 'string' && token !== '') return token;
      if (self._closed) return null;
      self._emitError(makeError('ERR_GET_TOKEN', 'getToken() returned ' + (token === '' ? 'an empty string' : typeof token) + ' instead of a token'));
      return null;
    }, function (err) {
      if (self._closed) return null;
      self._emitError(makeError('ERR_GET_TOKEN', 'getToken() failed: ' + describe(err), { cause: err }));
      return null;
    });
  };

  RealtimeClient.prototype._open = function (gen, token) {
    var self = this;
    var url = new URL(this._url);
    var server = allState();
    if (!this._want.all) {
      var ids = Array.from(this._want.ids);
      var value = ids.join(',');
      var fits = ids.length <= URL_PARCELS_MAX_IDS &&
        encodeURIComponent(value).length <= URL_PARCELS_MAX_CHARS &&
        ids.every(function (id) { return id.indexOf(',') < 0; });
      if (fits) {
        url.searchParams.set('parcels', value);
        server = onlyState(ids);
        this._urlHadParcels = true;
      }
      // Else too many (or comma-holding) ids for the URL: receive every event, filter here, and
      // narrow on the open connection when the set fits in one message (_flush).
    }
    if (this._lastOffset !== null) url.searchParams.set('since', this._lastOffset);
    if (this._resume && this._resume.from !== this._lastOffset) this._resume = null;
    this._resumeFrom = this._lastOffset;

    var ws;
    try {
      ws = new this._WebSocket(url.toString(), [SUBPROTOCOL, 'bearer.' + token]);
    } catch (err) {
      this._failAttempt(makeError('ERR_CONNECTION_FAILED', 'cannot create a WebSocket: ' + describe(err), { cause: err }));
      return;
    }
    this._ws = ws;
    this._live = false;
    this._socketError = null;
    this._server = server;
    this._sent = this._urlHadParcels ? [{ kind: 'url' }] : [];
    ws.onopen = noop;
    ws.onerror = function (event) {
      if (gen !== self._gen) return;
      var detail = event && (event.error || event.message);
      self._socketError = detail ? describe(detail) : null;
    };
    ws.onclose = function (event) {
      if (gen !== self._gen) return;
      self._onSocketClose(event ? event.code : 1006, event && event.reason ? String(event.reason) : '');
    };
    ws.onmessage = function (event) {
      if (gen !== self._gen) return;
      self._onFrame(event.data);
    };
  };

  /** Abandons the current socket or attempt (its callbacks are ignored from now on). */
  RealtimeClient.prototype._teardown = function (how) {
    this._gen++;
    this._clearTimer('connect');
    this._clearTimer('ping');
    this._clearTimer('watchdog');
    var ws = this._ws;
    this._ws = null;
    this._live = false;
    this._server = null;
    this._sent = [];
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
        } catch (e) {
          // already closing
        }
      }
    }
    var waiters = this._refreshWaiters;
    this._refreshWaiters = [];
    for (var i = 0; i < waiters.length; i++) waiters[i](false);
  };

  /** An attempt failed before the welcome: report (unless already reported) and retry. */
  RealtimeClient.prototype._failAttempt = function (err, how, closeCode) {
    this._teardown(how);
    if (this._closed) return;
    var delay = this._nextDelay(closeCode, 0);
    if (err) {
      err.retryInMs = Math.round(delay);
      this._emitError(err);
    }
    this._scheduleReconnect(delay);
  };

  RealtimeClient.prototype._onSocketClose = function (code, reason) {
    if (!this._live) {
      var detail = this._socketError ? ': ' + this._socketError : '';
      this._failAttempt(makeError('ERR_CONNECTION_FAILED', 'connection failed (close ' + code +
        (reason ? ' ' + reason : '') + ')' + detail, { closeCode: code }), undefined, code);
      return;
    }
    this._lost(code, reason);
  };

  /** An open connection ended. */
  RealtimeClient.prototype._lost = function (code, reason, how) {
    var lived = now() - this._openedAt;
    this._teardown(how);
    if (this._closed) return;
    var delay = this._nextDelay(code, lived);
    this._emit('disconnect', { code: code, reason: reason, delayMs: Math.round(delay) });
    this._scheduleReconnect(delay);
  };

  /** The wait before the next attempt, given how the last one ended. */
  RealtimeClient.prototype._nextDelay = function (code, lived) {
    if (lived >= STABLE_MS) this._attempt = 0;
    var attempt = this._attempt++;
    if (code === 4429) {
      // Rate limited: back off long.
      return this._maxDelay * (0.5 + Math.random() * 0.5);
    }
    if (attempt === 0 && (code === 1001 || code === 1013 || code === 4401 || code === 4403)) {
      // Going away, too slow, token expired or refused: reconnect at once (spread by jitter).
      return Math.random() * this._minDelay;
    }
    return Math.random() * Math.min(this._maxDelay, this._minDelay * Math.pow(2, Math.min(attempt, 30)));
  };

  RealtimeClient.prototype._scheduleReconnect = function (delay) {
    var self = this;
    if (this._closed) return;
    this._setState('reconnecting');
    if (this._closed) return; // a 'state' listener closed it
    this._armTimer('reconnect', delay, function () {
      self._connect();
    });
  };

  // -------------------------------------------------------------------------------------------
  // Frames

  RealtimeClient.prototype._onFrame = function (data) {
    this._lastFrameAt = now();
    if (typeof data !== 'string') return;
    var msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      this._emitError(makeError('ERR_BAD_FRAME', 'the server sent a frame that is not JSON: ' + data.slice(0, 100)));
      return;
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') return;
    this._emit('message', msg);
    if (this._closed || !this._ws) return;
    switch (msg.type) {
      case 'connected':
        this._onWelcome(msg);
        break;
      case 'parcel_updated':
        this._onEvent(msg);
        break;
      case 'resync_required': {
        // Start over from the server's current offset (none if its history is empty: the next
        // welcome's offset is taken then), or from a later event this connection already sent.
        var head = typeof msg.offset === 'string' && msg.offset !== '' ? msg.offset : null;
        var seenMax = this._resume ? this._resume.max : null;
        this._lastOffset = seenMax !== null && (head === null || compareOffsets(seenMax, head) > 0) ? seenMax : head;
        this._resume = null;
        this._emit('resync_required', msg);
        break;
      }
      case 'resumed':
        this._endResume();
        this._emit('resumed', msg);
        break;
      case 'subscribed':
      case 'unsubscribed':
        this._onAck(msg);
        break;
      case 'refreshed': {
        var waiter = this._refreshWaiters.shift();
        if (waiter) waiter(true);
        break;
      }
      case 'error':
        this._onServerError(msg);
        break;
      default:
        break; // pong, and whatever a newer server adds
    }
  };

  RealtimeClient.prototype._onWelcome = function (msg) {
    if (this._live) return;
    var self = this;
    this._live = true;
    this._openedAt = now();
    this._clearTimer('connect');
    var hasHistory = typeof msg.offset === 'string' && msg.offset !== '';
    if (this._lastOffset === null && hasHistory) this._lastOffset = msg.offset;
    if (this._resumeFrom !== null && hasHistory) {
      // The server answers ?since= with `resumed` or `resync_required` (one without history,
      // which sends no offset, ignores it).
      if (!this._resume) this._resume = { from: this._resumeFrom, seen: new Set(), max: null };
    } else {
      this._resume = null;
    }
    if (this._pingInterval > 0) {
      var gen = this._gen;
      var interval = this._pingInterval;
      this._armTimer('ping', interval, function tick() {
        if (gen !== self._gen) return;
        self._send({ type: 'ping' });
        self._armTimer('ping', interval, tick);
      });
      this._armWatchdog(2 * interval);
    }
    this._flush();
    this._setState('open');
  };

  RealtimeClient.prototype._armWatchdog = function (ms) {
    var self = this;
    var gen = this._gen;
    this._armTimer('watchdog', ms, function () {
      if (gen !== self._gen) return;
      var limit = 2 * self._pingInterval;
      var idle = now() - self._lastFrameAt;
      if (idle >= limit) self._lost(CLOSE_HEARTBEAT, 'no frame from the server for ' + idle + ' ms', 'terminate');
      else self._armWatchdog(limit - idle);
    });
  };

  RealtimeClient.prototype._onEvent = function (msg) {
    if (typeof msg.parcel_id !== 'string') return;
    var offset = msg.offset;
    var resume = this._resume;
    if (typeof offset === 'string' && offset !== '') {
      if (resume) {
        if (compareOffsets(offset, resume.from) <= 0 || resume.seen.has(offset)) return; // replayed twice
        if (resume.seen.size < 1000000) resume.seen.add(offset);
        if (resume.max === null || compareOffsets(offset, resume.max) > 0) resume.max = offset;
      } else {
        if (this._lastOffset !== null && compareOffsets(offset, this._lastOffset) <= 0) return; // replayed twice
        this._lastOffset = offset;
      }
    }
    if (!this._want.all && !this._want.ids.has(msg.parcel_id)) return;
    this._emit('parcel_updated', msg);
  };

  /** The replay is complete: continue from the greatest offset delivered. */
  RealtimeClient.prototype._endResume = function () {
    var resume = this._resume;
    this._resume = null;
    if (resume && resume.max !== null && (this._lastOffset === null || compareOffsets(resume.max, this._lastOffset) > 0)) {
      this._lastOffset = resume.max;
    }
  };

  RealtimeClient.prototype._onAck = function (msg) {
    this._sent.shift();
    if (this._sent.length === 0 && this._server) {
      // Nothing else on its way: the server's answer is the truth.
      this._server = msg.all ? allState() : onlyState(Array.isArray(msg.parcel_ids) ? msg.parcel_ids : []);
    }
  };

  RealtimeClient.prototype._onServerError = function (msg) {
    var code = typeof msg.code === 'string' ? msg.code : 'SERVER_ERROR';
    if (code === 'SUBSCRIPTION_LIMIT' || code === 'INVALID_SUBSCRIPTION') {
      // The oldest request in flight was refused and changed nothing: forget what it asked for,
      // so it is neither retried now nor restored on reconnect.
      var op = this._sent.shift();
      if (op && op.kind === 'subscribe' && this._server) {
        if (op.fromAll) {
          this._server = allState();
          this._want = allState();
        } else {
          for (var i = 0; i < op.ids.length; i++) {
            this._server.ids.delete(op.ids[i]);
            this._want.ids.delete(op.ids[i]);
          }
        }
      }
    }
    var text = typeof msg.message === 'string' ? msg.message : 'the server refused a message';
    this._emitError(makeError(code, text, { frame: msg }));
  };

  // -------------------------------------------------------------------------------------------
  // Subscriptions

  RealtimeClient.prototype._scheduleFlush = function () {
    if (this._flushQueued) return;
    this._flushQueued = true;
    var self = this;
    Promise.resolve().then(function () {
      self._flushQueued = false;
      self._flush();
    });
  };

  /** Sends what it takes to bring the server's filter to what the user asked for. */
  RealtimeClient.prototype._flush = function () {
    if (this._closed || !this._live || !this._server) return;
    var want = this._want;
    var server = this._server;
    var i;
    if (want.all) {
      if (!server.all && this._send({ type: 'subscribe', all: true })) {
        this._sent.push({ kind: 'all' });
        this._server = allState();
      }
      return;
    }
    if (server.all) {
      // One message switches atomically; a set too large for one stays "every event" on the
      // server, filtered here (narrowing in steps would miss events of the later steps).
      var ids = Array.from(want.ids);
      var chunks = chunkIds(ids);
      if (chunks.length <= 1 && this._send({ type: 'subscribe', parcel_ids: ids })) {
        this._sent.push({ kind: 'subscribe', ids: ids, fromAll: true });
        this._server = onlyState(ids);
      }
      return;
    }
    var removed = [];
    var added = [];
    server.ids.forEach(function (id) {
      if (!want.ids.has(id)) removed.push(id);
    });
    want.ids.forEach(function (id) {
      if (!server.ids.has(id)) added.push(id);
    });
    var parts = chunkIds(removed);
    for (i = 0; i < parts.length; i++) {
      if (!this._send({ type: 'unsubscribe', parcel_ids: parts[i] })) return;
      this._sent.push({ kind: 'unsubscribe', ids: parts[i] });
      for (var j = 0; j < parts[i].length; j++) server.ids.delete(parts[i][j]);
    }
    parts = chunkIds(added);
    for (i = 0; i < parts.length; i++) {
      if (!this._send({ type: 'subscribe', parcel_ids: parts[i] })) return;
      this._sent.push({ kind: 'subscribe', ids: parts[i], fromAll: false });
      for (var k = 0; k < parts[i].length; k++) server.ids.add(parts[i][k]);
    }
  };

  // -------------------------------------------------------------------------------------------
  // Plumbing

  RealtimeClient.prototype._send = function (message) {
    var ws = this._ws;
    if (!ws || ws.readyState !== WS_OPEN) return false;
    try {
      ws.send(JSON.stringify(message));
      return true;
    } catch (e) {
      return false;
    }
  };

  RealtimeClient.prototype._armTimer = function (name, ms, fn) {
    this._clearTimer(name);
    var self = this;
    this._timers[name] = setTimeout(function () {
      self._timers[name] = null;
      fn();
    }, ms);
  };

  RealtimeClient.prototype._clearTimer = function (name) {
    if (this._timers[name] !== null) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  };

  RealtimeClient.prototype._setState = function (state) {
    if (this._state === state) return;
    if (this._state === 'closed') return;
    this._state = state;
    this._emit('state', state);
  };

  RealtimeClient.prototype._emitError = function (err) {
    this._emit('error', err);
  };

  RealtimeClient.prototype._emit = function (event, arg) {
    var list = this._listeners[event];
    if (!list || list.length === 0) return;
    list = list.slice();
    for (var i = 0; i < list.length; i++) {
      try {
        var result = list[i].call(this, arg);
        if (result && typeof result.then === 'function') {
          // An async listener that rejects is reported like one that throws.
          result.then(null, this._listenerFailed.bind(this, event));
        }
      } catch (err) {
        this._listenerFailed(event, err);
      }
    }
  };

  RealtimeClient.prototype._listenerFailed = function (event, err) {
    var errorListeners = this._listeners.error;
    if (event !== 'error' && errorListeners && errorListeners.length > 0) {
      this._emit('error', makeError('ERR_LISTENER', 'a "' + event + '" listener threw: ' + describe(err), { cause: err, event: event }));
    } else if (typeof console !== 'undefined' && console.error) {
      console.error('realtime-events/client: a "' + event + '" listener threw:', err);
    }
  };

  return { RealtimeClient: RealtimeClient, compareOffsets: compareOffsets };
});
