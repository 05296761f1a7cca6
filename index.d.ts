// Type definitions for realtime-events.

import type { IncomingMessage, ServerResponse } from 'node:http';

/** A small JSON object a publisher may attach to an event (at most 4096 bytes of JSON). */
export type ParcelEventData = Record<string, unknown>;

/** The event every client and subscriber receives. */
export interface ParcelUpdatedEvent {
  type: 'parcel_updated';
  parcel_id: string;
  /** Present when the publisher attached data. */
  data?: ParcelEventData;
  /**
   * The event's place in the history ("<ms>-<seq>"): resume from it with `?since=`. Absent when
   * history is off, and for events an outside Redis client PUBLISHed without one.
   */
  offset?: string;
  /**
   * Only in `subscribeToParcelEvents` callbacks, for an event published with `{ users }`: whom
   * it was addressed to (WebSocket clients receive the plain frame).
   */
  users?: string[];
}

/** Decoded JWT payload, as the Auth module signed it. */
export type JwtClaims = Record<string, unknown>;

export interface ServerOptions {
  /** Port to listen on; 0 picks a free one. Default: `REALTIME_PORT`, else 3006. */
  port?: number;
  /** Interface to bind. Default: `REALTIME_HOST`, else '0.0.0.0'. */
  host?: string;
  /** WebSocket path; every other path answers 404. Default '/ws'. */
  path?: string;
  /** HS256 secret shared with the Auth module. Default: `JWT_SECRET`. Required. */
  jwtSecret?: string;
  /** When set, a token's `aud` must be (or contain) this, else 401 TOKEN_AUDIENCE_INVALID. Env `JWT_AUDIENCE`. */
  jwtAudience?: string;
  /** When set, a token's `iss` must be this, else 401 TOKEN_ISSUER_INVALID. Env `JWT_ISSUER`. */
  jwtIssuer?: string;
  /** Refuse tokens without `exp` (401 TOKEN_EXP_REQUIRED), at connect and on refresh. Env `JWT_REQUIRE_EXP=1`. Default false. */
  jwtRequireExp?: boolean;
  /**
   * Redis URL for multi-process broadcasting. Default: `REDIS_URL`. Absent, empty or null: the
   * in-memory bus (one process). Forms: `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS),
   * `redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER_NAME[/db][?sentinelPassword=…]`
   * (and `rediss+sentinel://`), `redis+cluster://[user:pass@]host:port[,host:port...]` (and
   * `rediss+cluster://`). An unknown master name rejects with ERR_REDIS_SENTINEL, a cluster seed
   * that is not a cluster (or a cluster node behind redis://) with ERR_REDIS_CLUSTER.
   */
  redisUrl?: string | null;
  /**
   * TLS for a `rediss://` redisUrl, as PEM text. Default: REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE,
   * REDIS_TLS_KEY_FILE (paths), else the system roots and no client certificate. A certificate
   * that does not verify rejects startServer with ERR_REDIS_TLS.
   */
  redisTls?: RedisTlsOptions;
  /** Redis pub/sub channel. Default: `REDIS_CHANNEL`, else 'parcel_events'. */
  channel?: string;
  /**
   * When Redis is configured but unreachable at start: true rejects with ERR_REDIS_UNAVAILABLE,
   * false (default; `REDIS_REQUIRED=1` sets true) falls back to the in-memory bus with a warning
   * and switches to Redis by itself once it answers (`GET /ready` is 503 until then). Credentials
   * that Redis refuses reject with ERR_REDIS_AUTH either way.
   */
  redisRequired?: boolean;
  /**
   * Called with the verified token's claims before a client is admitted (e.g. "does this user
   * still exist?"). `false`, a throw or a rejection refuses the connection with HTTP 403.
   */
  validateUser?: (claims: JwtClaims) => boolean | Promise<boolean>;
  /** Largest message a client may send, in bytes; larger closes with 1009. Default 16384. */
  maxMessageBytes?: number;
  /** Time a client has to complete the HTTP upgrade (and validateUser to answer). Default 10000. */
  handshakeTimeoutMs?: number;
  /** Silence (ms) after which the server pings a client; 0 disables. `REALTIME_PING_INTERVAL_MS`, default 25000. */
  pingIntervalMs?: number;
  /** Time (ms) a client has to answer a ping before it is closed (4408). `REALTIME_PONG_TIMEOUT_MS`, default 10000. */
  pongTimeoutMs?: number;
  /**
   * Browser origins allowed to connect, e.g. ['https://market.example.com']; others get 403.
   * Requests without an Origin header are judged by their token alone.
   * `REALTIME_ALLOWED_ORIGINS` (comma-separated); default: any origin.
   */
  allowedOrigins?: string[];
  /**
   * Host names the operations endpoints (`/health`, `/ready`, `/metrics`, `/stats`, the dashboard)
   * answer to, beyond IP literals, `localhost` and single-label names: exact (`'realtime.internal'`),
   * a suffix (`'.svc.cluster.local'`) or `'*'` (any). Another `Host` gets 403 `HOST_NOT_ALLOWED`
   * (a page on a rebinding DNS name cannot read them). `REALTIME_ALLOWED_HOSTS` (comma-separated).
   */
  allowedHosts?: string[];
  /**
   * When set (16 characters or more), the operations endpoints need it, whatever the `Host`:
   * `Authorization: Bearer <opsToken>` or `?ops_token=` (the dashboard passes its own on);
   * else 401 `OPS_TOKEN_REQUIRED`. `REALTIME_OPS_TOKEN`.
   */
  opsToken?: string;
  /**
   * Most connections at once in this server, counted from accept (503 beyond); 0: no limit but
   * the open-file bound. `REALTIME_MAX_CONNECTIONS`; default: the open-file limit minus headroom.
   */
  maxConnections?: number;
  /** Most connections at once from one IP (429 beyond); 0: no limit (behind a proxy). `REALTIME_MAX_CONNECTIONS_PER_IP`, default 256. */
  maxConnectionsPerIp?: number;
  /** Handshakes in progress at once (503 beyond); 0: no limit. `REALTIME_MAX_HANDSHAKES`; default: half the connection limit, at least 128. */
  maxHandshakes?: number;
  /** Handshakes in progress at once from one IP (429 beyond); 0: no limit. `REALTIME_MAX_HANDSHAKES_PER_IP`, default 32. */
  maxHandshakesPerIp?: number;
  /** Time a client has to send its request head (408 beyond). `REALTIME_HEAD_TIMEOUT_MS`, default 3000. */
  headTimeoutMs?: number;
  /** Most parcel ids one connection may follow. `REALTIME_MAX_SUBSCRIPTIONS`, default 1000. */
  maxSubscriptions?: number;
  /** Messages per second a client may send, sustained (4429 beyond). `REALTIME_MESSAGES_PER_SECOND`, default 20. */
  messagesPerSecond?: number;
  /** Messages a client may send in a burst. `REALTIME_MESSAGE_BURST`, default 40. */
  messageBurst?: number;
  /** Events kept for clients that resume (`?since=`); 0 turns history and offsets off. `REALTIME_HISTORY_SIZE`, default 10000. */
  historySize?: number;
  /** Oldest event kept, in ms. `REALTIME_HISTORY_TTL_MS`, default 600000 (10 minutes). */
  historyTtlMs?: number;
  /**
   * Events kept per user who has no connection open (an event `{ users }` addressed to them
   * waits in their inbox; the oldest goes first); 0 keeps none. In Redis mode the inbox is in
   * Redis and the publishing process's setting applies. `REALTIME_INBOX_SIZE`, default 100.
   */
  inboxSize?: number;
  /** How long an inboxed event waits, in ms. `REALTIME_INBOX_TTL_MS`, default 86400000 (24 h). */
  inboxTtlMs?: number;
  /**
   * Redis mode: a publish resolves only once this many replicas acknowledged it (`WAIT` after
   * each batch); fewer within `redisWaitTimeoutMs` reject it with ERR_REDIS_REPLICATION (the
   * event was published all the same). `REDIS_WAIT_REPLICAS`, default 0 (no waiting).
   */
  redisWaitReplicas?: number;
  /** How long `redisWaitReplicas` waits, in ms. `REDIS_WAIT_TIMEOUT_MS`, default 1000. */
  redisWaitTimeoutMs?: number;
  /**
   * Serve the live dashboard at `GET /` and its figures at `GET /stats`. Default: true, unless
   * `REALTIME_DASHBOARD` is `0`/`false`/`no`/`off`. `/health` and `/metrics` are always served.
   */
  dashboard?: boolean;
  /**
   * Default drain window of `close()`, in ms: clients are moved away over this time. Default:
   * `REALTIME_DRAIN_MS`, else 0 (every client closed at once).
   */
  drainMs?: number;
}

