//! The napi-rs skin: converts JS values to engine types and engine errors to JS errors. No logic
//! of its own beyond holding the process-wide bus, which every server and publish shares.
//!
//! Errors cross as `"<CODE>: <message>"` (napi's async rejections carry no custom code); the JS
//! glue in `index.js` turns that into an `Error` with a `code` property.

// In a `cargo test` build napi's macros leave the exported functions out, and with them the only
// users of the aliases below.
#![cfg_attr(test, allow(dead_code))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::auth::Claims;
use crate::bus::Bus;
use crate::config::{BusConfig, ServerConfig};
use crate::error::{codes, Error as EngineError};
use crate::hub::Sink;
use crate::server::{Server, UserValidator};

/// `validateUser` as JS hands it over: claims JSON in, a promise of a boolean out (the JS glue
/// makes sure it never throws). Weak: it never keeps the process alive by itself.
type ValidateFn = ThreadsafeFunction<String, Promise<bool>, String, Status, false, true>;
/// The event sink: one parcel id per call, fire and forget, bounded so a stalled JS thread cannot
/// grow memory without limit.
const SINK_QUEUE: usize = 16_384;
type SinkFn = ThreadsafeFunction<String, (), String, Status, false, true, SINK_QUEUE>;
/// The log hook: one JSON record per call, fire and forget, bounded like the sink (records that
/// do not fit are dropped and counted). Weak: it never keeps the process alive.
const LOG_QUEUE: usize = 1_024;
type LogFn = ThreadsafeFunction<String, (), String, Status, false, true, LOG_QUEUE>;

fn to_js(e: EngineError) -> napi::Error {
    let status = if e.is_invalid_argument() { Status::InvalidArg } else { Status::GenericFailure };
    napi::Error::new(status, format!("{}: {}", e.code(), e.message()))
}

