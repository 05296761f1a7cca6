//! The engine end to end, without Node: a real server, real WebSocket clients, the memory bus.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use realtime_events::{Bus, BusConfig, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "engine-test-secret";
const WELCOME: &str = r#"{"type":"connected","message":"WebSocket connection established"}"#;

fn token(sub: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "sub": sub }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn start(bus_config: BusConfig) -> (Server, Arc<Bus>) {
    let bus = Bus::start(bus_config);
    bus.ready().await.unwrap();
    let mut config = ServerConfig::new(SECRET);
    config.host = "127.0.0.1".into();
    config.port = 0;
    config.send_timeout = Duration::from_secs(2);
    let server = Server::start(config, bus.clone(), None).await.unwrap();
    (server, bus)
}

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(server: &Server) -> Client {
    let url = format!("ws://{}/ws?token={}", server.local_addr(), token("u1"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(next_text(&mut ws).await, WELCOME);
    ws
}

/// The next text frame, without its trailing `"offset"` field (asserted by the resume tests).
async fn next_text(ws: &mut Client) -> String {
    let text = next_raw(ws).await;
    match text.rfind(r#","offset":""#) {
        Some(at) if text.ends_with("\"}") => format!("{}}}", &text[..at]),
        _ => text,
    }
}

async fn next_raw(ws: &mut Client) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn frame(id: &str) -> String {
    format!(r#"{{"type":"parcel_updated","parcel_id":{}}}"#, serde_json::to_string(id).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_every_event_in_order() {
    let (server, bus) = start(BusConfig::default()).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(&server).await);
    }
    assert_eq!(server.metrics().clients(), 10);
    let ids: Vec<String> = (0..500).map(|i| format!("p{i}")).collect();
    let acks: Vec<_> = ids.iter().map(|id| bus.publish(id).unwrap()).collect();
    for ack in acks {
        ack.await.unwrap().unwrap();
    }
    for ws in &mut clients {
        for id in &ids {
            assert_eq!(next_text(ws).await, frame(id));
        }
    }
    server.close(Duration::from_secs(5)).await;
}

/// Publishing far faster than clients read is paced by the bus (publish acks come later), never
/// paid for with lost events or cut clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_much_larger_than_the_ring_is_paced_not_lost() {
    let (server, bus) = start(BusConfig { fanout_capacity: 16, ..BusConfig::default() }).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&server).await);
    }
    let total = 5_000;
    let acks: Vec<_> = (0..total).map(|i| bus.publish(&format!("burst{i}")).unwrap()).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                for i in 0..total {
                    assert_eq!(next_text(&mut ws).await, frame(&format!("burst{i}")));
                }
                ws
            })
        })
        .collect();
    for ack in acks {
        ack.await.unwrap().unwrap();
    }
    let mut clients = Vec::new();
    for reader in readers {
        clients.push(reader.await.unwrap());
    }
    assert_eq!(server.metrics().clients(), 5, "nobody was cut");
    server.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_says_1001_and_frees_the_port() {
    let (server, bus) = start(BusConfig::default()).await;
    let addr = server.local_addr();
    let mut ws = connect(&server).await;
    server.close(Duration::from_secs(5)).await;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let mut config = ServerConfig::new(SECRET);
    config.host = addr.ip().to_string();
    config.port = addr.port();
    let again = Server::start(config, bus, None).await.expect("port is free after close()");
    again.close(Duration::from_secs(1)).await;
}

