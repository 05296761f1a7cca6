//! Configuration of the server and the bus, with the defaults the README documents.

use std::time::Duration;

pub const DEFAULT_PORT: u16 = 3006;
pub const DEFAULT_HOST: &str = "0.0.0.0";
pub const DEFAULT_PATH: &str = "/ws";
pub const DEFAULT_CHANNEL: &str = "parcel_events";

/// Everything `Server::start` needs. Build it with `ServerConfig::new(secret)` and adjust fields.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// The WebSocket path; every other path answers 404.
    pub path: String,
    /// HS256 secret shared with the Auth module.
    pub jwt_secret: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// Optional audience, issuer and exp checks of every token (at connect and on refresh).
    pub jwt_checks: crate::auth::TokenChecks,
    /// Largest inbound message (clients only send small control messages). Larger: close 1009.
    pub max_message_bytes: usize,
    /// Time a client has to send its HTTP upgrade request (and `validateUser` to answer).
    pub handshake_timeout: Duration,
    /// Time a write to a client may take before the client is considered stuck and cut.
    pub send_timeout: Duration,
    /// Time a write may stay blocked while publishers wait for this client, before it is cut
    /// with 1013 (so one stalled client cannot pause everyone for long).
    pub stall_timeout: Duration,
    /// Silence after which the server pings a client; `None` turns heartbeats off.
    pub ping_interval: Option<Duration>,
    /// Time a client has to answer a ping (any frame counts) before it is closed (4408).
    pub pong_timeout: Duration,
    /// Browser origins allowed to connect (`scheme://host[:port]`); `None`: any, an empty list:
    /// none. Requests without an `Origin` header (servers, CLIs) are judged by their token alone.
    pub allowed_origins: Option<Vec<String>>,
    /// Host names (beyond IP literals, `localhost` and single-label names) the operations
    /// endpoints answer to: exact (`realtime.internal`), a suffix (`.svc.cluster.local`) or `*`
    /// (any). Another `Host` gets 403, so a page on a rebinding DNS name cannot read them.
    pub allowed_hosts: Vec<String>,
    /// When set, the operations endpoints need it (`Authorization: Bearer …` or `?ops_token=`),
    /// whatever the `Host`; without it: 401.
    pub ops_token: Option<String>,
    /// Most connections at once in this server, counted from `accept` (handshakes included);
    /// `None`: the open-file limit minus headroom (see [`Limits`]); `Some(0)`: no limit (the
    /// open-file bound still applies). Over it: HTTP 503.
    pub max_connections: Option<usize>,
    /// Most connections at once from one IP address, counted from `accept`; `None`:
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IP`]; `Some(0)`: no limit (behind a proxy that hides
    /// client addresses). Over it: HTTP 429.
    pub max_connections_per_ip: Option<usize>,
    /// Handshakes in progress at once (request head, token, `validateUser`); `None`: half of
    /// the connection limit, at least 128. Over it: HTTP 503.
    pub max_handshakes: Option<usize>,
    /// Handshakes in progress at once from one IP address; `None`:
    /// [`DEFAULT_MAX_HANDSHAKES_PER_IP`]; `Some(0)`: no limit. Over it: HTTP 429.
    pub max_handshakes_per_ip: Option<usize>,
    /// Time a client has to send its request head (shorter than `handshake_timeout`, which
    /// also covers `validateUser`). Over it: HTTP 408.
    pub head_timeout: Duration,
    /// Most parcel ids one connection may follow.
    pub max_subscriptions: usize,
    /// Inbound messages a client may send per second (sustained; 0: no limit) and in a burst;
    /// over: 4429.
    pub messages_per_second: f64,
    pub message_burst: f64,
    /// Serve the live dashboard at `GET /` and its data at `GET /stats`. `/health` and
    /// `/metrics` are always served.
    pub dashboard: bool,
}

impl ServerConfig {
    pub fn new(jwt_secret: impl Into<String>) -> Self {
        Self {
            host: DEFAULT_HOST.to_string(),
            port: DEFAULT_PORT,
            path: DEFAULT_PATH.to_string(),
            jwt_secret: jwt_secret.into(),
            jwt_leeway: Duration::from_secs(5),
            jwt_checks: crate::auth::TokenChecks::default(),
            max_message_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_millis(500),
            ping_interval: Some(Duration::from_secs(25)),
            pong_timeout: Duration::from_secs(10),
            allowed_origins: None,
            allowed_hosts: Vec::new(),
            ops_token: None,
            max_connections: None,
            max_connections_per_ip: None,
            max_handshakes: None,
            max_handshakes_per_ip: None,
            head_timeout: Duration::from_secs(3),
            max_subscriptions: 1000,
            messages_per_second: 20.0,
            message_burst: 40.0,
            dashboard: true,
        }
    }
}

/// Connections one IP address may hold by default (`maxConnectionsPerIp`).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Handshakes one IP address may have in progress by default (`maxHandshakesPerIp`).
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 32;

/// The connection limits in force, resolved from [`ServerConfig`] and the process's open-file
/// limit. 0 means "no limit" for each, except `fd_cap`, always on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    /// Connections the open-file limit leaves room for (`RLIMIT_NOFILE` minus headroom for the
    /// listener, Redis, logs and the Node process): beyond it, a connection is refused at once
    /// (503) instead of `accept` failing with EMFILE while clients wait in the backlog.
    pub fd_cap: usize,
}

impl Limits {
    pub fn resolve(config: &ServerConfig, nofile: usize) -> Limits {
        let headroom = (nofile / 10).max(64);
        let fd_cap = nofile.saturating_sub(headroom).max(16);
        let max_connections = match config.max_connections {
            None => fd_cap,
            Some(n) => n,
        };
        let bound = if max_connections == 0 { fd_cap } else { max_connections.min(fd_cap) };
        Limits {
            max_connections,
            max_connections_per_ip: config
                .max_connections_per_ip
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP),
            max_handshakes: config.max_handshakes.unwrap_or((bound / 2).max(128).min(bound)),
            max_handshakes_per_ip: config
                .max_handshakes_per_ip
                .unwrap_or(DEFAULT_MAX_HANDSHAKES_PER_IP),
            fd_cap,
        }
    }
}

/// The process's soft open-file limit (`RLIMIT_NOFILE`); 1,024 if it cannot be read.
pub fn open_file_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return if ok { 1 << 20 } else { 1024 };
    }
    (limit.rlim_cur as usize).min(1 << 24)
}

/// How events travel between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// `redis://…`; `None` runs the in-memory bus (one process).
    pub redis_url: Option<String>,
    /// TLS settings for a `rediss://` URL (`None`: the system roots, no client certificate).
    pub redis_tls: Option<RedisTls>,
    /// The Redis pub/sub channel.
    pub channel: String,
    /// With Redis configured but unreachable at start: `true` fails, `false` falls back to the
    /// in-memory bus with a warning (the original design's behaviour).
    pub redis_required: bool,
    /// Size of the fan-out ring, in events. Publishing pauses while the slowest connection is
    /// half of it behind; a connection that stays there because it reads nothing is cut (1013).
    pub fanout_capacity: usize,
    /// Publishes waiting for the bus before `publish` rejects with `ERR_PUBLISH_QUEUE_FULL`.
    /// In Redis mode this is also the buffer that holds publishes while Redis is unreachable.
    pub publish_queue: usize,
    /// How much history to keep for clients that resume (`max_events: 0` turns it off).
    pub history: crate::history::Retention,
    /// How the inboxes of users without a connection are bounded (memory mode).
    pub inbox: crate::inbox::InboxLimits,
    /// `redisWaitReplicas`: replicas that must acknowledge each batch before its publishes
    /// resolve (`WAIT`); 0 waits for none.
    pub redis_wait_replicas: u32,
    /// `redisWaitTimeoutMs`: how long `WAIT` may take before the publishes reject with
    /// `ERR_REDIS_REPLICATION`.
    pub redis_wait_timeout: std::time::Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_tls: None,
            channel: DEFAULT_CHANNEL.to_string(),
            redis_required: false,
            fanout_capacity: 4096,
            publish_queue: 65_536,
            history: crate::history::Retention::default(),
            inbox: crate::inbox::InboxLimits::default(),
            redis_wait_replicas: 0,
            redis_wait_timeout: std::time::Duration::from_millis(1000),
        }
    }
}

/// TLS to Redis (`rediss://`), PEM text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    /// The CA(s) that signed the server's certificate; `None`: the system roots.
    pub ca: Option<String>,
    /// A client certificate and its key, for mutual TLS.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// `false` accepts any server certificate (tests only: it defeats TLS's purpose).
    pub reject_unauthorized: bool,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("reject_unauthorized", &self.reject_unauthorized)
            .finish()
    }
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`, for logs (a
/// `sentinelPassword` in the query too).
pub fn redact_url(url: &str) -> String {
    if let Some((base, query)) = url.split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        return format!("{}?{}", redact_url(base), query.join("&"));
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            if creds.contains(':') {
                format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
            } else {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(
            redact_url("redis+sentinel://u:pw@a:1,b:2/m?sentinelPassword=s&x=1"),
            "redis+sentinel://u:***@a:1,b:2/m?sentinelPassword=***&x=1"
        );
    }
}
