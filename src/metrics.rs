//! Counters for operators, and their two renderings: Prometheus text (`GET /metrics`) and JSON
//! (`GET /stats`, `server.stats()` in JS).
//!
//! Every figure is a relaxed atomic updated on the tokio workers where the thing happens; the
//! JS thread never counts anything. Nothing is counted per delivery: a connection adds the frame
//! count and bytes of a whole batch once per flush, and records one latency observation per
//! flush. Those per-flush counters are sharded by worker thread (one cache line each), so that
//! workers never fight over a line; rendering sums the shards on demand (a scrape costs a few
//! microseconds).
//!
//! Two scopes: [`ServerMetrics`] belong to one server (its connections), [`BusMetrics`] to the
//! process-wide bus (publishes, events entering the process, Redis). A server's endpoints show
//! both; with several servers in one process the bus figures are shared.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A compact clock for stamps that travel with every event: microseconds since the first use in
/// this process, as a `u32` that wraps every ~71 minutes. [`elapsed_us`] subtracts with
/// wrap-around, so any duration under that is exact (latencies are far shorter).
pub fn now_us() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u32
}

/// Milliseconds since the same epoch as [`now_us`], without wrap-around.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Time since a [`now_us`] stamp.
pub fn elapsed_us(stamp: u32) -> Duration {
    Duration::from_micros(u64::from(now_us().wrapping_sub(stamp)))
}

/// Upper bounds of the publish-to-send latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const LATENCY_BUCKETS_NS: [u64; 16] = {
    let mut out = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A fixed-bucket histogram of durations: one atomic per bucket plus a sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts; the last one is the +Inf overflow.
    buckets: [AtomicU64; 17],
    sum_ns: AtomicU64,
}

