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
//! published. The pump and every Redis task run on the bus's own thread (`runtime.rs`), never
//! queued behind the connection tasks that a dispatch wakes. In Redis mode the hub is fed only by the subscription, so every process, this one
//! included, sees exactly the events Redis delivered, once each.

mod link;
mod memory;
mod redis;
mod runtime;
mod targeting;
mod topology;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, BusConfig};
use crate::error::{codes, Error, Result};
use crate::event::Event;
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
    /// A number and who published it; the [`AckSink`] settles numbered publishes a batch at a
    /// time, per publisher (the JS skin: one call into each JS thread per batch instead of one
    /// promise machinery per publish).
    Numbered { number: u64, publisher: u32 },
}

/// Publish numbers are unique in the process, across buses (a bus that failed to start is
/// replaced, and its settled numbers must never be confused with the new one's). Every enqueue
/// holds its lock, so numbers and queue positions follow queue order.
static NEXT_NUMBER: std::sync::Mutex<u64> = std::sync::Mutex::new(1);

/// What [`Bus::publish_numbered`] did with an event (its number either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Accepted for good: the caller need not wait for the sink (memory mode, queue not backed up).
    Accepted(u64),
    /// Queued: settled later by the [`AckSink`].
    Queued(u64),
}

/// In memory mode, publishes settle as the queue takes them while fewer than this many wait in
/// it; beyond, they settle when dispatched (publishers then go at the clients' pace).
pub const SETTLE_AT_ONCE_BELOW: usize = 1024;

/// Whether memory-mode publishes may settle when queued (the default, `accepted`) rather than
/// once dispatched (`REALTIME_PUBLISH_RESOLVES=dispatched`). Either way a client that connects
/// after the promise resolved finds the event in its replay (see `Hub::caught_up`); what
/// `dispatched` adds is that the fan-out to the connected clients has begun.
fn settle_at_once_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("REALTIME_PUBLISH_RESOLVES") {
        Err(_) => true,
        Ok(v) if v.trim() == "accepted" || v.trim().is_empty() => true,
        Ok(v) if v.trim() == "dispatched" => false,
        Ok(v) => {
            log::warn!(
                "REALTIME_PUBLISH_RESOLVES must be \"accepted\" or \"dispatched\", got {v:?}; \
                 using \"accepted\""
            );
            true
        }
    })
}

/// Told, once per batch and publisher, that every numbered publish of `publisher` up to
/// `through` is settled with `result`: `sink(publisher, through, result)`.
pub type AckSink = Arc<dyn Fn(u32, u64, &Result<()>) + Send + Sync>;

