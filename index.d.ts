// Type definitions for realtime-events.

import type { IncomingMessage, ServerResponse } from 'node:http';

/** The event every client and subscriber receives. */
export interface ParcelUpdatedEvent {
  type: 'parcel_updated';
  parcel_id: string;
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
  /**
   * Redis URL for multi-process broadcasting. Default: `REDIS_URL`. Absent, empty or null: the
   * in-memory bus (one process).
   */
  redisUrl?: string | null;
  /** Redis pub/sub channel. Default: `REDIS_CHANNEL`, else 'parcel_events'. */
  channel?: string;
  /**
   * When Redis is configured but unreachable at start: true rejects with ERR_REDIS_UNAVAILABLE,
   * false (default; `REDIS_REQUIRED=1` sets true) falls back to the in-memory bus with a warning.
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
}

export interface CloseOptions {
  /** How long to wait for clients to finish closing, in ms. Default 5000. */
  graceMs?: number;
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
  /** Stops accepting, closes clients with code 1001, resolves once the port is free. Idempotent. */
  close(options?: CloseOptions): Promise<void>;
}

/** Error codes set on the `code` property of every error this module raises. */
export type ErrorCode =
  | 'ERR_INVALID_PARCEL_ID'
  | 'ERR_INVALID_OPTION'
  | 'ERR_MISSING_JWT_SECRET'
  | 'ERR_PORT_IN_USE'
  | 'ERR_LISTEN_FAILED'
  | 'ERR_REDIS_UNAVAILABLE'
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
 * Publishes `{type:'parcel_updated', parcel_id}` to every client of every server on the bus.
 * Resolves once the bus has taken it (with Redis: once Redis acknowledged it). Rejects with a
 * TypeError (ERR_INVALID_PARCEL_ID) for a non-string, empty or over-long id.
 */
export declare function publishParcelUpdate(parcelId: string): Promise<void>;

/** Fire and forget: bus failures are logged, never thrown. */
export declare function publishParcelUpdateDirect(parcelId: string): void;

/**
 * Express middleware: publishes `req.params.parcel_id` once the response is sent with a 2xx
 * status. Place it after the handler (which calls `next()`) or before it.
 */
export declare function publishParcelEvent(
  req: IncomingMessage & { params?: Record<string, string> },
  res: ServerResponse,
  next?: (err?: unknown) => void,
): void;

/**
 * Calls `callback` for every event on the bus (from every process in Redis mode). Returns a
 * function that unsubscribes; calling it twice is harmless. An active subscription keeps the
 * process alive.
 */
export declare function subscribeToParcelEvents(
  callback: (event: ParcelUpdatedEvent) => void | Promise<void>,
): () => void;

/** Longest accepted parcel id, in UTF-8 bytes (256). */
export declare const MAX_PARCEL_ID_BYTES: number;
export declare const DEFAULT_PORT: 3006;
export declare const DEFAULT_CHANNEL: 'parcel_events';
