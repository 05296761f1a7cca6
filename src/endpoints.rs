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

use crate::config::ServerConfig;
use crate::http::{self, RequestHead};
use crate::metrics::Snapshot;

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

/// The complete response for an operations request, or `None` for anything else (the WebSocket
/// path, unknown paths). `snapshot` is called only when figures are needed.
pub(crate) fn answer(
    head: &RequestHead,
    config: &ServerConfig,
    snapshot: impl FnOnce() -> Snapshot,
) -> Option<Vec<u8>> {
    let route = route(&head.path, config)?;
    let head_only = match head.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Some(http::json_response(
                405,
                "METHOD_NOT_ALLOWED",
                "Only GET and HEAD are allowed here",
                &[("Allow", "GET, HEAD")],
            ))
        }
    };
    Some(match route {
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
    })
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
    fn the_dashboard_is_self_contained() {
        let html = DASHBOARD_HTML.to_ascii_lowercase();
        assert!(html.starts_with("<!doctype html>"));
        for external in ["http://", "https://", "//cdn", "src=\"/", "href=\"/"] {
            assert!(!html.contains(external), "the page must not load {external}");
        }
    }
}
