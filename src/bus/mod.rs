//! The event bus: how a published event reaches every WebSocket connection and JS subscriber.
//!
//! ```text
//!  publish() ──mpsc (ordered, bounded)──▶ pump task ──┬─ memory: Hub::dispatch
//!                                                     └─ redis:  PUBLISH (pipelined) ──▶ Redis
//!  Redis SUBSCRIBE task ◀──────────────────────────────────────────────────────────────┘
//!        └──▶ Hub::dispatch ──▶ broadcast ring ──▶ one task per connection
//!                           └─▶ JS sink (one call per event, never waited for)
//! ```
//!
//! `publish` only enqueues: the caller's thread (the JS thread) never encodes, sends or waits
//! on Redis. One pump task drains the queue in order, so events leave in the order they were
//! published. In Redis mode the hub is fed only by the subscription, so every process, this one
//! included, sees exactly the events Redis delivered, once each.

mod redis;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, BusConfig};
use crate::error::{codes, Error, Result};
use crate::event::Event;
use crate::history::{History, MemoryHistory};
use crate::hub::{Hub, Sink};

/// Which bus is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Memory,
    Redis,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Starting,
    Ready(Mode),
    Failed(Error),
}

struct Publish {
    event: Event,
    ack: Ack,
}

/// How a publisher learns that its event was taken.
enum Ack {
    /// One channel per publish (Rust callers).
    Once(oneshot::Sender<Result<()>>),
    /// A number; the [`AckSink`] settles numbered publishes a batch at a time (the JS skin:
    /// one call into JS per batch instead of one promise machinery per publish).
    Numbered(u64),
}

/// Publish numbers are unique in the process, across buses (a bus that failed to start is
/// replaced, and its settled numbers must never be confused with the new one's).
static NEXT_NUMBER: std::sync::Mutex<u64> = std::sync::Mutex::new(1);

/// Told, once per batch, that every numbered publish up to `through` is settled with `result`.
pub type AckSink = Arc<dyn Fn(u64, &Result<()>) + Send + Sync>;

/// Settles a processed batch: answers each `Once`, then the numbered ones in one sink call.
fn settle(batch: &mut Vec<Publish>, result: &Result<()>, sink: &RwLock<Option<AckSink>>) {
    let mut through = 0;
    for p in batch.drain(..) {
        match p.ack {
            Ack::Once(tx) => {
                let _ = tx.send(result.clone());
            }
            Ack::Numbered(n) => through = through.max(n),
        }
    }
    if through > 0 {
        if let Some(sink) = sink.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            sink(through, result);
        }
    }
}

/// A running bus. Create it with [`Bus::start`] inside a tokio runtime; share it with `Arc`.
pub struct Bus {
    config: BusConfig,
    queue: mpsc::Sender<Publish>,
    hub: Arc<Hub>,
    state: watch::Receiver<State>,
    redis_connected: watch::Receiver<bool>,
    shutdown: CancellationToken,
    ack_sink: Arc<RwLock<Option<AckSink>>>,
}

impl Bus {
    /// Starts the bus: in-memory, or Redis when `config.redis_url` is set. Returns at once;
    /// publishes made before Redis answers wait in the queue, in order. [`Bus::ready`] tells how
    /// the start went.
    pub fn start(config: BusConfig) -> Arc<Bus> {
        let (queue, rx) = mpsc::channel(config.publish_queue.max(1));
        let hub = Arc::new(Hub::new(config.fanout_capacity));
        hub.set_inbox_limits(config.inbox);
        let (state_tx, state) = watch::channel(State::Starting);
        let (connected_tx, redis_connected) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let ack_sink = Arc::new(RwLock::new(None));
        tokio::spawn(pump(
            config.clone(),
            rx,
            hub.clone(),
            state_tx,
            connected_tx,
            shutdown.clone(),
            ack_sink.clone(),
        ));
        Arc::new(Bus { config, queue, hub, state, redis_connected, shutdown, ack_sink })
    }

