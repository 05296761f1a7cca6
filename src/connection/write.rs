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
    /// Once the write blocked: when, the timer that checks on it, and when the socket last
    /// accepted bytes (with its write count then).
    watch: Option<Box<Watch>>,
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
        let watch = self.watch.get_or_insert_with(|| {
            let now = Instant::now();
            let writes = ws.get_ref().writes();
            Box::new(Watch {
                started: now,
                check: Box::pin(tokio::time::sleep(STALL_CHECK)),
                moved: now,
                writes,
            })
        });
        while watch.check.as_mut().poll(cx).is_ready() {
            if watch.started.elapsed() >= settings.send_timeout {
                return Poll::Ready(Written::Stuck);
            }
            // Stalled means accepting nothing: a client on a saturated machine, reading slowly,
            // still moves (the ring paces the publishers to it, and overruns it only after a
            // second stall bound: see `Hub::wait_for_room`).
            let writes = ws.get_ref().writes();
            if writes != watch.writes {
                (watch.moved, watch.writes) = (Instant::now(), writes);
            }
            let blocked = watch.moved.elapsed();
            // Cut only once the publishers gave up on the ring's slowest reader (a dispatch
            // waited the whole stall bound without it moving). A socket merely blocked while the
            // ring paces the publishers (every reader behind: a burst on a saturated machine)
            // is no stalled reader: cutting it would cut the whole fleet.
            let held = hub.is_overrun();
            if self.reads_ring && blocked >= settings.stall_timeout && held {
                return Poll::Ready(Written::Stalled);
            }
            let next = Instant::now() + STALL_CHECK;
            watch.check.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// A blocked write's watch (allocated only once a write blocks).
struct Watch {
    started: Instant,
    check: Pin<Box<Sleep>>,
    /// When the socket last accepted bytes of this write, and its write count then.
    moved: Instant,
    writes: u32,
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
