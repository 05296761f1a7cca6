//! One task per client: sends the welcome, then the events it wants, answers the few messages a
//! client may send, keeps the connection honest (heartbeat, token expiry, message rate) and cuts
//! it cleanly when it must.
//!
//! Memory per idle connection (~2.2 KiB of RSS, see BENCHMARKS.md): this task (1,280 bytes with
//! tokio's header: its size is that of its largest state, so nothing is held twice and the rare
//! steps are boxed), the socket's registration with tokio (256), the user's queue of addressed
//! events (128), the timer (128), tokio-tungstenite's two waker slots (2 × 80), the 64-byte read
//! buffer and the write buffer (kept by tungstenite at the size of the largest batch written).
//!
//! Metrics cost nothing per delivery: a batch's frame count and bytes are added once per flush,
//! with one latency observation (see `metrics/`). The write path is in `write.rs`, the inbound limits in `limits.rs`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::Either;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Authenticator, Claims};
use crate::drain::Drain;
use crate::event::{parcel_id_of, Frame, Offset};
use crate::history::Replay;
use crate::hub::{Feed, FeedError, Hub};
use crate::metrics::{ws_frame_len, ServerMetrics};
use crate::protocol::frame::{self, Ack};
use crate::protocol::{check_parcel_ids, parse_request, Disconnect, MessageError, Request};

mod limits;
mod write;

use limits::{ByteBudget, TokenBucket};
pub(crate) use limits::{Metered, Tripped};
use write::{close_frame, close_ws, guarded, Guarded, Write, Written};

/// Time allowed to deliver a close frame before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The same for a client being cut because it does not read: its socket is full, so the close
/// frame rarely gets out; its file descriptor is released soon.
const CUT_CLOSE_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest a replay (`?since=` or `resume`) may take; a client that reads it slower is cut (1013).
const REPLAY_MAX_TIME: Duration = Duration::from_secs(30);

/// Per-connection rules, from the server's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// A write blocked this long is cut, whatever else happens.
    pub send_timeout: Duration,
    /// A write blocked this long while publishers wait for this client is cut (1013).
    pub stall_timeout: Duration,
    /// Silence after which the server pings; `None` disables heartbeats.
    pub ping_interval: Option<Duration>,
    /// Time a client has to answer a ping (any frame counts).
    pub pong_timeout: Duration,
    /// Clock skew tolerated on `exp`.
    pub jwt_leeway: Duration,
    pub max_subscriptions: usize,
    /// Token bucket for inbound messages: sustained rate per second and burst.
    pub messages_per_second: f64,
    pub message_burst: f64,
}

/// What a connection reports to, and learns from, its server: its counters and its drain.
#[derive(Debug, Default)]
pub(crate) struct Context {
    pub metrics: ServerMetrics,
    pub drain: Drain,
}

/// Who is on the other end, as the handshake established it. Every connection's task holds
/// this for the connection's life: what only the first moments need is boxed (`opening`).
pub(crate) struct Client {
    /// The user id, shared with the hub's index of users (see `Feed::user`).
    pub user: Option<Arc<str>>,
    /// The claim that names the user: its name, and whether its JSON value is a number (the
    /// value is `user`, as text): a refresh must carry the same (see `Client::same_claim`).
    pub user_claim: Option<(&'static str, bool)>,
    /// When the token expires (its `exp` plus the leeway), if it has one.
    pub expires_at: Option<Instant>,
    /// The offset the welcome frame announces: the last event before its feed began, so every
    /// later event reaches this client live (`None` when the bus keeps no history).
    pub start: Option<Offset>,
    /// What follows the welcome, if anything (most connections have none of it).
    pub opening: Option<Box<Opening>>,
}

/// What a connection sends after its welcome frame.
pub(crate) struct Opening {
    /// Whether parcel ids were asked for at connect (`?parcels=`): the feed is already narrowed
    /// to them; the client is told so.
    pub parcels: bool,
    /// Where to resume from (`?since=`).
    pub since: Option<Offset>,
    /// Events addressed to the user that waited while they had no connection.
    pub inbox: Vec<Frame>,
}

impl Client {
    pub fn from_claims(
        claims: &Claims,
        user: Option<Arc<str>>,
        leeway: Duration,
        opening: Opening,
        start: Option<Offset>,
    ) -> Self {
        let user_claim = auth::user_claim(claims).map(|(name, value)| (name, value.is_number()));
        let opening = (opening.parcels || opening.since.is_some() || !opening.inbox.is_empty())
            .then(|| Box::new(opening));
        Self { user, user_claim, expires_at: expiry(claims, leeway), start, opening }
    }

