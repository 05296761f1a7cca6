//! One task per client: sends the welcome, then every event, and answers the few messages a
//! client may send. Memory per connection is a broadcast cursor, a 512-byte read buffer and a
//! write buffer that only fills while a burst is being sent.

use std::fmt;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

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

pub(crate) async fn run(
    mut ws: Ws,
    mut events: broadcast::Receiver<Utf8Bytes>,
    shutdown: CancellationToken,
    send_timeout: Duration,
) -> Ended {
    match tokio::time::timeout(send_timeout, ws.send(Message::text(WELCOME_FRAME))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ended::ProtocolError(e.to_string()),
        Err(_) => return Ended::Stuck,
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                close(&mut ws, CloseCode::Away, "server shutting down").await;
                return Ended::ServerShutdown;
            }
            received = events.recv() => {
                let first = match received {
                    Ok(frame) => frame,
                    Err(RecvError::Lagged(n)) => return too_slow(&mut ws, n).await,
                    Err(RecvError::Closed) => {
                        close(&mut ws, CloseCode::Away, "server shutting down").await;
                        return Ended::ServerShutdown;
                    }
                };
                match tokio::time::timeout(send_timeout, send_batch(&mut ws, first, &mut events)).await {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(lagged))) => return too_slow(&mut ws, lagged).await,
                    Ok(Err(e)) => return Ended::ProtocolError(e.to_string()),
                    Err(_) => return Ended::Stuck,
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
                    close(&mut ws, CloseCode::Size, "message too large").await;
                    return Ended::TooLarge;
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ended::ClientClosed,
                Some(Err(WsError::Io(_))) => return Ended::ClientClosed,
                Some(Err(e)) => {
                    close(&mut ws, CloseCode::Protocol, "protocol error").await;
                    return Ended::ProtocolError(e.to_string());
                }
            }
        }
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

async fn too_slow(ws: &mut Ws, behind: u64) -> Ended {
    close(
        ws,
        CloseCode::Again,
        "too slow: events were dropped; reconnect",
    )
    .await;
    Ended::TooSlow(behind)
}

/// Sends a close frame and waits briefly for the client's answer, so the close is clean.
async fn close(ws: &mut Ws, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
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
        None => Some(error_frame(
            "UNKNOWN_MESSAGE_TYPE",
            "messages need a string \"type\"",
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn error_frame(code: &str, message: &str) -> String {
    serde_json::json!({ "type": "error", "code": code, "message": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(
            reply_to(r#"{"type":"ping"}"#).unwrap(),
            r#"{"type":"pong"}"#
        );
        assert!(reply_to("{oops").unwrap().contains("INVALID_JSON"));
        assert!(reply_to(r#"{"type":"dance"}"#)
            .unwrap()
            .contains("UNKNOWN_MESSAGE_TYPE"));
        assert!(reply_to("[]").unwrap().contains("UNKNOWN_MESSAGE_TYPE"));
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(500));
        assert!(reply_to(&long).unwrap().len() < 300);
    }
}
