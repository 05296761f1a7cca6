//! One task per client: sends the welcome, then every event, and answers the few messages a
//! client may send. Memory per connection is a broadcast cursor, a 512-byte read buffer and a
//! write buffer that only fills while a burst is being sent.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::bus::Hub;
use crate::event::WELCOME_FRAME;

/// Frames fed before one flush: bursts become few large writes instead of a syscall per event.
const MAX_BATCH: usize = 64;
/// Time allowed to deliver a close frame before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ended (for logs).
#[derive(Debug)]
pub enum Ended {
    ClientClosed,
    ServerShutdown,
    TooSlow(u64),
    Stuck,
    TooLarge,
    ProtocolError(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::ClientClosed => f.write_str("closed by client"),
            Ended::ServerShutdown => f.write_str("server shutting down (1001)"),
            Ended::TooSlow(n) => write!(f, "too slow, {n} events behind (1013)"),
            Ended::Stuck => f.write_str("not reading; write timed out"),
            Ended::TooLarge => f.write_str("message too large (1009)"),
            Ended::ProtocolError(e) => write!(f, "protocol error: {e}"),
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Timing rules for writes to one client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteLimits {
    /// A write blocked this long is cut, whatever else happens.
    pub send_timeout: Duration,
    /// A write blocked this long while publishers wait for this client is cut (1013).
    pub stall_timeout: Duration,
}

/// How often a blocked write checks whether it should give up.
const STALL_CHECK: Duration = Duration::from_millis(50);

pub(crate) async fn run(
    mut ws: Ws,
    hub: &Hub,
    mut events: broadcast::Receiver<Utf8Bytes>,
    shutdown: CancellationToken,
    limits: WriteLimits,
) -> Ended {
    match tokio::time::timeout(limits.send_timeout, ws.send(Message::text(WELCOME_FRAME))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ended::ProtocolError(e.to_string()),
        Err(_) => return Ended::Stuck,
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                close(&mut ws, CloseCode::Away, "server shutting down", CLOSE_TIMEOUT).await;
                return Ended::ServerShutdown;
            }
            received = events.recv() => {
                let first = match received {
                    Ok(frame) => frame,
                    Err(RecvError::Lagged(n)) => return too_slow(ws, events, n, limits).await,
                    Err(RecvError::Closed) => {
                        close(&mut ws, CloseCode::Away, "server shutting down", CLOSE_TIMEOUT).await;
                        return Ended::ServerShutdown;
                    }
                };
                match write(&mut ws, first, &mut events, hub, limits).await {
                    Written::Done => hub.consumed(),
                    Written::Lagged(n) => return too_slow(ws, events, n, limits).await,
                    Written::Stalled => return too_slow(ws, events, 0, limits).await,
                    Written::Stuck => return Ended::Stuck,
                    Written::Failed(e) => return Ended::ProtocolError(e.to_string()),
                }
            }
            inbound = ws.next() => match inbound {
                None | Some(Ok(Message::Close(_))) => return Ended::ClientClosed,
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = reply_to(&text) {
                        if let Err(e) = ws.send(Message::text(reply)).await {
                            return Ended::ProtocolError(e.to_string());
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = error_frame("UNSUPPORTED_MESSAGE", "binary messages are not supported; send JSON text");
                    if let Err(e) = ws.send(Message::text(reply)).await {
                        return Ended::ProtocolError(e.to_string());
                    }
                }
                // Pings are answered by tungstenite itself on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::Capacity(_))) => {
                    close(&mut ws, CloseCode::Size, "message too large", CLOSE_TIMEOUT).await;
                    return Ended::TooLarge;
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_))) => {
                    return Ended::ClientClosed
                }
                Some(Err(e)) => {
                    close(&mut ws, CloseCode::Protocol, "protocol error", CLOSE_TIMEOUT).await;
                    return Ended::ProtocolError(e.to_string());
                }
            }
        }
    }
}

enum Written {
    Done,
    Lagged(u64),
    Stalled,
    Stuck,
    Failed(WsError),
}