    /// Whether a refresh's claims name the user exactly as the connection's token did (claim
    /// name and JSON value: `1` and `"1"` differ).
    fn same_claim(&self, claims: &Claims) -> bool {
        match (auth::user_claim(claims), self.user_claim, &self.user) {
            (None, None, _) => true,
            (Some((name, value)), Some((held, number)), Some(user)) if name == held => {
                // The value as the token gave it: `user` is its text (a number's, printed
                // exactly: parsed back, it is the same number).
                let held = if number {
                    serde_json::from_str::<serde_json::Value>(user).ok()
                } else {
                    Some(serde_json::Value::String(user.to_string()))
                };
                held.is_some_and(|held| held == value)
            }
            _ => false,
        }
    }
}

/// The instant a token's `exp` (plus leeway) passes, if it has an `exp`.
fn expiry(claims: &Claims, leeway: Duration) -> Option<Instant> {
    let exp = claims.get("exp")?.as_f64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    // Not `clamp`: it passes NaN through, and `from_secs_f64(NaN)` panics; `max` drops it.
    #[allow(clippy::manual_clamp)]
    let left = Duration::from_secs_f64((exp - now).max(0.0).min(1e9));
    Some(Instant::now() + left + leeway)
}

/// How a connection ended: its entry in the [`Disconnect`] table, and what the log line adds.
#[derive(Debug)]
pub(crate) struct Ended {
    pub why: Disconnect,
    /// Events it will never receive (a client cut for being too slow).
    pub dropped: u64,
    /// The error behind a protocol error, or the token code behind a refused refresh.
    pub detail: Option<String>,
}

impl From<Disconnect> for Ended {
    fn from(why: Disconnect) -> Self {
        Ended { why, dropped: 0, detail: None }
    }
}

impl Ended {
    /// How a socket error ends a connection: a client that went away (reset, or the socket
    /// closed without a close frame) left; anything else broke the protocol.
    fn socket(e: WsError) -> Self {
        match e {
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Io(_)
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Disconnect::ClientClosed.into()
            }
            e => Ended { detail: Some(e.to_string()), ..Disconnect::ProtocolError.into() },
        }
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.why.log_text())?;
        if self.dropped > 0 {
            write!(f, ", {} events behind", self.dropped)?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        match self.why.close_code() {
            Some(code) => write!(f, " ({code})"),
            None => Ok(()),
        }
    }
}

pub(crate) type Ws = WebSocketStream<Metered<TcpStream>>;

/// The connection's state between frames.
struct Conn<'a> {
    ws: Ws,
    feed: Feed,
    hub: &'a Hub,
    auth: &'a Authenticator,
    settings: &'a Settings,
    client: Client,
    /// Last time anything arrived from the client.
    last_seen: Instant,
    /// When the unanswered ping was sent.
    ping_sent: Option<Instant>,
    bucket: TokenBucket,
    /// Bytes this client may draw with its requests (replays, acks, errors): small requests
    /// cannot buy huge answers.
    budget: ByteBudget,
    /// Live frames at or before this offset were already replayed: skip them.
    skip_through: Option<Offset>,
    /// The offset of the first event sent on this connection.
    first_sent: Option<Offset>,
    ops: &'a Context,
    /// While draining: this connection's moment in the window (see `Drain::notice_at`).
    drain_slot: Option<u32>,
    /// Whether the drain notice went out.
    noticed: bool,
}