export interface CloseOptions {
  /**
   * Drain window in ms: /health turns 503 and upgrades are refused at once; connected clients get
   * a `{"type":"reconnect"}` notice and then close code 1001 at moments spread over the window.
   * Default: the server's `drainMs` option. 0 closes every client at once.
   */
  drainMs?: number;
  /** How long to wait, after the drain, for clients to finish closing, in ms. Default 5000. */
  graceMs?: number;
}

/** What `/health` reports: 200 for `ok` and `degraded`, 503 otherwise. */
export type HealthStatus = 'ok' | 'degraded' | 'draining' | 'redis_unavailable' | 'bus_failed';

/** The figures of `server.stats()` and `GET /stats` (the same numbers as `GET /metrics`). */
export interface ServerStats {
  version: string;
  status: HealthStatus;
  /** Whether /health answers 200. */
  ready: boolean;
  draining: boolean;
  uptimeSeconds: number;
  wsPath: string;
  bus: {
    mode: 'memory' | 'redis' | 'starting' | 'failed';
    redisConfigured: boolean;
    redisRequired: boolean;
    redisConnected: boolean;
    redisReconnects: number;
    /** The Redis master in use (`host:port`; in a cluster, the master of the channel's slot); '' in memory mode. */
    redisMaster: string;
    /** Times this process saw the master change (Sentinel or Cluster failover). */
    redisFailovers: number;
    /** `redisWaitReplicas`: batches that waited, the time spent waiting, and the batches fewer replicas acknowledged in time. */
    replicationWaits: number;
    replicationWaitSeconds: number;
    replicationFailures: number;
  };
  connections: {
    open: number;
    total: number;
    /**
     * Ended connections by reason: client, shutdown, too_slow, stuck, too_large, protocol_error,
     * token_expired, refresh_refused, heartbeat_timeout, rate_limited.
     */
    closed: Record<string, number>;
  };
  /** Refused upgrades by code (TOKEN_EXPIRED, DRAINING, ...). */
  refusals: Record<string, number>;
  events: {
    /** Published by this process and accepted by the bus. */
    published: number;
    publishFailed: number;
    /** Publishes accepted and not yet taken by the bus (held while Redis is unreachable). */
    publishQueued: number;
    /** Entered this process's fan-out (memory: own publishes; Redis: what the subscription delivered). */
    received: number;
    /** Event frames written to clients. */
    delivered: number;
    /** Events missed by clients cut for slowness. */
    dropped: number;
  };
  bytesSent: number;
  publishPacedSeconds: number;
  /** Publish-to-send latency histogram (cumulative buckets, seconds). */
  latency: { count: number; sumSeconds: number; buckets: Array<{ le: number | '+Inf'; count: number }> };
  logRecordsDropped: number;
}