/// Settles a processed batch: answers each `Once`, then the numbered ones in one sink call per
/// publisher (usually one: each JS thread that publishes is a publisher).
fn settle(batch: &mut Vec<Publish>, result: &Result<()>, sink: &RwLock<Option<AckSink>>) {
    let mut through: Vec<(u32, u64)> = Vec::new();
    for p in batch.drain(..) {
        match p.ack {
            Ack::Once(tx) => {
                let _ = tx.send(result.clone());
            }
            Ack::Numbered { number, publisher } => {
                match through.iter_mut().find(|(p, _)| *p == publisher) {
                    Some((_, n)) => *n = (*n).max(number),
                    None => through.push((publisher, number)),
                }
            }
        }
    }
    if through.is_empty() {
        return;
    }
    if let Some(sink) = sink.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        for (publisher, n) in through {
            sink(publisher, n, result);
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
        let ctx = Pump {
            config: config.clone(),
            hub: hub.clone(),
            state: state_tx,
            connected: Arc::new(connected_tx),
            shutdown: shutdown.clone(),
            ack_sink: ack_sink.clone(),
        };
        runtime::spawn(pump(ctx, rx));
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
        // The lock numbered publishes hold too: queue positions follow queue order.
        let _order = NEXT_NUMBER.lock().unwrap_or_else(|e| e.into_inner());
        self.enqueue(Publish { event, ack: Ack::Once(ack) })?;
        Ok(done)
    }

    /// Enqueues an event of `publisher` (an id the [`AckSink`] routes by, e.g. a JS thread) and
    /// returns its number; the sink (see [`Bus::set_ack_sink`]) later settles it. Numbers
    /// increase by one per call, in call order, across publishers.
    ///
    /// `Taken::Accepted` (the default; not with `REALTIME_PUBLISH_RESOLVES=dispatched`): in
    /// memory mode the queue is the bus, so an event it takes is accepted (in order, never lost:
    /// the pump dispatches everything queued, and dispatch cannot fail; a connection opening
    /// meanwhile waits for it, see `Hub::caught_up`). The caller may treat it as settled at once
    /// (unless an earlier publish of its own still waits for the sink: promises settle in call
    /// order); the sink still reports the number later (the JS skin keeps the process alive
    /// until then). The caller waits for the sink only when the clients hold the bus back:
    /// [`SETTLE_AT_ONCE_BELOW`] publishes already wait in the queue, or a dispatch waits for the
    /// slowest ring reader (or has just given up on it). That is the backpressure an awaiting
    /// publisher feels (and, when the queue is full, `ERR_PUBLISH_QUEUE_FULL`). With
    /// `dispatched`, in Redis mode, and on a memory bus that may switch to Redis, it is always
    /// `Taken::Queued`: settled once dispatched (memory) or acknowledged by Redis.
    pub fn publish_numbered(&self, event: Event, publisher: u32) -> Result<Taken> {
        let at_once = settle_at_once_enabled()
            && self.config.redis_url.is_none()
            && self.queue.max_capacity() - self.queue.capacity() < SETTLE_AT_ONCE_BELOW
            && !self.hub.is_waiting()
            && !self.hub.is_overrun();
        let mut next = NEXT_NUMBER.lock().unwrap_or_else(|e| e.into_inner());
        let number = *next;
        let position = self.enqueue(Publish { event, ack: Ack::Numbered { number, publisher } })?;
        *next += 1;
        if !at_once {
            return Ok(Taken::Queued(number));
        }
        if let Some(position) = position {
            self.hub.accepted(position);
        }
        Ok(Taken::Accepted(number))
    }

    /// Where numbered publishes are settled.
    pub fn set_ack_sink(&self, sink: Option<AckSink>) {
        *self.ack_sink.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    /// Queues a publish (the caller holds `NEXT_NUMBER`'s lock). Memory mode: returns its
    /// position among the publishes queued (see `Hub::caught_up`).
    fn enqueue(&self, publish: Publish) -> Result<Option<u64>> {
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
        })?;
        Ok(self.config.redis_url.is_none().then(|| self.hub.taken()))
    }

    /// How many connections each of `users` has open now: over every live instance in Redis
    /// mode (an instance that died stops counting within `targeting::PRESENCE_WINDOW`), in this
    /// process otherwise. Waits for the bus to start.
    pub async fn presence(&self, users: Vec<String>) -> Result<Vec<usize>> {
        if users.len() > crate::event::MAX_USERS {
            return Err(Error::new(
                codes::INVALID_USERS,
                format!(
                    "presence asks for {} users; the limit is {}",
                    users.len(),
                    crate::event::MAX_USERS
                ),
            ));
        }
        let _ = self.ready().await;
        match self.hub.directory() {
            Some(directory) => directory.count(users).await,
            // Redis configured but not answering (the in-memory fallback): this process's counts
            // would say "offline" for users connected elsewhere.
            None if self.config.redis_url.is_some() => Err(Error::new(
                codes::REDIS_UNAVAILABLE,
                "Redis is unavailable: presence over every instance cannot be counted",
            )),
            None => Ok(self.hub.presence(&users)),
        }
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

/// What the pump needs besides its queue.
struct Pump {
    config: BusConfig,
    hub: Arc<Hub>,
    state: watch::Sender<State>,
    connected: Arc<watch::Sender<bool>>,
    shutdown: CancellationToken,
    ack_sink: Arc<RwLock<Option<AckSink>>>,
}

/// What connecting to Redis takes (cloned into the background retry).
struct Connector {
    url: String,
    tls: Option<crate::config::RedisTls>,
    channel: String,
    retention: crate::history::Retention,
    inbox: crate::inbox::InboxLimits,
    wait: Option<(u32, Duration)>,
    hub: Arc<Hub>,
    connected: Arc<watch::Sender<bool>>,
    shutdown: CancellationToken,
}

impl Connector {
    async fn connect(&self) -> Result<redis::RedisBus> {
        let (hub, connected, shutdown) =
            (self.hub.clone(), self.connected.clone(), self.shutdown.clone());
        let tls = self.tls.as_ref();
        redis::RedisBus::connect(
            &self.url,
            tls,
            &self.channel,
            self.retention,
            self.inbox,
            self.wait,
            hub,
            connected,
            shutdown,
        )
        .await
    }
}

enum Backend {
    Memory(memory::MemoryBus),
    Redis(Box<redis::RedisBus>),
}

/// A Redis connection being retried in the background after a bad start.
type Late = Pin<Box<dyn Future<Output = redis::RedisBus> + Send>>;

/// Drains the publish queue in order, in batches, for as long as the bus lives.
async fn pump(ctx: Pump, mut queue: mpsc::Receiver<Publish>) {
    let Some((mut backend, mut late)) = ctx.start().await else {
        ctx.refuse_all(&mut queue).await;
        return;
    };
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                let result = match &mut backend {
                    Backend::Memory(memory) => {
                        memory.publish(&mut batch).await;
                        Ok(())
                    }
                    Backend::Redis(redis) => ctx.publish_with_retry(redis, &batch).await,
                };
                settle(&mut batch, &result, &ctx.ack_sink);
            }
            redis = async { late.as_mut().expect("polled only when set").await }, if late.is_some() => {
                late = None;
                redis.activate(&ctx.hub);
                ctx.switch_to_redis();
                backend = Backend::Redis(Box::new(redis));
            }
        }
    }
}