/// Serves one client until the connection ends. A plain fn returning the future (rather than an
/// `async fn`) so the task holds the connection's state once, not also its constructor arguments.
///
/// `shutdown` firing closes it with 1001, unless the server is draining: then the client waits
/// for its moment in the drain window, gets the drain notice, keeps receiving events for the
/// drain's overlap, and only then is closed with 1001 (see `drain.rs`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<'a>(
    ws: Ws,
    feed: Feed,
    hub: &'a Hub,
    auth: &'a Authenticator,
    settings: &'a Settings,
    client: Client,
    shutdown: CancellationToken,
    ops: &'a Context,
) -> impl Future<Output = Ended> + Send + 'a {
    let now = Instant::now();
    let mut conn = Conn {
        ws,
        feed,
        hub,
        auth,
        settings,
        client,
        last_seen: now,
        ping_sent: None,
        bucket: TokenBucket::new(settings.message_burst),
        budget: ByteBudget::new(),
        skip_through: None,
        first_sent: None,
        ops,
        drain_slot: None,
        noticed: false,
    };
    // Served in place: an `async fn` taking the state by value would hold it twice in the task
    // (the argument, kept for the future's whole life, and the local it is moved into).
    async move { conn.serve(shutdown).await }
}

/// How a step ended, and what the timer must do now.
type Stepped = (Result<(), Ended>, Then);

/// A step of a connection other than an event batch, boxed (see `Conn::step`).
type Boxed<'s> = Pin<Box<dyn Future<Output = Stepped> + Send + 's>>;

fn boxed<'s, A>(step: impl Future<Output = Stepped> + Send + 's) -> Either<A, Boxed<'s>> {
    Either::Right(Box::pin(step))
}

/// What the timer must do once a step is done.
#[derive(Clone, Copy)]
enum Then {
    Keep,
    /// Set it for the next check.
    Reset,
    /// Bring it forward if the next check is sooner.
    Sooner,
}

/// What woke a connection's task.
enum Wake {
    Shutdown,
    Timer,
    Feed(Result<Frame, FeedError>),
    Inbound(Option<Result<Message, WsError>>),
}

impl<'a> Conn<'a> {
    /// The welcome frame (with the current offset), then the acknowledgement of `?parcels=`,
    /// then the replay of `?since=`, or else the user's inbox.
    /// What follows the welcome (which the server wrote with the 101: see `server::handshake`).
    async fn start(&mut self) -> Result<(), Ended> {
        let Some(opening) = self.client.opening.take() else { return Ok(()) };
        let Opening { parcels, since, inbox } = *opening;
        if parcels {
            // The server narrowed the feed before the welcome (see `server::handshake`).
            self.ack(Ack::Subscribed).await?;
        }
        let replayed = match since {
            Some(since) => self.resume(since).await?,
            None => false,
        };
        // A replay already holds what the inbox kept (it is in the history, addressed to this
        // user): sent twice it would be a duplicate. Inbox frames do not count as "sent live"
        // (`first_sent`): they are older than the live stream.
        if !replayed && !inbox.is_empty() {
            // An inboxed event that also arrives live (Redis mode: inboxed just before this
            // connection counted as present) is sent once, from the inbox.
            let offsets: Vec<Offset> = inbox.iter().filter_map(|f| f.offset).collect();
            self.feed.skip_inboxed(&offsets);
            for frame in inbox {
                self.feed_frame(Message::Text(frame.bytes)).await?;
            }
            self.ws_flush().await?;
        }
        Ok(())
    }

    /// Sends what happened after `since` and before this connection's live stream began, then
    /// `resumed` (and returns true); or `resync_required` when the history cannot tell.
    async fn resume(&mut self, since: Offset) -> Result<bool, Ended> {
        let history = self.hub.history();
        let mut skip_through = self.client.start;
        let replay = match (history, self.client.start) {
            // The client is ahead of this server (it saw an event on another instance that has
            // not reached this one yet): nothing to replay if the shared history has it; what
            // arrives live up to `since` it already has.
            (Some(history), Some(head)) if since > head => {
                if history.newest().await.is_some_and(|newest| since <= newest) {
                    skip_through = Some(since);
                    Replay::Frames(Vec::new())
                } else {
                    Replay::ResyncRequired
                }
            }
            (Some(history), Some(head)) => history.between(since, head).await,
            _ => Replay::ResyncRequired,
        };
        let frames = match replay {
            Replay::Frames(frames) => frames,
            Replay::ResyncRequired => {
                // The current offset: where this client stands now.
                let current = self.hub.head().or(self.client.start);
                let reply = frame::resync_required(since, current);
                return self.send(Message::text(reply)).await.map(|()| false);
            }
        };
        // Events already sent live on this connection are not sent twice.
        let first_sent = self.first_sent;
        let filter = self.feed.parcel_ids();
        let user = self.client.user.clone();
        let mut replayed = 0usize;
        let started = Instant::now();
        for frame in frames {
            if first_sent.is_some_and(|first| frame.offset.is_some_and(|o| o >= first)) {
                continue;
            }
            // Another user's event is never replayed; one addressed to this user is, whatever
            // the parcel filter (it is addressed to them).
            if !frame.is_for(user.as_deref()) {
                continue;
            }
            if let (Some(ids), None) = (&filter, &frame.users) {
                if !parcel_id_of(&frame.bytes).is_some_and(|id| ids.contains(&id)) {
                    continue;
                }
            }
            if !self.budget.take(ws_frame_len(frame.bytes.len()), Instant::now()) {
                // Over its byte budget: the rest is for the client to refetch.
                let current = self.hub.head().or(self.client.start);
                let reply = frame::resync_required(since, current);
                return self.send(Message::text(reply)).await.map(|()| false);
            }
            if started.elapsed() >= REPLAY_MAX_TIME || self.feed.fell_behind() {
                return Err(Box::pin(self.too_slow(0)).await);
            }
            replayed += 1;
            self.feed_frame(Message::Text(frame.bytes)).await?;
        }
        if self.first_sent.is_none() {
            self.skip_through = skip_through;
        }
        self.send(Message::text(frame::resumed(since, replayed))).await.map(|()| true)
    }

