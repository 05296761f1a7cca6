//! Events addressed to users who had no connection open when they were published: kept, per
//! user, until the user's next connection takes them (memory mode; in this process).
//!
//! Bounded three ways: `size` events per user (the oldest goes first), `ttl` per event, and
//! `max_total` events over all users together. When the total is reached, the oldest event of
//! the user being added to is dropped if that user has any, else the new event is refused and
//! counted (`realtime_inbox_dropped_total`): one user flooded with events cannot evict the
//! inboxes of all the others.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::event::Frame;

/// How an inbox is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    /// Events kept per user (0: no inbox).
    pub size: usize,
    /// How long an event waits before it is dropped.
    pub ttl: Duration,
    /// Events kept over all users together.
    pub max_total: usize,
}

impl Default for InboxLimits {
    fn default() -> Self {
        Self { size: 100, ttl: Duration::from_secs(24 * 3600), max_total: 100_000 }
    }
}

pub(crate) struct Inbox {
    limits: InboxLimits,
    users: HashMap<Arc<str>, VecDeque<(Instant, Frame)>>,
    total: usize,
    /// Events that found no room (see the module's comment).
    pub dropped: u64,
}

impl Inbox {
    pub fn new(limits: InboxLimits) -> Self {
        Self { limits, users: HashMap::new(), total: 0, dropped: 0 }
    }

    pub fn set_limits(&mut self, limits: InboxLimits) {
        self.limits = limits;
    }

    /// Keeps `frame` for `user`.
    pub fn push(&mut self, user: &str, frame: Frame) {
        if self.limits.size == 0 {
            return;
        }
        let now = Instant::now();
        if self.total >= self.limits.max_total {
            self.expire(now);
        }
        let queue = match self.users.get_mut(user) {
            Some(queue) => queue,
            None => self.users.entry(user.into()).or_default(),
        };
        if queue.len() >= self.limits.size
            || (self.total >= self.limits.max_total && !queue.is_empty())
        {
            queue.pop_front();
            self.total -= 1;
        }
        if self.total >= self.limits.max_total {
            self.dropped += 1;
            if queue.is_empty() {
                self.users.remove(user);
            }
            return;
        }
        queue.push_back((now, frame));
        self.total += 1;
    }

    /// Everything waiting for `user`, oldest first; the inbox is then empty.
    pub fn take(&mut self, user: &str) -> Vec<Frame> {
        let Some(queue) = self.users.remove(user) else { return Vec::new() };
        self.total -= queue.len();
        let now = Instant::now();
        let ttl = self.limits.ttl;
        queue.into_iter().filter(|(at, _)| now.duration_since(*at) <= ttl).map(|(_, f)| f).collect()
    }

    /// Events waiting now, over all users.
    pub fn len(&self) -> usize {
        self.total
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.limits.ttl;
        let mut removed = 0;
        self.users.retain(|_, queue| {
            let before = queue.len();
            queue.retain(|(at, _)| now.duration_since(*at) <= ttl);
            removed += before - queue.len();
            !queue.is_empty()
        });
        self.total -= removed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u32) -> Frame {
        let mut f = Frame::control(format!("{n}").into());
        f.seq = n;
        f
    }

    fn seqs(frames: Vec<Frame>) -> Vec<u32> {
        frames.into_iter().map(|f| f.seq).collect()
    }

    #[test]
    fn keeps_the_newest_per_user_and_empties_on_take() {
        let mut inbox = Inbox::new(InboxLimits { size: 2, ..Default::default() });
        for n in 1..=3 {
            inbox.push("a", frame(n));
        }
        inbox.push("b", frame(9));
        assert_eq!(inbox.len(), 3);
        assert_eq!(seqs(inbox.take("a")), [2, 3]);
        assert!(inbox.take("a").is_empty());
        assert_eq!(inbox.len(), 1);
    }

    #[test]
    fn the_total_bound_holds_without_evicting_other_users() {
        let limits = InboxLimits { size: 10, max_total: 3, ..Default::default() };
        let mut inbox = Inbox::new(limits);
        inbox.push("a", frame(1));
        inbox.push("b", frame(2));
        inbox.push("c", frame(3));
        inbox.push("d", frame(4)); // full, and d has nothing to give up: refused
        inbox.push("a", frame(5)); // full: a gives up its own oldest
        assert_eq!(inbox.dropped, 1);
        assert_eq!(inbox.len(), 3);
        assert_eq!(seqs(inbox.take("a")), [5]);
        assert_eq!(seqs(inbox.take("b")), [2]);
        assert!(inbox.take("d").is_empty());
    }

    #[test]
    fn expired_events_never_arrive() {
        let ttl = Duration::from_millis(10);
        let mut inbox = Inbox::new(InboxLimits { ttl, ..Default::default() });
        inbox.push("a", frame(1));
        std::thread::sleep(ttl * 3);
        inbox.push("a", frame(2));
        assert_eq!(seqs(inbox.take("a")), [2]);
    }
}
