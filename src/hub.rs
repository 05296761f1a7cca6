//! The fan-out point between the bus and the connections.
//!
//! Two ways to receive, chosen per connection:
//! - **every event** (the default): a cursor in one broadcast ring of encoded frames. Each event
//!   is written into the ring once; connections read the shared bytes at their own pace.
//! - **chosen parcels**: an index from parcel id to the connections that asked for it, each with
//!   a small bounded queue. An event costs work only for the connections that want it.
//!
//! Flow control: the ring holds `capacity` events. Before an event enters it, [`Hub::dispatch`]
//! waits while the slowest ring reader is `high_water` (half the ring) or more behind, so a burst
//! of publishes is paced to the speed of the clients instead of overrunning them. A connection
//! that holds everyone back because its socket accepts nothing is cut by its own task
//! (`connection.rs`), which releases the wait. Publishers feel this as later-resolving publishes.
//! A filtered connection whose queue overflows is marked lost and cut (1013) by its task.
//!
//! Events addressed to users (`users` set) never enter the ring: an index from user id to that
//! user's connections hands them to each connection's own small queue, so such an event costs
//! work in proportion to the user's connections. A connection merges that queue with its ring or
//! filtered feed by dispatch order (`Frame::seq`): every frame arrives in publish order. A user
//! with no connection in this process gets the event in their inbox (`inbox.rs`), which their
//! next connection receives right after the welcome. In Redis mode a [`Directory`]
//! (`bus/targeting.rs`) keeps presence and inboxes in Redis instead, over every instance.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::error::Result;
use crate::event::{parcel_id_of, Event, Frame, Offset};
use crate::history::History;
use crate::inbox::{Inbox, InboxLimits};
use crate::metrics::BusMetrics;
use crate::protocol::frame;

/// Receives every event that passes through the hub, on a tokio worker. Must not block.
pub type Sink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Frames a filtered connection may have waiting before it is considered too slow.
const FILTERED_QUEUE: usize = 1024;

/// Who receives what, besides the ring.
#[derive(Default)]
struct Index {
    /// Parcel id → the filtered feeds that follow it.
    parcels: HashMap<Arc<str>, Vec<Target>>,
    /// User id → the queues of that user's connections, for events addressed to the user.
    users: HashMap<Arc<str>, UserConns>,
}

struct Target {
    conn: u64,
    tx: mpsc::Sender<Frame>,
    lost: Arc<AtomicBool>,
}

/// A user's connections here, by connection number. One inline: that is nearly every user, and
/// a `Vec` would allocate for it.
type UserConns = smallvec::SmallVec<[(u64, Arc<Direct>); 1]>;

/// The queue of events addressed to one connection's user, beside its ring or filtered feed.
/// Bounded like a filtered feed's queue: overflowing it marks the connection lost (1013).
struct Direct {
    user: Arc<str>,
    /// Allocated on the first addressed event (every connection of a user holds a `Direct`;
    /// most never receive one).
    queue: Mutex<Option<Box<DirectQueue>>>,
    /// The queue's length, readable without the lock: the hot path (a broadcast reaching a
    /// connection whose user has nothing waiting) costs one atomic load, not a lock. (32 bits:
    /// the queue is bounded, and every connection of a user holds a `Direct`.)
    waiting: AtomicU32,
    /// The connection's task while it waits (an `AtomicWaker`, not a `Notify`: its wait then
    /// adds nothing to the size of every connection's task).
    waker: AtomicWaker,
    lost: AtomicBool,
}

#[derive(Default)]
struct DirectQueue {
    frames: VecDeque<Frame>,
    /// Offsets of the events this connection received from its user's inbox in Redis (sorted):
    /// one that also arrives live (it was inboxed just before the connection counted as
    /// present) is not sent twice. Emptied once a later event arrives. (A boxed slice, not a
    /// `Vec`: every connection of a user holds one, nearly always empty.)
    inboxed: Box<[Offset]>,
}

impl Direct {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Box<DirectQueue>>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, frame: Frame) {
        {
            let mut guard = self.lock();
            let queue = guard.get_or_insert_with(Box::default);
            if let (Some(offset), Some(last)) = (frame.offset, queue.inboxed.last()) {
                if offset > *last {
                    queue.inboxed = Box::default();
                } else if queue.inboxed.binary_search(&offset).is_ok() {
                    return;
                }
            }
            if queue.frames.len() >= FILTERED_QUEUE {
                self.lost.store(true, Ordering::Relaxed);
                return;
            }
            queue.frames.push_back(frame);
            // Release: a reader that sees the count also sees every frame dispatched before.
            self.waiting.fetch_add(1, Ordering::Release);
        }
        self.waker.wake();
    }

    /// Whether the first frame waiting was dispatched before `seq`; `None` when none waits.
    fn first_before(&self, seq: u32) -> Option<bool> {
        if self.is_empty() {
            return None;
        }
        self.lock().as_ref()?.frames.front().map(|f| f.before(seq))
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<Frame> {
        let mut queue = self.lock();
        let frame = queue.as_mut()?.frames.pop_front();
        if frame.is_some() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        frame
    }

    fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire) as usize
    }

    /// Drops the events at `offsets` (delivered from the inbox) from the queue, now and when
    /// they arrive later.
    fn skip(&self, offsets: &[Offset]) {
        let mut queue = self.lock();
        let queue = queue.get_or_insert_with(Box::default);
        let mut inboxed = offsets.to_vec();
        inboxed.sort_unstable();
        queue.frames.retain(|f| f.offset.is_none_or(|o| inboxed.binary_search(&o).is_err()));
        queue.inboxed = inboxed.into_boxed_slice();
        // At most `FILTERED_QUEUE`.
        self.waiting.store(queue.frames.len() as u32, Ordering::Release);
    }
}

