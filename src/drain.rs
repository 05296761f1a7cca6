//! Graceful drain: how a server that is being rolled hands its clients over to the other
//! instances without a reconnect stampede and without losing events.
//!
//! When a drain of `window` starts (`Server::drain_and_close`):
//! 1. the server answers `/health` with 503 `draining` and refuses new upgrades with 503
//!    `DRAINING`, so load balancers route new clients elsewhere;
//! 2. the clients connected at that moment are given evenly spread slots over the window. At its
//!    slot a client receives the notice frame `{"type":"reconnect",...}` ([`notice_frame`]) and
//!    keeps receiving events for an `overlap` (a quarter of the window, at most 2 s); then the
//!    server closes it with 1001. A client that opens its new connection on the notice and keeps
//!    reading the old one until it closes misses no event (it may see some twice). A client that
//!    ignores the notice simply reconnects on 1001, and the reconnects are spread over the window;
//! 3. at the end of the window, whatever is left is closed with 1001 and the port is released.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Longest overlap between the notice and the close of one client.
pub const MAX_OVERLAP: Duration = Duration::from_secs(2);

/// The drain state of one server. Cheap to query: one atomic load while not draining.
#[derive(Debug, Default)]
pub struct Drain {
    plan: OnceLock<Plan>,
    next_slot: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    start: Instant,
    window: Duration,
    overlap: Duration,
    /// Clients connected when the drain started: the slots are spread over them.
    clients: usize,
}

impl Drain {
    /// Starts the drain (once; later calls keep the first plan). Returns the end of the window.
    pub fn start(&self, window: Duration, clients: usize) -> Instant {
        let plan = self.plan.get_or_init(|| Plan {
            start: Instant::now(),
            window,
            overlap: (window / 4).min(MAX_OVERLAP),
            clients: clients.max(1),
        });
        plan.start + plan.window
    }

    pub fn is_draining(&self) -> bool {
        self.plan.get().is_some()
    }

    /// The next client's slot (a connection keeps this small number rather than an instant).
    pub fn next_slot(&self) -> u32 {
        u32::try_from(self.next_slot.fetch_add(1, Ordering::Relaxed)).unwrap_or(u32::MAX)
    }

    /// When the client in `slot` gets the notice. Slots are spread evenly over the part of the
    /// window that leaves room for the overlap; clients beyond the count at the start (none,
    /// normally: upgrades are refused while draining) get the last slot.
    pub fn notice_at(&self, slot: u32) -> Instant {
        let Some(plan) = self.plan.get() else { return Instant::now() };
        let slot = (slot as usize).min(plan.clients - 1);
        let spread = plan.window.saturating_sub(plan.overlap);
        plan.start + spread.mul_f64(slot as f64 / plan.clients as f64)
    }

    /// How long a client keeps receiving events after its notice.
    pub fn overlap(&self) -> Duration {
        self.plan.get().map_or(Duration::ZERO, |plan| plan.overlap)
    }

    /// For a connection whose shutdown signal just fired: `Some(overlap)` when the server is
    /// draining and there is still time to warn the client and keep serving it for `overlap`
    /// before closing it; `None` to close it now.
    pub fn overlap_now(&self) -> Option<Duration> {
        let plan = self.plan.get()?;
        if plan.overlap.is_zero() || Instant::now() + plan.overlap > plan.start + plan.window {
            return None;
        }
        Some(plan.overlap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_spread_over_the_window_minus_the_overlap() {
        let drain = Drain::default();
        assert!(!drain.is_draining());
        assert!(drain.overlap_now().is_none());
        let end = drain.start(Duration::from_secs(4), 4);
        let start = end - Duration::from_secs(4);
        assert!(drain.is_draining());
        let slots: Vec<_> = (0..5).map(|_| drain.notice_at(drain.next_slot()) - start).collect();
        // overlap = 1 s, so notices spread over 3 s: 0, 0.75, 1.5, 2.25, then the last slot again.
        assert_eq!(slots[0], Duration::ZERO);
        assert_eq!(slots[1], Duration::from_millis(750));
        assert_eq!(slots[3], Duration::from_millis(2250));
        assert_eq!(slots[4], slots[3]);
        assert_eq!(drain.overlap_now(), Some(Duration::from_secs(1)));
        assert_eq!(drain.overlap(), Duration::from_secs(1));

        let short = Drain::default();
        short.start(Duration::from_millis(40), 1);
        assert_eq!(short.overlap_now(), Some(Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(35)).await;
        assert_eq!(short.overlap_now(), None, "no room left for an overlap");
        let now = Drain::default();
        now.start(Duration::ZERO, 3);
        assert_eq!(now.overlap_now(), None, "a zero window closes at once");
    }
}