/// A client that never reads is cut (1013 or a write timeout) while a healthy one receives
/// every event: a slow reader never holds the others back nor grows a queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_and_others_are_unharmed() {
    let config = BusConfig { fanout_capacity: 64, ..BusConfig::default() };
    let (server, bus) = start(config).await;
    let mut healthy = connect(&server).await;

    // The stalled client: completes the upgrade by hand, then never reads again.
    let mut stalled = TcpStream::connect(server.local_addr()).await.unwrap();
    let req = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("slow")
    );
    stalled.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 12];
    stalled.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.metrics().clients() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();

    // Enough bytes to fill the kernel's socket buffers many times over. The publisher never runs
    // more than 32 events ahead of the healthy reader, so only the stalled client can lag.
    let long = "x".repeat(200);
    let total = 60_000usize;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let long = long.clone();
        let received = received.clone();
        async move {
            for i in 0..total {
                assert_eq!(next_text(&mut healthy).await, frame(&format!("{long}{i}")));
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            healthy
        }
    });
    for i in 0..total {
        while i >= received.load(std::sync::atomic::Ordering::Relaxed) + 32 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        bus.publish(&format!("{long}{i}")).unwrap();
    }
    let _healthy = tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while server.metrics().clients() > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled client is cut");
    // The metrics say why: one client cut for slowness (1013) or stuck, and what it missed.
    let snap = server.snapshot();
    let closed = |reason: &str| snap.closed.iter().find(|(r, _)| *r == reason).unwrap().1;
    assert_eq!(closed("too_slow") + closed("stuck"), 1, "{:?}", snap.closed);
    if closed("too_slow") == 1 {
        assert!(snap.dropped > 0, "a client cut with 1013 missed events");
    }
    drop(stalled);
    server.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_http_with_a_json_code() {
    let (server, _bus) = start(BusConfig::default()).await;
    let upgrade = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let cases = [
        (format!("GET /other HTTP/1.1\r\n{upgrade}\r\n"), "404", "NOT_FOUND"),
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), "426", "UPGRADE_REQUIRED"),
        (format!("GET /ws HTTP/1.1\r\n{upgrade}\r\n"), "401", "TOKEN_MISSING"),
        (format!("GET /ws?token=abc HTTP/1.1\r\n{upgrade}\r\n"), "401", "TOKEN_MALFORMED"),
        ("\x16\x03\x01\x02\x00garbage\r\n\r\n".to_string(), "400", "BAD_REQUEST"),
    ];
    for (request, status, code) in cases {
        let answer = ask(&server, &request).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{answer}");
    }
    // The server still serves after all that.
    let mut ws = connect(&server).await;
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, r#"{"type":"pong"}"#);
    server.close(Duration::from_secs(5)).await;
}

fn offset_of(raw: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(raw).unwrap();
    v["offset"].as_str().expect("an offset").to_string()
}

