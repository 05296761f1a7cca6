//! Limits on what a client may send.

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
pub(super) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: burst, updated: Instant::now() }
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true; // 0: no limit, as for every other limit
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bytes a client may draw with its requests (replays, subscription states, error replies):
/// [`ByteBudget::BURST`] at once, refilled at [`ByteBudget::RATE`] per second.
pub(super) struct ByteBudget {
    bytes: f64,
    updated: Instant,
}

impl ByteBudget {
    /// A full replay of a default history (10,000 events of ~800 bytes) fits.
    pub(super) const BURST: f64 = 8.0 * 1024.0 * 1024.0;
    pub(super) const RATE: f64 = 64.0 * 1024.0;

    pub(super) fn new() -> Self {
        Self { bytes: Self::BURST, updated: Instant::now() }
    }

    /// Takes `n` bytes if the budget holds them.
    pub(super) fn take(&mut self, n: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.bytes = (self.bytes + elapsed * Self::RATE).min(Self::BURST);
        self.updated = now;
        if self.bytes >= n as f64 {
            self.bytes -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0);
        assert!(bucket.take(start) && bucket.take(start) && bucket.take(start));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
    }
}