/** A log record as `setLogger` receives it. */
export interface LogRecord {
  level: 'error' | 'warn' | 'info' | 'debug' | 'trace';
  message: string;
  /** Structured fields, e.g. `event`, `user`, `peer`, `reason`, `duration_ms`, `code`. Never a token. */
  fields: Record<string, unknown>;
  /** ISO 8601 UTC timestamp. */
  time: string;
  /** The part of the module that logged it: 'server', 'bus', 'js', ... */
  module: string;
}

/** A running server. While it runs it keeps the Node process alive, like `http.Server`. */
export declare class Server {
  private constructor();
  /** The port it listens on. */
  readonly port: number;
  /** WebSocket clients connected right now. */
  readonly clientCount: number;
  /** Which bus carries events. */
  readonly busMode: 'memory' | 'redis';
  /** True once close() has started. */
  readonly draining: boolean;
  /** Every operations figure now (the same object `GET /stats` serves). */
  stats(): ServerStats;
  /** The Prometheus text exposition `GET /metrics` serves. */
  metrics(): string;
  /**
   * Drains (see CloseOptions), closes clients with code 1001, resolves once the port is free and
   * the connections are gone. Calling it again returns the same promise.
   */
  close(options?: CloseOptions): Promise<void>;
}

/** TLS to Redis (`rediss://`). */
export interface RedisTlsOptions {
  /** The CA(s) that signed the server's certificate (PEM); default: the system roots. */
  ca?: string;
  /** Client certificate and key (PEM), for mutual TLS; both or neither. */
  cert?: string;
  key?: string;
  /** Default true. false accepts any server certificate: for tests only. */
  rejectUnauthorized?: boolean;
}