    /// Waits until the bus runs and says in which mode; fails only when Redis is required
    /// (`redis_required`) and unreachable, or the URL is invalid.
    pub async fn ready(&self) -> Result<Mode> {
        let mut state = self.state.clone();
        let state = state
            .wait_for(|s| !matches!(s, State::Starting))
            .await
            .map_err(|_| Error::new(codes::BUS_CLOSED, "the bus has stopped"))?;
        match &*state {
            State::Ready(mode) => Ok(*mode),
            State::Failed(e) => Err(e.clone()),
            State::Starting => unreachable!("waited for a state other than Starting"),
        }
    }

    /// The mode, once started (`None` while connecting to Redis or after a failed start).
    pub fn mode(&self) -> Option<Mode> {
        match &*self.state.borrow() {
            State::Ready(mode) => Some(*mode),
            _ => None,
        }
    }

    /// Whether the start failed (Redis required but unreachable, or an invalid URL).
    pub fn has_failed(&self) -> bool {
        matches!(&*self.state.borrow(), State::Failed(_))
    }

    /// Whether the Redis subscription is up right now (always false in memory mode).
    pub fn redis_connected(&self) -> bool {
        *self.redis_connected.borrow()
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Enqueues an event without waiting. The returned receiver says when the bus has taken it
    /// (memory: handed to the hub; Redis: acknowledged by Redis) or why it could not.
    /// Never blocks: a full queue is an immediate `ERR_PUBLISH_QUEUE_FULL`.
    pub fn publish(&self, parcel_id: &str) -> Result<oneshot::Receiver<Result<()>>> {
        self.publish_event(Event::new(parcel_id)?)
    }

    /// Like [`Bus::publish`], for an event built by the caller (e.g. with `data`).
    pub fn publish_event(&self, event: Event) -> Result<oneshot::Receiver<Result<()>>> {
        let (ack, done) = oneshot::channel();
        self.enqueue(Publish { event, ack: Ack::Once(ack) })?;
        Ok(done)
    }

    /// Enqueues an event and returns its number; the [`AckSink`] (see [`Bus::set_ack_sink`])
    /// later settles it. Numbers increase by one per call, in call order.
    pub fn publish_numbered(&self, event: Event) -> Result<u64> {
        let mut next = NEXT_NUMBER.lock().unwrap_or_else(|e| e.into_inner());
        self.enqueue(Publish { event, ack: Ack::Numbered(*next) })?;
        *next += 1;
        Ok(*next - 1)
    }

    /// Where numbered publishes are settled.
    pub fn set_ack_sink(&self, sink: Option<AckSink>) {
        *self.ack_sink.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    fn enqueue(&self, publish: Publish) -> Result<()> {
        if publish.event.users().is_some() && self.config.redis_url.is_some() {
            // Through Redis the addressing would be lost and the event reach everyone.
            return Err(Error::new(
                codes::TARGETING_UNAVAILABLE,
                "events addressed to users are delivered in memory mode only for now; \
                 in Redis mode publish without `users`",
            ));
        }
        self.queue.try_send(publish).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::new(
                codes::PUBLISH_QUEUE_FULL,
                format!(
                    "{} publishes are already waiting for the bus; retry later",
                    self.config.publish_queue
                ),
            ),
            mpsc::error::TrySendError::Closed(_) => match &*self.state.borrow() {
                State::Failed(e) => e.clone(),
                _ => Error::new(codes::BUS_CLOSED, "the bus has stopped"),
            },
        })
    }

    /// Publishes and waits until the bus has taken the event.
    pub async fn publish_and_wait(&self, event: Event) -> Result<()> {
        let done = self.publish_event(event)?;
        done.await.unwrap_or_else(|_| Err(Error::new(codes::BUS_CLOSED, "the bus has stopped")))
    }