/// The engine's tokio runtime: `REALTIME_WORKER_THREADS` workers (default: one per CPU) at
/// `REALTIME_WORKER_NICE` (default 0), named so they are easy to find in `top -H` and profiles.
/// Installed when the addon loads, before any async call could start napi's default runtime.
#[napi_derive::module_init]
fn init_runtime() {
    let workers = std::env::var("REALTIME_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // How many nice levels below the JS thread the engine's threads run (0..=19, Linux): above 0
    // they yield the CPU to the application's JS thread when both want it (see the README).
    let nice = match std::env::var("REALTIME_WORKER_NICE") {
        Err(_) => 0,
        Ok(v) => match v.trim().parse::<i32>() {
            Ok(n) if (0..=19).contains(&n) => n,
            _ => {
                eprintln!("[realtime-events] REALTIME_WORKER_NICE must be an integer from 0 to 19, got {v:?}; using 0");
                0
            }
        },
    };
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("realtime-events")
        .on_thread_start(move || set_thread_nice(nice))
        .enable_all()
        .build()
    {
        Ok(runtime) => napi::bindgen_prelude::create_custom_tokio_runtime(runtime),
        // napi then starts its default runtime on first use; nothing is lost but the name.
        Err(e) => eprintln!("[realtime-events] could not build the tokio runtime: {e}"),
    }
}

/// Lowers the calling thread's priority by `nice` levels (at most to 19). On Linux, nice is per
/// thread, so the JS thread keeps its own; elsewhere it would apply to the whole process, so it
/// is not done. Relative, so it works in a process that was itself started with `nice`.
fn set_thread_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice != 0 {
        // SAFETY: plain syscalls on the calling thread (`who = 0` is the calling thread on Linux).
        let failed = unsafe {
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, (current + nice).min(19)) != 0
        };
        if failed {
            eprintln!(
                "[realtime-events] REALTIME_WORKER_NICE: could not lower an engine thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The process-wide bus.
struct Global {
    bus: Option<Arc<Bus>>,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global { bus: None });

/// A JS thread (the main thread or a worker) that loaded the package. The bus is one per
/// process, but each thread settles its own publishes and runs its own subscribers: a worker
/// that loads the package must not take over the main thread's promises or events.
struct JsThread {
    id: u32,
    /// Settles this thread's numbered publishes.
    ack: AckFn,
    /// This thread's subscribers (`None` while it has none).
    events: Option<SinkFn>,
    /// Events handed to `events` so far; each ack carries it, so the thread can stay alive until
    /// it has received the events dispatched before the publishes it settles.
    queued: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

static THREADS: std::sync::RwLock<Vec<JsThread>> = std::sync::RwLock::new(Vec::new());
static NEXT_THREAD: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

fn threads() -> std::sync::RwLockReadGuard<'static, Vec<JsThread>> {
    THREADS.read().unwrap_or_else(|e| e.into_inner())
}

fn threads_mut() -> std::sync::RwLockWriteGuard<'static, Vec<JsThread>> {
    THREADS.write().unwrap_or_else(|e| e.into_inner())
}

/// The bus's event sink: every event to every JS thread with subscribers.
fn event_sink() -> Sink {
    use std::sync::atomic::Ordering::Relaxed;
    Arc::new(|event: &crate::event::Event| {
        let threads = threads();
        let mut json = None;
        for thread in threads.iter() {
            let Some(events) = &thread.events else { continue };
            let text = json.get_or_insert_with(|| sink_json(event)).clone();
            match events.call(text, ThreadsafeFunctionCallMode::NonBlocking) {
                Status::Ok => {
                    thread.queued.fetch_add(1, Relaxed);
                }
                Status::QueueFull => {
                    let n = thread.dropped.fetch_add(1, Relaxed);
                    if n.is_power_of_two() {
                        log::warn!(
                            "subscribers: the JS thread is {SINK_QUEUE} events behind; {} events \
                             not delivered to subscribeToParcelEvents callbacks so far",
                            n + 1
                        );
                    }
                }
                _ => {} // the thread is exiting
            }
        }
    })
}

/// The bus's ack sink: settled publishes to the thread that made them.
fn ack_sink() -> crate::bus::AckSink {
    Arc::new(|publisher: u32, through: u64, result: &crate::error::Result<()>| {
        let threads = threads();
        let Some(thread) = threads.iter().find(|t| t.id == publisher) else { return };
        let error = result.as_ref().err().map(|e| format!("{}: {}", e.code(), e.message()));
        let events = thread.queued.load(std::sync::atomic::Ordering::Relaxed) as f64;
        thread.ack.call(
            PublishAck { through: through as f64, error, events },
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    })
}

fn global() -> std::sync::MutexGuard<'static, Global> {
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running bus, or a new one from `config`. A bus whose start failed is replaced.
/// Asking for a different Redis URL or channel than the running bus uses is `ERR_BUS_CONFLICT`.
fn bus_with(config: BusConfig) -> napi::Result<Arc<Bus>> {
    let mut global = global();
    if let Some(bus) = &global.bus {
        if !bus.has_failed() {
            let running = bus.config();
            if running.redis_url != config.redis_url
                || running.redis_tls != config.redis_tls
                || running.channel != config.channel
                || running.history != config.history
                || running.inbox != config.inbox
                || running.redis_wait_replicas != config.redis_wait_replicas
                || running.redis_wait_timeout != config.redis_wait_timeout
            {
                return Err(to_js(EngineError::new(
                    codes::BUS_CONFLICT,
                    "this process already runs a bus with another redisUrl, channel, history, inbox \
                     or redisWait setting; one process has one bus",
                )));
            }
            return Ok(bus.clone());
        }
    }
    let bus = within_runtime_if_available(|| Bus::start(config));
    bus.set_sink(Some(event_sink()));
    bus.set_ack_sink(Some(ack_sink()));
    global.bus = Some(bus.clone());
    Ok(bus)
}

/// `redisTls`: PEM text (index.js reads the REDIS_TLS_*_FILE files).
#[napi(object)]
pub struct RedisTlsOptions {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub reject_unauthorized: Option<bool>,
}

#[napi(object)]
pub struct BusOptions {
    pub redis_url: Option<String>,
    pub redis_tls: Option<RedisTlsOptions>,
    pub channel: Option<String>,
    pub redis_required: Option<bool>,
    /// Events kept for clients that resume; 0 turns history (and offsets) off.
    pub history_size: Option<u32>,
    pub history_ttl_ms: Option<u32>,
    /// Events kept per user without a connection; 0 keeps none.
    pub inbox_size: Option<u32>,
    pub inbox_ttl_ms: Option<u32>,
    /// Replicas that must acknowledge each publish (`WAIT`); 0 waits for none.
    pub redis_wait_replicas: Option<u32>,
    /// How long `WAIT` may take before the publishes reject with ERR_REDIS_REPLICATION.
    pub redis_wait_timeout_ms: Option<u32>,
}

impl From<&BusOptions> for BusConfig {
    fn from(o: &BusOptions) -> Self {
        let mut config = BusConfig {
            redis_url: o.redis_url.clone().filter(|u| !u.is_empty()),
            redis_tls: o.redis_tls.as_ref().map(|t| crate::config::RedisTls {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
                reject_unauthorized: t.reject_unauthorized.unwrap_or(true),
            }),
            ..BusConfig::default()
        };
        if let Some(channel) = &o.channel {
            config.channel = channel.clone();
        }
        config.redis_required = o.redis_required.unwrap_or(false);
        if let Some(size) = o.history_size {
            config.history.max_events = size as usize;
        }
        if let Some(ms) = o.history_ttl_ms {
            config.history.max_age = Duration::from_millis(ms as u64);
        }
        if let Some(size) = o.inbox_size {
            config.inbox.size = size as usize;
        }
        if let Some(ms) = o.inbox_ttl_ms {
            config.inbox.ttl = Duration::from_millis(ms as u64);
        }
        if let Some(n) = o.redis_wait_replicas {
            config.redis_wait_replicas = n;
        }
        if let Some(ms) = o.redis_wait_timeout_ms {
            config.redis_wait_timeout = Duration::from_millis(ms as u64);
        }
        config
    }
}

/// Starts the process-wide bus if none runs yet (used by publish-only processes).
#[napi(catch_unwind)]
pub fn ensure_bus(options: BusOptions) -> napi::Result<()> {
    bus_with(BusConfig::from(&options)).map(|_| ())
}

#[napi(object)]
pub struct BusInfo {
    /// "memory", "redis", or "starting" (connecting to Redis), or "none" (no bus yet).
    pub mode: String,
    pub redis_connected: bool,
    /// A Redis URL is configured: events may come from other processes (now or once Redis
    /// answers), whatever the mode is at the moment.
    pub redis_configured: bool,
}

#[napi(catch_unwind)]
pub fn bus_info() -> BusInfo {
    match &global().bus {
        None => BusInfo { mode: "none".into(), redis_connected: false, redis_configured: false },
        Some(bus) => BusInfo {
            mode: bus.mode().map_or("starting", |m| m.as_str()).into(),
            redis_connected: bus.redis_connected(),
            redis_configured: bus.config().redis_url.is_some(),
        },
    }
}

/// Enqueues one event and returns its number at once (no promise per publish: the JS thread's
/// cost stays a fraction of a microsecond). The ack sink settles numbered publishes in batches.
/// A negative number -n: publish n is accepted already (memory mode, see `Bus::publish_numbered`).
#[napi(catch_unwind)]
pub fn publish_numbered(
    thread: u32,
    parcel_id: String,
    data: Option<String>,
    users: Option<Vec<String>>,
) -> napi::Result<f64> {
    let bus = global().bus.clone().ok_or_else(|| {
        to_js(EngineError::new(codes::BUS_CLOSED, "no bus: call ensureBus first"))
    })?;
    let mut event = crate::event::Event::with_data(&parcel_id, data.as_deref()).map_err(to_js)?;
    if let Some(users) = users {
        event = event.to_users(&users).map_err(to_js)?;
    }
    // Negative: accepted already (memory mode), the promise may resolve at once; the number
    // still comes back through the ack sink.
    match bus.publish_numbered(event, thread).map_err(to_js)? {
        crate::bus::Taken::Accepted(n) => Ok(-(n as f64)),
        crate::bus::Taken::Queued(n) => Ok(n as f64),
    }
}

/// How many connections each of `users` has open now: over every instance in Redis mode, in
/// this process in memory mode.
#[napi(catch_unwind)]
pub fn presence(env: &Env, users: Vec<String>) -> napi::Result<PromiseRaw<'_, Vec<u32>>> {
    let bus = global().bus.clone().ok_or_else(|| {
        to_js(EngineError::new(codes::BUS_CLOSED, "no bus: call ensureBus first"))
    })?;
    env.spawn_future(async move {
        let counts = bus.presence(users).await.map_err(to_js)?;
        Ok(counts.into_iter().map(|n| n.min(u32::MAX as usize) as u32).collect::<Vec<u32>>())
    })
}

/// One batch of settled publishes: every number up to `through`, resolved, or rejected with
/// `error` ("CODE: message"); `events`: how many events the thread's subscribers had been handed
/// when it was settled (see `JsThread::queued`).
#[napi(object)]
pub struct PublishAck {
    pub through: f64,
    pub error: Option<String>,
    pub events: f64,
}

type AckFn = ThreadsafeFunction<PublishAck, (), PublishAck, Status, false, true>;

/// Registers the calling JS thread: `settle` receives its settled publishes. Returns the id its
/// publishes and subscribers go by; the thread is forgotten when its environment is torn down
/// (a worker that exits).
#[napi(catch_unwind)]
pub fn register_thread(env: &Env, settle: AckFn) -> napi::Result<u32> {
    let id = NEXT_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    threads_mut().push(JsThread {
        id,
        ack: settle,
        events: None,
        queued: Default::default(),
        dropped: Default::default(),
    });
    env.add_env_cleanup_hook(id, |id| threads_mut().retain(|t| t.id != id))?;
    Ok(id)
}

/// What a subscriber receives: the frame clients receive, plus `users` for an addressed event.
fn sink_json(event: &crate::event::Event) -> String {
    let frame = event.frame().as_str();
    match event.users() {
        None => frame.to_string(),
        Some(users) => {
            let users: Vec<&str> = users.iter().map(|u| &**u).collect();
            let users = serde_json::to_string(&users).unwrap_or_else(|_| "[]".into());
            format!("{},\"users\":{users}}}", &frame[..frame.len() - 1])
        }
    }
}

/// Routes every event's frame (the JSON text clients receive) to `callback` on the JS thread
/// `thread` (or stops with `null`).
#[napi(catch_unwind)]
pub fn set_event_sink(thread: u32, callback: Option<SinkFn>) {
    if let Some(t) = threads_mut().iter_mut().find(|t| t.id == thread) {
        t.events = callback;
    }
}

#[napi(object)]
pub struct NativeServerOptions {
    pub host: String,
    pub port: u32,
    pub path: String,
    pub jwt_secret: String,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_require_exp: Option<bool>,
    pub max_message_bytes: Option<u32>,
    pub handshake_timeout_ms: Option<u32>,
    /// 0 turns heartbeats off.
    pub ping_interval_ms: Option<u32>,
    pub pong_timeout_ms: Option<u32>,
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub ops_token: Option<String>,
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub max_handshakes: Option<u32>,
    pub max_handshakes_per_ip: Option<u32>,
    pub head_timeout_ms: Option<u32>,
    pub max_subscriptions: Option<u32>,
    pub messages_per_second: Option<f64>,
    pub message_burst: Option<f64>,
    pub dashboard: Option<bool>,
    pub bus: BusOptions,
}

struct JsValidator(Arc<ValidateFn>);

impl UserValidator for JsValidator {
    fn validate(
        &self,
        claims: &Claims,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<bool, String>> + Send>,
    > {
        let tsfn = self.0.clone();
        let claims = serde_json::to_string(claims).unwrap_or_else(|_| "{}".into());
        Box::pin(async move {
            let promise = tsfn.call_async(claims).await.map_err(|e| e.reason.clone())?;
            promise.await.map_err(|e| e.reason.clone())
        })
    }
}

#[napi]
pub struct NativeServer {
    server: Arc<Server>,
}

#[napi]
impl NativeServer {
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.server.local_addr().port() as u32
    }

    #[napi(getter)]
    pub fn client_count(&self) -> u32 {
        self.server.metrics().clients() as u32
    }

    #[napi(getter)]
    pub fn bus_mode(&self) -> String {
        self.server.bus().mode().map_or("starting", |m| m.as_str()).to_string()
    }

    /// Whether a drain (or close) has started.
    #[napi(getter)]
    pub fn draining(&self) -> bool {
        self.server.is_draining()
    }

    /// Every figure, as the JSON that `GET /stats` serves.
    #[napi(catch_unwind)]
    pub fn stats_json(&self) -> String {
        self.server.snapshot().stats_json()
    }

    /// Every figure, as the Prometheus text that `GET /metrics` serves.
    #[napi(catch_unwind)]
    pub fn metrics_text(&self) -> String {
        self.server.snapshot().prometheus()
    }

    /// Drains over `drain_ms` (0: closes every client at once), closes clients with 1001, and
    /// resolves once the port is free and the connections are gone (waiting at most `grace_ms`
    /// after the drain).
    #[napi(catch_unwind)]
    pub fn close<'env>(
        &self,
        env: &'env Env,
        grace_ms: Option<u32>,
        drain_ms: Option<u32>,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let server = self.server.clone();
        let grace = Duration::from_millis(grace_ms.unwrap_or(DEFAULT_GRACE_MS) as u64);
        let drain = Duration::from_millis(drain_ms.unwrap_or(DEFAULT_DRAIN_MS) as u64);
        // Synchronous: `/health` says draining as soon as close() returns.
        let end = server.start_drain(drain);
        env.spawn_future(async move {
            server.finish_close(end, grace).await;
            Ok(())
        })
    }
}

#[napi]
pub async fn start_server(
    options: NativeServerOptions,
    validate_user: Option<ValidateFn>,
) -> napi::Result<NativeServer> {
    let port = u16::try_from(options.port).map_err(|_| {
        to_js(EngineError::new(codes::INVALID_OPTION, "port must be an integer from 0 to 65535"))
    })?;
    let bus = bus_with(BusConfig::from(&options.bus))?;
    bus.ready().await.map_err(to_js)?;
    let mut config = ServerConfig::new(options.jwt_secret);
    config.host = options.host;
    config.port = port;
    config.path = options.path;
    if let Some(bytes) = options.max_message_bytes {
        config.max_message_bytes = bytes as usize;
    }
    if let Some(ms) = options.handshake_timeout_ms {
        config.handshake_timeout = Duration::from_millis(ms as u64);
    }
    if let Some(ms) = options.ping_interval_ms {
        config.ping_interval = (ms > 0).then(|| Duration::from_millis(ms as u64));
    }
    if let Some(ms) = options.pong_timeout_ms {
        config.pong_timeout = Duration::from_millis(ms as u64);
    }
    config.allowed_origins = options.allowed_origins;
    config.allowed_hosts = options.allowed_hosts.unwrap_or_default();
    config.ops_token = options.ops_token;
    config.jwt_checks = crate::auth::TokenChecks {
        audience: options.jwt_audience,
        issuer: options.jwt_issuer,
        require_exp: options.jwt_require_exp.unwrap_or(false),
    };
    if let Some(n) = options.max_connections {
        config.max_connections = Some(n as usize);
    }
    if let Some(n) = options.max_handshakes {
        config.max_handshakes = Some(n as usize);
    }
    if let Some(n) = options.max_handshakes_per_ip {
        config.max_handshakes_per_ip = Some(n as usize);
    }
    if let Some(ms) = options.head_timeout_ms {
        config.head_timeout = Duration::from_millis(ms as u64);
    }
    if let Some(n) = options.max_connections_per_ip {
        config.max_connections_per_ip = Some(n as usize);
    }
    if let Some(n) = options.max_subscriptions {
        config.max_subscriptions = n as usize;
    }
    if let Some(rate) = options.messages_per_second {
        config.messages_per_second = rate;
    }
    if let Some(burst) = options.message_burst {
        config.message_burst = burst;
    }
    if let Some(dashboard) = options.dashboard {
        config.dashboard = dashboard;
    }
    let validator =
        validate_user.map(|f| Arc::new(JsValidator(Arc::new(f))) as Arc<dyn UserValidator>);
    let server = Server::start(config, bus, validator).await.map_err(to_js)?;
    Ok(NativeServer { server: Arc::new(server) })
}

/// Installs the logger at `level` (LOG_LEVEL semantics) in `format` (LOG_FORMAT semantics:
/// json, text, or by default JSON unless stderr is a terminal).
#[napi(catch_unwind)]
pub fn init_logging(level: Option<String>, format: Option<String>) {
    crate::logger::init(
        crate::logger::parse_level(level.as_deref()),
        crate::logger::parse_format(format.as_deref()),
    );
}

/// Routes every log record (as a JSON string) to `callback` instead of stderr, or back to stderr
/// with `null`. Never blocks an engine thread: when the JS thread is 1,024 records behind, new
/// records are dropped and counted.
#[napi(catch_unwind)]
pub fn set_log_hook(callback: Option<LogFn>) {
    let hook = callback.map(|tsfn| {
        let tsfn = Arc::new(tsfn);
        Arc::new(move |record: &crate::logger::Record| {
            tsfn.call(record.to_json(), ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok
        }) as crate::logger::Hook
    });
    crate::logger::set_hook(hook);
}

/// Longest accepted parcel id, in bytes.
#[napi]
pub const MAX_PARCEL_ID_BYTES: u32 = crate::event::MAX_PARCEL_ID_BYTES as u32;

/// The most users one event may be addressed to.
#[napi]
pub const MAX_USERS: u32 = crate::event::MAX_USERS as u32;

/// The longest user id, in bytes.
#[napi]
pub const MAX_USER_ID_BYTES: u32 = crate::event::MAX_USER_ID_BYTES as u32;

/// How long `close()` waits for connections to finish closing after the drain, by default.
const DEFAULT_GRACE_MS: u32 = 5_000;
/// How long `close()` spreads the clients' closes over, by default (0: all at once).
const DEFAULT_DRAIN_MS: u32 = 0;

/// The facts index.js (and the tests of client.js) take from here instead of restating them:
/// the defaults of the options, the subprotocol, the close code of every [`Disconnect`] that
/// sends one (by its name in camelCase), the codes raised as `TypeError`, and the log level and
/// format in force (after `initLogging`).
///
/// [`Disconnect`]: crate::protocol::Disconnect
#[napi(catch_unwind)]
pub fn facts() -> serde_json::Value {
    let server = ServerConfig::new("");
    let bus = BusConfig::default();
    let ms = |d: Duration| d.as_millis() as u64;
    let mut close_codes = serde_json::Map::new();
    for d in crate::protocol::Disconnect::ALL {
        if let Some(code) = d.close_code() {
            let name = format!("{d:?}");
            let name = name[..1].to_ascii_lowercase() + &name[1..];
            close_codes.insert(name, code.into());
        }
    }
    serde_json::json!({
        "subprotocol": crate::protocol::SUBPROTOCOL,
        "bearerPrefix": crate::protocol::BEARER_PROTOCOL_PREFIX,
        "closeCodes": close_codes,
        "typeErrorCodes": crate::error::INVALID_ARGUMENT_CODES,
        "defaults": {
            "port": crate::config::DEFAULT_PORT,
            "host": crate::config::DEFAULT_HOST,
            "path": crate::config::DEFAULT_PATH,
            "channel": crate::config::DEFAULT_CHANNEL,
            "graceMs": DEFAULT_GRACE_MS,
            "drainMs": DEFAULT_DRAIN_MS,
            "maxMessageBytes": server.max_message_bytes,
            "handshakeTimeoutMs": ms(server.handshake_timeout),
            "pingIntervalMs": server.ping_interval.map_or(0, ms),
            "pongTimeoutMs": ms(server.pong_timeout),
            "headTimeoutMs": ms(server.head_timeout),
            "maxSubscriptions": server.max_subscriptions,
            "messagesPerSecond": server.messages_per_second,
            "messageBurst": server.message_burst,
            "maxConnectionsPerIp": crate::config::DEFAULT_MAX_CONNECTIONS_PER_IP,
            "maxHandshakesPerIp": crate::config::DEFAULT_MAX_HANDSHAKES_PER_IP,
            "historySize": bus.history.max_events,
            "historyTtlMs": ms(bus.history.max_age),
        },
        "log": {
            "level": log::max_level().as_str().to_ascii_lowercase(),
            "format": match crate::logger::format() {
                crate::logger::Format::Json => "json",
                crate::logger::Format::Text => "text",
            },
        },
    })
}
