//! The operations endpoints, answered on the WebSocket port before the WebSocket path check:
//!
//! | path | what |
//! | --- | --- |
//! | `GET /health` | JSON status for load balancers and readiness probes: 200 when the server can take clients, 503 when it cannot (draining, or `redisRequired` with Redis down) |
//! | `GET /ready` | JSON readiness for orchestrators: 200 when this instance should get clients, 503 while draining or while a configured Redis is not in use (the bus fell back to memory at start and is still retrying) |
//! | `GET /metrics` | Prometheus text exposition (format 0.0.4) |
//! | `GET /stats` | the same figures as JSON (what `server.stats()` returns); dashboard only |
//! | `GET /` | the live dashboard, one self-contained page (`dashboard.html`); dashboard only |
//!
//! `HEAD` works on each; other methods get 405. The configured WebSocket path always wins: with
//! `path: '/'` the dashboard is not served. Every answer is `Connection: close`.
//!
//! They carry no authentication of their own, so they answer only under a `Host` that names this
//! server: an IP literal, `localhost`, a single-label name (`realtime`, as containers call each
//! other) or one of `allowedHosts`. A page that a browser loaded from an attacker's name which
//! later resolves to this server (DNS rebinding) sends its own name as `Host` and gets 403. With
//! `opsToken` set, the token is what counts, whatever the `Host`.

use crate::config::ServerConfig;
use crate::http::{self, RequestHead};
use crate::metrics::Snapshot;
use crate::protocol::Refused;

/// The dashboard page, compiled into the addon (no CDN, no other file).
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Metrics,
    Stats,
    Dashboard,
}

fn route(path: &str, config: &ServerConfig) -> Option<Route> {
    if path == config.path {
        return None;
    }
    match path {
        "/health" => Some(Route::Health),
        "/ready" => Some(Route::Ready),
        "/metrics" => Some(Route::Metrics),
        "/stats" if config.dashboard => Some(Route::Stats),
        "/" if config.dashboard => Some(Route::Dashboard),
        _ => None,
    }
}

/// Whether `host` (a `Host` header's value, port included) names this server; see the module
/// comment.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    // "[::1]:3006", "[::1]", "127.0.0.1:3006", "name:3006", "name."
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || (!name.is_empty() && !name.contains('.') && !name.contains(':'))
    {
        return true;
    }
    allowed.iter().any(|a| {
        let a = a.trim().trim_end_matches('.').to_ascii_lowercase();
        a == "*" || a == name || (a.starts_with('.') && name.ends_with(&a))
    })
}

/// Equal without telling, by its timing, how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request may read the operations endpoints: the `opsToken` when one is set,
/// else a `Host` that names this server.
fn guard(head: &RequestHead, config: &ServerConfig) -> Result<(), Refused> {
    if let Some(token) = &config.ops_token {
        let bearer = head
            .header("authorization")
            .and_then(|v| v.trim().strip_prefix("Bearer ").map(str::trim));
        let query = head
            .query
            .as_deref()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("ops_token=")));
        let query =
            query.map(|q| percent_encoding::percent_decode_str(q).decode_utf8_lossy().into_owned());
        let given = bearer.map(str::to_string).or(query);
        return match given {
            Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => Ok(()),
            _ => Err(Refused::OpsTokenRequired),
        };
    }
    match head.header("host") {
        Some(host) if !host_allowed(host, &config.allowed_hosts) => Err(Refused::HostNotAllowed),
        _ => Ok(()),
    }
}

/// The complete response for an operations request (or its refusal), or `None` for anything
/// else (the WebSocket path, unknown paths). `snapshot` is called only when figures are needed.
pub(crate) fn answer(
    head: &RequestHead,
    config: &ServerConfig,
    snapshot: impl FnOnce() -> Snapshot,
) -> Option<Result<Vec<u8>, Refused>> {
    let route = route(&head.path, config)?;
    if let Err(refused) = guard(head, config) {
        return Some(Err(refused));
    }
    let head_only = match head.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Some(Ok(http::json_response(
                405,
                "METHOD_NOT_ALLOWED",
                "Only GET and HEAD are allowed here",
                &[("Allow", "GET, HEAD")],
            )))
        }
    };
    Some(Ok(match route {
        Route::Health => {
            let snap = snapshot();
            http::response(
                snap.health.http_status(),
                "application/json",
                snap.health_json().as_bytes(),
                &[],
                head_only,
            )
        }
        Route::Ready => {
            let status = snapshot().status;
            let ready = !status.draining
                && status.bus_mode != "failed"
                && (!status.redis_configured || status.bus_mode == "redis");
            let body = format!(
                r#"{{"ready":{ready},"bus":"{}","redisConfigured":{},"draining":{}}}"#,
                status.bus_mode, status.redis_configured, status.draining
            );
            http::response(
                if ready { 200 } else { 503 },
                "application/json",
                body.as_bytes(),
                &[],
                head_only,
            )
        }
        Route::Metrics => http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            snapshot().prometheus().as_bytes(),
            &[],
            head_only,
        ),
        Route::Stats => http::response(
            200,
            "application/json",
            snapshot().stats_json().as_bytes(),
            &[],
            head_only,
        ),
        Route::Dashboard => http::response(
            200,
            "text/html; charset=utf-8",
            DASHBOARD_HTML.as_bytes(),
            &[
                ("Content-Security-Policy", DASHBOARD_CSP),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
            ],
            head_only,
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_leave_the_websocket_path_alone() {
        let mut config = ServerConfig::new("s");
        assert_eq!(route("/health", &config), Some(Route::Health));
        assert_eq!(route("/ready", &config), Some(Route::Ready));
        assert_eq!(route("/", &config), Some(Route::Dashboard));
        assert_eq!(route("/ws", &config), None);
        assert_eq!(route("/other", &config), None);
        config.dashboard = false;
        assert_eq!(route("/", &config), None);
        assert_eq!(route("/stats", &config), None);
        assert_eq!(route("/metrics", &config), Some(Route::Metrics));
        config.path = "/health".into();
        assert_eq!(route("/health", &config), None, "the WebSocket path wins");
    }

    #[test]
    fn hosts_that_name_this_server() {
        let extra = vec!["realtime.internal".to_string(), ".svc.cluster.local".to_string()];
        for ok in [
            "127.0.0.1:3006",
            "127.0.0.1",
            "[::1]:3006",
            "[::1]",
            "localhost:3006",
            "LOCALHOST",
            "app.localhost",
            "realtime:3006",
            "realtime.internal:80",
            "rt.default.svc.cluster.local:3006",
            "10.0.0.7",
        ] {
            assert!(host_allowed(ok, &extra), "{ok}");
        }
        for bad in [
            "rebound.example:3006",
            "evil.com",
            "[nope]",
            "realtime.internal.evil.com",
            "svc.cluster.local.x",
        ] {
            assert!(!host_allowed(bad, &extra), "{bad}");
        }
        assert!(host_allowed("anything.example", &["*".to_string()]));
        assert!(
            same_secret(b"abc", b"abc")
                && !same_secret(b"abc", b"abd")
                && !same_secret(b"a", b"ab")
        );
    }

    #[test]
    fn the_dashboard_is_self_contained() {
        let html = DASHBOARD_HTML.to_ascii_lowercase();
        assert!(html.starts_with("<!doctype html>"));
        for external in ["http://", "https://", "//cdn", "src=\"/", "href=\"/"] {
            assert!(!html.contains(external), "the page must not load {external}");
        }
    }
}