    /// When the timer must next look at the connection: a ping is due, a ping went
    /// unanswered, the token expires, or a drain step is due.
    fn next_check(&self) -> Instant {
        let heartbeat = match (self.settings.ping_interval, self.ping_sent) {
            (_, Some(sent)) => sent + self.settings.pong_timeout,
            (Some(interval), None) => self.last_seen + interval,
            (None, None) => Instant::now() + Duration::from_secs(86_400),
        };
        let next = self.client.expires_at.map_or(heartbeat, |exp| exp.min(heartbeat));
        self.drain_due().map_or(next, |at| at.min(next))
    }

    /// When the next drain step is due: this connection's notice, then its close.
    fn drain_due(&self) -> Option<Instant> {
        let slot = self.drain_slot?;
        let notice = self.ops.drain.notice_at(slot);
        Some(if self.noticed { notice + self.ops.drain.overlap() } else { notice })
    }

    /// A plain fn around an `async` block: an `async fn` would keep its arguments in the task
    /// twice.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    fn serve(
        &mut self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Ended> + Send + use<'_, 'a> {
        async move {
            if let Err(ended) = Box::pin(self.start()).await {
                return ended;
            }
            let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep_until(self.next_check()));
            // Created once: registering with the shared token on every loop turn would make
            // every connection take the token's lock once per event.
            let mut shutdown = std::pin::pin!(shutdown.cancelled());
            loop {
                // Events first: when one is waiting, nothing else is polled (each poll of the
                // socket or the timer costs, a thousand times per event). The others cannot
                // starve for long: publishers are paced to the clients, so the feed runs dry
                // between bursts.
                let wake = tokio::select! {
                    biased;
                    received = self.feed.recv() => Wake::Feed(received),
                    _ = shutdown.as_mut(), if self.drain_slot.is_none() => Wake::Shutdown,
                    inbound = self.ws.next() => Wake::Inbound(inbound),
                    _ = timer.as_mut() => Wake::Timer,
                };
                // `wake` is consumed here, before the step is awaited: it then takes no room in
                // the task beside the step.
                let (step, then) = self.step(wake).await;
                match then {
                    Then::Reset => timer.as_mut().reset(self.next_check()),
                    Then::Sooner => {
                        // A refresh may bring the expiry forward; later deadlines are handled
                        // lazily when the timer fires.
                        let next = self.next_check();
                        if next < timer.deadline() {
                            timer.as_mut().reset(next);
                        }
                    }
                    Then::Keep => {}
                }
                if let Err(ended) = step {
                    return ended;
                }
            }
        }
    }

    /// What to do about `wake`, and what the timer must do after (part of the step's output, so
    /// that it takes no room of its own while the step runs). Events are the hot path and stay
    /// inline; everything else is boxed, so that an idle connection's task (whose size is that of
    /// its largest state) stays small.
    fn step(
        &mut self,
        wake: Wake,
    ) -> Either<impl Future<Output = Stepped> + Send + use<'_, 'a>, Boxed<'_>> {
        fn keep(step: Result<(), Ended>) -> Stepped {
            (step, Then::Keep)
        }
        match wake {
            Wake::Feed(Ok(first)) => Either::Left(self.write_events(first).map(keep)),
            Wake::Timer => boxed(async move { (self.on_timer().await, Then::Reset) }),
            Wake::Inbound(inbound) => {
                boxed(async move { (self.on_inbound(inbound).await, Then::Sooner) })
            }
            Wake::Feed(Err(FeedError::Lagged(n))) => {
                boxed(async move { (Err(self.too_slow(n).await), Then::Keep) })
            }
            Wake::Shutdown if self.ops.drain.overlap_now().is_some() => {
                // Draining: wait for this connection's moment (handled by the timer).
                self.drain_slot = Some(self.ops.drain.next_slot());
                boxed(std::future::ready((Ok(()), Then::Reset)))
            }
            Wake::Shutdown | Wake::Feed(Err(FeedError::Closed)) => {
                boxed(
                    async move { (Err(self.close(Disconnect::ServerShutdown).await), Then::Keep) },
                )
            }
        }
    }

    async fn on_timer(&mut self) -> Result<(), Ended> {
        let now = Instant::now();
        if self.drain_due().is_some_and(|at| now >= at) {
            return self.drain_step().await;
        }
        if self.client.expires_at.is_some_and(|exp| now >= exp) {
            return Err(self.close(Disconnect::TokenExpired).await);
        }
        if let Some(sent) = self.ping_sent {
            if now >= sent + self.settings.pong_timeout {
                // The client is probably gone: don't wait long for its answer.
                let why = Disconnect::HeartbeatTimeout;
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    self.ws.send(Message::Close(Some(close_frame(why)))),
                )
                .await;
                return Err(why.into());
            }
        } else if let Some(interval) = self.settings.ping_interval {
            if now >= self.last_seen + interval {
                self.ping_sent = Some(now);
                self.send(Message::Ping(Default::default())).await?;
            }
        }
        Ok(())
    }

    /// The drain's steps: at this connection's moment, the notice (then events keep flowing for
    /// the overlap); after the overlap, or when no time is left for one, close 1001.
    async fn drain_step(&mut self) -> Result<(), Ended> {
        let overlap = if self.noticed { None } else { self.ops.drain.overlap_now() };
        let Some(overlap) = overlap else {
            return Err(self.close(Disconnect::ServerShutdown).await);
        };
        self.noticed = true;
        self.send(Message::text(frame::reconnect(overlap))).await
    }

    async fn on_inbound(&mut self, inbound: Option<Result<Message, WsError>>) -> Result<(), Ended> {
        let message = match inbound {
            None => return Err(Disconnect::ClientClosed.into()),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(_))) => return Err(self.close(Disconnect::TooLarge).await),
            Some(Err(WsError::Utf8(_))) => return Err(self.close(Disconnect::InvalidUtf8).await),
            Some(Err(WsError::Io(e))) if Tripped::of(&e).is_some() => {
                // Charged per frame as it arrived (see `limits::Metered`).
                let why = match Tripped::of(&e) {
                    Some(Tripped::TooFragmented) => Disconnect::TooFragmented,
                    _ => Disconnect::RateLimited,
                };
                return Err(self.close(why).await);
            }
            Some(Err(e)) => {
                let ended = Ended::socket(e);
                if ended.why == Disconnect::ClientClosed {
                    return Err(ended);
                }
                close_ws(&mut self.ws, Disconnect::ProtocolError, CLOSE_TIMEOUT).await;
                return Err(ended);
            }
        };
        self.last_seen = Instant::now();
        self.ping_sent = None;
        if matches!(message, Message::Close(_)) {
            // tungstenite has queued the answering Close frame; send it, so the client sees a
            // clean close with its own code rather than 1006.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
            return Err(Disconnect::ClientClosed.into());
        }
        let (rate, burst) = (self.settings.messages_per_second, self.settings.message_burst);
        if !self.bucket.take(rate, burst, self.last_seen) {
            return Err(self.close(Disconnect::RateLimited).await);
        }
        match message {
            Message::Text(text) => match parse_request(&text) {
                Ok(request) => self.handle(request).await,
                Err(reply) => self.reply(reply).await,
            },
            Message::Binary(_) => {
                let reply = frame::error(
                    MessageError::UnsupportedMessage,
                    "binary messages are not supported; send JSON text",
                );
                self.send(Message::text(reply)).await
            }
            // Pings are answered by tungstenite itself on the next write or flush.
            _ => Ok(()),
        }
    }

    async fn handle(&mut self, request: Request) -> Result<(), Ended> {
        match request {
            Request::Ping => self.send(Message::text(frame::PONG)).await,
            Request::Subscribe { all: Some(true), .. } => {
                let seam = self.feed.subscribe_all();
                self.write_frames(seam).await?;
                self.ack(Ack::Subscribed).await
            }
            Request::Subscribe { parcel_ids, .. } => {
                let ids = match check_parcel_ids(parcel_ids) {
                    Ok(ids) => ids,
                    Err(reply) => return self.reply(reply).await,
                };
                if self.feed.count_after_adding(&ids) > self.settings.max_subscriptions {
                    let reply = frame::error(
                        MessageError::SubscriptionLimit,
                        &format!(
                            "a connection may follow at most {} parcels; nothing was changed",
                            self.settings.max_subscriptions
                        ),
                    );
                    return self.send(Message::text(reply)).await;
                }
                match self.feed.subscribe(&ids) {
                    Ok(seam) => self.write_frames(seam).await?,
                    Err(_) => return Err(self.too_slow(0).await),
                }
                self.ack(Ack::Subscribed).await
            }
            Request::Unsubscribe { parcel_ids } => {
                let ids = match check_parcel_ids(parcel_ids) {
                    Ok(ids) => ids,
                    Err(reply) => return self.reply(reply).await,
                };
                self.feed.unsubscribe(&ids);
                self.ack(Ack::Unsubscribed).await
            }
            Request::Refresh { token } => self.refresh(&token).await,
            Request::Resume { since } => match since.parse::<Offset>() {
                Ok(since) => self.resume(since).await.map(|_| ()),
                Err(e) => {
                    let reply = frame::error(MessageError::InvalidOffset, e.message());
                    self.send(Message::text(reply)).await
                }
            },
        }
    }

    /// Acknowledges a (un)subscribe with the state that results from it.
    async fn ack(&mut self, ack: Ack) -> Result<(), Ended> {
        let state = frame::subscription(ack, self.feed.parcel_ids().as_ref());
        self.reply(state).await
    }

    async fn refresh(&mut self, token: &str) -> Result<(), Ended> {
        let claims = match self.auth.verify(token) {
            Ok(claims) => claims,
            Err(e) => {
                let mut ended = self.close(Disconnect::RefreshRefused).await;
                ended.detail = Some(e.code().to_string());
                return Err(ended);
            }
        };
        if !self.client.same_claim(&claims) {
            return Err(self.close(Disconnect::RefreshOtherUser).await);
        }
        if self.client.expires_at.is_some() && claims.get("exp").is_none() {
            // A connection with an expiry keeps one: a token without `exp` would never expire.
            return Err(self.close(Disconnect::RefreshWithoutExp).await);
        }
        self.client.expires_at = expiry(&claims, self.settings.jwt_leeway);
        self.send(Message::text(frame::refreshed(claims.get("exp")))).await
    }

    /// Writes `first` and whatever else is waiting, in one flush. A plain fn around a small
    /// `async` block: this runs inline in every connection's task, and an `async fn` would keep
    /// its argument (the frame) there beside the write's state.
    fn write_events(
        &mut self,
        first: Frame,
    ) -> impl Future<Output = Result<(), Ended>> + use<'_, 'a> {
        let mut batch = self.start_batch(first);
        async move {
            // Borrowed in place, not moved into a local (which would take room again).
            let Some((write, entered)) = &mut batch else { return Ok(()) };
            // The closure captures the connection once (not each field it passes on): it is part
            // of every connection's task.
            let written = std::future::poll_fn(|cx| {
                let conn = &mut *self;
                write.poll(&mut conn.ws, &mut conn.feed, conn.hub, conn.settings, cx)
            })
            .await;
            match written {
                Written::Done => {
                    let (frames, bytes) = self.feed.take_counts();
                    self.ops.metrics.batch_sent(frames.into(), bytes.into(), *entered);
                    self.hub.consumed();
                    Ok(())
                }
                Written::Lagged(n) => Err(Box::pin(self.too_slow(n)).await),
                Written::Stalled => Err(Box::pin(self.too_slow(0)).await),
                Written::Stuck => Err(Disconnect::Stuck.into()),
                Written::Failed(e) => Err(Ended::socket(e)),
            }
        }
    }

    /// The batch `first` starts, and when `first` entered the server; `None` when it was
    /// already replayed.
    fn start_batch(&mut self, first: Frame) -> Option<(Write, u32)> {
        if self.skip_through.is_some() {
            match (first.offset, self.skip_through) {
                (Some(offset), Some(skip)) if offset <= skip => return None,
                (Some(_), _) => self.skip_through = None,
                _ => {}
            }
        }
        if self.first_sent.is_none() {
            self.first_sent = first.offset;
        }
        self.feed.count(&first);
        Some((Write::new(first.bytes, &self.feed), first.entered))
    }

    /// Writes frames handed over at a filter change (already in order).
    async fn write_frames(&mut self, frames: Vec<Frame>) -> Result<(), Ended> {
        for frame in frames {
            if self.first_sent.is_none() {
                self.first_sent = frame.offset;
            }
            self.feed_frame(Message::Text(frame.bytes)).await?;
        }
        Ok(())
    }

    /// Feeds one event frame outside a batch (a replay or a filter change's seam).
    async fn feed_frame(&mut self, message: Message) -> Result<(), Ended> {
        if let Message::Text(text) = &message {
            self.ops.metrics.frames_sent(1, ws_frame_len(text.len()));
        }
        let written = guarded(&self.feed, self.settings, self.ws.feed(message)).await;
        self.after_guarded(written).await
    }

    /// What a guarded write's outcome means for the connection.
    async fn after_guarded(&mut self, written: Guarded) -> Result<(), Ended> {
        match written {
            Guarded::Done => Ok(()),
            Guarded::Failed(e) => Err(Ended::socket(e)),
            Guarded::Stuck => Err(Disconnect::Stuck.into()),
            Guarded::FellBehind => Err(Box::pin(self.too_slow(0)).await),
        }
    }

    /// Flushes what was fed, under the same rule as every write.
    async fn ws_flush(&mut self) -> Result<(), Ended> {
        let written = guarded(&self.feed, self.settings, self.ws.flush()).await;
        self.after_guarded(written).await
    }

    /// Sends one message (and everything fed before it).
    async fn send(&mut self, message: Message) -> Result<(), Ended> {
        if let Message::Text(text) = &message {
            self.ops.metrics.control_sent(ws_frame_len(text.len()));
        }
        let written = guarded(&self.feed, self.settings, self.ws.send(message)).await;
        self.after_guarded(written).await
    }

    /// Sends a reply to a client request, charged to the client's byte budget: a client whose
    /// requests draw more than the budget allows is closed (4429).
    async fn reply(&mut self, text: String) -> Result<(), Ended> {
        if !self.budget.take(ws_frame_len(text.len()), Instant::now()) {
            return Err(self.close(Disconnect::RateLimited).await);
        }
        self.send(Message::text(text)).await
    }

    /// Cuts a client that cannot keep up: first gives up its place in the ring (so publishers
    /// resume at once), then lets whatever is buffered drain, ending with close 1013.
    async fn too_slow(&mut self, behind: u64) -> Ended {
        // Everything it skipped and everything still waiting for it: events it will never get.
        let behind = behind + self.feed.pending() as u64;
        self.feed.detach();
        close_ws(&mut self.ws, Disconnect::TooSlow, CUT_CLOSE_TIMEOUT).await;
        Ended { dropped: behind, ..Disconnect::TooSlow.into() }
    }

    /// Closes with `why`'s close frame and waits briefly for the client's answer.
    async fn close(&mut self, why: Disconnect) -> Ended {
        close_ws(&mut self.ws, why, CLOSE_TIMEOUT).await;
        why.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    fn client(json: &str) -> Client {
        let claims = claims(json);
        let user = auth::user_id(&claims).map(Arc::from);
        let opening = Opening { parcels: false, since: None, inbox: Vec::new() };
        Client::from_claims(&claims, user, Duration::ZERO, opening, None)
    }

    /// The compact form of the user claim compares as the claim itself did (name and JSON value).
    #[test]
    fn a_refresh_must_name_the_user_with_the_same_claim() {
        let same = |a: &str, b: &str| client(a).same_claim(&claims(b));
        assert!(same(r#"{"sub":"u1"}"#, r#"{"sub":"u1","exp":1}"#));
        assert!(same(r#"{"sub":7}"#, r#"{"sub":7}"#));
        assert!(same(r#"{"sub":-7}"#, r#"{"sub":-7}"#));
        assert!(same(r#"{"sub":1.5}"#, r#"{"sub":1.5}"#));
        assert!(same(r#"{"sub":1e300}"#, r#"{"sub":1e300}"#));
        assert!(same(r#"{"userId":"u1"}"#, r#"{"userId":"u1"}"#));
        assert!(same(r#"{"role":"x"}"#, r#"{"other":"y"}"#));
        assert!(!same(r#"{"sub":"1"}"#, r#"{"sub":1}"#));
        assert!(!same(r#"{"sub":1}"#, r#"{"sub":"1"}"#));
        assert!(!same(r#"{"sub":1}"#, r#"{"sub":1.0}"#));
        assert!(!same(r#"{"sub":"u1"}"#, r#"{"sub":"u2"}"#));
        assert!(!same(r#"{"sub":"u1"}"#, r#"{"userId":"u1"}"#));
        assert!(!same(r#"{"sub":"u1"}"#, r#"{}"#));
        assert!(!same(r#"{}"#, r#"{"sub":"u1"}"#));
    }
}

#[cfg(test)]
mod size_probe {
    use super::*;

    /// Prints the size of each state of a connection's task (`cargo test -- --nocapture`).
    #[tokio::test]
    #[ignore]
    async fn print_state_sizes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let ws = WebSocketStream::from_raw_socket(
            Metered::new(stream, 10.0, 10.0),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let hub = std::sync::Arc::new(Hub::new(64));
        let feed = hub.feed();
        let auth = Authenticator::new("s", Duration::ZERO, &Default::default());
        let settings = Settings {
            send_timeout: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(1),
            ping_interval: None,
            pong_timeout: Duration::from_secs(1),
            jwt_leeway: Duration::ZERO,
            max_subscriptions: 10,
            messages_per_second: 10.0,
            message_burst: 10.0,
        };
        let client =
            Client { user: None, user_claim: None, expires_at: None, start: None, opening: None };
        let ops = Context::default();
        let mut conn = Conn {
            ws,
            feed,
            hub: &hub,
            auth: &auth,
            settings: &settings,
            client,
            last_seen: Instant::now(),
            ping_sent: None,
            bucket: TokenBucket::new(1.0),
            budget: ByteBudget::new(),
            skip_through: None,
            first_sent: None,
            ops: &ops,
            drain_slot: None,
            noticed: false,
        };
        eprintln!("Ws {}", std::mem::size_of::<Ws>());
        eprintln!("Feed {}", std::mem::size_of::<Feed>());
        eprintln!("Client {}", std::mem::size_of::<Client>());
        eprintln!("Conn {}", std::mem::size_of_val(&conn));
        eprintln!("Frame {}", std::mem::size_of::<Frame>());
        eprintln!("Message {}", std::mem::size_of::<Message>());
        {
            let f = conn.write_events(Frame::control("x".into()));
            eprintln!("write_events {}", std::mem::size_of_val(&f));
        }
        {
            let f = conn.on_inbound(None);
            eprintln!("on_inbound {}", std::mem::size_of_val(&f));
        }
        {
            let f = conn.on_timer();
            eprintln!("on_timer {}", std::mem::size_of_val(&f));
        }
        {
            let f = conn.send(Message::text("x"));
            eprintln!("send {}", std::mem::size_of_val(&f));
        }
        {
            let f = conn.feed.recv();
            eprintln!("feed.recv {}", std::mem::size_of_val(&f));
        }
        {
            let f = conn.ws.next();
            eprintln!("ws.next {}", std::mem::size_of_val(&f));
        }
        let token = CancellationToken::new();
        {
            let f = token.cancelled();
            eprintln!("cancelled {}", std::mem::size_of_val(&f));
        }
        eprintln!("serve {}", std::mem::size_of_val(&conn.serve(token)));
    }
}
