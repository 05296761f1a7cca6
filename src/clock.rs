//! The process's monotonic clock, in the compact forms that travel with events and into logs.
//!
//! Both readings count from one epoch: the first time either is read in this process.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since the epoch, as a `u32` that wraps every ~71 minutes: a stamp small enough
/// to travel with every event. [`elapsed_us`] subtracts with wrap-around, so any duration under
/// that is exact (latencies are far shorter).
pub fn now_us() -> u32 {
    epoch().elapsed().as_micros() as u32
}

/// Milliseconds since the epoch, without wrap-around.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Time since a [`now_us`] stamp.
pub fn elapsed_us(stamp: u32) -> Duration {
    Duration::from_micros(u64::from(now_us().wrapping_sub(stamp)))
}