async fn connect_with(server: &Server, query: &str) -> Client {
    let url = format!("ws://{}/ws?token={}{query}", server.local_addr(), token("u1"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// A client that reconnects with `?since=` gets exactly what it missed, then the live stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_what_was_missed() {
    let (server, bus) = start(BusConfig::default()).await;
    let mut ws = connect(&server).await;
    for i in 0..5 {
        bus.publish_and_wait(realtime_events::Event::new(&format!("a{i}")).unwrap()).await.unwrap();
    }
    let mut last = String::new();
    for i in 0..5 {
        let raw = next_raw(&mut ws).await;
        assert!(raw.contains(&format!("\"a{i}\"")), "{raw}");
        last = offset_of(&raw);
    }
    drop(ws);
    for i in 0..3 {
        bus.publish_and_wait(realtime_events::Event::new(&format!("b{i}")).unwrap()).await.unwrap();
    }
    let mut ws = connect_with(&server, &format!("&since={last}")).await;
    let welcome = next_raw(&mut ws).await;
    assert!(welcome.starts_with(&WELCOME[..WELCOME.len() - 1]), "{welcome}");
    for i in 0..3 {
        assert_eq!(next_text(&mut ws).await, frame(&format!("b{i}")));
    }
    let resumed: serde_json::Value = serde_json::from_str(&next_raw(&mut ws).await).unwrap();
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["replayed"], 3);
    bus.publish_and_wait(realtime_events::Event::new("live").unwrap()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, frame("live"));

    // An offset from another history, or past what is kept: resync_required, then live.
    let mut ws = connect_with(&server, "&since=1-1").await;
    next_raw(&mut ws).await;
    let resync: serde_json::Value = serde_json::from_str(&next_raw(&mut ws).await).unwrap();
    assert_eq!(resync["type"], "resync_required");
    bus.publish_and_wait(realtime_events::Event::new("after").unwrap()).await.unwrap();
    assert_eq!(next_text(&mut ws).await, frame("after"));

    // A malformed offset is refused before the upgrade.
    let url = format!("ws://{}/ws?token={}&since=nope", server.local_addr(), token("u1"));
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err().to_string();
    assert!(err.contains("400"), "{err}");
    server.close(Duration::from_secs(5)).await;
}

/// Sends one raw HTTP request and returns the whole answer.
async fn ask(server: &Server, request: &str) -> String {
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_dashboard_share_the_port() {
    let (server, bus) = start(BusConfig::default()).await;
    let health = ask(&server, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.contains(r#"{"status":"ok","bus":"memory""#), "{health}");

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&server).await);
    }
    for i in 0..50 {
        bus.publish(&format!("m{i}")).unwrap();
    }
    for ws in &mut clients {
        for i in 0..50 {
            assert_eq!(next_text(ws).await, frame(&format!("m{i}")));
        }
    }
    let metrics = ask(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(metrics.contains("Content-Type: text/plain; version=0.0.4"), "{metrics}");
    assert!(metrics.contains("\nrealtime_connections_open 3\n"), "{metrics}");
    assert!(metrics.contains("\nrealtime_deliveries_total 150\n"), "{metrics}");
    assert!(metrics.contains("\nrealtime_events_received_total 50\n"), "{metrics}");
    let snap = server.snapshot();
    assert_eq!(snap.delivered, 150);
    assert!(snap.latency.count() >= 3 && snap.latency.count() <= 150);

    let page = ask(&server, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(page.contains("Content-Type: text/html"), "{page}");
    assert!(page.contains("<canvas id=\"chart\""));
    server.close(Duration::from_secs(5)).await;
}

/// A drain: health 503 and upgrades refused at once; every client gets the notice, then 1001,
/// at moments spread over the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_spreads_notices_and_closes_over_the_window() {
    let (server, _bus) = start(BusConfig::default()).await;
    let server = Arc::new(server);
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&server).await);
    }
    // Long enough that the spread shows through a loaded machine's scheduling delays: the
    // bounds below are wide (order and spread, not exact moments).
    let window = Duration::from_millis(3000);
    let started = std::time::Instant::now();
    let closing = tokio::spawn({
        let server = server.clone();
        async move { server.drain_and_close(window, Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let health = ask(&server, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 503 "), "{health}");
    assert!(health.contains(r#""status":"draining""#), "{health}");
    let upgrade = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("late")
    );
    let refused = ask(&server, &upgrade).await;
    assert!(refused.starts_with("HTTP/1.1 503 ") && refused.contains("DRAINING"), "{refused}");

    let watchers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let notice = next_text(&mut ws).await;
                assert!(notice.starts_with(r#"{"type":"reconnect""#), "{notice}");
                let noticed = started.elapsed();
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
                    Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
                    other => panic!("expected close 1001, got {other:?}"),
                }
                (noticed, started.elapsed())
            })
        })
        .collect();
    let mut closes = Vec::new();
    for watcher in watchers {
        let (noticed, closed) = watcher.await.unwrap();
        // Served through the overlap: the close comes after the notice (its 250 ms are the
        // server's schedule; an observation delayed by a busy machine could eat them).
        assert!(closed > noticed, "served through the overlap");
        closes.push(closed);
    }
    closing.await.unwrap();
    closes.sort();
    // Lower bounds hold however late the observer is; the upper one is wide.
    assert!(closes[0] >= window / 4 - Duration::from_millis(20), "{closes:?}");
    assert!(closes[5] >= window / 2, "spread over the window, not all at once: {closes:?}");
    assert!(closes[5] <= window + Duration::from_secs(10), "{closes:?}");
}
