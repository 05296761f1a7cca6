//! The WebSocket server: accept, HTTP upgrade with refusals before it, and clean shutdown.
//!
//! Every refusal is decided before the upgrade and answered as plain HTTP with a small JSON body,
//! so that any client (browser, curl, a load balancer) can read why; the refusals are the
//! [`Refusal`] table in `protocol.rs`.
//!
//! The operations endpoints (`/health`, `/metrics`, and the dashboard's `/` and `/stats`) are
//! answered on the same port before the WebSocket path check (see `ops.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Authenticator, Claims};
use crate::bus::Bus;
use crate::clock;
use crate::config::{Limits, ServerConfig};
use crate::connection::{self, Ended, Metered};
use crate::endpoints;
use crate::error::{codes, Error, Result};
use crate::event::Offset;
use crate::http::{self, HeadError, RequestHead};
use crate::hub::{self, Feed};
use crate::metrics::{self, ServerMetrics, Snapshot};
use crate::protocol::{frame, Disconnect, Refusal, Refused};

/// Decides whether an authenticated user may connect (e.g. "the user exists in the database").
pub trait UserValidator: Send + Sync + 'static {
    /// `Ok(true)` admits, `Ok(false)` refuses with 403, `Err` refuses with 403 and is logged.
    fn validate(
        &self,
        claims: &Claims,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;
}

/// Counts a connection as closed however it ends: [`ClientGuard::ended`] with the reason, or
/// as `client` if the task is dropped.
struct ClientGuard(Option<Arc<Shared>>);

impl ClientGuard {
    fn ended(mut self, ended: &Ended) {
        if let Some(shared) = self.0.take() {
            shared.ops.metrics.connection_closed(ended.why, ended.dropped);
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.ops.metrics.connection_closed(Disconnect::ClientClosed, 0);
        }
    }
}

struct Shared {
    config: ServerConfig,
    settings: connection::Settings,
    auth: Authenticator,
    bus: Arc<Bus>,
    validator: Option<Arc<dyn UserValidator>>,
    ws_config: WebSocketConfig,
    /// The counters and the drain state, which connections also see.
    ops: connection::Context,
    /// Open connections per client address (only kept when that limit is on).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Handshakes in progress per client address.
    ip_handshakes: Mutex<HashMap<IpAddr, usize>>,
    /// Handshakes in progress.
    handshakes: AtomicUsize,
    /// The limits in force (see `config::Limits`).
    limits: Limits,
    /// Connections admitted or being admitted (only kept when `max_connections` is on).
    slots: AtomicUsize,
}

impl Shared {
    fn snapshot(&self) -> Snapshot {
        let bus = &self.bus;
        let config = bus.config();
        let status = metrics::Status {
            draining: self.ops.drain.is_draining(),
            ws_path: self.config.path.clone(),
            bus_mode: match bus.mode() {
                Some(mode) => mode.as_str(),
                None if bus.has_failed() => "failed",
                None => "starting",
            },
            redis_configured: config.redis_url.is_some(),
            redis_required: config.redis_required,
            redis_connected: bus.redis_connected(),
            publish_queued: bus.queued() as u64,
        };
        Snapshot::collect(&self.ops.metrics, bus.hub().metrics(), status)
    }
}