/** Error codes set on the `code` property of every error this module raises. */
export type ErrorCode =
  | 'ERR_INVALID_PARCEL_ID'
  | 'ERR_INVALID_DATA'
  | 'ERR_INVALID_USERS'
  | 'ERR_INVALID_OPTION'
  | 'ERR_MISSING_JWT_SECRET'
  | 'ERR_PORT_IN_USE'
  | 'ERR_LISTEN_FAILED'
  | 'ERR_REDIS_UNAVAILABLE'
  | 'ERR_REDIS_AUTH'
  | 'ERR_REDIS_TLS'
  | 'ERR_REDIS_SENTINEL'
  | 'ERR_REDIS_CLUSTER'
  | 'ERR_REDIS_REPLICATION'
  | 'ERR_BUS_CONFLICT'
  | 'ERR_PUBLISH_QUEUE_FULL'
  | 'ERR_BUS_CLOSED'
  | 'ERR_ADDON_NOT_BUILT';

export interface RealtimeError extends Error {
  code: ErrorCode;
}

/** Starts the WebSocket server. */
export declare function startServer(options?: ServerOptions): Promise<Server>;

/**
 * Publishes `{type:'parcel_updated', parcel_id[, data]}` to every client of every server on the
 * bus. Resolves once the bus has taken it (with Redis: once Redis acknowledged it). Rejects with a
 * TypeError (ERR_INVALID_PARCEL_ID) for a non-string, empty or over-long id, and
 * (ERR_INVALID_DATA) for data that is not a plain object of at most 4096 bytes of JSON.
 */
export declare function publishParcelUpdate(
  parcelId: string,
  data?: ParcelEventData | null,
  options?: PublishOptions,
): Promise<void>;

/** Fire and forget: bus failures are logged, never thrown. */
export declare function publishParcelUpdateDirect(
  parcelId: string,
  data?: ParcelEventData | null,
  options?: PublishOptions,
): void;

export interface PublishOptions {
  /**
   * Deliver only to the connections authenticated as these users (the JWT's `sub`, `id`,
   * `userId` or `user_id`; a numeric claim matches its decimal string), whatever their parcel
   * filter; a user with no connection gets it in their inbox, delivered right after the welcome
   * of their next connection. 1 to 1000 string ids, else ERR_INVALID_USERS (TypeError). In
   * Redis mode this holds across every instance: the inbox is in Redis, decided at publish time
   * from the presence of every live instance.
   */
  users?: string[];
}

/**
 * How many connections each user has open now: over every instance in Redis mode (an instance
 * that died stops counting within 15 s), in this process in memory mode. At most 1000 ids, else
 * ERR_INVALID_USERS; Redis unreachable: ERR_REDIS_UNAVAILABLE.
 */
export declare function presence(userIds: string[]): Promise<Record<string, number>>;

/**
 * Express middleware: publishes `req.params.parcel_id` once the response is sent with a 2xx
 * status. Place it after the handler (which calls `next()`) or before it, or wrap the handler
 * with `publishesParcelEvent` instead. One response publishes at most once (placed twice on a
 * route: a warning). The handler may attach data by setting `res.locals.parcelEventData`.
 */
export declare function publishParcelEvent(
  req: IncomingMessage & { params?: Record<string, string> },
  res: ServerResponse & { locals?: { parcelEventData?: ParcelEventData } },
  next?: (err?: unknown) => void,
): void;

/**
 * Wraps an Express handler so that its route publishes `req.params.parcel_id` once the response
 * has been sent with a 2xx status, whether or not the handler calls `next()`:
 * `router.post('/buy/:parcel_id', auth, rt.publishesParcelEvent(buyParcel))`. A handler that
 * throws or rejects goes to `next(err)`; an error response publishes nothing.
 */
export declare function publishesParcelEvent<Req extends { params?: { parcel_id?: string } }, Res extends ServerResponse>(
  handler: (req: Req, res: Res & { locals?: { parcelEventData?: ParcelEventData } }, next: (err?: unknown) => void) => unknown,
): (req: Req, res: Res, next?: (err?: unknown) => void) => void;

/**
 * Calls `callback` for every event on the bus (from every process in Redis mode). Returns a
 * function that unsubscribes; calling it twice is harmless. A subscription keeps the process
 * alive only while events can come from outside it: in Redis mode, not in memory mode.
 */
export declare function subscribeToParcelEvents(
  callback: (event: ParcelUpdatedEvent) => void | Promise<void>,
): () => void;

/**
 * Routes every log record of this module (engine and JS) to `fn` instead of stderr; `null`
 * restores stderr. `LOG_LEVEL` still filters. Records arrive asynchronously on the JS thread; when
 * it is 1,024 records behind, the excess is dropped and counted.
 */
export declare function setLogger(fn: ((record: LogRecord) => void) | null): void;

/** Longest accepted parcel id, in UTF-8 bytes (256). */
export declare const MAX_PARCEL_ID_BYTES: number;
export declare const DEFAULT_PORT: 3006;
export declare const DEFAULT_CHANNEL: 'parcel_events';
