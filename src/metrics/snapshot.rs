//! Every figure at one moment ([`Snapshot`]) and its renderings: Prometheus text (`GET
//! /metrics`), JSON (`GET /stats`, `server.stats()` in JS) and the `/health` body.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{BusMetrics, HistogramSnapshot, ServerMetrics, LATENCY_BUCKETS};
use crate::protocol::Disconnect;

/// The help text of `realtime_connections_closed_total`, from the [`Disconnect`] table.
pub(super) fn closed_help() -> String {
    let mut reasons: Vec<String> = Vec::new();
    for d in Disconnect::ALL {
        let text = match d.close_code() {
            Some(code) => format!("{} ({code})", d.metric_label()),
            None => d.metric_label().to_string(),
        };
        if !reasons.iter().any(|r| r.starts_with(d.metric_label())) {
            reasons.push(text);
        }
    }
    format!("WebSocket connections ended, by reason: {}.", reasons.join(", "))
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
    pub status: Status,
    pub redis_reconnects: u64,
    /// The Redis master now, failovers seen, the replication wait (`redisWaitReplicas`).
    pub redis: super::RedisFigures,
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
pub struct Status {
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
    pub fn collect(server: &ServerMetrics, bus: &BusMetrics, status: Status) -> Snapshot {
        let health = if status.draining {
            Health::Draining
        } else if status.bus_mode == "failed" {
            Health::BusFailed
        } else if status.redis_configured && !(status.bus_mode == "redis" && status.redis_connected)
        {
            if status.redis_required {
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
            status,
            redis_reconnects: load(&bus.redis_reconnects),
            redis: bus.redis(),
            clients: server.clients() as u64,
            connections_total: server.connections_total(),
            closed: server.closed_counts(),
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
            self.status.bus_mode,
            self.status.redis_configured,
            self.status.redis_required,
            self.status.redis_connected,
            self.clients,
            round3(self.uptime.as_secs_f64()),
            self.version,
            self.status.draining,
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
            "draining": self.status.draining,
            "uptimeSeconds": round3(self.uptime.as_secs_f64()),
            "wsPath": self.status.ws_path,
            "bus": {
                "mode": self.status.bus_mode,
                "redisConfigured": self.status.redis_configured,
                "redisRequired": self.status.redis_required,
                "redisConnected": self.status.redis_connected,
                "redisReconnects": self.redis_reconnects,
                "redisMaster": self.redis.master,
                "redisFailovers": self.redis.failovers,
                "replicationWaits": self.redis.replication_waits,
                "replicationWaitSeconds": self.redis.replication_wait_seconds,
                "replicationFailures": self.redis.replication_failures,
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
                "publishQueued": self.status.publish_queued,
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
            f(self.status.draining),
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
        w.family("realtime_connections_closed_total", "counter", &closed_help());
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
        w.single("realtime_publish_queue", "gauge", "Publishes accepted and not yet taken by the bus (in Redis mode: held while Redis is unreachable, sent in order once it is back).", self.status.publish_queued as f64);
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
                ("mode", self.status.bus_mode),
                ("redis_required", if self.status.redis_required { "true" } else { "false" }),
            ],
            1.0,
        );
        w.single(
            "realtime_redis_connected",
            "gauge",
            "1 while the Redis subscription is up (0 in memory mode).",
            f(self.status.redis_connected),
        );
        w.single(
            "realtime_redis_reconnects_total",
            "counter",
            "Times the Redis subscription was restored after a loss.",
            self.redis_reconnects as f64,
        );
        w.family(
            "realtime_redis_master_info",
            "gauge",
            "The Redis master in use (host:port; in a cluster, the master of the channel's hash slot): 1; address \"\" and 0 while none (memory mode).",
        );
        let master = self.redis.master.as_str();
        w.sample("realtime_redis_master_info", &[("address", master)], f(!master.is_empty()));
        w.single(
            "realtime_redis_failovers_total",
            "counter",
            "Times the bus saw the Redis master change (Sentinel or Cluster failover).",
            self.redis.failovers as f64,
        );
        w.single(
            "realtime_redis_replication_waits_total",
            "counter",
            "Publish batches that waited for redisWaitReplicas replicas (WAIT).",
            self.redis.replication_waits as f64,
        );
        w.single(
            "realtime_redis_replication_wait_seconds_total",
            "counter",
            "Time spent in WAIT for redisWaitReplicas (divide by the waits for the mean).",
            self.redis.replication_wait_seconds,
        );
        w.single(
            "realtime_redis_replication_failures_total",
            "counter",
            "Batches fewer replicas than redisWaitReplicas acknowledged in time (their publishes rejected with ERR_REDIS_REPLICATION).",
            self.redis.replication_failures as f64,
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
    use crate::clock::now_us;

    fn status() -> Status {
        Status {
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
    fn health_follows_the_state() {
        let m = ServerMetrics::default();
        let b = BusMetrics::default();
        let health = |st: Status| Snapshot::collect(&m, &b, st).health;
        assert_eq!(health(status()), Health::Ok);
        assert_eq!(health(Status { draining: true, ..status() }), Health::Draining);
        let redis = Status { bus_mode: "redis", redis_configured: true, ..status() };
        assert_eq!(health(Status { redis_connected: true, ..redis.clone() }), Health::Ok);
        assert_eq!(health(redis.clone()), Health::Degraded);
        assert_eq!(
            health(Status { redis_required: true, ..redis.clone() }),
            Health::RedisUnavailable
        );
        assert_eq!(health(Status { bus_mode: "memory", ..redis }), Health::Degraded, "fell back");
        assert_eq!(Health::Draining.http_status(), 503);
        assert_eq!(Health::Degraded.http_status(), 200);
        let body = Snapshot::collect(&m, &b, status()).health_json();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(body.starts_with(r#"{"status":"ok","#));
        assert_eq!(v["redis"]["configured"], false);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn prometheus_text_has_help_type_and_escaped_labels() {
        let m = ServerMetrics::default();
        m.connection_opened();
        m.batch_sent(3, 150, now_us());

        let text = Snapshot::collect(&m, &BusMetrics::default(), status()).prometheus();
        assert!(
            text.contains("# TYPE realtime_connections_open gauge\nrealtime_connections_open 1\n")
        );
        assert!(text.contains("realtime_deliveries_total 3\n"));
        assert!(text.contains("realtime_bytes_sent_total 150\n"));
        let mut labels = String::new();
        Writer { out: &mut labels }.sample("x", &[("reason", "WEIRD\"CODE")], 1.0);
        assert_eq!(labels, "x{reason=\"WEIRD\\\"CODE\"} 1\n");
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
}
