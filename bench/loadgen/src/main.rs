//! Load generator of the realtime-events benchmark suite.
//!
//! Holds N authenticated WebSocket clients (tokio-tungstenite), records every frame each one
//! receives and reports JSON on stdout. It is driven by `bench/run.js` through one-line commands
//! on stdin, each answered by exactly one JSON line on stdout:
//!
//! ```text
//! connect M          open M more clients (TCP + upgrade with ?token= + welcome frame)
//! reset B            start a measurement: every live client now expects seqs B, B+1, ...
//! wait E [MS]        wait until every client measured since `reset` has seqs [B, E) (or until
//!                    no progress for --idle-ms, or MS milliseconds), then answer
//! report E           counts and latency since `reset`, assuming seqs [B, E) were published
//! quit               exit (the OS closes the sockets)
//! ```
//!
//! Parcel ids are `b<seq>-<ns>` where `<ns>` is the publisher's `process.hrtime.bigint()`,
//! i.e. CLOCK_MONOTONIC on Linux, which this process reads too: the latency of a delivery is
//! `clock_gettime(CLOCK_MONOTONIC) - ns` at the moment the frame is parsed. Per client, a
//! 1024-seq window tells duplicates from late (reordered) arrivals; loss is what is missing
//! from [B, E) after `wait`.
//!
//! Each of `--threads` OS threads runs a current-thread tokio runtime with its share of the
//! clients (round-robin) and its own histogram, so the hot path takes no lock.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const WELCOME: &str = r#"{"type":"connected","message":"WebSocket connection established"}"#;
const WINDOW: u64 = 1024;

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Debug)]
struct Opts {
    addr: SocketAddr,
    path_and_query: String,
    host_header: String,
    threads: usize,
    read_buf: usize,
    srcs: Vec<Ipv4Addr>,
    concurrency: usize,
    idle_ms: u64,
    handshake_timeout: Duration,
    timeout: Duration,
    initial_clients: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --url ws://127.0.0.1:PORT/ws --token JWT [--threads 2] [--read-buf 4096]\n\
         \x20              [--src 127.20.1.1+4] [--concurrency 256] [--idle-ms 3000]\n\
         \x20              [--handshake-timeout-ms 20000] [--timeout-s 900] [--clients N]\n\
         then commands on stdin: connect M | reset B | wait E [MS] | report E | quit"
    );
    std::process::exit(2)
}

fn parse_srcs(spec: &str) -> Vec<Ipv4Addr> {
    // "A.B.C.D+K": K consecutive addresses from A.B.C.D; or a comma-separated list.
    let mut out = Vec::new();
    for part in spec.split(',').filter(|s| !s.is_empty()) {
        let (first, count) = match part.split_once('+') {
            Some((a, k)) => (a, k.parse::<u32>().unwrap_or_else(|_| usage())),
            None => (part, 1),
        };
        let first: Ipv4Addr = first.parse().unwrap_or_else(|_| usage());
        let base = u32::from(first);
        for i in 0..count {
            out.push(Ipv4Addr::from(base + i));
        }
    }
    out
}