/// A running server. Dropping it without [`Server::close`] also stops it, without waiting.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Stops the accept loop and the handshakes in progress (releases the port).
    shutdown: CancellationToken,
    /// Tells the connections to go: at once, or at their moment in the window while draining.
    close_clients: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Binds and starts accepting. Fails with `ERR_PORT_IN_USE`, `ERR_LISTEN_FAILED` or
    /// `ERR_MISSING_JWT_SECRET`. Must run inside a tokio runtime.
    pub async fn start(
        config: ServerConfig,
        bus: Arc<Bus>,
        validator: Option<Arc<dyn UserValidator>>,
    ) -> Result<Server> {
        if config.jwt_secret.is_empty() {
            return Err(Error::new(
                codes::MISSING_SECRET,
                "a JWT secret is required: set JWT_SECRET or pass jwtSecret",
            ));
        }
        if !config.path.starts_with('/') {
            return Err(Error::new(codes::INVALID_OPTION, "path must start with '/'"));
        }
        let listener = listen(&config.host, config.port).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                Error::new(
                    codes::PORT_IN_USE,
                    format!("port {} is already in use on {}", config.port, config.host),
                )
            } else {
                Error::new(
                    codes::LISTEN_FAILED,
                    format!("cannot listen on {}:{}: {e}", config.host, config.port),
                )
            }
        })?;
        let addr =
            listener.local_addr().map_err(|e| Error::new(codes::LISTEN_FAILED, e.to_string()))?;
        // Clients send only small control messages: a small read buffer keeps idle connections
        // cheap (tungstenite's default is 128 KiB each; it grows to fit a longer frame when one
        // comes; 64 bytes hold a ping, a pong or a short request, and a longer one is read in a
        // few more reads: requests are rare and rate-limited). A batch of events (up to 64 frames) goes out in one write: the buffer only
        // writes early past 16 KiB.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(64)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let limits = Limits::resolve(&config, crate::config::open_file_limit());
        log_limits(&limits);
        // No connection holds publishers longer than this, whatever phase it is in.
        bus.hub().bound_wait(config.stall_timeout);
        let settings = connection::Settings {
            send_timeout: config.send_timeout,
            stall_timeout: config.stall_timeout,
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            jwt_leeway: config.jwt_leeway,
            max_subscriptions: config.max_subscriptions,
            messages_per_second: config.messages_per_second,
            message_burst: config.message_burst.max(1.0),
        };
        let shared = Arc::new(Shared {
            settings,
            per_ip: Mutex::new(HashMap::new()),
            ip_handshakes: Mutex::new(HashMap::new()),
            handshakes: AtomicUsize::new(0),
            limits,
            slots: AtomicUsize::new(0),
            auth: Authenticator::new(&config.jwt_secret, config.jwt_leeway, &config.jwt_checks),
            config,
            bus,
            validator,
            ws_config,
            ops: connection::Context::default(),
        });
        let shutdown = CancellationToken::new();
        let close_clients = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            shared.clone(),
            shutdown.clone(),
            close_clients.clone(),
            tracker.clone(),
        ));
        Ok(Server { addr, shared, shutdown, close_clients, tracker })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This server's counters.
    pub fn metrics(&self) -> &ServerMetrics {
        &self.shared.ops.metrics
    }

    pub fn bus(&self) -> &Arc<Bus> {
        &self.shared.bus
    }

    /// Every figure now: what `/metrics`, `/stats` and `/health` render.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Whether a drain (or close) has started.
    pub fn is_draining(&self) -> bool {
        self.shared.ops.drain.is_draining()
    }

    /// Stops accepting (the port is free when this returns), says goodbye to every client with
    /// close code 1001, and waits up to `grace` for the connections to finish.
    pub async fn close(&self, grace: Duration) {
        self.drain_and_close(Duration::ZERO, grace).await
    }

    /// Graceful drain, then close (see `drain.rs`): from now on `/health` answers 503 and new
    /// upgrades are refused with 503 `DRAINING`; the connected clients get the drain notice and
    /// then close 1001 at moments spread over `window`; then the port is released and the
    /// connections get up to `grace` to finish. Returns early once every client has gone.
    /// Calling it again while it runs starts nothing new (the first window stands).
    pub async fn drain_and_close(&self, window: Duration, grace: Duration) {
        let end = self.start_drain(window);
        self.finish_close(end, grace).await
    }

    /// The synchronous first step of [`Server::drain_and_close`]: from its return on, the server
    /// reports `draining` and refuses upgrades. Returns the end of the window.
    pub fn start_drain(&self, window: Duration) -> tokio::time::Instant {
        let clients = self.shared.ops.metrics.clients();
        let first = !self.shared.ops.drain.is_draining();
        let end = self.shared.ops.drain.start(window, clients);
        if first && !window.is_zero() {
            log::info!(
                window_ms = window.as_millis() as u64, clients;
                "server: draining {clients} client{} over {window:?}",
                if clients == 1 { "" } else { "s" }
            );
        }
        self.close_clients.cancel();
        end
    }

    /// Waits until `end` or until every client has gone, then releases the port and waits up to
    /// `grace` for the connections to finish.
    pub async fn finish_close(&self, end: tokio::time::Instant, grace: Duration) {
        let gone = async {
            while self.shared.ops.metrics.clients() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {}
            _ = gone => {}
        }
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            log::warn!("server: some connections did not close within {grace:?}; dropped them");
        }
        // Redis mode: the closed connections stop counting in `presence()` before close returns
        // (a process that exits right after would otherwise count them for the presence window).
        if let Some(directory) = self.shared.bus.hub().directory() {
            let _ = tokio::time::timeout(Duration::from_secs(3), directory.settle()).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.close_clients.cancel();
    }
}

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`): a
/// burst of reconnecting clients (an instance drained, a network blip) must not be dropped.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first address `host` resolves to, with a deep accept backlog. `SO_REUSEADDR` lets
/// a restarted server rebind while old connections linger in TIME_WAIT.
async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "the host resolves to no address")
    }))
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    close_clients: CancellationToken,
    tracker: TaskTracker,
) {
    log::info!(
        "server: listening on ws://{}{}",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        shared.config.path
    );
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match at_accept(&shared, peer.ip()) {
                Ok(tickets) => {
                    tracker.spawn(handle(
                        stream,
                        peer,
                        shared.clone(),
                        tickets,
                        shutdown.clone(),
                        close_clients.clone(),
                    ));
                }
                Err(refused) => {
                    // Cheap: no task, no read; one non-blocking write, then the socket closes.
                    let refusal = Refusal::from(refused);
                    shared.ops.metrics.refused(refusal);
                    let (status, code) = (refusal.status(), refusal.code());
                    log::debug!(peer:% = peer, status, code; "server: refused {peer}: {status} {code}");
                    let response = http::json_response(status, code, refusal.message(), &[]);
                    let _ = stream.try_write(&response);
                }
            },
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays open.
                log::warn!("server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Dropping the listener here releases the port before close() returns.
}

/// A plain fn returning the task's future, not an `async fn`: an `async fn` keeps its arguments
/// (the socket, the tickets, ...) in the task for the connection's whole life.
fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tickets: Tickets,
    shutdown: CancellationToken,
    close_clients: CancellationToken,
) -> impl Future<Output = ()> + Send {
    // The handshake runs boxed: its state is freed once it is done, and the long-lived part of
    // the task holds only what the connection needs.
    let handshake =
        Box::pin(handshake(stream, peer, shared.clone(), tickets, shutdown, close_clients));
    async move {
        // The block ends the handshake's locals before the long await (their storage would
        // otherwise stay in the task for the connection's whole life).
        let (serve, user, _slots, guard) = {
            let Some(session) = handshake.await else {
                return;
            };
            let Session { ws, feed, client, close_clients, _slots, guard } = session;
            let user = client.user.clone();
            let (hub, auth, settings) = (shared.bus.hub(), &shared.auth, &shared.settings);
            let ops = &shared.ops;
            let serve = connection::run(ws, feed, hub, auth, settings, client, close_clients, ops);
            (serve, user, _slots, guard)
        };
        log_open(peer, user.as_deref().unwrap_or("-"));
        let opened = clock::now_ms();
        let ended = serve.await;
        guard.ended(&ended);
        let user = user.as_deref().unwrap_or("-");
        log_close(peer, user, &ended, clock::now_ms().saturating_sub(opened));
    }
}

// The connection lines are logged from plain functions: the logging machinery's temporaries then
// never take room in the connection's task.
#[inline(never)]
fn log_open(peer: SocketAddr, user: &str) {
    log::info!(
        event = "connection_open", peer:% = peer, user;
        "server: client {peer} (user {user}) connected"
    );
}

#[inline(never)]
fn log_close(peer: SocketAddr, user: &str, ended: &Ended, duration_ms: u64) {
    log::info!(
        event = "connection_close", peer:% = peer, user, reason = ended.why.metric_label(),
        detail:% = ended, duration_ms;
        "server: client {peer} (user {user}) disconnected: {ended}"
    );
}

/// An upgraded connection, ready to serve.
struct Session {
    ws: connection::Ws,
    feed: Feed,
    client: connection::Client,
    /// Fires when the connection must go (handed over through here rather than kept by the
    /// connection's task beside the handshake).
    close_clients: CancellationToken,
    _slots: (Slot, Option<IpSlot>),
    guard: ClientGuard,
}

/// Refusals logged per window at `info`; beyond that they go to `debug` and their count is
/// logged at `info` when the next window opens (a flood of bad clients cannot flood the logs).
const REFUSAL_LOGS_PER_WINDOW: u32 = 20;
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Logs a refusal (peer, status, code; never the request target, so never a token): at `info`,
/// at most `REFUSAL_LOGS_PER_WINDOW` per `REFUSAL_LOG_WINDOW` for the process, else at `debug`.
fn log_refusal(peer: SocketAddr, status: u16, code: &str) {
    static WINDOW: Mutex<Option<(std::time::Instant, u32, u64)>> = Mutex::new(None);
    let now = std::time::Instant::now();
    let (at_info, demoted) = {
        let mut window = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, skipped) = window.get_or_insert((now, 0, 0));
        let mut demoted = 0;
        if now.duration_since(*start) >= REFUSAL_LOG_WINDOW {
            demoted = *skipped;
            (*start, *logged, *skipped) = (now, 0, 0);
        }
        let at_info = *logged < REFUSAL_LOGS_PER_WINDOW;
        if at_info {
            *logged += 1;
        } else {
            *skipped += 1;
        }
        (at_info, demoted)
    };
    if demoted > 0 {
        log::info!(
            event = "refusals_not_logged", count = demoted;
            "server: {demoted} more refusals in the last 10 s were logged at debug only (see realtime_refusals_total)"
        );
    }
    let level = if at_info { log::Level::Info } else { log::Level::Debug };
    log::log!(
        level, event = "refusal", peer:% = peer, status, code;
        "server: refused {peer}: {status} {code}"
    );
}

/// The longest a new connection of a user waits for Redis to count it and hand over its inbox
/// (Redis mode); past it the connection goes on without the inbox, which stays in Redis.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a new connection waits for the publishes queued before it to be dispatched (see
/// `Hub::caught_up`; the pump waits at most the stall bound per dispatch, so this is rarely hit).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the request, refuses it or upgrades it.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tickets: Tickets,
    shutdown: CancellationToken,
    close_clients: CancellationToken,
) -> Option<Session> {
    let (shared, shutdown) = (&shared, &shutdown);
    let Tickets { slot, ip_slot, handshake: _handshake, ip_handshake: _ip_handshake } = tickets;
    let _ = stream.set_nodelay(true);
    let admitted = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = tokio::time::timeout(shared.config.handshake_timeout, admit(&mut stream, shared)) => r,
    };
    let admitted = match admitted {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(NotUpgraded::Answered(answer))) => {
            // An operations endpoint: not a refusal.
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
            return None;
        }
        Ok(Err(NotUpgraded::Gone)) => return None, // the peer left before asking anything
        Ok(Err(NotUpgraded::Refused(refusal))) => {
            return refuse(stream, peer, shared, refusal).await
        }
        Err(_) => return refuse(stream, peer, shared, Refused::HandshakeTimeout.into()).await,
    };
    let Admitted { head, claims, protocol, parcels, since } = admitted;
    drop((_handshake, _ip_handshake));
    let key = head.header("sec-websocket-key").unwrap_or_default();
    let mut accept =
        http::switching_protocols(&derive_accept_key(key.as_bytes()), protocol.as_deref());
    // Every publish that resolved before its dispatch is dispatched first (memory mode; at once
    // unless such a publish is still queued), so the feed and the welcome's offset include it.
    // Bounded: past CATCH_UP_TIMEOUT the feed opens anyway and those events arrive live.
    tokio::select! {
        _ = shutdown.cancelled() => return None,
        _ = tokio::time::timeout(CATCH_UP_TIMEOUT, shared.bus.hub().caught_up()) => {}
    }
    // Subscribe before the welcome frame: an event published after the client saw the welcome
    // is never missed. The welcome's offset is taken at the same instant (see `Hub::open`).
    let user = auth::user_id(&claims);
    let hub::Opened { feed, start, mut inbox } =
        shared.bus.hub().open(parcels.as_deref(), user.as_deref());
    if let (Some(user), Some(directory)) = (&user, shared.bus.hub().directory()) {
        // Redis mode: counted on every instance from now, then the user's inbox, taken from
        // Redis after the feed opened (an event inboxed meanwhile may also arrive live: the
        // connection drops that copy by its offset, see `Conn::start`).
        let joined = directory.joined(user.as_str().into());
        let taken = tokio::select! {
            _ = shutdown.cancelled() => return None,
            taken = tokio::time::timeout(JOIN_TIMEOUT, joined) => taken,
        };
        inbox.extend(taken.ok().and_then(|r| r.ok()).unwrap_or_default());
    }
    // The 101 and the welcome frame in one write, before tungstenite takes the socket: one
    // syscall fewer per handshake, and an idle connection holds no write buffer (tungstenite
    // allocates its own on the first frame it writes and keeps it). A fresh socket's send buffer
    // takes these few hundred bytes at once. (Dropping the feed on failure undoes the join.)
    let welcome = frame::welcome(start);
    let welcome_len = welcome.len();
    // tungstenite's own frame encoder (unmasked: the server's role); writing to a `Vec` cannot fail.
    let _ = WsFrame::message(welcome, OpCode::Data(Data::Text), true).format(&mut accept);
    if stream.write_all(&accept).await.is_err() {
        return None;
    }
    shared.ops.metrics.control_sent(crate::metrics::ws_frame_len(welcome_len));
    let settings = &shared.settings;
    let (rate, burst) = (settings.messages_per_second * 4.0, settings.message_burst * 4.0);
    let metered = Metered::new(stream, rate, burst);
    let ws = WebSocketStream::from_partially_read(
        metered,
        head.rest,
        Role::Server,
        Some(shared.ws_config),
    )
    .await;
    shared.ops.metrics.connection_opened();
    let opening = connection::Opening { parcels: parcels.is_some(), since, inbox };
    let user = feed.user().cloned();
    let client =
        connection::Client::from_claims(&claims, user, shared.config.jwt_leeway, opening, start);
    Some(Session {
        ws,
        feed,
        client,
        close_clients,
        _slots: (slot, ip_slot),
        guard: ClientGuard(Some(shared.clone())),
    })
}

/// Answers a refused upgrade (counted, logged, and answered as plain HTTP).
async fn refuse(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    refusal: Refusal,
) -> Option<Session> {
    shared.ops.metrics.refused(refusal);
    let (status, code) = (refusal.status(), refusal.code());
    log_refusal(peer, status, code);
    let response = http::json_response(status, code, refusal.message(), refusal.headers());
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
    None
}

/// A request that is not upgraded.
enum NotUpgraded {
    /// The peer left before asking anything: write nothing.
    Gone,
    /// A complete response from an operations endpoint (`/health`, `/metrics`, ...), written as
    /// is and not counted as a refusal.
    Answered(Vec<u8>),
    Refused(Refusal),
}

impl From<Refused> for NotUpgraded {
    fn from(r: Refused) -> Self {
        NotUpgraded::Refused(r.into())
    }
}

impl From<crate::auth::AuthError> for NotUpgraded {
    fn from(e: crate::auth::AuthError) -> Self {
        NotUpgraded::Refused(e.into())
    }
}

/// What a successful handshake established.
struct Admitted {
    head: RequestHead,
    claims: Claims,
    /// The `Sec-WebSocket-Protocol` to echo.
    protocol: Option<String>,
    /// `?parcels=a,b`: follow only these.
    parcels: Option<Vec<String>>,
    /// `?since=OFFSET`: resume from there.
    since: Option<Offset>,
}

/// One connection's place under `max_connections`: taken before the (possibly slow) token and
/// `validateUser` checks, so simultaneous handshakes cannot overshoot the limit.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

fn reserve_slot(shared: &Arc<Shared>) -> Result<Slot, Refused> {
    let limits = &shared.limits;
    let max = match limits.max_connections {
        0 => limits.fd_cap,
        n => n.min(limits.fd_cap),
    };
    if shared.slots.fetch_add(1, Ordering::AcqRel) >= max {
        shared.slots.fetch_sub(1, Ordering::AcqRel);
        return Err(Refused::TooManyConnections);
    }
    Ok(Slot(shared.clone()))
}

/// What a connection holds from `accept` on: its places under the connection limits (kept
/// until it ends) and under the handshake limits (given back once it is upgraded or refused).
struct Tickets {
    slot: Slot,
    ip_slot: Option<IpSlot>,
    handshake: Handshake,
    ip_handshake: Option<IpSlot>,
}

/// One place under `max_handshakes`.
struct Handshake(Arc<Shared>);

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a new connection's places, or says why it is refused at once (before any read).
fn at_accept(shared: &Arc<Shared>, ip: IpAddr) -> Result<Tickets, Refused> {
    let slot = reserve_slot(shared)?;
    let ip_slot = reserve_ip_slot(shared, ip, false)?;
    let max = shared.limits.max_handshakes;
    if max > 0 && shared.handshakes.fetch_add(1, Ordering::AcqRel) >= max {
        shared.handshakes.fetch_sub(1, Ordering::AcqRel);
        return Err(Refused::TooManyConnections);
    }
    if max == 0 {
        shared.handshakes.fetch_add(1, Ordering::AcqRel);
    }
    let handshake = Handshake(shared.clone());
    let ip_handshake = reserve_ip_slot(shared, ip, true)?;
    Ok(Tickets { slot, ip_slot, handshake, ip_handshake })
}

#[inline(never)]
fn log_limits(limits: &Limits) {
    let Limits {
        max_connections,
        max_connections_per_ip,
        max_handshakes,
        max_handshakes_per_ip,
        fd_cap,
    } = *limits;
    log::info!(
        max_connections, max_connections_per_ip, max_handshakes, max_handshakes_per_ip, fd_cap;
        "server: limits maxConnections={max_connections} maxConnectionsPerIp={max_connections_per_ip} \
         maxHandshakes={max_handshakes} maxHandshakesPerIp={max_handshakes_per_ip} \
         (open-file bound {fd_cap}; 0: no limit)"
    );
}

/// One connection's share of its IP address's count.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// A place among the address's handshakes (else among its connections).
    handshake: bool,
}

impl Shared {
    fn ip_map(&self, handshake: bool) -> &Mutex<HashMap<IpAddr, usize>> {
        if handshake {
            &self.ip_handshakes
        } else {
            &self.per_ip
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let map = self.shared.ip_map(self.handshake);
        let mut per_ip = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Reads the request and decides: upgrade or a refusal. Cheap checks come first, so a flood of
/// bad requests costs little; the token is verified only for requests that could be admitted.
async fn admit(stream: &mut TcpStream, shared: &Arc<Shared>) -> Result<Admitted, NotUpgraded> {
    let config = &shared.config;
    // Its own short deadline: a client that trickles its head holds a descriptor and a
    // handshake place only this long (`handshake_timeout` also covers `validateUser`).
    let head = match tokio::time::timeout(config.head_timeout, http::read_head(stream)).await {
        Err(_) => return Err(Refused::HandshakeTimeout.into()),
        Ok(head) => head.map_err(|e| match e {
            HeadError::Closed => NotUpgraded::Gone,
            HeadError::Malformed => Refused::Malformed.into(),
            HeadError::TooLarge => Refused::HeadersTooLarge.into(),
        })?,
    };
    if let Some(answer) = endpoints::answer(&head, config, || shared.snapshot()) {
        return Err(match answer {
            Ok(response) => NotUpgraded::Answered(response),
            Err(refused) => refused.into(),
        });
    }
    if shared.ops.drain.is_draining() {
        return Err(Refused::Draining.into());
    }
    if head.path != config.path {
        return Err(Refused::NotFound.into());
    }
    let is_upgrade = head.method == "GET"
        && head.header_has_token("upgrade", "websocket")
        && head.header_has_token("connection", "upgrade");
    if !is_upgrade {
        return Err(Refused::UpgradeRequired.into());
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Refused::UnsupportedVersion.into());
    }
    if head.header("sec-websocket-key").is_none_or(|k| k.trim().is_empty()) {
        return Err(Refused::MissingKey.into());
    }
    if head.version < 1 {
        return Err(Refused::OldHttp.into());
    }
    if head.header("host").is_none_or(|h| h.trim().is_empty()) {
        return Err(Refused::MissingHost.into());
    }
    if ["host", "authorization", "sec-websocket-key", "origin"]
        .iter()
        .any(|name| head.header_count(name) > 1)
    {
        return Err(Refused::DuplicateHeader.into());
    }
    if !key_is_valid(head.header("sec-websocket-key").unwrap_or_default()) {
        return Err(Refused::BadKey.into());
    }
    if let Some(origin) = head.header("origin") {
        if !origin_allowed(config.allowed_origins.as_deref(), origin) {
            return Err(Refused::OriginNotAllowed.into());
        }
    }
    let (protocol_token, protocol) =
        auth::token_from_protocols(head.header("sec-websocket-protocol"));
    if protocol_token.is_some() && protocol.is_none() {
        // Never echo a token: a browser needs one of its offers back, so it must offer ours.
        return Err(Refused::SubprotocolRequired.into());
    }
    let token = auth::token_from_request(head.query.as_deref(), head.header("authorization"))
        .or(protocol_token)
        .unwrap_or_default();
    let claims = shared.auth.verify(&token)?;
    let parcels = match http::query_param(head.query.as_deref(), "parcels") {
        None => None,
        Some(list) => Some(parse_parcels(&list, config.max_subscriptions)?),
    };
    if let Some(validator) = &shared.validator {
        match validator.validate(&claims).await {
            Ok(true) => {}
            Ok(false) => return Err(Refused::UserRejected.into()),
            Err(e) => {
                log::warn!("server: validateUser failed: {e}");
                return Err(Refused::UserRejected.into());
            }
        }
    }
    let since = match http::query_param(head.query.as_deref(), "since") {
        None => None,
        Some(since) => Some(since.parse::<Offset>().map_err(|_| Refused::InvalidOffset)?),
    };
    Ok(Admitted { head, claims, protocol, parcels, since })
}

/// RFC 6455: the key is 16 random bytes, base64-encoded (24 characters).
fn key_is_valid(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .is_ok_and(|bytes| bytes.len() == 16)
}

/// `scheme://host[:port]` compared case-insensitively; no list allows every origin.
fn origin_allowed(allowed: Option<&[String]>, origin: &str) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    allowed.is_none_or(|list| {
        list.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    })
}