/// Where presence and inboxes live when they span instances (Redis mode, `bus/targeting.rs`):
/// told of every connection of a user that opens or closes in this process.
pub trait Directory: Send + Sync {
    /// A connection of `user` opened here (it is already in the index): count it, then take
    /// what waited in the user's inbox (oldest first; empty when Redis cannot be reached).
    fn joined(&self, user: Arc<str>) -> oneshot::Receiver<Vec<Frame>>;
    /// A connection of `user` closed here.
    fn left(&self, user: &Arc<str>);
    /// Resolves once every change told so far is written (a closing server's connections then
    /// stop counting at once, not after the presence window).
    fn settle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// How many connections each of `users` has open, over every live instance.
    fn count(
        &self,
        users: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<usize>>> + Send + '_>>;
}

/// How many stall bounds a dispatch waits for the slowest reader while other connections keep
/// writing (the machine is saturated, not the reader gone). A client that reads nothing is
/// still given up on after one stall bound when nobody else is writing.
const SATURATED_WAITS: u32 = 4;

pub struct Hub {
    frames: broadcast::Sender<Frame>,
    high_water: usize,
    /// Set while `dispatch` waits for room; connections then signal progress.
    waiting: AtomicBool,
    progress: Notify,
    /// The longest one dispatch waits for room (the server's `stall_timeout`, in ms). Past it,
    /// the ring overruns its slowest readers (they get `Lagged` and are cut with 1013): no
    /// connection, whatever it is doing (a replay, a filter change, a blocked write), holds
    /// publishers longer than this.
    max_wait_ms: AtomicU64,
    /// Set when a wait ran out: dispatch no longer waits until the ring is below high water
    /// again (the readers it waited for are being overrun).
    overrun: AtomicBool,
    /// Parcel id → connections that asked for it. Held for reading across the whole of a
    /// dispatch, so a connection changing its filter (a write) sees a clean seam.
    index: RwLock<Index>,
    next_conn: AtomicU64,
    /// The next `Frame::seq` (dispatch order).
    next_seq: AtomicU32,
    /// Events for users with no connection here (when no [`Directory`] keeps them elsewhere).
    inbox: Mutex<Inbox>,
    /// Presence and inboxes over every instance (Redis mode); `None`: this process only.
    directory: RwLock<Option<Arc<dyn Directory>>>,
    sink: RwLock<Option<Sink>>,
    /// The newest offset dispatched (or known at start): what a new client is told it starts at.
    head: std::sync::Mutex<Option<Offset>>,
    /// Memory mode: how many publishes the bus's queue has taken, the position among them of the
    /// last one that resolved to its caller before its dispatch, and how many were dispatched.
    /// See [`Hub::caught_up`].
    taken: AtomicU64,
    accepted: AtomicU64,
    dispatched: watch::Sender<u64>,
    /// Where past events are found for clients that resume; `None` when history is off.
    history: RwLock<Option<Arc<dyn History>>>,
    metrics: BusMetrics,
}

impl Hub {
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2);
        Self {
            frames: broadcast::channel(capacity).0,
            high_water: capacity / 2,
            waiting: AtomicBool::new(false),
            progress: Notify::new(),
            max_wait_ms: AtomicU64::new(500),
            overrun: AtomicBool::new(false),
            index: RwLock::new(Index::default()),
            next_conn: AtomicU64::new(0),
            next_seq: AtomicU32::new(1),
            inbox: Mutex::new(Inbox::new(InboxLimits::default())),
            directory: RwLock::new(None),
            sink: RwLock::new(None),
            head: std::sync::Mutex::new(None),
            taken: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            dispatched: watch::channel(0).0,
            history: RwLock::new(None),
            metrics: BusMetrics::default(),
        }
    }

    /// The bus's counters (publishes, events entering the process, Redis reconnects).
    pub fn metrics(&self) -> &BusMetrics {
        &self.metrics
    }

    /// Hands one event to every interested connection (one shared frame) and to the sink, once
    /// the ring has room for it.
    pub(crate) async fn dispatch(&self, event: &Event) {
        self.wait_for_room().await;
        self.metrics.received();
        let mut frame = Frame::of(event);
        {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            // Inside the read lock: a feed opening (under the write lock) sees the head and the
            // ring agree, so its starting offset is exactly the last event it will not receive.
            if let Some(offset) = event.offset() {
                self.set_head(offset);
            }
            frame.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if let Some(users) = event.users() {
                self.deliver_to_users(&index, users, &frame);
                drop(index);
                self.to_sink(event);
                return;
            }
            if let Some(targets) = index.parcels.get(event.parcel_id()) {
                for target in targets {
                    if target.tx.try_send(frame.clone()).is_err() {
                        target.lost.store(true, Ordering::Relaxed);
                    }
                }
            }
            // An error only means that no connection reads the ring right now.
            let _ = self.frames.send(frame);
        }
        self.to_sink(event);
    }

    fn to_sink(&self, event: &Event) {
        if let Some(sink) = self.sink.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            sink(event);
        }
    }

    /// Hands an addressed event to every connection of its users here; users with none get it
    /// in their inbox. (Addressed events pace nobody: they do not enter the ring.)
    /// (With a [`Directory`], the publish already put the event in the inboxes of users with no
    /// connection on any instance.)
    fn deliver_to_users(&self, index: &Index, users: &[Box<str>], frame: &Frame) {
        let mut local_inbox = None;
        for user in users {
            match index.users.get(&**user) {
                Some(conns) => conns.iter().for_each(|(_, direct)| direct.push(frame.clone())),
                None => {
                    if *local_inbox.get_or_insert_with(|| self.directory().is_none()) {
                        self.lock_inbox().push(user, frame.clone());
                    }
                }
            }
        }
    }

    /// Where presence and inboxes span instances, if they do (Redis mode).
    pub fn directory(&self) -> Option<Arc<dyn Directory>> {
        self.directory.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_directory(&self, directory: Option<Arc<dyn Directory>>) {
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = directory;
    }

    fn lock_inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how inboxes are bounded (memory mode).
    pub(crate) fn set_inbox_limits(&self, limits: InboxLimits) {
        self.lock_inbox().set_limits(limits);
    }

    /// Events waiting in inboxes now, and events that found no room since the start.
    pub fn inbox_counts(&self) -> (usize, u64) {
        let inbox = self.lock_inbox();
        (inbox.len(), inbox.dropped)
    }

    /// How many connections each of `users` has open in this process now.
    pub fn presence(&self, users: &[String]) -> Vec<usize> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        users.iter().map(|u| index.users.get(u.as_str()).map_or(0, |c| c.len())).collect()
    }

    /// Like [`Hub::presence`], for user ids the hub handed out.
    pub(crate) fn count_of(&self, users: &[Arc<str>]) -> Vec<usize> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        users.iter().map(|u| index.users.get(u).map_or(0, |c| c.len())).collect()
    }

    /// Every user with a connection in this process, with their count.
    pub(crate) fn user_counts(&self) -> Vec<(Arc<str>, usize)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.users.iter().map(|(u, conns)| (u.clone(), conns.len())).collect()
    }

    /// Waits, before an event enters the ring, while the slowest reader is too far behind: at
    /// most the stall bound per dispatch, or [`SATURATED_WAITS`] of them while other connections
    /// keep finishing writes.
    ///
    /// Two levels. Past the high-water mark (half the ring) the dispatch waits for the slowest
    /// reader; after a whole stall bound without it moving, publishers give up on it (overrun)
    /// and its connection, blocked that long, cuts it (`connection::write`), which frees the
    /// ring. Meanwhile dispatches still wait at the ring's capacity, where the next event would
    /// overwrite what that reader has not read: sending freely at once would push every reader
    /// that is merely behind (on a saturated machine, all of them) past the capacity too, and
    /// cut the whole fleet for one stalled reader. Only a second stall bound without progress
    /// overwrites.
    async fn wait_for_room(&self) {
        let len = self.frames.len();
        if len < self.high_water {
            self.overrun.store(false, Ordering::Relaxed);
            return;
        }
        let overrun = self.overrun.load(Ordering::Relaxed);
        let limit = if overrun { self.capacity() } else { self.high_water };
        if len < limit {
            return;
        }
        self.waiting.store(true, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let stall = Duration::from_millis(self.max_wait_ms.load(Ordering::Relaxed));
        // Other connections finishing writes meanwhile: the readers are busy, not gone (a burst
        // on a saturated machine, where the slowest socket may take longer than the stall bound
        // to drain): the wait then extends to SATURATED_WAITS stall bounds.
        let mut busy = false;
        while self.frames.len() >= limit {
            let bound = if busy { stall * SATURATED_WAITS } else { stall };
            if started.elapsed() >= bound {
                self.overrun.store(true, Ordering::Relaxed);
                break;
            }
            // A progress signal, or a periodic re-check in case a connection was dropped.
            let progress = self.progress.notified();
            busy |= tokio::time::timeout(Duration::from_millis(10), progress).await.is_ok();
        }
        self.metrics.paced(started.elapsed());
        self.waiting.store(false, Ordering::SeqCst);
    }

    /// Memory mode: the bus's queue took one more publish; returns its position (from 1, in queue
    /// order: the caller holds the bus's enqueue lock).
    pub(crate) fn taken(&self) -> u64 {
        self.taken.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Memory mode: the publish at `position` resolved to its caller before its dispatch.
    pub(crate) fn accepted(&self, position: u64) {
        self.accepted.fetch_max(position, Ordering::AcqRel);
    }

    /// Memory mode: `n` publishes the queue took were dispatched.
    pub(crate) fn dispatched(&self, n: u64) {
        self.dispatched.send_modify(|d| *d += n);
    }

    /// Resolves once every publish that resolved to its caller before its dispatch has been
    /// dispatched. A connection waits for it before it opens its feed: a client that connects
    /// after `await publishParcelUpdate()` must find the event in its replay and an offset at or
    /// past it in its welcome, as if the publish had waited for its dispatch. Immediate in the
    /// usual case (the queue is empty); publishes that wait for their dispatch (a burst the
    /// clients hold back) are not waited for.
    pub(crate) async fn caught_up(&self) {
        let target = self.accepted.load(Ordering::Acquire);
        let mut dispatched = self.dispatched.subscribe();
        let _ = dispatched.wait_for(|d| *d >= target).await;
    }

    /// Bounds how long one dispatch waits for the slowest ring reader (see `max_wait_ms`); the
    /// smallest bound asked for wins (several servers may share one bus).
    pub(crate) fn bound_wait(&self, max: Duration) {
        let ms = max.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.max_wait_ms.fetch_min(ms, Ordering::Relaxed);
    }

    /// The ring's size: a reader with more pending has been overrun.
    pub(crate) fn capacity(&self) -> usize {
        self.high_water * 2
    }

    /// Called by a connection after it has written a batch: wakes a waiting dispatch.
    pub(crate) fn consumed(&self) {
        if self.waiting.load(Ordering::Relaxed) {
            self.progress.notify_one();
        }
    }

    /// Whether publishers gave up waiting for the slowest readers (they are being overrun).
    pub(crate) fn is_overrun(&self) -> bool {
        self.overrun.load(Ordering::Relaxed)
    }

    /// Whether a dispatch is waiting for a slow connection right now.
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Tells every connection that events were lost and it must refetch.
    pub(crate) fn resync_all(&self) {
        let mut frame = Frame::control(frame::RESYNC_UNKNOWN.into());
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        frame.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut told = HashSet::new();
        for target in index.parcels.values().flatten() {
            if told.insert(target.conn) && target.tx.try_send(frame.clone()).is_err() {
                target.lost.store(true, Ordering::Relaxed);
            }
        }
        let _ = self.frames.send(frame);
    }

    /// Records the newest offset known (dispatch does it for every event with one).
    pub(crate) fn set_head(&self, offset: Offset) {
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        if head.is_none_or(|h| offset > h) {
            *head = Some(offset);
        }
    }

    /// Replaces the head, even with an older offset (the bus moved to another history).
    pub(crate) fn reset_head(&self, offset: Offset) {
        *self.head.lock().unwrap_or_else(|e| e.into_inner()) = Some(offset);
    }

    /// The newest offset known, if the bus keeps a history.
    pub fn head(&self) -> Option<Offset> {
        *self.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_history(&self, history: Option<Arc<dyn History>>) {
        *self.history.write().unwrap_or_else(|e| e.into_inner()) = history;
    }

    pub fn history(&self) -> Option<Arc<dyn History>> {
        self.history.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Routes every event to `sink` (replacing any previous one), or stops with `None`.
    pub(crate) fn set_sink(&self, sink: Option<Sink>) {
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    /// A feed starting with the next event, of every event or only of `ids` (deduplicated),
    /// plus the events addressed to `user`; the offset of the last event before it (the
    /// client's starting offset); and what waited in `user`'s inbox. All are taken under the
    /// index's write lock, which no dispatch holds, so no event falls between them (none is both
    /// "before the start" and delivered, nor neither; an addressed event is either in the inbox
    /// taken or delivered to the feed).
    pub fn open(self: &Arc<Self>, ids: Option<&[String]>, user: Option<&str>) -> Opened {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let head = self.head();
        let source = match ids {
            None => Source::All(self.frames.subscribe()),
            Some(ids) => Source::only(&mut index, conn, ids),
        };
        let (direct, inbox) = match user {
            None => (None, Vec::new()),
            Some(user) => {
                // A user's connections share one copy of the id (the index's).
                let user: Arc<str> = match index.users.get_key_value(user) {
                    Some((known, _)) => known.clone(),
                    None => user.into(),
                };
                let direct = Arc::new(Direct {
                    user: user.clone(),
                    queue: Mutex::new(None),
                    waiting: AtomicU32::new(0),
                    waker: AtomicWaker::new(),
                    lost: AtomicBool::new(false),
                });
                index.users.entry(user).or_default().push((conn, direct.clone()));
                let inbox = self.lock_inbox().take(&direct.user);
                (Some(direct), inbox)
            }
        };
        drop(index);
        let feed = Feed { hub: self.clone(), conn, source, direct, ahead: None, counted: (0, 0) };
        Opened { feed, start: head, inbox }
    }

    /// A feed of every event, starting with the next one.
    pub fn feed(self: &Arc<Self>) -> Feed {
        self.open(None, None).feed
    }
}

/// What [`Hub::open`] gives a new connection.
pub struct Opened {
    pub feed: Feed,
    /// The offset of the last event before the feed begins.
    pub start: Option<Offset>,
    /// Events that waited for the user while they had no connection, oldest first.
    pub inbox: Vec<Frame>,
}

enum Source {
    /// Receives nothing and holds no place: what a connection keeps while it is being cut.
    Detached,
    All(broadcast::Receiver<Frame>),
    Only {
        rx: mpsc::Receiver<Frame>,
        tx: mpsc::Sender<Frame>,
        lost: Arc<AtomicBool>,
        /// Boxed: every connection's task holds a `Source` (most of them `All`), and the set
        /// would make it three times larger.
        #[allow(clippy::box_collection)]
        ids: Box<HashSet<Arc<str>>>,
    },
}

impl Source {
    /// A feed of only `ids`, entered in `index` for connection `conn`.
    fn only(index: &mut Index, conn: u64, ids: &[String]) -> Source {
        let (tx, rx) = mpsc::channel(FILTERED_QUEUE);
        let mut mode = Source::Only { rx, tx, lost: Arc::default(), ids: Box::default() };
        mode.follow(index, conn, ids);
        mode
    }

    /// Enters a filtered feed in `index` for each of `ids` it does not follow yet.
    fn follow(&mut self, index: &mut Index, conn: u64, ids: &[String]) {
        let index = &mut index.parcels;
        let Source::Only { tx, lost, ids: current, .. } = self else {
            return;
        };
        for id in ids {
            if current.contains(id.as_str()) {
                continue;
            }
            let id: Arc<str> = id.as_str().into();
            index.entry(id.clone()).or_default().push(Target {
                conn,
                tx: tx.clone(),
                lost: lost.clone(),
            });
            current.insert(id);
        }
    }
}

/// Why a feed stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// The connection fell behind and events were dropped for it (`n` if known).
    Lagged(u64),
    Closed,
}

/// What one connection receives. Dropping it removes the connection from the index.
pub struct Feed {
    hub: Arc<Hub>,
    conn: u64,
    source: Source,
    /// The queue of events addressed to this connection's user.
    direct: Option<Arc<Direct>>,
    /// A frame taken from `source` and held back because an addressed event came before it.
    ahead: Option<Box<Frame>>,
    /// Frames and their bytes received since the last [`Feed::take_counts`] (for metrics: kept
    /// here, plain integers, so that counting adds nothing to the connection's task).
    counted: (u32, u32),
}

impl Feed {
    /// Counts a frame as sent on this feed's connection ([`Feed::try_recv`] counts its own).
    pub fn count(&mut self, frame: &Frame) {
        self.counted.0 += 1;
        let len = crate::metrics::ws_frame_len(frame.bytes.len()) as u32;
        self.counted.1 = self.counted.1.saturating_add(len);
    }

    /// Frames received and their bytes on the wire since the last call; resets both.
    pub fn take_counts(&mut self) -> (u32, u32) {
        std::mem::take(&mut self.counted)
    }

    /// The next frame, in dispatch order across the feed and the user's queue. A plain fn around
    /// an `async` block: this waits in every idle connection's task, and an `async fn` would keep
    /// its argument there twice.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn recv(&mut self) -> impl Future<Output = Result<Frame, FeedError>> + Send + '_ {
        async move {
            if self.direct.is_none() {
                return Self::recv_source(&mut self.source).await;
            }
            loop {
                if let Some(frame) = self.try_recv_uncounted()? {
                    return Ok(frame);
                }
                // Borrowed, not cloned: the user's queue is waited on beside the feed.
                let mut source = std::pin::pin!(Self::recv_source(&mut self.source));
                let direct = &self.direct;
                let received = std::future::poll_fn(|cx| {
                    if let Some(direct) = direct {
                        direct.waker.register(cx.waker());
                        if direct.lost.load(Ordering::Relaxed) || !direct.is_empty() {
                            return std::task::Poll::Ready(None);
                        }
                    }
                    source.as_mut().poll(cx).map(Some)
                })
                .await;
                if let Some(frame) = received {
                    self.ahead = Some(Box::new(frame?));
                }
            }
        }
    }

    async fn recv_source(source: &mut Source) -> Result<Frame, FeedError> {
        match source {
            Source::Detached => std::future::pending().await,
            Source::All(ring) => ring.recv().await.map_err(|e| match e {
                RecvError::Lagged(n) => FeedError::Lagged(n),
                RecvError::Closed => FeedError::Closed,
            }),
            Source::Only { rx, lost, .. } => {
                if lost.load(Ordering::Relaxed) {
                    return Err(FeedError::Lagged(0));
                }
                // The feed keeps its own sender, so the queue never reports closed.
                rx.recv().await.ok_or(FeedError::Closed)
            }
        }
    }

    /// The next frame if one is already waiting.
    pub fn try_recv(&mut self) -> Result<Option<Frame>, FeedError> {
        let frame = self.try_recv_uncounted()?;
        if let Some(frame) = &frame {
            self.count(frame);
        }
        Ok(frame)
    }

    fn try_recv_uncounted(&mut self) -> Result<Option<Frame>, FeedError> {
        let Some(direct) = &self.direct else {
            return Self::try_recv_source(&mut self.source);
        };
        if direct.lost.load(Ordering::Relaxed) {
            return Err(FeedError::Lagged(0));
        }
        // The order of the looks matters. An addressed event seen first means every frame
        // dispatched before it is already in the source; a frame taken from the source is
        // preceded by any addressed event dispatched before it, so look again after taking it.
        let direct_waits = !direct.is_empty();
        let taken = match self.ahead.take() {
            Some(frame) => Some(*frame),
            None => Self::try_recv_source(&mut self.source)?,
        };
        match taken {
            Some(frame) => {
                if direct.first_before(frame.seq) == Some(true) {
                    self.ahead = Some(Box::new(frame));
                    return Ok(direct.pop());
                }
                Ok(Some(frame))
            }
            None if direct_waits => Ok(direct.pop()),
            None => Ok(None),
        }
    }

    fn try_recv_source(source: &mut Source) -> Result<Option<Frame>, FeedError> {
        match source {
            Source::Detached => Ok(None),
            Source::All(ring) => match ring.try_recv() {
                Ok(frame) => Ok(Some(frame)),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Lagged(n)) => Err(FeedError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(FeedError::Closed),
            },
            Source::Only { rx, lost, .. } => {
                if lost.load(Ordering::Relaxed) {
                    return Err(FeedError::Lagged(0));
                }
                Ok(rx.try_recv().ok())
            }
        }
    }

    /// Frames waiting for this connection right now (what it would miss if cut now).
    pub fn pending(&self) -> usize {
        let source = match &self.source {
            Source::Detached => 0,
            Source::All(ring) => ring.len(),
            Source::Only { rx, .. } => rx.len(),
        };
        let direct = self.direct.as_ref().map_or(0, |d| d.len());
        source + direct + usize::from(self.ahead.is_some())
    }

    /// The user this feed receives addressed events for (the hub's copy of the id: a connection
    /// shares it rather than keeping one of its own).
    pub fn user(&self) -> Option<&Arc<str>> {
        self.direct.as_ref().map(|d| &d.user)
    }

    /// Takes the addressed events dispatched before the last of `seam` and merges them into it
    /// in dispatch order: a filter change's seam then keeps the order of every frame.
    fn merge_direct(&mut self, seam: &mut Vec<Frame>) {
        let (Some(direct), Some(last)) = (&self.direct, seam.last().map(|f| f.seq)) else {
            return;
        };
        let mut merged = false;
        while direct.first_before(last) == Some(true) {
            if let Some(frame) = direct.pop() {
                seam.push(frame);
                merged = true;
            }
        }
        if merged {
            seam.sort_by(|a, b| match (a.before(b.seq), b.before(a.seq)) {
                (true, _) => std::cmp::Ordering::Less,
                (_, true) => std::cmp::Ordering::Greater,
                _ => std::cmp::Ordering::Equal,
            });
        }
    }

    /// Gives up this feed's place (ring cursor or index entries) and receives nothing more.
    pub fn detach(&mut self) {
        let old = std::mem::replace(&mut self.source, Source::Detached);
        self.ahead = None;
        self.leave_index(old, true);
    }

    /// Removes this feed's entries from the index: those of `source` and, with `user`, its
    /// user's queue.
    fn leave_index(&mut self, source: Source, user: bool) {
        let direct = if user { self.direct.take() } else { None };
        let ids = match source {
            Source::Only { ids, .. } => Some(*ids),
            _ => None,
        };
        if ids.is_none() && direct.is_none() {
            return;
        }
        let mut index = self.hub.index.write().unwrap_or_else(|e| e.into_inner());
        for id in ids.iter().flatten() {
            remove_target(&mut index.parcels, id, self.conn);
        }
        if let Some(direct) = direct {
            if let Some(conns) = index.users.get_mut(&direct.user) {
                conns.retain(|(conn, _)| *conn != self.conn);
                if conns.is_empty() {
                    index.users.remove(&direct.user);
                }
            }
            drop(index);
            if let Some(directory) = self.hub.directory() {
                directory.left(&direct.user);
            }
        }
    }

    /// Events with these offsets came from the user's inbox: they are not delivered live too.
    pub fn skip_inboxed(&self, offsets: &[Offset]) {
        if let (Some(direct), false) = (&self.direct, offsets.is_empty()) {
            direct.skip(offsets);
        }
    }

    /// Whether this feed has lost events (only filtered feeds learn it before their next read).
    /// Whether this feed has lost events already, or is one publishers stopped waiting for: a
    /// filtered feed marked lost, a ring cursor overrun (its next read is `Lagged`), or one at
    /// high water or more behind after a dispatch's wait ran out.
    pub fn fell_behind(&self) -> bool {
        match &self.source {
            Source::All(ring) => {
                let behind = ring.len();
                behind > self.hub.capacity()
                    || (behind >= self.hub.high_water && self.hub.overrun.load(Ordering::Relaxed))
            }
            _ => self.has_lost(),
        }
    }

    pub fn has_lost(&self) -> bool {
        matches!(&self.source, Source::Only { lost, .. } if lost.load(Ordering::Relaxed))
            || self.direct.as_ref().is_some_and(|d| d.lost.load(Ordering::Relaxed))
    }

    /// Whether this feed reads the ring, and so can hold publishers back.
    pub fn reads_ring(&self) -> bool {
        matches!(self.source, Source::All(_))
    }

    /// `None` for every event, else the chosen parcel ids, sorted.
    pub fn parcel_ids(&self) -> Option<Vec<String>> {
        match &self.source {
            Source::All(_) | Source::Detached => None,
            Source::Only { ids, .. } => {
                let mut ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
                ids.sort_unstable();
                Some(ids)
            }
        }
    }

    /// How many parcel ids the feed would follow after adding `ids`.
    pub fn count_after_adding(&self, ids: &[String]) -> usize {
        match &self.source {
            Source::All(_) | Source::Detached => ids.iter().collect::<HashSet<_>>().len(),
            Source::Only { ids: current, .. } => {
                current.len() + ids.iter().filter(|id| !current.contains(id.as_str())).count()
            }
        }
    }

    /// Narrows the feed to (or adds) `ids`. Returns the frames that were already on their way to
    /// this connection before the change and match the new filter: deliver them first, and the
    /// seam has neither gap nor duplicate.
    pub fn subscribe(&mut self, ids: &[String]) -> Result<Vec<Frame>, FeedError> {
        let mut index = self.hub.index.write().unwrap_or_else(|e| e.into_inner());
        let Source::All(ring) = &mut self.source else {
            self.source.follow(&mut index, self.conn, ids);
            return Ok(Vec::new());
        };
        let only = Source::only(&mut index, self.conn, ids);
        // No dispatch runs while we hold the write lock: exactly `pending` frames were sent
        // before the switch, and every later one goes to the new queue.
        let pending = ring.len();
        drop(index);
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut seam = Vec::new();
        let mut result = Ok(());
        if let Some(frame) = self.ahead.take() {
            if parcel_id_of(&frame.bytes).is_some_and(|id| wanted.contains(id.as_str())) {
                seam.push(*frame);
            }
        }
        for _ in 0..pending {
            match ring.try_recv() {
                Ok(frame) => {
                    if parcel_id_of(&frame.bytes).is_some_and(|id| wanted.contains(id.as_str())) {
                        seam.push(frame);
                    }
                }
                Err(TryRecvError::Lagged(n)) => {
                    result = Err(FeedError::Lagged(n));
                    break;
                }
                Err(_) => break,
            }
        }
        self.source = only;
        self.merge_direct(&mut seam);
        result.map(|()| seam)
    }

    /// Removes `ids` from a filtered feed (a feed of every event is left as it is).
    pub fn unsubscribe(&mut self, ids: &[String]) {
        if let Source::Only { ids: current, .. } = &mut self.source {
            let mut index = self.hub.index.write().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                if current.remove(id.as_str()) {
                    remove_target(&mut index.parcels, id, self.conn);
                }
            }
        }
    }

    /// Widens the feed back to every event. Returns the frames still queued from the filtered
    /// feed: deliver them first.
    pub fn subscribe_all(&mut self) -> Vec<Frame> {
        let Source::Only { ids, .. } = &self.source else {
            return Vec::new();
        };
        let ring = {
            let mut index = self.hub.index.write().unwrap_or_else(|e| e.into_inner());
            for id in ids.iter() {
                remove_target(&mut index.parcels, id, self.conn);
            }
            self.hub.frames.subscribe()
        };
        let Source::Only { mut rx, .. } = std::mem::replace(&mut self.source, Source::All(ring))
        else {
            unreachable!("checked above");
        };
        let mut seam: Vec<Frame> = self.ahead.take().map(|f| *f).into_iter().collect();
        while let Ok(frame) = rx.try_recv() {
            seam.push(frame);
        }
        self.merge_direct(&mut seam);
        seam
    }
}

fn remove_target(index: &mut HashMap<Arc<str>, Vec<Target>>, id: &str, conn: u64) {
    if let Some(targets) = index.get_mut(id) {
        targets.retain(|t| t.conn != conn);
        if targets.is_empty() {
            index.remove(id);
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let source = std::mem::replace(&mut self.source, Source::Detached);
        self.leave_index(source, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    async fn publish(hub: &Hub, id: &str) {
        hub.dispatch(&Event::new(id).unwrap()).await;
    }

    fn drain(feed: &mut Feed) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(frame)) = feed.try_recv() {
            out.push(parcel_id_of(&frame.bytes).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn narrowing_keeps_what_was_queued_and_matches_then_filters() {
        let hub = Arc::new(Hub::new(64));
        let mut feed = hub.feed();
        publish(&hub, "a").await;
        publish(&hub, "b").await;
        let seam = feed.subscribe(&ids(&["a", "c"])).unwrap();
        assert_eq!(seam.len(), 1);
        assert_eq!(parcel_id_of(&seam[0].bytes).as_deref(), Some("a"));
        for id in ["a", "b", "c", "d", "a"] {
            publish(&hub, id).await;
        }
        assert_eq!(drain(&mut feed), ["a", "c", "a"]);
        feed.unsubscribe(&ids(&["a"]));
        publish(&hub, "a").await;
        publish(&hub, "c").await;
        assert_eq!(drain(&mut feed), ["c"]);
        assert_eq!(feed.parcel_ids(), Some(ids(&["c"])));
    }

    #[tokio::test]
    async fn widening_delivers_queued_frames_then_everything() {
        let hub = Arc::new(Hub::new(64));
        let mut feed = hub.feed();
        feed.subscribe(&ids(&["a"])).unwrap();
        publish(&hub, "a").await;
        publish(&hub, "b").await;
        let seam = feed.subscribe_all();
        assert_eq!(seam.iter().map(|f| parcel_id_of(&f.bytes).unwrap()).collect::<Vec<_>>(), ["a"]);
        publish(&hub, "b").await;
        assert_eq!(drain(&mut feed), ["b"]);
        assert!(feed.parcel_ids().is_none());
    }

    /// A feed opened while events stream in starts exactly after the offset it was given: the
    /// first event it receives is the next one, never one at or before it, none skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_feed_opens_exactly_at_its_starting_offset() {
        let hub = Arc::new(Hub::new(4096));
        let at = |seq| Offset { ms: 1, seq };
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for seq in 1..=20_000 {
                    hub.dispatch(&Event::new("p").unwrap().at(at(seq))).await;
                }
            })
        };
        let only = ids(&["p"]);
        let mut opened = 0;
        for round in 0.. {
            let filter = (round % 2 == 1).then_some(only.as_slice());
            let Opened { mut feed, start, .. } = hub.open(filter, None);
            if start == Some(at(20_000)) {
                break;
            }
            let frame = feed.recv().await.unwrap();
            let expected = at(start.map_or(1, |o| o.seq + 1));
            assert_eq!(frame.offset, Some(expected), "round {round}: started at {start:?}");
            opened += 1;
        }
        publisher.await.unwrap();
        assert!(opened > 10, "only {opened} feeds opened while events flowed");
    }

    /// The ring's two levels (see `Hub::wait_for_room`): a reader that reads nothing is given up
    /// on at the high-water mark, yet nothing it has not read is overwritten while the ring is
    /// full and it moves again within a second stall bound. Only outcomes are asserted.
    #[tokio::test]
    async fn giving_up_on_a_reader_overwrites_nothing_it_catches_up_on() {
        let hub = Arc::new(Hub::new(16)); // high water 8, capacity 16
        hub.bound_wait(Duration::from_millis(20));
        let mut late = hub.feed();
        for i in 0..16 {
            publish(&hub, &format!("p{i}")).await; // the 9th waits one bound, then goes on
        }
        assert!(hub.is_overrun(), "given up on the reader at the high-water mark");
        assert_eq!(late.pending(), 16, "yet everything it has not read is still there");
        // The ring is full: the next event waits (a second bound) instead of overwriting.
        let next = tokio::spawn({
            let hub = hub.clone();
            async move { publish(&hub, "p16").await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let first = late.try_recv().unwrap().and_then(|f| parcel_id_of(&f.bytes));
        assert_eq!(first.as_deref(), Some("p0"));
        hub.consumed();
        next.await.unwrap();
        let rest = drain(&mut late);
        assert_eq!(rest, (1..17).map(|i| format!("p{i}")).collect::<Vec<_>>(), "nothing lost");
    }

    /// While other connections keep finishing writes, the wait for the slowest reader extends
    /// past one stall bound: a reader that pauses for longer (but less than four) is paced to,
    /// not given up on. Without the others' writes it is given up on.
    #[tokio::test]
    async fn a_paused_reader_among_busy_ones_is_waited_for() {
        for busy in [true, false] {
            let hub = Arc::new(Hub::new(16));
            hub.bound_wait(Duration::from_millis(100));
            let mut paused = hub.feed();
            let others = tokio::spawn({
                let hub = hub.clone();
                async move {
                    for _ in 0..80 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if busy {
                            hub.consumed();
                        }
                    }
                }
            });
            let reader = tokio::spawn(async move {
                // One and a half bounds: well within the four a busy fleet gets.
                tokio::time::sleep(Duration::from_millis(150)).await;
                let mut got = drain(&mut paused).len();
                while got < 12 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    got += drain(&mut paused).len();
                }
                got
            });
            for i in 0..12 {
                publish(&hub, &format!("p{i}")).await;
            }
            assert_eq!(hub.is_overrun(), !busy, "busy: {busy}");
            others.await.unwrap();
            assert_eq!(reader.await.unwrap(), 12);
        }
    }

    #[tokio::test]
    async fn a_new_feed_waits_for_the_publishes_taken_before_it() {
        let hub = Arc::new(Hub::new(16));
        hub.accepted(hub.taken());
        hub.accepted(hub.taken());
        hub.taken(); // waits for its dispatch: its caller is not told before, no feed waits for it
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move { hub.caught_up().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "two publishes taken, none dispatched");
        hub.dispatched(1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one of two dispatched");
        hub.dispatched(1);
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn dropping_a_feed_cleans_the_index() {
        let hub = Arc::new(Hub::new(64));
        let mut one = hub.feed();
        let mut two = hub.feed();
        one.subscribe(&ids(&["a", "b"])).unwrap();
        two.subscribe(&ids(&["a"])).unwrap();
        drop(one);
        assert_eq!(hub.index.read().unwrap().parcels.len(), 1);
        assert_eq!(hub.index.read().unwrap().parcels["a"].len(), 1);
        drop(two);
        assert!(hub.index.read().unwrap().parcels.is_empty());
    }

    #[tokio::test]
    async fn an_overflowing_filtered_feed_is_marked_lost() {
        let hub = Arc::new(Hub::new(64));
        let mut feed = hub.feed();
        feed.subscribe(&ids(&["a"])).unwrap();
        for _ in 0..FILTERED_QUEUE + 1 {
            publish(&hub, "a").await;
        }
        assert!(feed.has_lost());
        assert!(matches!(feed.try_recv(), Err(FeedError::Lagged(0))));
    }

    async fn publish_to(hub: &Hub, id: &str, users: &[&str]) {
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        hub.dispatch(&Event::new(id).unwrap().to_users(&users).unwrap()).await;
    }

    /// Broadcasts and events addressed to a user reach that user's connections in publish
    /// order, whatever their filter; nobody else receives an addressed event.
    #[tokio::test]
    async fn addressed_events_reach_their_user_only_in_publish_order() {
        let hub = Arc::new(Hub::new(64));
        let mut a1 = hub.open(None, Some("a")).feed;
        let mut a2 = hub.open(Some(&ids(&["x"])), Some("a")).feed;
        let mut b = hub.open(None, Some("b")).feed;
        let mut anonymous = hub.feed();
        publish(&hub, "p1").await;
        publish_to(&hub, "t1", &["a"]).await;
        publish(&hub, "x").await;
        publish_to(&hub, "t2", &["a", "z"]).await;
        publish(&hub, "p2").await;
        assert_eq!(drain(&mut a1), ["p1", "t1", "x", "t2", "p2"]);
        assert_eq!(drain(&mut a2), ["t1", "x", "t2"], "addressed events pass the parcel filter");
        assert_eq!(drain(&mut b), ["p1", "x", "p2"]);
        assert_eq!(drain(&mut anonymous), ["p1", "x", "p2"]);
        assert_eq!(hub.presence(&ids(&["a", "b", "z"])), [2, 1, 0]);
        drop(a1);
        drop(a2);
        assert_eq!(hub.presence(&ids(&["a"])), [0]);
        assert!(!hub.index.read().unwrap().users.contains_key("a"));
    }

    /// The merge holds while events stream in from another thread and the reader waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_merge_keeps_publish_order_under_load() {
        let hub = Arc::new(Hub::new(4096));
        let mut feed = hub.open(None, Some("u")).feed;
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for n in 0..3000 {
                    let id = format!("{n}");
                    if n % 3 == 0 {
                        publish_to(&hub, &id, &["u"]).await;
                    } else {
                        publish(&hub, &id).await;
                    }
                }
            })
        };
        for n in 0..3000 {
            let frame = feed.recv().await.unwrap();
            assert_eq!(parcel_id_of(&frame.bytes), Some(format!("{n}")));
            hub.consumed();
        }
        publisher.await.unwrap();
    }

    #[tokio::test]
    async fn a_user_without_a_connection_gets_the_event_at_the_next_one_once() {
        let hub = Arc::new(Hub::new(64));
        publish_to(&hub, "t1", &["z"]).await;
        publish(&hub, "p1").await;
        publish_to(&hub, "t2", &["z"]).await;
        assert_eq!(hub.inbox_counts(), (2, 0));
        let opened = hub.open(None, Some("z"));
        let inbox: Vec<_> = opened.inbox.iter().map(|f| parcel_id_of(&f.bytes).unwrap()).collect();
        assert_eq!(inbox, ["t1", "t2"]);
        let mut feed = opened.feed;
        publish_to(&hub, "t3", &["z"]).await;
        assert_eq!(drain(&mut feed), ["t3"], "connected: delivered, not kept");
        drop(feed);
        assert!(hub.open(None, Some("z")).inbox.is_empty(), "an inbox is delivered once");
    }

    /// Events taken from the user's inbox in Redis are not delivered live a second time, whether
    /// they were already queued or arrive later; later events pass.
    #[tokio::test]
    async fn inboxed_events_are_not_delivered_live_twice() {
        let hub = Arc::new(Hub::new(64));
        let mut feed = hub.open(None, Some("u")).feed;
        let at = |seq| Offset { ms: 7, seq };
        let to_u = |id: &str, seq| {
            Event::new(id).unwrap().to_users(&["u".to_string()]).unwrap().at(at(seq))
        };
        hub.dispatch(&to_u("t1", 1)).await;
        feed.skip_inboxed(&[at(2), at(1)]);
        hub.dispatch(&to_u("t2", 2)).await;
        hub.dispatch(&Event::new("b").unwrap().at(at(3))).await;
        hub.dispatch(&to_u("t4", 4)).await;
        hub.dispatch(&to_u("t1-again", 1)).await;
        assert_eq!(
            drain(&mut feed),
            ["b", "t4", "t1-again"],
            "the skip ends at the first later event"
        );
    }

    /// A filter change's seam keeps the order of broadcasts and addressed events.
    #[tokio::test]
    async fn filter_changes_keep_addressed_events_in_order() {
        let hub = Arc::new(Hub::new(64));
        let mut feed = hub.open(None, Some("u")).feed;
        publish(&hub, "a").await;
        publish_to(&hub, "t", &["u"]).await;
        publish(&hub, "a").await;
        let seam = feed.subscribe(&ids(&["a"])).unwrap();
        let seam: Vec<_> = seam.iter().map(|f| parcel_id_of(&f.bytes).unwrap()).collect();
        assert_eq!(seam, ["a", "t", "a"]);
        publish_to(&hub, "t2", &["u"]).await;
        publish(&hub, "a").await;
        let widened = feed.subscribe_all();
        let widened: Vec<_> = widened.iter().map(|f| parcel_id_of(&f.bytes).unwrap()).collect();
        assert_eq!(widened, ["t2", "a"]);
        assert!(drain(&mut feed).is_empty());
    }
}
