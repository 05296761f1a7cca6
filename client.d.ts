// Type definitions for realtime-events/client: the reconnecting WebSocket client.
//
//   import { RealtimeClient } from 'realtime-events/client';      // Node, bundlers
//   <script src="client.js"></script>  →  RealtimeEvents.RealtimeClient  // plain browser script

/** The connection's life: `connecting` (first attempt), `open`, `reconnecting` (waiting or retrying), `closed` (after close()). */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** A parcel changed: refetch it (or use `data`). */
export interface ParcelUpdatedEvent {
  type: 'parcel_updated';
  parcel_id: string;
  /** Present when the publisher attached data. */
  data?: Record<string, unknown>;
  /** The event's position in the server's history (absent for events published with a bare Redis PUBLISH). */
  offset?: string;
}

/** The server cannot replay what this client missed: refetch everything. */
export interface ResyncRequiredEvent {
  type: 'resync_required';
  /** The server's current offset (the client continues from it); null when its history is empty. */
  offset: string | null;
  /** The resume point that could not be served. */
  since?: string;
}

/** A reconnect replayed the events published while the client was away. */
export interface ResumedEvent {
  type: 'resumed';
  since: string;
  replayed: number;
}

/** An open connection ended; the client reconnects in `delayMs`. */
export interface DisconnectInfo {
  /**
   * The close code: 1001 server going away, 1013 too slow, 4401 token expired, 4403 refresh
   * refused, 4408 no pong, 4429 rate limited, 1006 dropped, 4000 nothing received for
   * 2 × pingIntervalMs (closed by this client).
   */
  code: number;
  reason: string;
  delayMs: number;
}

/**
 * What 'error' listeners receive. `code` is one of:
 * - `ERR_CONNECTION_FAILED`: an attempt failed before the welcome (refused, HTTP error, unreachable);
 *   `closeCode` (1006 in browsers), `retryInMs`.
 * - `ERR_CONNECT_TIMEOUT`: an attempt took longer than `connectTimeoutMs`; `retryInMs`.
 * - `ERR_GET_TOKEN`: getToken() threw, rejected or returned no string; `cause`.
 * - `ERR_LISTENER`: a listener threw or rejected; `cause`, `event`.
 * - `ERR_BAD_FRAME`: the server sent a frame that is not JSON.
 * - a server error frame's code (`SUBSCRIPTION_LIMIT`, `INVALID_SUBSCRIPTION`, ...); `frame`.
 */
export interface RealtimeClientError extends Error {
  code: string;
  closeCode?: number;
  retryInMs?: number;
  cause?: unknown;
  event?: string;
  frame?: { type: 'error'; code: string; message: string };
}

/** Any frame from the server, parsed. */
export interface ServerFrame {
  type: string;
  [key: string]: unknown;
}

export interface RealtimeClientEvents {
  parcel_updated: ParcelUpdatedEvent;
  resync_required: ResyncRequiredEvent;
  resumed: ResumedEvent;
  state: ConnectionState;
  disconnect: DisconnectInfo;
  error: RealtimeClientError;
  /** Every frame as it arrived, before deduplication and filtering. */
  message: ServerFrame;
}

/** A WebSocket class: the browser's `WebSocket`, Node's global one, or npm `ws`. */
export type WebSocketConstructor = new (url: string, protocols: string[]) => unknown;

export interface RealtimeClientOptions {
  /** `ws://host:3006/ws` or `wss://…` (in a page also a relative `/ws` or an `http(s)://` URL). */
  url: string;
  /**
   * The JWT, called before every connection attempt and by refreshToken(). A throw, rejection or
   * non-string is reported on 'error' (`ERR_GET_TOKEN`) and retried with backoff.
   */
  getToken: () => string | Promise<string>;
  /** The WebSocket class; default `globalThis.WebSocket`. In Node 18–20: `require('ws')`. */
  WebSocket?: WebSocketConstructor;
  /**
   * Follow only these parcels from the start, restored on every reconnect. Default: every event;
   * `[]`: none. Keep it within the server's `maxSubscriptions` (up to 200 ids travel in the URL,
   * and a longer list there is refused with HTTP 400 on every attempt).
   */
  parcels?: string[];
  /** Resume from this offset on the first connection (a `lastOffset` saved earlier). */
  since?: string | null;
  /** Backoff floor in ms (exponential with full jitter). Default 250. */
  minDelayMs?: number;
  /** Backoff ceiling in ms. Default 10000 (and at least minDelayMs). */
  maxDelayMs?: number;
  /** `{"type":"ping"}` interval while open; nothing received for twice this reconnects. 0: off. Default 20000. */
  pingIntervalMs?: number;
  /** Longest a connection attempt (getToken, handshake, welcome) may take before it is retried. Default 10000. */
  connectTimeoutMs?: number;
}

/**
 * A reconnecting client for the realtime-events server: token in the `bearer.<JWT>` subprotocol,
 * backoff with jitter, resume from the last offset (`?since=`), subscriptions restored after
 * every reconnect, application-level heartbeats. Never throws from its callbacks.
 */
export declare class RealtimeClient {
  /** Starts connecting on the next turn of the event loop (attach listeners first). Throws a TypeError with code `ERR_INVALID_OPTION` for invalid options. */
  constructor(options: RealtimeClientOptions);
  /** The current state. */
  readonly state: ConnectionState;
  /**
   * Where a reconnect resumes (`?since=`): the offset of the last event seen (or of the first
   * welcome, before any event); during a resume it stays at the resume point until `resumed`.
   * Null when the server keeps no history. Store it to resume a later session (`since`).
   */
  readonly lastOffset: string | null;
  /** What the client follows: every event, or these parcel ids (sorted). */
  readonly subscriptions: { all: boolean; parcelIds: string[] };
  on<K extends keyof RealtimeClientEvents>(event: K, listener: (payload: RealtimeClientEvents[K]) => unknown): this;
  off<K extends keyof RealtimeClientEvents>(event: K, listener: (payload: RealtimeClientEvents[K]) => unknown): this;
  /** Follows these parcels too (the first call narrows from every event to these). Sent now if open; remembered for reconnects. Throws a TypeError with code `ERR_INVALID_PARCEL_ID` for invalid ids. */
  subscribe(parcelIds: string[]): void;
  /** Stops following these parcels (a client following every event stays so). */
  unsubscribe(parcelIds: string[]): void;
  /** Follows every event again. */
  subscribeAll(): void;
  /** Sends a fresh token from getToken() on the open connection; true once the server confirmed it. Never rejects. */
  refreshToken(): Promise<boolean>;
  /** Closes for good: no more reconnects, every timer cleared, state 'closed'. */
  close(): void;
}

/** Orders two "<ms>-<seq>" offsets: negative, 0 or positive; NaN if either has another shape. */
export declare function compareOffsets(a: string, b: string): number;

/** In a page loaded with `<script src="client.js">`: `RealtimeEvents.RealtimeClient`. */
export as namespace RealtimeEvents;
