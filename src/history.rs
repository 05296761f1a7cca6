//! The recent past: lets a client that reconnects with `since=OFFSET` receive every event it
//! missed, exactly once, or learn that it must refetch (`resync_required`).
//!
//! In memory mode the history is a bounded deque in this process; in Redis mode it is the Redis
//! Stream every server shares (`bus/redis.rs`), so a client may resume on any instance.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::event::{Event, Frame, Offset};

/// The answer to "what happened after `since`?".
#[derive(Debug)]
pub enum Replay {
    /// Every retained event after `since`, oldest first (possibly none).
    Frames(Vec<Frame>),
    /// `since` is older than the history, newer than anything known, or from another history.
    ResyncRequired,
}

/// A source of past events.
pub trait History: Send + Sync {
    /// Events with `since < offset <= until`, oldest first.
    fn between(
        &self,
        since: Offset,
        until: Offset,
    ) -> Pin<Box<dyn Future<Output = Replay> + Send + '_>>;

    /// The newest offset the history holds (it may be ahead of what this process delivered).
    fn newest(&self) -> Pin<Box<dyn Future<Output = Option<Offset>> + Send + '_>>;
}

/// Limits of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most events kept; 0 turns history (and offsets) off.
    pub max_events: usize,
    /// Oldest event kept.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_events: 10_000, max_age: Duration::from_secs(600) }
    }
}

/// The decision every history makes the same way, given what it retains.
/// `first`: oldest retained offset; `head`: newest offset ever assigned in this history.
pub fn check(since: Offset, until: Offset, first: Option<Offset>, head: Option<Offset>) -> bool {
    let Some(head) = head else { return false };
    if since > head || until > head {
        return false;
    }
    if since == head || since >= until {
        return true;
    }
    // Everything after `since` must still be retained: the oldest kept event is at or before it.
    matches!(first, Some(first) if since >= first)
}

/// The in-process history of the memory bus. Offsets are `<process start ms>-<n>`, so offsets
/// from another process (or before a restart) are recognised as foreign.
pub struct MemoryHistory {
    boot_ms: u64,
    retention: Retention,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: VecDeque<(Instant, Frame)>,
    next_seq: u64,
}

impl MemoryHistory {
    pub fn new(retention: Retention) -> Self {
        let boot_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self {
            boot_ms,
            retention,
            inner: Mutex::new(Inner { entries: VecDeque::new(), next_seq: 1 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The offset of the newest event (`<boot>-0` before the first).
    pub fn head(&self) -> Offset {
        Offset { ms: self.boot_ms, seq: self.lock().next_seq - 1 }
    }

    /// Gives `event` the next offset and keeps it. Must happen before the event is dispatched,
    /// so that a client resuming concurrently finds it in one place or the other.
    pub fn record(&self, event: Event) -> Event {
        let mut inner = self.lock();
        let event = event.at(Offset { ms: self.boot_ms, seq: inner.next_seq });
        inner.next_seq += 1;
        let now = Instant::now();
        inner.entries.push_back((now, Frame::of(&event)));
        self.trim(&mut inner, now);
        event
    }

    fn trim(&self, inner: &mut Inner, now: Instant) {
        while inner.entries.len() > self.retention.max_events {
            inner.entries.pop_front();
        }
        while inner
            .entries
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.retention.max_age)
        {
            inner.entries.pop_front();
        }
    }
}

impl History for MemoryHistory {
    fn between(
        &self,
        since: Offset,
        until: Offset,
    ) -> Pin<Box<dyn Future<Output = Replay> + Send + '_>> {
        let replay = {
            let mut inner = self.lock();
            self.trim(&mut inner, Instant::now());
            let head = Offset { ms: self.boot_ms, seq: inner.next_seq - 1 };
            let first = inner.entries.front().and_then(|(_, f)| f.offset);
            // Offsets are dense here: a client that saw the event just before the oldest kept
            // one has missed nothing.
            let just_before_first =
                first.is_some_and(|f| since.ms == f.ms && since.seq + 1 == f.seq);
            if since.ms != self.boot_ms
                || !(check(since, until, first, Some(head)) || just_before_first)
            {
                Replay::ResyncRequired
            } else {
                Replay::Frames(
                    inner
                        .entries
                        .iter()
                        .map(|(_, f)| f)
                        .filter(|f| f.offset.is_some_and(|o| o > since && o <= until))
                        .cloned()
                        .collect(),
                )
            }
        };
        Box::pin(std::future::ready(replay))
    }

    fn newest(&self) -> Pin<Box<dyn Future<Output = Option<Offset>> + Send + '_>> {
        Box::pin(std::future::ready(Some(self.head())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(replay: Replay) -> Vec<u64> {
        match replay {
            Replay::Frames(frames) => frames.iter().map(|f| f.offset.unwrap().seq).collect(),
            Replay::ResyncRequired => panic!("unexpected resync"),
        }
    }

    #[tokio::test]
    async fn replays_what_was_missed_and_refuses_what_it_no_longer_has() {
        let history =
            MemoryHistory::new(Retention { max_events: 3, max_age: Duration::from_secs(60) });
        let boot = history.head();
        assert_eq!(boot.seq, 0);
        for i in 0..5 {
            history.record(Event::new(&format!("p{i}")).unwrap());
        }
        let head = history.head();
        assert_eq!(head.seq, 5);
        let at = |seq| Offset { ms: boot.ms, seq };
        assert_eq!(ids(history.between(at(3), head).await), [4, 5]);
        assert_eq!(
            ids(history.between(at(2), head).await),
            [3, 4, 5],
            "just before the oldest kept"
        );
        assert!(matches!(history.between(at(1), head).await, Replay::ResyncRequired));
        assert_eq!(ids(history.between(head, head).await), Vec::<u64>::new());
        assert!(matches!(history.between(at(9), head).await, Replay::ResyncRequired));
        let foreign = Offset { ms: boot.ms + 1, seq: 4 };
        assert!(matches!(history.between(foreign, head).await, Replay::ResyncRequired));
        assert_eq!(ids(history.between(at(3), at(4)).await), [4], "bounded above");
    }

    #[test]
    fn the_shared_rule() {
        let o = |ms, seq| Offset { ms, seq };
        assert!(check(o(5, 0), o(9, 0), Some(o(5, 0)), Some(o(9, 0))));
        assert!(!check(o(4, 0), o(9, 0), Some(o(5, 0)), Some(o(9, 0))), "older than the history");
        assert!(!check(o(10, 0), o(10, 0), Some(o(5, 0)), Some(o(9, 0))), "from the future");
        assert!(check(o(9, 0), o(9, 0), None, Some(o(9, 0))), "caught up, nothing retained");
        assert!(!check(o(8, 0), o(9, 0), None, Some(o(9, 0))), "nothing retained");
        assert!(!check(o(1, 0), o(1, 0), None, None), "no history at all");
    }
}
