//! Counters for operators. Their renderings (Prometheus text for `GET /metrics`, JSON for
//! `GET /stats` and `server.stats()` in JS, the `/health` body) are in `snapshot.rs`.
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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::clock::elapsed_us;
use crate::protocol::{Disconnect, Refusal};

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

mod snapshot;

pub use snapshot::{Health, Snapshot, Status};

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

/// The counters of one server.
#[derive(Debug)]
pub struct ServerMetrics {
    started: Instant,
    clients: AtomicUsize,
    connections_total: AtomicU64,
    /// By [`Disconnect`], in table order.
    closed: [AtomicU64; Disconnect::ALL.len()],
    refused_total: AtomicU64,
    /// By code, in the order of [`Refusal::codes`] (which `refusal_codes` holds).
    refusals: Vec<AtomicU64>,
    refusal_codes: Vec<&'static str>,
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
            refusals: Refusal::codes().iter().map(|_| AtomicU64::new(0)).collect(),
            refusal_codes: Refusal::codes(),
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

    pub(crate) fn connection_closed(&self, why: Disconnect, dropped_events: u64) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
        if dropped_events > 0 {
            self.dropped.fetch_add(dropped_events, Ordering::Relaxed);
        }
    }

    pub(crate) fn refused(&self, refusal: Refusal) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = self.refusal_codes.iter().position(|&c| c == refusal.code()) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One flushed batch: `frames` event frames, `bytes` on the wire, the oldest of which entered
    /// the process at `oldest` (a [`crate::clock::now_us`] stamp).
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
        let counts = self.refusals.iter().map(|n| n.load(Ordering::Relaxed));
        self.refusal_codes.iter().copied().zip(counts).collect()
    }

    /// Connections ended, by metric label (disconnects that share a label are added up).
    fn closed_counts(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> =
            Disconnect::metric_labels().into_iter().map(|l| (l, 0)).collect();
        for (&why, n) in Disconnect::ALL.iter().zip(&self.closed) {
            if let Some(entry) = out.iter_mut().find(|(l, _)| *l == why.metric_label()) {
                entry.1 += n.load(Ordering::Relaxed);
            }
        }
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
    /// The Redis master in use now (`host:port`; in a cluster, the master of the channel's slot).
    redis_master: std::sync::Mutex<String>,
    /// Times the bus saw the master change (Sentinel or Cluster failovers).
    redis_failovers: AtomicU64,
    /// `redisWaitReplicas`: batches waited for, the time spent waiting, and batches that fewer
    /// replicas than asked acknowledged in time.
    replication_waits: AtomicU64,
    replication_wait_ns: AtomicU64,
    replication_failures: AtomicU64,
}

/// What [`BusMetrics::redis`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisFigures {
    pub master: String,
    pub failovers: u64,
    pub replication_waits: u64,
    pub replication_wait_seconds: f64,
    pub replication_failures: u64,
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
    pub(crate) fn set_redis_master(&self, master: &str, failovers: u64) {
        *self.redis_master.lock().unwrap_or_else(|e| e.into_inner()) = master.to_string();
        self.redis_failovers.store(failovers, Ordering::Relaxed);
    }
    pub(crate) fn replication_waited(&self, d: Duration, enough: bool) {
        self.replication_waits.fetch_add(1, Ordering::Relaxed);
        self.replication_wait_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        if !enough {
            self.replication_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// The Redis master, failovers seen and the replication wait.
    pub fn redis(&self) -> RedisFigures {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisFigures {
            master: self.redis_master.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            failovers: load(&self.redis_failovers),
            replication_waits: load(&self.replication_waits),
            replication_wait_seconds: load(&self.replication_wait_ns) as f64 / 1e9,
            replication_failures: load(&self.replication_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::clock::now_us;
    use crate::protocol::Refused;

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
    fn refusals_and_closes_count_every_code_of_the_tables() {
        let m = ServerMetrics::default();
        m.refused(AuthError::Expired.into());
        m.refused(AuthError::Expired.into());
        m.refused(Refused::Malformed.into());
        m.refused(Refused::MissingKey.into());
        let counts = m.refusal_counts();
        assert!(counts.contains(&("TOKEN_EXPIRED", 2)));
        assert!(counts.contains(&("TOKEN_MISSING", 0)));
        assert!(counts.contains(&("BAD_REQUEST", 2)), "two refusals share one code");
        assert_eq!(m.refused_total(), 4);
        for _ in 0..2 {
            m.connection_opened();
        }
        m.connection_closed(Disconnect::RefreshRefused, 0);
        m.connection_closed(Disconnect::RefreshOtherUser, 0);
        let closed = m.closed_counts();
        assert!(closed.contains(&("refresh_refused", 2)));
        assert!(closed.contains(&("client", 0)));
        assert!(
            snapshot::closed_help().contains("too_slow (1013)")
                && snapshot::closed_help().contains("stuck, ")
        );
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