fn parse_opts() -> Opts {
    let mut url = None;
    let mut token = None;
    let mut threads = 2usize;
    let mut read_buf = 4096usize;
    let mut srcs = Vec::new();
    let mut concurrency = 256usize;
    let mut idle_ms = 3000u64;
    let mut handshake_ms = 20_000u64;
    let mut timeout_s = 900u64;
    let mut initial_clients = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--url" => url = Some(val()),
            "--token" => token = Some(val()),
            "--threads" => threads = val().parse().unwrap_or_else(|_| usage()),
            "--read-buf" => read_buf = val().parse().unwrap_or_else(|_| usage()),
            "--src" => srcs = parse_srcs(&val()),
            "--concurrency" => concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--idle-ms" => idle_ms = val().parse().unwrap_or_else(|_| usage()),
            "--handshake-timeout-ms" => handshake_ms = val().parse().unwrap_or_else(|_| usage()),
            "--timeout-s" => timeout_s = val().parse().unwrap_or_else(|_| usage()),
            "--clients" => initial_clients = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let url = url.unwrap_or_else(|| usage());
    let token = token.unwrap_or_else(|| usage());
    let rest = url.strip_prefix("ws://").unwrap_or_else(|| usage());
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr =
        hostport.replace("localhost", "127.0.0.1").parse().unwrap_or_else(|_| usage());
    let sep = if path.contains('?') { '&' } else { '?' };
    Opts {
        addr,
        path_and_query: format!("{path}{sep}token={token}"),
        host_header: hostport.to_string(),
        threads: threads.max(1),
        read_buf: read_buf.max(256),
        srcs,
        concurrency: concurrency.max(1),
        idle_ms,
        handshake_timeout: Duration::from_millis(handshake_ms),
        timeout: Duration::from_secs(timeout_s),
        initial_clients,
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) after.
fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            // Try for a lot first (works with CAP_SYS_RESOURCE), then settle for the hard limit.
            let want = libc::rlimit { rlim_cur: 1 << 20, rlim_max: (1 << 20).max(lim.rlim_max) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    (lim.rlim_cur as u64, lim.rlim_max as u64)
}

// ---------------------------------------------------------------------------------------------
// Per-client bookkeeping

#[derive(Default)]
struct Client {
    live: bool,
    /// Measured since the last `reset` (was live then).
    measured: bool,
    base: u64,
    /// One past the highest seq seen.
    next: u64,
    window: [u64; (WINDOW / 64) as usize],
    received: u64,
    unique: u64,
    dups: u64,
    reordered: u64,
    late: u64,
    stale: u64,
    close_code: Option<u16>,
}

impl Client {
    fn reset(&mut self, base: u64) {
        self.measured = self.live;
        self.base = base;
        self.next = base;
        self.window = [0; (WINDOW / 64) as usize];
        self.received = 0;
        self.unique = 0;
        self.dups = 0;
        self.reordered = 0;
        self.late = 0;
        self.stale = 0;
    }

    fn bit(&self, seq: u64) -> bool {
        let i = (seq % WINDOW) as usize;
        self.window[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, seq: u64, on: bool) {
        let i = (seq % WINDOW) as usize;
        if on {
            self.window[i / 64] |= 1 << (i % 64);
        } else {
            self.window[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Returns whether this delivery is new (not a duplicate, not stale).
    fn on_seq(&mut self, seq: u64) -> bool {
        if seq < self.base {
            self.stale += 1;
            return false;
        }
        self.received += 1;
        if seq >= self.next {
            if seq - self.next >= WINDOW {
                self.window = [0; (WINDOW / 64) as usize];
            } else {
                for s in self.next..seq {
                    self.set(s, false);
                }
            }
            self.set(seq, true);
            self.next = seq + 1;
            self.unique += 1;
            true
        } else if self.next - seq > WINDOW {
            self.late += 1;
            self.unique += 1;
            true
        } else if self.bit(seq) {
            self.dups += 1;
            false
        } else {
            self.set(seq, true);
            self.reordered += 1;
            self.unique += 1;
            true
        }
    }
}

/// The welcome frame: `{"type":"connected",...}` (the engine may add fields after `message`).
fn is_welcome(text: &str) -> bool {
    text == WELCOME
        || text.starts_with(r#"{"type":"connected""#)
        || serde_json::from_str::<Value>(text)
            .map(|v| v.get("type").and_then(Value::as_str) == Some("connected"))
            .unwrap_or(false)
}

/// `{"type":"parcel_updated","parcel_id":"b<seq>-<ns>"}` → (seq, ns).
fn parse_event(text: &str) -> Option<(u64, u64)> {
    // Both servers send exactly this prefix; anything else takes the slow path.
    const PREFIX: &str = "{\"type\":\"parcel_updated\",\"parcel_id\":\"b";
    const KEY: &str = "\"parcel_id\":\"b";
    let at = if text.starts_with(PREFIX) { PREFIX.len() } else { text.find(KEY)? + KEY.len() };
    let rest = &text.as_bytes()[at..];
    let mut seq = 0u64;
    let mut i = 0;
    while i < rest.len() && rest[i].is_ascii_digit() {
        seq = seq * 10 + (rest[i] - b'0') as u64;
        i += 1;
    }
    if i == 0 || i >= rest.len() || rest[i] != b'-' {
        return None;
    }
    i += 1;
    let start = i;
    let mut ns = 0u64;
    while i < rest.len() && rest[i].is_ascii_digit() {
        ns = ns * 10 + (rest[i] - b'0') as u64;
        i += 1;
    }
    if i == start || i >= rest.len() || rest[i] != b'"' {
        return None;
    }
    Some((seq, ns))
}

// ---------------------------------------------------------------------------------------------
// Worker threads

struct Worker {
    clients: RefCell<Vec<Client>>,
    hist: RefCell<Histogram<u64>>,
    handshake_hist: RefCell<Histogram<u64>>,
    other_frames: Cell<u64>,
    first_recv_ns: Cell<u64>,
    last_recv_ns: Cell<u64>,
    closes: RefCell<BTreeMap<String, u64>>,
    errors: RefCell<BTreeMap<String, u64>>,
}

fn new_hist() -> Histogram<u64> {
    // 1 ns .. 120 s with 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

impl Worker {
    fn new() -> Self {
        Self {
            clients: RefCell::new(Vec::new()),
            hist: RefCell::new(new_hist()),
            handshake_hist: RefCell::new(new_hist()),
            other_frames: Cell::new(0),
            first_recv_ns: Cell::new(0),
            last_recv_ns: Cell::new(0),
            closes: RefCell::new(BTreeMap::new()),
            errors: RefCell::new(BTreeMap::new()),
        }
    }

    fn on_text(&self, idx: usize, text: &str) {
        let Some((seq, sent)) = parse_event(text) else {
            self.other_frames.set(self.other_frames.get() + 1);
            return;
        };
        let now = now_ns();
        let fresh = self.clients.borrow_mut()[idx].on_seq(seq);
        if fresh {
            let _ = self.hist.borrow_mut().record(now.saturating_sub(sent).max(1));
            if self.first_recv_ns.get() == 0 {
                self.first_recv_ns.set(now);
            }
            self.last_recv_ns.set(now);
        }
    }

    fn count_error(&self, what: String) {
        *self.errors.borrow_mut().entry(what).or_default() += 1;
    }
}

enum Cmd {
    Connect {
        /// (global index, source address) of each client to open.
        clients: Vec<(usize, Option<Ipv4Addr>)>,
        concurrency: usize,
        reply: oneshot::Sender<(u64, u64)>,
    },
    Reset {
        base: u64,
        reply: oneshot::Sender<()>,
    },
    /// Number of measured clients that lack seqs below `end`, and total unique deliveries.
    Progress {
        end: u64,
        reply: oneshot::Sender<(u64, u64)>,
    },
    Report {
        end: u64,
        reply: oneshot::Sender<WorkerReport>,
    },
}

struct WorkerReport {
    clients: u64,
    live: u64,
    measured: u64,
    expected: u64,
    received: u64,
    unique: u64,
    dups: u64,
    reordered: u64,
    late: u64,
    stale: u64,
    lost: u64,
    incomplete_clients: u64,
    other_frames: u64,
    first_recv_ns: u64,
    last_recv_ns: u64,
    hist: Histogram<u64>,
    handshake_hist: Histogram<u64>,
    closes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

async fn open_client(
    opts: &Opts,
    src: Option<Ipv4Addr>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = src {
        // Let connect() pick the port for the whole 4-tuple instead of bind() reserving one
        // for the address alone: ports stay plentiful and TIME_WAIT leftovers do not slow
        // the search.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a valid pointer and length.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket.connect(opts.addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let request = tokio_tungstenite::tungstenite::handshake::client::Request::builder()
        .uri(format!("ws://{}{}", opts.host_header, opts.path_and_query))
        .header("Host", &opts.host_header)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .map_err(|e| format!("request: {e}"))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(opts.read_buf)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| {
            let s = e.to_string();
            // Keep error keys few: "HTTP error: 401 Unauthorized" etc.
            s.chars().take(60).collect::<String>()
        })?;
    Ok(ws)
}

/// One client: connect, wait for the welcome (then signal `ready`), then read until the end.
async fn client_task(
    w: Rc<Worker>,
    opts: Arc<Opts>,
    idx: usize,
    src: Option<Ipv4Addr>,
    sem: Rc<Semaphore>,
    ready: oneshot::Sender<bool>,
) {
    let permit = sem.acquire().await.expect("semaphore open");
    let started = Instant::now();
    let handshake = async {
        let mut ws = open_client(&opts, src).await?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if is_welcome(t.as_str()) => Ok(ws),
            Some(Ok(other)) => Err(format!("unexpected first frame: {:.40}", other.to_string())),
            Some(Err(e)) => Err(format!("before welcome: {e:.50}")),
            None => Err("closed before welcome".to_string()),
        }
    };
    let mut ws = match tokio::time::timeout(opts.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            w.count_error(e);
            let _ = ready.send(false);
            return;
        }
        Err(_) => {
            w.count_error("handshake timeout".to_string());
            let _ = ready.send(false);
            return;
        }
    };
    let _ = w.handshake_hist.borrow_mut().record(started.elapsed().as_nanos().max(1) as u64);
    drop(permit);
    w.clients.borrow_mut()[idx].live = true;
    let _ = ready.send(true);
    let why = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => w.on_text(idx, t.as_str()),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
                w.clients.borrow_mut()[idx].close_code = Some(code);
                break format!("close {code}");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {e:.50}"),
            None => break "eof".to_string(),
        }
    };
    w.clients.borrow_mut()[idx].live = false;
    *w.closes.borrow_mut().entry(why).or_default() += 1;
}

fn worker_main(opts: Arc<Opts>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let w = Rc::new(Worker::new());
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Connect { clients, concurrency, reply } => {
                    let sem = Rc::new(Semaphore::new(concurrency.max(1)));
                    let mut waits = Vec::with_capacity(clients.len());
                    for (_global, src) in clients {
                        let idx = {
                            let mut cs = w.clients.borrow_mut();
                            cs.push(Client::default());
                            cs.len() - 1
                        };
                        let (tx, rx) = oneshot::channel();
                        tokio::task::spawn_local(client_task(
                            w.clone(),
                            opts.clone(),
                            idx,
                            src,
                            sem.clone(),
                            tx,
                        ));
                        waits.push(rx);
                    }
                    tokio::task::spawn_local(async move {
                        let (mut ok, mut failed) = (0u64, 0u64);
                        for r in waits {
                            if r.await.unwrap_or(false) {
                                ok += 1;
                            } else {
                                failed += 1;
                            }
                        }
                        let _ = reply.send((ok, failed));
                    });
                }
                Cmd::Reset { base, reply } => {
                    for c in w.clients.borrow_mut().iter_mut() {
                        c.reset(base);
                    }
                    w.hist.borrow_mut().reset();
                    w.other_frames.set(0);
                    w.first_recv_ns.set(0);
                    w.last_recv_ns.set(0);
                    let _ = reply.send(());
                }
                Cmd::Progress { end, reply } => {
                    let cs = w.clients.borrow();
                    let mut missing = 0u64;
                    let mut unique = 0u64;
                    for c in cs.iter().filter(|c| c.measured) {
                        unique += c.unique;
                        if c.live && c.unique < end.saturating_sub(c.base) {
                            missing += 1;
                        }
                    }
                    let _ = reply.send((missing, unique));
                }
                Cmd::Report { end, reply } => {
                    let cs = w.clients.borrow();
                    let mut r = WorkerReport {
                        clients: cs.len() as u64,
                        live: 0,
                        measured: 0,
                        expected: 0,
                        received: 0,
                        unique: 0,
                        dups: 0,
                        reordered: 0,
                        late: 0,
                        stale: 0,
                        lost: 0,
                        incomplete_clients: 0,
                        other_frames: w.other_frames.get(),
                        first_recv_ns: w.first_recv_ns.get(),
                        last_recv_ns: w.last_recv_ns.get(),
                        hist: w.hist.borrow().clone(),
                        handshake_hist: w.handshake_hist.borrow().clone(),
                        closes: w.closes.borrow().clone(),
                        errors: w.errors.borrow().clone(),
                    };
                    for c in cs.iter() {
                        r.live += c.live as u64;
                        if !c.measured {
                            continue;
                        }
                        let expected = end.saturating_sub(c.base);
                        r.measured += 1;
                        r.expected += expected;
                        r.received += c.received;
                        r.unique += c.unique;
                        r.dups += c.dups;
                        r.reordered += c.reordered;
                        r.late += c.late;
                        r.stale += c.stale;
                        let lost = expected.saturating_sub(c.unique);
                        r.lost += lost;
                        r.incomplete_clients += (lost > 0) as u64;
                    }
                    let _ = reply.send(r);
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Controller

struct Controller {
    opts: Arc<Opts>,
    workers: Vec<mpsc::UnboundedSender<Cmd>>,
    opened: usize,
}

fn hist_json(h: &Histogram<u64>, scale: f64) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let q = |p: f64| h.value_at_quantile(p) as f64 / scale;
    json!({
        "count": h.len(),
        "mean": h.mean() / scale,
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "p999": q(0.999),
        "max": h.max() as f64 / scale,
        "min": h.min() as f64 / scale,
    })
}

impl Controller {
    async fn connect(&mut self, n: usize) -> Value {
        let t0 = Instant::now();
        let nw = self.workers.len();
        let mut per: Vec<Vec<(usize, Option<Ipv4Addr>)>> = vec![Vec::new(); nw];
        for k in 0..n {
            let g = self.opened + k;
            let src = if self.opts.srcs.is_empty() {
                None
            } else {
                Some(self.opts.srcs[g % self.opts.srcs.len()])
            };
            per[g % nw].push((g, src));
        }
        self.opened += n;
        let conc = self.opts.concurrency.div_ceil(nw).max(1);
        let mut replies = Vec::new();
        for (w, clients) in self.workers.iter().zip(per) {
            let (tx, rx) = oneshot::channel();
            let _ = w.send(Cmd::Connect { clients, concurrency: conc, reply: tx });
            replies.push(rx);
        }
        let (mut ok, mut failed) = (0, 0);
        for r in replies {
            let (o, f) = r.await.unwrap_or((0, 0));
            ok += o;
            failed += f;
        }
        let secs = t0.elapsed().as_secs_f64();
        json!({
            "event": "connected",
            "requested": n,
            "ok": ok,
            "failed": failed,
            "secs": secs,
            "rate": ok as f64 / secs.max(1e-9),
            "now_ns": now_ns(),
        })
    }

    async fn broadcast<T>(&self, mk: impl Fn(oneshot::Sender<T>) -> Cmd) -> Vec<T> {
        let mut rxs = Vec::new();
        for w in &self.workers {
            let (tx, rx) = oneshot::channel();
            let _ = w.send(mk(tx));
            rxs.push(rx);
        }
        let mut out = Vec::new();
        for rx in rxs {
            if let Ok(v) = rx.await {
                out.push(v);
            }
        }
        out
    }

    async fn wait(&self, end: u64, max_ms: u64) -> Value {
        let t0 = Instant::now();
        let mut last_unique = u64::MAX;
        let mut last_progress = Instant::now();
        loop {
            let ps = self.broadcast(|reply| Cmd::Progress { end, reply }).await;
            let missing: u64 = ps.iter().map(|p| p.0).sum();
            let unique: u64 = ps.iter().map(|p| p.1).sum();
            if unique != last_unique {
                last_unique = unique;
                last_progress = Instant::now();
            }
            let idle = last_progress.elapsed() >= Duration::from_millis(self.opts.idle_ms);
            let over = t0.elapsed() >= Duration::from_millis(max_ms);
            if missing == 0 || idle || over {
                return json!({
                    "event": "waited",
                    "complete": missing == 0,
                    "incomplete_clients": missing,
                    "unique": unique,
                    "secs": t0.elapsed().as_secs_f64(),
                    "reason": if missing == 0 { "complete" } else if idle { "idle" } else { "timeout" },
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn report(&self, end: u64) -> Value {
        let rs = self.broadcast(|reply| Cmd::Report { end, reply }).await;
        let mut hist = new_hist();
        let mut hs = new_hist();
        let mut closes: BTreeMap<String, u64> = BTreeMap::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let sum = |f: fn(&WorkerReport) -> u64| rs.iter().map(f).sum::<u64>();
        let clients = sum(|r| r.clients);
        let live = sum(|r| r.live);
        let measured = sum(|r| r.measured);
        let expected = sum(|r| r.expected);
        let received = sum(|r| r.received);
        let unique = sum(|r| r.unique);
        let dups = sum(|r| r.dups);
        let reordered = sum(|r| r.reordered);
        let late = sum(|r| r.late);
        let stale = sum(|r| r.stale);
        let lost = sum(|r| r.lost);
        let incomplete = sum(|r| r.incomplete_clients);
        let other = sum(|r| r.other_frames);
        let first = rs.iter().map(|r| r.first_recv_ns).filter(|&v| v > 0).min().unwrap_or(0);
        let last = rs.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
        for r in &rs {
            let _ = hist.add(&r.hist);
            let _ = hs.add(&r.handshake_hist);
            for (k, v) in &r.closes {
                *closes.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.errors {
                *errors.entry(k.clone()).or_default() += v;
            }
        }
        json!({
            "event": "report",
            "clients": clients,
            "live": live,
            "measured_clients": measured,
            "expected": expected,
            "received": received,
            "unique": unique,
            "duplicates": dups,
            "reordered": reordered + late,
            "reordered_beyond_window": late,
            "stale": stale,
            "lost": lost,
            "incomplete_clients": incomplete,
            "other_frames": other,
            "first_recv_ns": first,
            "last_recv_ns": last,
            "latency_us": hist_json(&hist, 1000.0),
            "handshake_us": hist_json(&hs, 1000.0),
            "closes": closes,
            "connect_errors": errors,
        })
    }
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() {
    let opts = Arc::new(parse_opts());
    let (soft, hard) = raise_nofile();
    let deadline = opts.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("loadgen: --timeout-s reached; exiting");
        std::process::exit(3);
    });
    let mut workers = Vec::new();
    for i in 0..opts.threads {
        let (tx, rx) = mpsc::unbounded_channel();
        let o = opts.clone();
        std::thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || worker_main(o, rx))
            .expect("spawn worker");
        workers.push(tx);
    }
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let mut ctl = Controller { opts: opts.clone(), workers, opened: 0 };
        emit(&json!({
            "event": "started",
            "pid": std::process::id(),
            "nofile": [soft, hard],
            "threads": opts.threads,
            "srcs": opts.srcs.len(),
        }));
        if opts.initial_clients > 0 {
            let v = ctl.connect(opts.initial_clients).await;
            emit(&v);
        }
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.split_whitespace();
            let cmd = parts.next().unwrap_or("");
            let a: Option<u64> = parts.next().and_then(|s| s.parse().ok());
            let b: Option<u64> = parts.next().and_then(|s| s.parse().ok());
            let v = match (cmd, a) {
                ("connect", Some(n)) => ctl.connect(n as usize).await,
                ("reset", Some(base)) => {
                    ctl.broadcast(|reply| Cmd::Reset { base, reply }).await;
                    json!({ "event": "reset", "base": base, "now_ns": now_ns() })
                }
                ("wait", Some(end)) => ctl.wait(end, b.unwrap_or(60_000)).await,
                ("report", Some(end)) => ctl.report(end).await,
                ("quit", _) => {
                    emit(&json!({ "event": "bye" }));
                    std::process::exit(0);
                }
                ("", _) => continue,
                _ => json!({ "event": "error", "message": format!("bad command: {line}") }),
            };
            emit(&v);
        }
        // stdin closed: the driver is gone.
        std::process::exit(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids() {
        assert_eq!(
            parse_event(r#"{"type":"parcel_updated","parcel_id":"b12-345"}"#),
            Some((12, 345))
        );
        assert_eq!(parse_event(WELCOME), None);
        assert!(is_welcome(WELCOME));
        assert!(is_welcome(r#"{"type":"connected","message":"x","offset":"1-0"}"#));
        assert!(is_welcome(r#"{"message":"x","type":"connected"}"#));
        assert!(!is_welcome(r#"{"type":"parcel_updated","parcel_id":"b1-2"}"#));
        assert_eq!(parse_event(r#"{"parcel_id":"b7-8","type":"parcel_updated"}"#), Some((7, 8)));
        assert_eq!(parse_event(r#"{"type":"parcel_updated","parcel_id":"x"}"#), None);
    }

    #[test]
    fn counts_dups_reorders_and_loss() {
        let mut c = Client { live: true, ..Default::default() };
        c.reset(10);
        for s in [10, 11, 13, 12, 12, 15, 9] {
            c.on_seq(s);
        }
        assert_eq!(c.unique, 5);
        assert_eq!(c.dups, 1);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.stale, 1);
        // [10, 16) expected: 14 is missing.
        assert_eq!(16 - c.base - c.unique, 1);
        c.on_seq(5000);
        c.on_seq(14);
        assert_eq!(c.late, 1);
    }
}
