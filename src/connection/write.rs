//! The write path of a connection: batched event writes that watch for a stalled socket, and
//! the close handshake.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, StreamExt};
use tokio::time::{Instant, Sleep};
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

/// Writes `first` and whatever else is waiting, polled by hand through [`Write::poll`]. The
/// common case (the socket takes it at once) costs no timer; a blocked write is watched every
/// [`STALL_CHECK`] (its timer allocated only then). Not an `async fn`: this state lives in every
/// connection's task, idle or not, and an `async fn` would also keep its arguments there.
pub(super) struct Write {
    batch: Batch,
    reads_ring: bool,
    /// Once the write blocked: when, and the timer that checks on it.
    watch: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl Write {
    pub(super) fn new(first: Utf8Bytes, feed: &Feed) -> Self {
        let batch = Batch { next: Some(first), fed: 0, flushing: false };
        Write { batch, reads_ring: feed.reads_ring(), watch: None }
    }

    pub(super) fn poll(
        &mut self,
        ws: &mut Ws,
        feed: &mut Feed,
        hub: &Hub,
        settings: &Settings,
        cx: &mut Context<'_>,
    ) -> Poll<Written> {
        if let Poll::Ready(result) = self.batch.poll(ws, feed, cx) {
            return Poll::Ready(match result {
                Ok(None) => Written::Done,
                Ok(Some(n)) => Written::Lagged(n),
                Err(e) => Written::Failed(e),
            });
        }
        let (started, check) = self
            .watch
            .get_or_insert_with(|| (Instant::now(), Box::pin(tokio::time::sleep(STALL_CHECK))));
        while check.as_mut().poll(cx).is_ready() {
            let blocked = started.elapsed();
            if blocked >= settings.send_timeout {
                return Poll::Ready(Written::Stuck);
            }
            let held = hub.is_waiting() || hub.is_overrun();
            if self.reads_ring && blocked >= settings.stall_timeout && held {
                return Poll::Ready(Written::Stalled);
            }
            check.as_mut().reset(Instant::now() + STALL_CHECK);
        }
        Poll::Pending
    }
}

/// One batch in progress: feeds the first frame and whatever else is already waiting (up to
/// [`MAX_BATCH`]), then flushes once: bursts become few large writes instead of a syscall per
/// event. `poll` returns `Some(n)` when the connection fell `n` events behind. (The feed counts
/// the frames and bytes: see `Feed::take_counts`.)
struct Batch {
    /// The frame to feed next (taken from the feed, not yet accepted by the socket's buffer).
    next: Option<Utf8Bytes>,
    fed: usize,
    flushing: bool,
}

impl Batch {
    fn poll(
        &mut self,
        ws: &mut Ws,
        feed: &mut Feed,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<u64>, WsError>> {
        let mut ws = Pin::new(ws);
        while !self.flushing {
            if let Some(bytes) = self.next.take() {
                // What `SinkExt::feed` does: room first, then the frame.
                match ws.as_mut().poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.next = Some(bytes);
                        return Poll::Pending;
                    }
                }
                if let Err(e) = ws.as_mut().start_send(Message::Text(bytes)) {
                    return Poll::Ready(Err(e));
                }
                self.fed += 1;
                continue;
            }
            if self.fed >= MAX_BATCH {
                self.flushing = true;
                break;
            }
            match feed.try_recv() {
                Ok(Some(frame)) => self.next = Some(frame.bytes),
                Ok(None) | Err(FeedError::Closed) => self.flushing = true,
                Err(FeedError::Lagged(n)) => return Poll::Ready(Ok(Some(n))),
            }
        }
        ws.as_mut().poll_flush(cx).map_ok(|()| None)
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
