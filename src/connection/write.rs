//! The write path of a connection: batched event writes that watch for a stalled socket, and
//! the close handshake.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::{Settings, Ws};
use crate::hub::{Feed, FeedError, Hub};
use crate::protocol::Disconnect;

/// Frames fed before one flush: bursts become few large writes instead of a syscall per event.
const MAX_BATCH: usize = 64;
/// How often a blocked write checks whether it should give up.
const STALL_CHECK: Duration = Duration::from_millis(50);

pub(super) enum Written {
    Done,
    Lagged(u64),
    Stalled,
    Stuck,
    Failed(WsError),
}

/// Writes `first` and whatever else is waiting. The common case (the socket takes it at once)
/// costs no timer; a blocked write is watched every [`STALL_CHECK`].
pub(super) async fn write(
    ws: &mut Ws,
    first: Utf8Bytes,
    feed: &mut Feed,
    hub: &Hub,
    settings: &Settings,
) -> Written {
    let reads_ring = feed.reads_ring();
    let mut batch = std::pin::pin!(send_batch(ws, first, feed));
    let poll_once = std::future::poll_fn(|cx| Poll::Ready(batch.as_mut().poll(cx)));
    let result = match poll_once.await {
        Poll::Ready(result) => result,
        Poll::Pending => {
            let started = Instant::now();
            loop {
                tokio::select! {
                    result = batch.as_mut() => break result,
                    _ = tokio::time::sleep(STALL_CHECK) => {
                        let blocked = started.elapsed();
                        if blocked >= settings.send_timeout {
                            return Written::Stuck;
                        }
                        let held = hub.is_waiting() || hub.is_overrun();
                        if reads_ring && blocked >= settings.stall_timeout && held {
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

pub(super) enum Guarded {
    Done,
    /// The feed was overrun (publishers stopped waiting for it) while the write was blocked.
    FellBehind,
    Stuck,
    Failed(WsError),
}

/// Runs a write outside the event batches (the welcome, a replay, a filter change's seam, a
/// control reply, the drain notice) under the same rules as a batch: blocked for
/// `send_timeout`, it is stuck; if the publishers gave up waiting for this connection
/// meanwhile (its feed fell behind), it is cut as too slow at once.
pub(super) async fn guarded(
    feed: &Feed,
    settings: &Settings,
    write: impl Future<Output = Result<(), WsError>>,
) -> Guarded {
    let mut write = std::pin::pin!(write);
    let poll_once = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx)));
    let result = match poll_once.await {
        Poll::Ready(result) => result,
        Poll::Pending => {
            let started = Instant::now();
            loop {
                tokio::select! {
                    result = write.as_mut() => break result,
                    _ = tokio::time::sleep(STALL_CHECK) => {
                        if started.elapsed() >= settings.send_timeout {
                            return Guarded::Stuck;
                        }
                        if feed.fell_behind() {
                            return Guarded::FellBehind;
                        }
                    }
                }
            }
        }
    };
    match result {
        Ok(()) => Guarded::Done,
        Err(e) => Guarded::Failed(e),
    }
}

/// Feeds `first` and whatever else is already waiting (up to [`MAX_BATCH`]), then flushes once.
/// Returns `Some(n)` when the connection fell `n` events behind. (The feed counts the frames and
/// bytes: see `Feed::take_counts`.)
async fn send_batch(
    ws: &mut Ws,
    first: Utf8Bytes,
    feed: &mut Feed,
) -> Result<Option<u64>, WsError> {
    ws.feed(Message::Text(first)).await?;
    for _ in 1..MAX_BATCH {
        match feed.try_recv() {
            Ok(Some(frame)) => ws.feed(Message::Text(frame.bytes)).await?,
            Ok(None) | Err(FeedError::Closed) => break,
            Err(FeedError::Lagged(n)) => return Ok(Some(n)),
        }
    }
    ws.flush().await?;
    Ok(None)
}

/// The close frame of `why` (a disconnect without a close code closes normally).
pub(super) fn close_frame(why: Disconnect) -> CloseFrame {
    let code = why.close_code().map_or(CloseCode::Normal, CloseCode::from);
    CloseFrame { code, reason: why.reason().into() }
}

/// Sends `why`'s close frame and waits (at most `within`) for the client's answer: a clean close.
pub(super) async fn close_ws(ws: &mut Ws, why: Disconnect, within: Duration) {
    let frame = close_frame(why);
    let _ = tokio::time::timeout(within, async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