/// Writes `first` and whatever else is waiting. The common case (the socket takes it at once)
/// costs no timer; a blocked write is watched every [`STALL_CHECK`].
async fn write(
    ws: &mut Ws,
    first: Utf8Bytes,
    events: &mut broadcast::Receiver<Utf8Bytes>,
    hub: &Hub,
    limits: WriteLimits,
) -> Written {
    let mut batch = std::pin::pin!(send_batch(ws, first, events));
    let poll_once = std::future::poll_fn(|cx| std::task::Poll::Ready(batch.as_mut().poll(cx)));
    let result = match poll_once.await {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => {
            let started = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    result = batch.as_mut() => break result,
                    _ = tokio::time::sleep(STALL_CHECK) => {
                        let blocked = started.elapsed();
                        if blocked >= limits.send_timeout {
                            return Written::Stuck;
                        }
                        if blocked >= limits.stall_timeout && hub.is_waiting() {
                            return Written::Stalled;
                        }
                    }
                }
            }
        }
    };
    match result {
        Ok(None) => Written::Done,
        Ok(Some(n)) => Written::Lagged(n),
        Err(e) => Written::Failed(e),
    }
}

/// Feeds `first` and whatever else is already waiting (up to [`MAX_BATCH`]), then flushes once.
/// Returns `Some(n)` when the connection fell `n` events behind.
async fn send_batch(
    ws: &mut Ws,
    first: Utf8Bytes,
    events: &mut broadcast::Receiver<Utf8Bytes>,
) -> Result<Option<u64>, WsError> {
    ws.feed(Message::Text(first)).await?;
    for _ in 1..MAX_BATCH {
        match events.try_recv() {
            Ok(frame) => ws.feed(Message::Text(frame)).await?,
            Err(TryRecvError::Lagged(n)) => return Ok(Some(n)),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    ws.flush().await?;
    Ok(None)
}

/// Cuts a client that cannot keep up: first releases its place in the ring (so publishers
/// resume at once), then lets whatever is already buffered drain, ending with close 1013.
async fn too_slow(
    mut ws: Ws,
    events: broadcast::Receiver<Utf8Bytes>,
    behind: u64,
    limits: WriteLimits,
) -> Ended {
    drop(events);
    close(
        &mut ws,
        CloseCode::Again,
        "too slow: events were dropped; reconnect",
        limits.send_timeout,
    )
    .await;
    Ended::TooSlow(behind)
}

/// Sends a close frame and waits (at most `within`) for the client's answer: a clean close.
async fn close(ws: &mut Ws, code: CloseCode, reason: &'static str, within: Duration) {
    let frame = CloseFrame { code, reason: reason.into() };
    let _ = tokio::time::timeout(within, async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// The answer to a client's text message: `ping` → `pong`; anything else an error frame.
fn reply_to(text: &str) -> Option<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Some(error_frame("INVALID_JSON", "messages must be JSON objects"));
    };
    match value.get("type").and_then(|t| t.as_str()) {
        Some("ping") => Some(r#"{"type":"pong"}"#.to_string()),
        Some(other) => Some(error_frame(
            "UNKNOWN_MESSAGE_TYPE",
            &format!("unknown message type {:?}", truncate(other, 64)),
        )),
        None => Some(error_frame("UNKNOWN_MESSAGE_TYPE", "messages need a string \"type\"")),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn error_frame(code: &str, message: &str) -> String {
    // Written by hand so that "type" comes first, as in every other frame.
    format!(
        r#"{{"type":"error","code":{},"message":{}}}"#,
        serde_json::Value::from(code),
        serde_json::Value::from(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(reply_to(r#"{"type":"ping"}"#).unwrap(), r#"{"type":"pong"}"#);
        assert!(reply_to("{oops").unwrap().contains("INVALID_JSON"));
        assert!(reply_to(r#"{"type":"dance"}"#).unwrap().contains("UNKNOWN_MESSAGE_TYPE"));
        assert!(reply_to("[]").unwrap().contains("UNKNOWN_MESSAGE_TYPE"));
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(500));
        assert!(reply_to(&long).unwrap().len() < 300);
    }
}