fn reserve_ip_slot(
    shared: &Arc<Shared>,
    ip: IpAddr,
    handshake: bool,
) -> Result<Option<IpSlot>, Refused> {
    let limits = &shared.limits;
    let limit =
        if handshake { limits.max_handshakes_per_ip } else { limits.max_connections_per_ip };
    if limit == 0 {
        return Ok(None);
    }
    let mut per_ip = shared.ip_map(handshake).lock().unwrap_or_else(|e| e.into_inner());
    let count = per_ip.entry(ip).or_insert(0);
    if *count >= limit {
        return Err(Refused::TooManyFromIp);
    }
    *count += 1;
    Ok(Some(IpSlot { shared: shared.clone(), ip, handshake }))
}

/// `?parcels=a,b,c` (each percent-decoded by the caller's query parser, split on commas).
fn parse_parcels(list: &str, max: usize) -> Result<Vec<String>, Refused> {
    let mut ids: Vec<String> = Vec::new();
    for id in list.split(',').filter(|id| !id.is_empty()) {
        if crate::event::validate_parcel_id(id).is_err() {
            return Err(Refused::InvalidParcels);
        }
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_string());
        }
    }
    if ids.len() > max {
        return Err(Refused::TooManyParcels);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    /// Every connection's task is as large as its future's largest state: keep it small, so an
    /// idle connection costs little (see BENCHMARKS.md for the measured RSS per connection).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let bus = crate::bus::Bus::start(Default::default());
        let mut config = crate::config::ServerConfig::new("secret");
        config.host = "127.0.0.1".into();
        config.port = 0;
        let server = super::Server::start(config, bus, None).await.unwrap();
        let tickets = super::at_accept(&server.shared, peer.ip()).ok().unwrap();
        let task = super::handle(
            stream,
            peer,
            server.shared.clone(),
            tickets,
            server.shutdown.clone(),
            server.close_clients.clone(),
        );
        let size = std::mem::size_of_val(&task);
        // 1,168 bytes (2,816 before no state was held twice: see `connection::run`, `handle`
        // and `Conn::step`). tokio adds ~100 bytes of header and rounds the task up to a
        // multiple of 128: 1,280 bytes allocated per connection. Past 1,184 it takes 1,408.
        assert!(size <= 1184, "a connection task grew to {size} bytes");
    }
}