/// A histogram read out: cumulative counts per `le` bound (the last is +Inf).
#[derive(Debug, Clone, Default)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// The histogram of all observations of `parts` (shards of one histogram).
    pub fn sum(parts: impl Iterator<Item = HistogramSnapshot>) -> HistogramSnapshot {
        let mut out = HistogramSnapshot { cumulative: vec![0; 17], sum_seconds: 0.0 };
        for part in parts {
            for (total, n) in out.cumulative.iter_mut().zip(&part.cumulative) {
                *total += n;
            }
            out.sum_seconds += part.sum_seconds;
        }
        out
    }

    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_NS.iter().position(|&b| ns <= b).unwrap_or(16);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Why a WebSocket connection ended, as counted in `realtime_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (or its socket did).
    Client,
    /// The server closed it with 1001 (shutdown or drain).
    Shutdown,
    /// Cut with 1013: it fell behind while publishers waited for it.
    TooSlow,
    /// Its socket accepted nothing for `send_timeout`.
    Stuck,
    /// It sent a message over `maxMessageBytes` (1009).
    TooLarge,
    /// It broke the WebSocket protocol.
    ProtocolError,
    /// Its token expired and was not refreshed (4401).
    TokenExpired,
    /// A `refresh` carried a bad token or another user's (4403).
    RefreshRefused,
    /// It did not answer the server's ping (4408).
    HeartbeatTimeout,
    /// It sent messages faster than allowed (4429).
    RateLimited,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Client,
        CloseReason::Shutdown,
        CloseReason::TooSlow,
        CloseReason::Stuck,
        CloseReason::TooLarge,
        CloseReason::ProtocolError,
        CloseReason::TokenExpired,
        CloseReason::RefreshRefused,
        CloseReason::HeartbeatTimeout,
        CloseReason::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TooSlow => "too_slow",
            CloseReason::Stuck => "stuck",
            CloseReason::TooLarge => "too_large",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::RefreshRefused => "refresh_refused",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::RateLimited => "rate_limited",
        }
    }
}

/// The refusal codes known in advance (reported at 0 from the start, so that dashboards and
/// alerts see every series). A code outside this list is still counted, under its own name.
pub const REFUSAL_CODES: [&str; 19] = [
    "TOKEN_MISSING",
    "TOKEN_MALFORMED",
    "TOKEN_INVALID_SIGNATURE",
    "TOKEN_EXPIRED",
    "TOKEN_NOT_YET_VALID",
    "TOKEN_ALGORITHM_NOT_ALLOWED",
    "USER_REJECTED",
    "NOT_FOUND",
    "UPGRADE_REQUIRED",
    "UNSUPPORTED_VERSION",
    "BAD_REQUEST",
    "HEADERS_TOO_LARGE",
    "HANDSHAKE_TIMEOUT",
    "DRAINING",
    "ORIGIN_NOT_ALLOWED",
    "TOO_MANY_CONNECTIONS",
    "TOO_MANY_CONNECTIONS_FROM_IP",
    "INVALID_PARCELS",
    "INVALID_OFFSET",
];

/// The counters of one server.
#[derive(Debug)]
pub struct ServerMetrics {
    started: Instant,
    clients: AtomicUsize,
    connections_total: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    refused_total: AtomicU64,
    refusals: [AtomicU64; REFUSAL_CODES.len()],
    other_refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// The per-flush counters, one shard per worker thread.
    flushes: [Shard; SHARDS],
    dropped: AtomicU64,
}

/// Shards of the per-flush counters: more than the engine's worker threads on the machines it
/// runs on (threads beyond share a shard, which stays correct).
const SHARDS: usize = 8;

/// The counters one worker thread updates on every flush, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    deliveries: AtomicU64,
    bytes_sent: AtomicU64,
    latency: Histogram,
}

/// This thread's shard: threads take shards round-robin the first time they count.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            clients: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            closed: Default::default(),
            refused_total: AtomicU64::new(0),
            refusals: Default::default(),
            other_refusals: Mutex::new(BTreeMap::new()),
            flushes: Default::default(),
            dropped: AtomicU64::new(0),
        }
    }
}

/// Bytes a server-to-client WebSocket frame with this payload takes on the wire.
pub fn ws_frame_len(payload: usize) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload + header) as u64
}

impl ServerMetrics {
    /// WebSocket clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
    /// WebSocket connections admitted since the start.
    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }
    /// Upgrade attempts refused since the start (all codes).
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn connection_opened(&self) {
        self.clients.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason, dropped_events: u64) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
        if dropped_events > 0 {
            self.dropped.fetch_add(dropped_events, Ordering::Relaxed);
        }
    }

    pub(crate) fn refused(&self, code: &'static str) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        match REFUSAL_CODES.iter().position(|&c| c == code) {
            Some(i) => {
                self.refusals[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut other = self.other_refusals.lock().unwrap_or_else(|e| e.into_inner());
                *other.entry(code).or_default() += 1;
            }
        }
    }

    /// One flushed batch: `frames` event frames, `bytes` on the wire, the oldest of which entered
    /// the process at `oldest` (a [`now_us`] stamp).
    pub(crate) fn batch_sent(&self, frames: u64, bytes: u64, oldest: u32) {
        let shard = &self.flushes[shard_index()];
        shard.deliveries.fetch_add(frames, Ordering::Relaxed);
        shard.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        shard.latency.observe(elapsed_us(oldest));
    }

    /// Event frames sent outside a batch (replays after `resume`, a filter change's seam):
    /// counted as deliveries, with no latency observation.
    pub(crate) fn frames_sent(&self, frames: u64, bytes: u64) {
        let shard = &self.flushes[shard_index()];
        shard.deliveries.fetch_add(frames, Ordering::Relaxed);
        shard.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Frames other than events (welcome, replies, notices): bytes only.
    pub(crate) fn control_sent(&self, bytes: u64) {
        self.flushes[shard_index()].bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    fn refusal_counts(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<_> = REFUSAL_CODES
            .iter()
            .zip(&self.refusals)
            .map(|(&c, n)| (c, n.load(Ordering::Relaxed)))
            .collect();
        let other = self.other_refusals.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(other.iter().map(|(&c, &n)| (c, n)));
        out
    }
}

/// The counters of the process-wide bus.
#[derive(Debug, Default)]
pub struct BusMetrics {
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    paced_ns: AtomicU64,
    redis_reconnects: AtomicU64,
    /// Publishes of the batch being retried while Redis is unreachable.
    held: AtomicU64,
}

impl BusMetrics {
    pub(crate) fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn publish_failed(&self, n: u64) {
        self.publish_failed.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn paced(&self, d: Duration) {
        self.paced_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub(crate) fn redis_reconnected(&self) {
        self.redis_reconnects.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_held(&self, n: u64) {
        self.held.store(n, Ordering::Relaxed);
    }
    /// Publishes of the batch being retried while Redis is unreachable.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// Whether a server can take clients, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Serving normally.
    Ok,
    /// Serving, but Redis is configured and not connected (not `redisRequired`): events from
    /// other processes do not arrive meanwhile.
    Degraded,
    /// Draining: no new clients; 503.
    Draining,
    /// `redisRequired` and Redis is not connected; 503.
    RedisUnavailable,
    /// The bus has stopped; 503.
    BusFailed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Draining => "draining",
            Health::RedisUnavailable => "redis_unavailable",
            Health::BusFailed => "bus_failed",
        }
    }

    /// 200 when the server can serve, 503 otherwise.
    pub fn http_status(self) -> u16 {
        match self {
            Health::Ok | Health::Degraded => 200,
            Health::Draining | Health::RedisUnavailable | Health::BusFailed => 503,
        }
    }
}

/// Every figure at one moment, ready to render.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: &'static str,
    pub uptime: Duration,
    pub health: Health,
    /// What the server and the bus say of themselves (draining, bus mode, Redis, queue).
    pub state: State,
    pub redis_reconnects: u64,
    pub clients: u64,
    pub connections_total: u64,
    pub closed: Vec<(&'static str, u64)>,
    pub refusals: Vec<(&'static str, u64)>,
    pub published: u64,
    pub publish_failed: u64,
    pub received: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub bytes_sent: u64,
    pub paced_seconds: f64,
    pub latency: HistogramSnapshot,
    pub log_records_dropped: u64,
}

/// What [`Snapshot::collect`] needs to know beyond the counters.
#[derive(Debug, Clone)]
pub struct State {
    pub draining: bool,
    pub ws_path: String,
    /// "memory", "redis", "starting" or "failed".
    pub bus_mode: &'static str,
    pub redis_configured: bool,
    pub redis_required: bool,
    pub redis_connected: bool,
    /// Publishes accepted and not yet taken by the bus (held while Redis is unreachable).
    pub publish_queued: u64,
}

impl Snapshot {
    pub fn collect(server: &ServerMetrics, bus: &BusMetrics, state: State) -> Snapshot {
        let health = if state.draining {
            Health::Draining
        } else if state.bus_mode == "failed" {
            Health::BusFailed
        } else if state.redis_configured && !(state.bus_mode == "redis" && state.redis_connected) {
            if state.redis_required {
                Health::RedisUnavailable
            } else {
                Health::Degraded
            }
        } else {
            Health::Ok
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime: server.uptime(),
            health,
            state,
            redis_reconnects: load(&bus.redis_reconnects),
            clients: server.clients() as u64,
            connections_total: server.connections_total(),
            closed: CloseReason::ALL
                .iter()
                .map(|&r| (r.as_str(), load(&server.closed[r as usize])))
                .collect(),
            refusals: server.refusal_counts(),
            published: load(&bus.published),
            publish_failed: load(&bus.publish_failed),
            received: load(&bus.received),
            delivered: server.flushes.iter().map(|s| load(&s.deliveries)).sum(),
            dropped: load(&server.dropped),
            bytes_sent: server.flushes.iter().map(|s| load(&s.bytes_sent)).sum(),
            paced_seconds: load(&bus.paced_ns) as f64 / 1e9,
            latency: HistogramSnapshot::sum(server.flushes.iter().map(|s| s.latency.snapshot())),
            log_records_dropped: crate::logger::dropped_records(),
        }
    }

    /// The `/health` body (written by hand so that `status` comes first).
    pub fn health_json(&self) -> String {
        format!(
            r#"{{"status":"{}","bus":"{}","redis":{{"configured":{},"required":{},"connected":{}}},"clients":{},"uptimeSeconds":{},"version":"{}","draining":{}}}"#,
            self.health.as_str(),
            self.state.bus_mode,
            self.state.redis_configured,
            self.state.redis_required,
            self.state.redis_connected,
            self.clients,
            round3(self.uptime.as_secs_f64()),
            self.version,
            self.state.draining,
        )
    }

    /// The `/stats` body and `server.stats()`.
    pub fn stats_json(&self) -> String {
        let pairs = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(k, n)| (k.to_string(), serde_json::Value::from(*n)))
                .collect::<serde_json::Map<_, _>>()
        };
        let buckets: Vec<_> = LATENCY_BUCKETS
            .iter()
            .map(|&le| serde_json::Value::from(le))
            .chain(std::iter::once(serde_json::Value::from("+Inf")))
            .zip(&self.latency.cumulative)
            .map(|(le, n)| serde_json::json!({ "le": le, "count": n }))
            .collect();
        serde_json::json!({
            "version": self.version,
            "status": self.health.as_str(),
            "ready": self.health.http_status() == 200,
            "draining": self.state.draining,
            "uptimeSeconds": round3(self.uptime.as_secs_f64()),
            "wsPath": self.state.ws_path,
            "bus": {
                "mode": self.state.bus_mode,
                "redisConfigured": self.state.redis_configured,
                "redisRequired": self.state.redis_required,
                "redisConnected": self.state.redis_connected,
                "redisReconnects": self.redis_reconnects,
            },
            "connections": {
                "open": self.clients,
                "total": self.connections_total,
                "closed": pairs(&self.closed),
            },
            "refusals": pairs(&self.refusals),
            "events": {
                "published": self.published,
                "publishFailed": self.publish_failed,
                "publishQueued": self.state.publish_queued,
                "received": self.received,
                "delivered": self.delivered,
                "dropped": self.dropped,
            },
            "bytesSent": self.bytes_sent,
            "publishPacedSeconds": self.paced_seconds,
            "latency": {
                "count": self.latency.count(),
                "sumSeconds": self.latency.sum_seconds,
                "buckets": buckets,
            },
            "logRecordsDropped": self.log_records_dropped,
        })
        .to_string()
    }

    /// The Prometheus text exposition (format 0.0.4) of every figure.
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut w = Writer { out: &mut out };
        w.family("realtime_build_info", "gauge", "Version of realtime-events serving; always 1.");
        w.sample("realtime_build_info", &[("version", self.version)], 1.0);
        w.single(
            "realtime_uptime_seconds",
            "gauge",
            "Seconds since this server started.",
            round3(self.uptime.as_secs_f64()),
        );
        w.single(
            "realtime_ready",
            "gauge",
            "1 when /health answers 200 (the server takes clients), else 0.",
            f(self.health.http_status() == 200),
        );
        w.single(
            "realtime_draining",
            "gauge",
            "1 while the server drains (no new clients; the connected ones are being moved away).",
            f(self.state.draining),
        );

        w.single(
            "realtime_connections_open",
            "gauge",
            "WebSocket clients connected now.",
            self.clients as f64,
        );
        w.single(
            "realtime_connections_total",
            "counter",
            "WebSocket connections admitted (upgraded) since the start.",
            self.connections_total as f64,
        );
        w.family("realtime_connections_closed_total", "counter", "WebSocket connections ended, by reason: client, shutdown (1001), too_slow (1013), stuck (write timeout), too_large (1009), protocol_error, token_expired (4401), refresh_refused (4403), heartbeat_timeout (4408), rate_limited (4429).");
        for (reason, n) in &self.closed {
            w.sample("realtime_connections_closed_total", &[("reason", reason)], *n as f64);
        }
        w.family(
            "realtime_refusals_total",
            "counter",
            "Upgrade attempts refused before the WebSocket opened, by the code of the HTTP answer.",
        );
        for (code, n) in &self.refusals {
            w.sample("realtime_refusals_total", &[("reason", code)], *n as f64);
        }

        w.single("realtime_events_published_total", "counter", "Events this process published that the bus accepted (memory: queued for every connection; Redis: PUBLISH acknowledged). Shared by the servers of one process.", self.published as f64);
        w.single("realtime_events_publish_failed_total", "counter", "Events this process published that the bus could not take (the bus stopped while Redis was unreachable).", self.publish_failed as f64);
        w.single("realtime_publish_queue", "gauge", "Publishes accepted and not yet taken by the bus (in Redis mode: held while Redis is unreachable, sent in order once it is back).", self.state.publish_queued as f64);
        w.single("realtime_events_received_total", "counter", "Events that entered this process's fan-out (its own publishes in memory mode; everything the Redis subscription delivered in Redis mode).", self.received as f64);
        w.single("realtime_deliveries_total", "counter", "Event frames written to WebSocket clients (one event to 100 clients is 100 deliveries).", self.delivered as f64);
        w.single(
            "realtime_deliveries_dropped_total",
            "counter",
            "Events that clients cut for slowness (1013) had fallen behind by and never received.",
            self.dropped as f64,
        );
        w.single("realtime_bytes_sent_total", "counter", "Bytes of WebSocket frames written to clients (events, welcome, replies; framing included).", self.bytes_sent as f64);
        w.single("realtime_publish_paced_seconds_total", "counter", "Time the bus held publishes back because the slowest client was half the ring behind (flow control).", self.paced_seconds);

        w.family(
            "realtime_bus_info",
            "gauge",
            "Which bus carries events (memory, redis, starting, failed); always 1.",
        );
        w.sample(
            "realtime_bus_info",
            &[
                ("mode", self.state.bus_mode),
                ("redis_required", if self.state.redis_required { "true" } else { "false" }),
            ],
            1.0,
        );
        w.single(
            "realtime_redis_connected",
            "gauge",
            "1 while the Redis subscription is up (0 in memory mode).",
            f(self.state.redis_connected),
        );
        w.single(
            "realtime_redis_reconnects_total",
            "counter",
            "Times the Redis subscription was restored after a loss.",
            self.redis_reconnects as f64,
        );

        let name = "realtime_publish_to_send_seconds";
        w.family(name, "histogram", "Age of the oldest event in each batch a connection flushed to its socket, from the moment the event entered this process (publish call, or arrival from Redis) to the moment the flush completed. One observation per flushed batch.");
        let bucket = format!("{name}_bucket");
        for (le, n) in LATENCY_BUCKETS.iter().zip(&self.latency.cumulative) {
            w.sample(&bucket, &[("le", &format_float(*le))], *n as f64);
        }
        w.sample(&bucket, &[("le", "+Inf")], self.latency.count() as f64);
        w.sample(&format!("{name}_sum"), &[], self.latency.sum_seconds);
        w.sample(&format!("{name}_count"), &[], self.latency.count() as f64);

        w.single(
            "realtime_log_records_dropped_total",
            "counter",
            "Log records not delivered to the JS logger hook because its queue was full.",
            self.log_records_dropped as f64,
        );
        out
    }
}

struct Writer<'a> {
    out: &'a mut String,
}

impl Writer<'_> {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ =
            writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_float(value));
    }
}

fn f(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prometheus floats: integers without a fraction, others as Rust prints them (never exponent).
fn format_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            draining: false,
            ws_path: "/ws".into(),
            bus_mode: "memory",
            redis_configured: false,
            redis_required: false,
            redis_connected: false,
            publish_queued: 0,
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), 17);
        assert_eq!(s.cumulative[0], 2, "<= 100 µs, bound included");
        assert_eq!(s.cumulative[5], 3, "<= 5 ms");
        assert_eq!(s.cumulative[15], 3, "<= 10 s");
        assert_eq!(s.count(), 4);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert!((s.sum_seconds - 60.00315).abs() < 1e-9);
    }

    #[test]
    fn health_follows_the_state() {
        let m = ServerMetrics::default();
        let b = BusMetrics::default();
        let health = |st: State| Snapshot::collect(&m, &b, st).health;
        assert_eq!(health(state()), Health::Ok);
        assert_eq!(health(State { draining: true, ..state() }), Health::Draining);
        let redis = State { bus_mode: "redis", redis_configured: true, ..state() };
        assert_eq!(health(State { redis_connected: true, ..redis.clone() }), Health::Ok);
        assert_eq!(health(redis.clone()), Health::Degraded);
        assert_eq!(
            health(State { redis_required: true, ..redis.clone() }),
            Health::RedisUnavailable
        );
        assert_eq!(health(State { bus_mode: "memory", ..redis }), Health::Degraded, "fell back");
        assert_eq!(Health::Draining.http_status(), 503);
        assert_eq!(Health::Degraded.http_status(), 200);
        let body = Snapshot::collect(&m, &b, state()).health_json();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(body.starts_with(r#"{"status":"ok","#));
        assert_eq!(v["redis"]["configured"], false);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn refusals_count_known_and_unknown_codes() {
        let m = ServerMetrics::default();
        m.refused("TOKEN_EXPIRED");
        m.refused("TOKEN_EXPIRED");
        m.refused("SOMETHING_NEW");
        let counts = m.refusal_counts();
        assert!(counts.contains(&("TOKEN_EXPIRED", 2)));
        assert!(counts.contains(&("TOKEN_MISSING", 0)));
        assert!(counts.contains(&("SOMETHING_NEW", 1)));
        assert_eq!(m.refused_total(), 3);
    }

    #[test]
    fn prometheus_text_has_help_type_and_escaped_labels() {
        let m = ServerMetrics::default();
        m.connection_opened();
        m.batch_sent(3, 150, now_us());
        m.refused("WEIRD\"CODE");
        let text = Snapshot::collect(&m, &BusMetrics::default(), state()).prometheus();
        assert!(
            text.contains("# TYPE realtime_connections_open gauge\nrealtime_connections_open 1\n")
        );
        assert!(text.contains("realtime_deliveries_total 3\n"));
        assert!(text.contains("realtime_bytes_sent_total 150\n"));
        assert!(text.contains(r#"realtime_refusals_total{reason="WEIRD\"CODE"} 1"#));
        assert!(text.contains("realtime_publish_to_send_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("realtime_publish_to_send_seconds_bucket{le=\"0.0001\"}"));
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            assert!(!line.is_empty());
            if !line.starts_with('#') {
                let value = line.rsplit(' ').next().unwrap();
                assert!(
                    value.parse::<f64>().is_ok() && !value.contains('e'),
                    "plain number: {line}"
                );
            }
        }
    }

    /// What counting costs a connection per flush, with two threads hammering the same counters
    /// (the worst case of the 2-core machine): `cargo test --release --no-default-features --lib
    /// -- --ignored --nocapture cost_per_flush`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_per_flush() {
        let m = std::sync::Arc::new(ServerMetrics::default());
        let n = 5_000_000u32;
        let started = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let stamp = now_us();
                    for i in 0..n {
                        m.batch_sent(1 + u64::from(i % 8), 60, stamp);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let per = started.elapsed().as_nanos() as f64 / f64::from(n);
        eprintln!("batch_sent: {per:.1} ns per flush per thread (2 threads contending)");
        let single = Instant::now();
        let stamp = now_us();
        for i in 0..n {
            m.batch_sent(1 + u64::from(i % 8), 60, stamp);
        }
        let per1 = single.elapsed().as_nanos() as f64 / f64::from(n);
        eprintln!("batch_sent: {per1:.1} ns per flush (one thread)");
        let clock = Instant::now();
        let mut x = 0u32;
        for _ in 0..n {
            x = x.wrapping_add(now_us());
        }
        let per_clock = clock.elapsed().as_nanos() as f64 / f64::from(n);
        eprintln!("now_us: {per_clock:.1} ns (of which the clock read) [{x}]");
    }

    #[test]
    fn frame_lengths_include_the_header() {
        assert_eq!(ws_frame_len(10), 12);
        assert_eq!(ws_frame_len(125), 127);
        assert_eq!(ws_frame_len(126), 130);
        assert_eq!(ws_frame_len(70_000), 70_010);
    }
}
