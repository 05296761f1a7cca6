//! The in-memory bus: one process, its publishes dispatched straight to its hub, its history a
//! bounded deque in this process (offsets `<process start ms>-<n>`, see `history.rs`).

use std::sync::Arc;

use super::Publish;
use crate::config::BusConfig;
use crate::event::Event;
use crate::history::{History, MemoryHistory};
use crate::hub::Hub;

pub(super) struct MemoryBus {
    hub: Arc<Hub>,
    history: Option<Arc<MemoryHistory>>,
}

impl MemoryBus {
    /// Installs this process's history in the hub (unless history is off).
    pub(super) fn start(config: &BusConfig, hub: Arc<Hub>) -> Self {
        let history = (config.history.max_events > 0).then(|| {
            let history = Arc::new(MemoryHistory::new(config.history));
            hub.set_head(history.head());
            hub.set_history(Some(history.clone() as Arc<dyn History>));
            history
        });
        Self { hub, history }
    }

    /// Records and dispatches a batch, in order. Always succeeds.
    pub(super) async fn publish(&self, batch: &mut [Publish]) {
        for p in batch.iter_mut() {
            // The event moves into the history; the batch keeps an empty shell to settle.
            let event = std::mem::replace(&mut p.event, Event::placeholder());
            let event = match &self.history {
                Some(history) => history.record(event),
                None => event,
            };
            self.hub.dispatch(&event).await;
        }
        self.hub.metrics().published(batch.len() as u64);
        self.hub.dispatched(batch.len() as u64);
    }
}
