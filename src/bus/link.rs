//! The bus's way to Redis, whatever the topology: one node, the master a set of sentinels names
//! (followed across failovers), or a Redis Cluster (commands routed to the master of the
//! channel's hash slot; the subscription on any reachable node, since classic pub/sub reaches
//! every node of a cluster).
//!
//! [`Link::conn`] hands out the command connection of the moment; after a failure the caller
//! calls [`Link::renew`], which, for Sentinel, asks the sentinels again and reconnects to the
//! master they name now (a single node's and a cluster's connections heal by themselves).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::redis::{certificates, classify, client, unavailable};
use super::topology::{node_url, Addr, ClusterSeeds, SentinelSet, Topology};
use crate::config::RedisTls;
use crate::error::{codes, Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one sentinel may take to answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(1500);

/// A command connection: one node's (reconnecting by itself) or a cluster's.
#[derive(Clone)]
pub(super) enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT replicas timeout` on the node that took this connection's last write (in a
    /// cluster: the master of `slot`); returns how many replicas acknowledged.
    pub(super) async fn wait(
        &mut self,
        replicas: u32,
        timeout: Duration,
        slot: u16,
    ) -> Result<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        let acked = match self {
            Conn::Node(c) => cmd.query_async::<i64>(c).await,
            Conn::Cluster(c) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                c.route_command(cmd, RoutingInfo::SingleNode(route))
                    .await
                    .and_then(|v| redis::from_redis_value::<i64>(v).map_err(Into::into))
            }
        };
        acked.map(|n| n.max(0) as u32).map_err(unavailable)
    }
}

struct Current {
    conn: Conn,
    /// The master's address (`host:port`; in a cluster, the master of the channel's slot).
    master: String,
    generation: u64,
}

/// The bus's connection to Redis; shared by the publisher, the history and the subscriber.
pub(super) struct Link {
    topology: Topology,
    tls: Option<RedisTls>,
    /// The hash slot of the channel's keys (for routing `WAIT` in a cluster).
    pub(super) slot: u16,
    current: Mutex<Current>,
    renewing: tokio::sync::Mutex<()>,
    /// Times the master changed (a failover seen).
    failovers: AtomicU64,
    /// Told the master's address whenever it changes, and the failovers seen.
    report: Report,
}

/// The cluster hash slot of `key` (CRC16/XMODEM of its hash tag, modulo 16384).
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(bytes) {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

type Opened = (Conn, String);

/// Told the master's address and the failovers seen so far, whenever the master changes.
pub(super) type Report = Box<dyn Fn(&str, u64) + Send + Sync>;

impl Link {
    /// Connects (or fails within a few seconds, with a code that says whether it is worth
    /// retrying: `ERR_REDIS_UNAVAILABLE`, or a misconfiguration).
    pub(super) async fn open(
        url: &str,
        tls: Option<&RedisTls>,
        slot_key: &str,
        report: Report,
    ) -> Result<Arc<Link>> {
        let topology = Topology::parse(url)?;
        if tls.is_some() && !topology.is_tls() {
            return Err(Error::new(
                codes::INVALID_OPTION,
                "redisTls is set but redisUrl is not rediss://: use rediss://host:port (or \
                 rediss+sentinel://, rediss+cluster://) for TLS",
            ));
        }
        let slot = key_slot(slot_key);
        let (conn, master) = connect(&topology, tls, slot).await?;
        report(&master, 0);
        Ok(Arc::new(Link {
            topology,
            tls: tls.cloned(),
            slot,
            current: Mutex::new(Current { conn, master, generation: 0 }),
            renewing: tokio::sync::Mutex::new(()),
            failovers: AtomicU64::new(0),
            report,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The command connection now, and its generation (to pass to [`Link::renew`]).
    pub(super) fn conn(&self) -> (Conn, u64) {
        let current = self.lock();
        (current.conn.clone(), current.generation)
    }

    /// After a failure on the connection of `generation`: finds the master again (Sentinel:
    /// asks the sentinels; Cluster: notes which master owns the slot now) and reconnects to it.
    /// Several callers may call it for one failure; the first does the work.
    pub(super) async fn renew(&self, generation: u64) -> Result<()> {
        let _one = self.renewing.lock().await;
        if self.lock().generation != generation {
            return Ok(());
        }
        let (conn, master) = match &self.topology {
            Topology::Node(_) => return Ok(()),
            Topology::Sentinel(_) => connect(&self.topology, self.tls.as_ref(), self.slot).await?,
            Topology::Cluster(_) => {
                let mut conn = self.lock().conn.clone();
                let master = slot_master(&mut conn, self.slot).await?;
                (conn, master)
            }
        };
        let mut current = self.lock();
        if current.master != master {
            let failovers = self.failovers.fetch_add(1, Ordering::Relaxed) + 1;
            log::warn!("bus: the Redis master is now {master} (was {})", current.master);
            (self.report)(&master, failovers);
            current.master = master;
        }
        current.conn = conn;
        current.generation += 1;
        Ok(())
    }

    /// Every few seconds, checks which node is the master now: in a cluster, the master of the
    /// channel's slot (the cluster connection follows a failover by itself); with Sentinel, the
    /// one the sentinels name (a manual `SENTINEL FAILOVER` leaves the old master alive, as a
    /// replica: nothing fails, yet commands must move). Keeps `/metrics` and the failover count
    /// true even in a process that publishes nothing. Ends with `shutdown`.
    pub(super) async fn watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        if matches!(self.topology, Topology::Node(_)) {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let (master, generation) = {
                let current = self.lock();
                (current.master.clone(), current.generation)
            };
            if let Topology::Sentinel(set) = &self.topology {
                match resolve_master(set, self.tls.as_ref()).await {
                    Ok(addr) if format!("{}:{}", addr.0, addr.1) == master => continue,
                    Ok(_) => {}
                    Err(e) => {
                        log::debug!("bus: could not ask the sentinels for the master: {e}");
                        continue;
                    }
                }
            }
            if let Err(e) = self.renew(generation).await {
                log::debug!("bus: could not find the Redis master: {e}");
            }
        }
    }

    /// A subscription on `channel`: on the master (Sentinel: the one named now), or on the
    /// first cluster node that answers (every node carries classic pub/sub).
    pub(super) async fn subscribe(&self, channel: &str) -> Result<PubSub> {
        let tls = self.tls.as_ref();
        let targets: Vec<String> = match &self.topology {
            Topology::Node(url) => vec![url.clone()],
            Topology::Sentinel(set) => {
                let addr = resolve_master(set, tls).await?;
                // A failover: the command connection follows before the catch-up reads.
                let (master, generation) = {
                    let current = self.lock();
                    (current.master.clone(), current.generation)
                };
                if master != format!("{}:{}", addr.0, addr.1) {
                    self.renew(generation).await?;
                }
                vec![node_url(set.tls, set.userinfo.as_deref(), &addr, set.db)]
            }
            Topology::Cluster(seeds) => {
                let mut conn = self.lock().conn.clone();
                let mut nodes = cluster_nodes(&mut conn).await.unwrap_or_default();
                // The master of our slot first: where the publish script runs.
                let master = self.lock().master.clone();
                nodes.sort_by_key(|a| format!("{}:{}", a.0, a.1) != master);
                for seed in &seeds.seeds {
                    if !nodes.contains(seed) {
                        nodes.push(seed.clone());
                    }
                }
                nodes.iter().map(|a| node_url(seeds.tls, seeds.userinfo.as_deref(), a, 0)).collect()
            }
        };
        let mut last = unavailable("no node to subscribe on");
        for url in targets {
            match subscribe_on(&client(&url, tls)?, channel).await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

async fn subscribe_on(client: &redis::Client, channel: &str) -> Result<PubSub> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unavailable("connection timed out"))?
        .map_err(classify)
}

async fn node_manager(client: &redis::Client) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1);
    tokio::time::timeout(CONNECT_TIMEOUT, client.get_connection_manager_with_config(config))
        .await
        .map_err(|_| unavailable("connection timed out"))?
        .map_err(classify)
}

fn boxed<'a, T>(
    f: impl std::future::Future<Output = T> + Send + 'a,
) -> Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(f)
}

/// Connects to whatever the topology names; returns the connection and the master's address.
async fn connect(topology: &Topology, tls: Option<&RedisTls>, slot: u16) -> Result<Opened> {
    match topology {
        Topology::Node(url) => {
            let mut conn = node_manager(&client(url, tls)?).await?;
            // A cluster node behind redis:// would answer MOVED to most publishes. (Where INFO
            // is not allowed, the publish script's errors will tell.)
            let info: redis::RedisResult<String> =
                redis::cmd("INFO").arg("cluster").query_async(&mut conn).await;
            if info.is_ok_and(|info| info.contains("cluster_enabled:1")) {
                return Err(Error::new(
                    codes::REDIS_CLUSTER,
                    "redisUrl names a Redis Cluster node: use redis+cluster://host:port[,host:port...] \
                     (rediss+cluster:// for TLS) so that commands reach the right node",
                ));
            }
            let master = match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                Ok(info) => info.addr().to_string(),
                Err(_) => String::new(),
            };
            Ok((Conn::Node(conn), master))
        }
        Topology::Sentinel(set) => {
            let addr = resolve_master(set, tls).await?;
            let url = node_url(set.tls, set.userinfo.as_deref(), &addr, set.db);
            let mut conn = node_manager(&client(&url, tls)?).await?;
            let role: Vec<Value> =
                redis::cmd("ROLE").query_async(&mut conn).await.map_err(classify)?;
            let is_master = matches!(role.first(), Some(Value::BulkString(r)) if r == b"master");
            if !is_master {
                return Err(unavailable(format!(
                    "{}:{} is not a master (yet): the sentinels are failing over",
                    addr.0, addr.1
                )));
            }
            Ok((Conn::Node(conn), format!("{}:{}", addr.0, addr.1)))
        }
        Topology::Cluster(seeds) => {
            let mut conn = boxed(cluster_connect(seeds, tls)).await?;
            let master = slot_master(&mut conn, slot).await?;
            Ok((conn, master))
        }
    }
}

async fn cluster_connect(seeds: &ClusterSeeds, tls: Option<&RedisTls>) -> Result<Conn> {
    let urls: Vec<String> = seeds.seeds.iter().map(|a| node_url(seeds.tls, None, a, 0)).collect();
    let mut builder = redis::cluster::ClusterClient::builder(urls)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(2);
    if let Some(user) = &seeds.username {
        builder = builder.username(user);
    }
    if let Some(password) = &seeds.password {
        builder = builder.password(password);
    }
    if seeds.tls {
        let default = RedisTls { reject_unauthorized: true, ..RedisTls::default() };
        let tls = tls.unwrap_or(&default);
        builder = builder.certs(certificates(tls)?).tls(if tls.reject_unauthorized {
            redis::TlsMode::Secure
        } else {
            redis::TlsMode::Insecure
        });
    }
    let client = builder.build().map_err(|e| {
        Error::new(codes::INVALID_OPTION, format!("invalid redisUrl or redisTls: {e}"))
    })?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
        .await
        .map_err(|_| unavailable("connection to the cluster timed out"))?
        .map_err(cluster_error)?;
    Ok(Conn::Cluster(conn))
}

/// A seed that is not in cluster mode is a misconfiguration, not an outage.
fn cluster_error(e: redis::RedisError) -> Error {
    let text = e.to_string();
    if text.contains("cluster support disabled") || text.contains("cluster mode") {
        return Error::new(
            codes::REDIS_CLUSTER,
            format!(
                "a redis+cluster:// seed is not a Redis Cluster node ({text}): list cluster \
                 nodes, or use redis://host:port for a single Redis"
            ),
        );
    }
    classify(e)
}

/// The address of the master serving `slot` now (from `CLUSTER SLOTS`).
async fn slot_master(conn: &mut Conn, slot: u16) -> Result<String> {
    let slots: Vec<Value> =
        redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await.map_err(|e| {
            if e.to_string().contains("cluster support disabled") {
                cluster_error(e)
            } else {
                unavailable(e)
            }
        })?;
    for range in slots {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if (*start..=*end).contains(&(slot as i64)) {
            let host = match node.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                _ => String::new(),
            };
            let port = match node.get(1) {
                Some(Value::Int(p)) => *p,
                _ => 0,
            };
            return Ok(format!("{host}:{port}"));
        }
    }
    Err(unavailable(format!("no cluster node serves slot {slot} (the cluster is failing over?)")))
}

/// The nodes of the cluster that are not known to be failing (from `CLUSTER NODES`).
async fn cluster_nodes(conn: &mut Conn) -> redis::RedisResult<Vec<Addr>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags.contains("fail") || flags.contains("noaddr") || flags.contains("handshake") {
                return None;
            }
            let addr = addr.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect())
}

/// Asks the sentinels, in order, which node is the master named `set.master`.
async fn resolve_master(set: &SentinelSet, tls: Option<&RedisTls>) -> Result<Addr> {
    let mut unknown = 0;
    let mut last = None;
    for addr in &set.sentinels {
        let client = client(&set.sentinel_url(addr), tls)?;
        let ask = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&set.master)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match tokio::time::timeout(SENTINEL_TIMEOUT, ask).await {
            Ok(Ok(Some(master))) => return Ok(master),
            Ok(Ok(None)) => unknown += 1,
            Ok(Err(e)) => {
                let error = classify(e);
                if error.code() == codes::REDIS_AUTH {
                    return Err(Error::new(
                        codes::REDIS_AUTH,
                        format!(
                            "the sentinel at {}:{} refused the credentials: give the sentinels' \
                             password as redisUrl's sentinelPassword query parameter \
                             (redis+sentinel://…/MASTER_NAME?sentinelPassword=…, percent-encoded) \
                             ({})",
                            addr.0,
                            addr.1,
                            error.message()
                        ),
                    ));
                }
                if error.code() != codes::REDIS_UNAVAILABLE {
                    return Err(error);
                }
                last = Some(error);
            }
            Err(_) => {
                last = Some(unavailable(format!("the sentinel at {}:{} timed out", addr.0, addr.1)))
            }
        }
    }
    if unknown > 0 {
        return Err(Error::new(
            codes::REDIS_SENTINEL,
            format!(
                "no sentinel knows a master named \"{}\" ({unknown} of {} answered): put the \
                 name the sentinels monitor in redisUrl (redis+sentinel://host:port/MASTER_NAME; \
                 `SENTINEL MASTERS` on a sentinel lists them)",
                set.master,
                set.sentinels.len()
            ),
        ));
    }
    Err(last.unwrap_or_else(|| unavailable("no sentinel answered")))
}

#[cfg(test)]
mod tests {
    use super::key_slot;

    #[test]
    fn hash_slots_follow_the_cluster_spec() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
        assert_eq!(key_slot("{parcel_events}:history"), key_slot("parcel_events"));
        assert_eq!(key_slot("{}x"), key_slot("{}x"), "an empty tag hashes the whole key");
        assert_ne!(key_slot("{}x"), key_slot("x"));
    }
}