impl Pump {
    /// Connects to Redis if configured. `None`: the start failed (the state says why); else the
    /// backend, and the background retry when Redis was unreachable at start.
    async fn start(&self) -> Option<(Backend, Option<Late>)> {
        let Some(url) = self.config.redis_url.clone() else {
            self.state.send_replace(State::Ready(Mode::Memory));
            return Some((
                Backend::Memory(memory::MemoryBus::start(&self.config, self.hub.clone())),
                None,
            ));
        };
        match self.connector().connect().await {
            Ok(redis) => {
                redis.activate(&self.hub);
                log::info!("bus: redis at {} (channel {})", redact_url(&url), self.config.channel);
                self.state.send_replace(State::Ready(Mode::Redis));
                Some((Backend::Redis(Box::new(redis)), None))
            }
            // A misconfiguration (credentials, an invalid URL) never falls back silently.
            Err(e) if self.config.redis_required || e.code() != codes::REDIS_UNAVAILABLE => {
                log::error!("bus: {e}");
                self.state.send_replace(State::Failed(e));
                None
            }
            Err(e) => {
                log::warn!(
                    "bus: Redis unreachable ({e}); falling back to the in-memory bus: events \
                     stay in this process until Redis answers (retrying in the background; \
                     GET /ready answers 503 meanwhile). Set redisRequired to refuse instead."
                );
                self.state.send_replace(State::Ready(Mode::Memory));
                let memory = memory::MemoryBus::start(&self.config, self.hub.clone());
                Some((Backend::Memory(memory), Some(Box::pin(self.retry_connect()))))
            }
        }
    }

    fn connector(&self) -> Connector {
        Connector {
            url: self.config.redis_url.clone().unwrap_or_default(),
            tls: self.config.redis_tls.clone(),
            channel: self.config.channel.clone(),
            retention: self.config.history,
            inbox: self.config.inbox,
            wait: (self.config.redis_wait_replicas > 0)
                .then_some((self.config.redis_wait_replicas, self.config.redis_wait_timeout)),
            hub: self.hub.clone(),
            connected: self.connected.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Connects with backoff until Redis answers (logging each new kind of failure once).
    fn retry_connect(&self) -> impl Future<Output = redis::RedisBus> + Send + 'static {
        let connector = self.connector();
        async move {
            let mut attempt = 0u32;
            let mut last_code = codes::REDIS_UNAVAILABLE;
            loop {
                tokio::time::sleep(backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
                match connector.connect().await {
                    Ok(redis) => return redis,
                    Err(e) if e.code() != last_code => {
                        log::error!("bus: Redis answers but cannot be used: {e}");
                        last_code = e.code();
                    }
                    Err(e) => log::debug!("bus: Redis connect attempt {attempt} failed: {e}"),
                }
            }
        }
    }

    /// Redis answered after a bad start: from now on events go through it. Connected clients
    /// stay, and are told to resync: the offsets they hold are this process's own.
    fn switch_to_redis(&self) {
        let url = self.config.redis_url.as_deref().unwrap_or_default();
        log::warn!(
            "bus: Redis at {} answers now; switched from the in-memory bus to Redis (channel {}); \
             connected clients are told to resync (offsets change)",
            redact_url(url),
            self.config.channel
        );
        self.hub.resync_all();
        self.state.send_replace(State::Ready(Mode::Redis));
    }

    /// Sends a batch to Redis, retrying while Redis is unreachable: later publishes wait in the
    /// queue meanwhile, in order (the queue is the bounded buffer; only a full queue rejects).
    async fn publish_with_retry(
        &self,
        redis: &mut redis::RedisBus,
        batch: &[Publish],
    ) -> Result<()> {
        let hub = &self.hub;
        let mut attempt = 0u32;
        let number = redis.next_batch();
        let result = loop {
            match redis.publish(number, batch.iter().map(|p| &p.event)).await {
                Ok(()) => break Ok(()),
                Err(e) if self.shutdown.is_cancelled() => break Err(e),
                // Published, but not confirmed on enough replicas: sending again would
                // duplicate; the publishers learn it.
                Err(e) if e.code() == codes::REDIS_REPLICATION => {
                    log::warn!("bus: {e}");
                    break Err(e);
                }
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
        result
    }

    /// After a failed start: every publish, queued or still to come, gets the start's error.
    async fn refuse_all(&self, queue: &mut mpsc::Receiver<Publish>) {
        let error = match &*self.state.borrow() {
            State::Failed(e) => e.clone(),
            _ => Error::new(codes::BUS_CLOSED, "the bus has stopped"),
        };
        queue.close();
        let mut rest = Vec::new();
        while let Some(p) = queue.recv().await {
            rest.push(p);
        }
        settle(&mut rest, &Err(error), &self.ack_sink);
    }
}

/// Backoff for reconnecting: 100 ms doubling to 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6)).min(5_000))
}