    /// Publishes accepted by [`Bus::publish`] that the bus has not taken yet (in Redis mode, what
    /// is held while Redis is unreachable).
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity() + self.hub.metrics().held() as usize
    }

    /// Routes every event to `sink` (replacing any previous one), or stops routing with `None`.
    pub fn set_sink(&self, sink: Option<Sink>) {
        self.hub.set_sink(sink);
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Drains the publish queue in order, in batches, for as long as the bus lives.
async fn pump(
    config: BusConfig,
    mut queue: mpsc::Receiver<Publish>,
    hub: Arc<Hub>,
    state: watch::Sender<State>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
    ack_sink: Arc<RwLock<Option<AckSink>>>,
) {
    let mut backend = match &config.redis_url {
        None => None,
        Some(url) => {
            let retention = config.history;
            let shutdown = shutdown.clone();
            match redis::RedisBus::connect(
                url,
                &config.channel,
                retention,
                hub.clone(),
                connected,
                shutdown,
            )
            .await
            {
                Ok(redis) => {
                    log::info!("bus: redis at {} (channel {})", redact_url(url), config.channel);
                    Some(redis)
                }
                Err(e) if config.redis_required || e.code() == codes::INVALID_OPTION => {
                    log::error!("bus: {e}");
                    state.send_replace(State::Failed(e.clone()));
                    queue.close();
                    let mut rest = Vec::new();
                    while let Some(p) = queue.recv().await {
                        rest.push(p);
                    }
                    settle(&mut rest, &Err(e.clone()), &ack_sink);
                    return;
                }
                Err(e) => {
                    log::warn!(
                        "bus: Redis unreachable ({e}); falling back to the in-memory bus: \
                         events stay in this process. Set redisRequired to refuse instead."
                    );
                    None
                }
            }
        }
    };
    state.send_replace(State::Ready(if backend.is_some() { Mode::Redis } else { Mode::Memory }));
    // Memory mode keeps its history here; Redis mode's lives in Redis (set up by the backend).
    let memory_history = (backend.is_none() && config.history.max_events > 0).then(|| {
        let history = Arc::new(MemoryHistory::new(config.history));
        hub.set_head(history.head());
        hub.set_history(Some(history.clone() as Arc<dyn History>));
        history
    });

    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        match backend.as_mut() {
            None => {
                let n = batch.len() as u64;
                for p in batch.iter_mut() {
                    // The event moves into the history; the batch keeps an empty shell to settle.
                    let event = std::mem::replace(&mut p.event, Event::placeholder());
                    let event = match &memory_history {
                        Some(history) => history.record(event),
                        None => event,
                    };
                    hub.dispatch(&event).await;
                }
                hub.metrics().published(n);
                settle(&mut batch, &Ok(()), &ack_sink);
            }
            Some(redis) => {
                // While Redis is unreachable the batch is retried and later publishes wait in the
                // queue, in order: the queue is the bounded buffer. Only a full queue rejects.
                let mut attempt = 0u32;
                let result = loop {
                    match redis.publish(batch.iter().map(|p| &p.event)).await {
                        Ok(()) => break Ok(()),
                        Err(e) if shutdown.is_cancelled() => break Err(e),
                        Err(e) => {
                            if attempt == 0 {
                                log::warn!("bus: {e}; holding publishes until Redis is back");
                                hub.metrics().set_held(batch.len() as u64);
                            }
                            tokio::time::sleep(backoff(attempt)).await;
                            attempt = attempt.saturating_add(1);
                        }
                    }
                };
                if attempt > 0 && result.is_ok() {
                    log::info!("bus: Redis is back; held publishes sent");
                }
                hub.metrics().set_held(0);
                match &result {
                    Ok(()) => hub.metrics().published(batch.len() as u64),
                    Err(_) => hub.metrics().publish_failed(batch.len() as u64),
                }
                settle(&mut batch, &result, &ack_sink);
            }
        }
    }
}

/// Backoff for reconnecting: 100 ms doubling to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}
