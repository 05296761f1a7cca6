//! The near-limit reference of the benchmark suite (bench/README.md): what a bare tokio broadcaster
//! reaches on the same cores. No auth, no per-client JSON: each event is encoded once into one
//! shared frame (`Utf8Bytes`, a refcounted `Bytes`), and each client feeds every frame it has
//! queued, then flushes once (feed-then-flush batching).
//!
//!   reference [--port 0] [--host 127.0.0.1]
//!
//! Prints `{"event":"listening","port":N}` on stdout, serves WebSocket upgrades on `/ws` (the
//! query string, e.g. `?token=`, is ignored), sends the welcome frame, then broadcasts one event
//! `{"type":"parcel_updated","parcel_id":"<line>"}` per line read from stdin. Exits when stdin
//! closes. A client more than CAPACITY events behind skips what it missed (counted as lost by the
//! load generator): the reference never blocks the publisher.

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const WELCOME: &str = r#"{"type":"connected","message":"WebSocket connection established"}"#;
const CAPACITY: usize = 65_536;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

// The upgrade callback returns tungstenite's own (large) ErrorResponse: its signature is not ours.
#[allow(clippy::result_large_err)]
async fn client(stream: TcpStream, tx: broadcast::Sender<Utf8Bytes>) {
    let _ = stream.set_nodelay(true);
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == "/ws" {
            Ok(resp)
        } else {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            Err(e)
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check_path).await else {
        return;
    };
    // Subscribe before the welcome: every event published after the client saw it reaches it.
    let mut rx = tx.subscribe();
    let (mut sink, mut source) = ws.split();
    if sink.send(Message::text(WELCOME)).await.is_err() {
        return;
    }
    // Inbound frames are read and dropped (tungstenite answers pings on the next flush).
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = source.next().await {} });
    'run: loop {
        let first = match rx.recv().await {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if sink.feed(Message::Text(first)).await.is_err() {
            break;
        }
        loop {
            match rx.try_recv() {
                Ok(f) => {
                    if sink.feed(Message::Text(f)).await.is_err() {
                        break 'run;
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
        if reader.is_finished() {
            break;
        }
    }
    let _ = sink.close().await;
    reader.abort();
}

#[tokio::main]
async fn main() {
    let host = arg("--host", "127.0.0.1");
    let port = arg("--port", "0");
    let listener = match TcpListener::bind(format!("{host}:{port}")).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("reference: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    println!(r#"{{"event":"listening","port":{port}}}"#);
    let (tx, _) = broadcast::channel::<Utf8Bytes>(CAPACITY);
    let accept_tx = tx.clone();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(client(stream, accept_tx.clone()));
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(id)) = lines.next_line().await {
        let id = id.trim();
        if id.is_empty() || id.contains(['"', '\\']) {
            continue;
        }
        // Encoded once; every client's queue holds a refcount of the same bytes.
        let frame = Utf8Bytes::from(format!(r#"{{"type":"parcel_updated","parcel_id":"{id}"}}"#));
        let _ = tx.send(frame);
    }
}
