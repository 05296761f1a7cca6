//! The bus's own thread. The publish pump, the Redis connections (publishing, the subscription,
//! presence) and the settling of publishes run on a single-threaded tokio runtime of their own,
//! not on the workers that run the connections.
//!
//! Why: a dispatch wakes every connection task at once. On a shared multi-threaded runtime the
//! next publish (woken from the JS thread) then waits in the run queue behind a thousand
//! connection tasks, each writing to its socket, and so does the Redis reply that settles it:
//! an awaited publish took milliseconds to resolve, and a publisher awaiting each call could not
//! get ahead of the fan-out. On its own thread the pump is scheduled by the kernel as soon as it
//! is woken; the connection tasks it wakes still run on the workers. The thread runs at the
//! process's own priority (not `REALTIME_WORKER_NICE`): it is what the JS thread waits for.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// Runs `task` on the bus's thread (started on first use and kept for the life of the process;
/// one process has one bus, and a replaced bus's tasks end with it). Falls back to the caller's
/// runtime if the thread cannot be started (the bus then works as before, only less promptly).
pub(super) fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match handle() {
        Some(handle) => drop(handle.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}

fn handle() -> Option<&'static Handle> {
    static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();
    HANDLE.get_or_init(start).as_ref()
}

fn start() -> Option<Handle> {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log::warn!("bus: could not build the bus's runtime ({e}); sharing the workers'");
            return None;
        }
    };
    let handle = runtime.handle().clone();
    let thread = std::thread::Builder::new()
        .name("realtime-bus".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()));
    match thread {
        Ok(_) => Some(handle),
        Err(e) => {
            log::warn!("bus: could not start the bus's thread ({e}); sharing the workers'");
            None
        }
    }
}
