//! The Redis bus.
//!
//! Publishing: one Lua script per batch gives each event the next offset `<epoch>-<seq>` (a
//! contiguous sequence within an epoch that a Redis which lost its data, or a new master, renews),
//! appends it to a capped Redis Stream (`{<channel>}:history`: the history every server shares,
//! whose entry ids are the offsets) and PUBLISHes it on the channel with its offset, atomically
//! and in order, in one round trip. Plain pub/sub subscribers (e.g. `redis-cli SUBSCRIBE
//! parcel_events`) see every event. Every key shares the `{<channel>}` hash tag (one cluster
//! slot). Where Redis is (one node, Sentinel, Cluster) is `link.rs`'s business.
//!
//! Receiving: a dedicated SUBSCRIBE connection feeds the hub. After a loss it resubscribes and
//! first reads the stream from the last offset it dispatched, so connected clients miss nothing
//! published meanwhile by other processes (duplicates between the catch-up and the live
//! subscription are dropped by offset); a hole in the live sequence is filled the same way, or,
//! when the stream no longer has it, connected clients are told to resync. Messages that an outside client PUBLISHed without an
//! offset are broadcast as they are: no offset, not in the history.
//!
//! With history off (`max_events == 0`) events are plain PUBLISHes, as in the original design.
//!
//! Events addressed to users travel the same way, with their users (the script also fills the
//! inboxes of users connected nowhere); presence and inboxes are in `targeting.rs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::PubSub;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff;
use super::link::{Conn, Link};
use crate::config::RedisTls;
use crate::error::{codes, Error, Result};
use crate::event::Frame;
use crate::event::{Event, Offset};
use crate::history::{History, Replay, Retention};
use crate::hub::{Directory, Hub};
use crate::inbox::InboxLimits;

/// The epoch prologue shared by both scripts. KEYS[1]: stream, KEYS[2]: epoch hash (`epoch`, and
/// `node`: the master's replication id when the epoch began), KEYS[3]: sequence. ARGV[1]: a floor
/// for a new epoch (the newest epoch the caller has seen). Leaves `epoch` (a string of digits) and
/// `seq` (the last sequence number given) set. A new epoch begins (sequence back to 0) when none
/// exists (a Redis that lost its data), when the sequence key is missing, when the stream holds an
/// entry at or after the next offset, or when the master changed (its replication id differs:
/// a failover or a restart may have lost writes, whose offsets must never be given again; where
/// `INFO` is not allowed, only a lost epoch or sequence key begins a new epoch). A new epoch is
/// the master's clock in microseconds, above every epoch known: offsets keep ordering.
const EPOCH_LUA: &str = r#"
local function num(id) return tonumber(string.match(id or '', '^(%d+)')) end
local info = redis.pcall('INFO', 'replication')
if type(info) ~= 'string' then info = '' end
local node = string.match(info, 'master_replid:(%w+)') or ''
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'node')
local epoch = meta[1]
local seq = tonumber(redis.call('GET', KEYS[3]) or '')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local fresh = (not epoch) or (not tonumber(epoch)) or meta[2] ~= node or (not seq)
if (not fresh) and last then
  local le = num(last[1])
  local ls = tonumber(string.match(last[1], '-(%d+)$'))
  local e = tonumber(epoch)
  if le > e or (le == e and ls > seq) then fresh = true end
end
if fresh then
  local t = redis.call('TIME')
  local e = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local floor = tonumber(ARGV[1]) or 0
  if epoch and tonumber(epoch) and tonumber(epoch) > floor then floor = tonumber(epoch) end
  if last and num(last[1]) > floor then floor = num(last[1]) end
  if e <= floor then e = floor + 1 end
  epoch = string.format('%.0f', e)
  seq = 0
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'node', node)
  redis.call('SET', KEYS[3], 0)
end
"#;

/// Creates the epoch if needed; returns `{epoch, seq}`: the offset of the newest event.
const INIT_SCRIPT_BODY: &str = "return {epoch, tostring(seq)}";

/// KEYS[1..3]: as [`EPOCH_LUA`]; KEYS[4]: this publisher's last batch number. ARGV[1]: epoch
/// floor, ARGV[2]: channel, ARGV[3]: max length (0: no history), ARGV[4]: cutoff in ms (or "0"),
/// ARGV[5]: now in ms, ARGV[6]: the batch number, ARGV[7..10]: the targeting settings (key prefix
/// `{channel}:`, presence window ms, inbox size, inbox TTL ms), then one event JSON per event
/// (without offset). Each event gets the offset `<epoch>-<seq>` (also its stream entry id, and
/// stored with the publish time `t`) and is PUBLISHed with it. A batch already applied (its
/// acknowledgement was lost and the publisher sent it again, maybe to a promoted replica that had
/// it) is not applied twice.
///
/// An event addressed to users is followed by "\n" and its users as a JSON array (a compact JSON
/// frame never holds a raw newline): its stream entry keeps them (field `u`), its message
/// carries them (`"users"`), and users with no connection on any live instance (`targeting.rs`)
/// get it in their inbox, decided here, atomically with the publish.
const PUBLISH_SCRIPT_BODY: &str = r#"
local done = tonumber(redis.call('GET', KEYS[4]) or '')
if done and done >= tonumber(ARGV[6]) then return -1 end
local history = ARGV[3] ~= '0'
local prefix, window, size, ttl = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local now, live
local function inbox(entry, users)
  if size == 0 then return end
  if not live then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    live = redis.call('ZRANGEBYSCORE', prefix .. 'instances', now - window, '+inf')
  end
  local online = {}
  for _, instance in ipairs(live) do
    local counts = redis.call('HMGET', prefix .. 'presence:' .. instance, unpack(users))
    for i = 1, #users do
      if counts[i] then online[i] = true end
    end
  end
  for i = 1, #users do
    if not online[i] then
      local key = prefix .. 'inbox:' .. users[i]
      redis.call('RPUSH', key, now .. ' ' .. entry)
      redis.call('LTRIM', key, -size, -1)
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
for i = 11, #ARGV do
  local event, users = ARGV[i], nil
  local cut = string.find(event, '\n', 1, true)
  if cut then
    users = string.sub(event, cut + 1)
    event = string.sub(event, 1, cut - 1)
  end
  local message = event
  if history then
    seq = seq + 1
    local id = epoch .. '-' .. string.format('%d', seq)
    if users then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id, 'e', event, 't', ARGV[5], 'u', users)
    else
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], id, 'e', event, 't', ARGV[5])
    end
    message = string.sub(event, 1, -2) .. ',"offset":"' .. id .. '"}'
  end
  if users then
    redis.call('PUBLISH', ARGV[2], string.sub(message, 1, -2) .. ',"users":' .. users .. '}')
    inbox(message, cjson.decode(users))
  else
    redis.call('PUBLISH', ARGV[2], message)
  end
end
if history then redis.call('SET', KEYS[3], string.format('%d', seq)) end
redis.call('SET', KEYS[4], ARGV[6], 'EX', 86400)
if history and ARGV[4] ~= '0' then
  local cutoff = tonumber(ARGV[4])
  local function expired(entry)
    local f = entry[2]
    for j = 1, #f, 2 do
      if f[j] == 't' then return tonumber(f[j + 1]) < cutoff end
    end
    local ms = num(entry[1])
    return ms < 100000000000000 and ms < cutoff
  end
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if first and expired(first) then
    for _ = 1, 16 do
      local old = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 64)
      local ids = {}
      local more = true
      for _, entry in ipairs(old) do
        if expired(entry) then ids[#ids + 1] = entry[1] else more = false break end
      end
      if #ids > 0 then redis.call('XDEL', KEYS[1], unpack(ids)) end
      if (not more) or #old < 64 then break end
    end
  end
end
return seq
"#;

pub(super) struct RedisBus {
    link: Arc<Link>,
    channel: String,
    keys: Keys,
    /// This publisher's batch-number key (see [`Keys::batch`]).
    batch_key: String,
    retention: Retention,
    script: redis::Script,
    /// `{channel}:`, the prefix of the presence and inbox keys (`targeting.rs`).
    prefix: String,
    inbox: InboxLimits,
    directory: Arc<super::targeting::RedisDirectory>,
    /// Batches numbered so far.
    batches: u64,
    /// Its newest offset's epoch is the floor of a new epoch (offsets keep ordering).
    hub: Arc<Hub>,
    /// `redisWaitReplicas` and `redisWaitTimeoutMs`, when at least one replica is asked for.
    wait: Option<(u32, Duration)>,
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(codes::REDIS_UNAVAILABLE, format!("Redis is unavailable: {e}"))
}

/// The client for `url`; a `rediss://` URL with the CA, client certificate and verification
/// that `tls` asks for.
pub(super) fn client(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client> {
    let invalid = |e: &dyn std::fmt::Display| {
        Error::new(codes::INVALID_OPTION, format!("invalid redisUrl: {e}"))
    };
    if !url.starts_with("rediss://") {
        if tls.is_some() {
            return Err(Error::new(
                codes::INVALID_OPTION,
                "redisTls is set but redisUrl is not rediss://: use rediss://host:port for TLS",
            ));
        }
        return redis::Client::open(url).map_err(|e| invalid(&e));
    }
    let default = RedisTls { reject_unauthorized: true, ..RedisTls::default() };
    let tls = tls.unwrap_or(&default);
    let url = match (tls.reject_unauthorized, url.contains('#')) {
        (false, false) => format!("{url}#insecure"),
        _ => url.to_string(),
    };
    redis::Client::build_with_tls(url.as_str(), certificates(tls)?).map_err(|e| {
        Error::new(codes::INVALID_OPTION, format!("invalid redisTls or redisUrl: {e}"))
    })
}

/// The CA and client certificate of `tls`, as redis-rs takes them.
pub(super) fn certificates(tls: &RedisTls) -> Result<redis::TlsCertificates> {
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: cert.as_bytes().to_vec(),
            client_key: key.as_bytes().to_vec(),
        }),
        (None, None) => None,
        _ => {
            return Err(Error::new(
                codes::INVALID_OPTION,
                "redisTls.cert and redisTls.key go together (mutual TLS needs both)",
            ))
        }
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert: tls.ca.as_ref().map(|ca| ca.as_bytes().to_vec()),
    })
}

/// A failed connect as the caller must see it: credentials that Redis refused are a
/// misconfiguration (`ERR_REDIS_AUTH`, never a silent fallback), anything else is unavailability.
pub(super) fn classify(e: redis::RedisError) -> Error {
    let text = e.to_string();
    let code = e.code().unwrap_or_default();
    let has = |word: &str| code == word || text.contains(word);
    if e.kind() == redis::ErrorKind::AuthenticationFailed || has("WRONGPASS") || has("NOAUTH") {
        Error::new(
            codes::REDIS_AUTH,
            format!(
                "Redis refused the credentials ({text}): put the right user and password in \
                 redisUrl (redis://USER:PASSWORD@host:port, percent-encoded), or check the \
                 server's requirepass / ACL user"
            ),
        )
    } else if is_tls_failure(&text) {
        Error::new(
            codes::REDIS_TLS,
            format!(
                "TLS with Redis failed ({text}): set redisTls.ca (REDIS_TLS_CA_FILE) to the CA \
                 that signed the server's certificate, connect to a host name the certificate \
                 names, and for mutual TLS give redisTls.cert and redisTls.key \
                 (REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE)"
            ),
        )
    } else if has("NOPERM") {
        Error::new(
            codes::REDIS_AUTH,
            format!(
                "the Redis ACL user may not run what the bus needs ({text}): grant it the \
                 channel (&CHANNEL), its keys (~{{CHANNEL}}:*: history, epoch, presence, inboxes) \
                 and PUBLISH, SUBSCRIBE, EVALSHA, EVAL, XADD, XRANGE, XREVRANGE, XDEL, GET, SET, \
                 HMGET, HSET, HDEL, HLEN, EXISTS, INFO, TIME, WAIT, ROLE, CLUSTER, ZADD, \
                 ZRANGEBYSCORE, ZREMRANGEBYSCORE, ZREM, RPUSH, LPUSH, LTRIM, PEXPIRE, LRANGE, DEL"
            ),
        )
    } else {
        unavailable(e)
    }
}

/// Whether a connect error came from the TLS layer (rustls reports these as I/O errors).
fn is_tls_failure(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["certificate", "unknownissuer", "tls", "alert", "handshake"].iter().any(|w| text.contains(w))
}

/// The keys the bus uses for `channel`: all in one hash slot (the `{channel}` hash tag), so
/// the publish script runs on a Redis Cluster too.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The Redis Stream of the shared history; entry ids are the offsets.
    pub history: String,
    /// Hash: `epoch` (the current epoch) and `node` (the master's replication id it began on).
    pub epoch: String,
    /// The last sequence number given in the current epoch.
    pub seq: String,
    /// Prefix of each publisher's last applied batch number (`{channel}:batch:<publisher>`).
    pub batch: String,
}

impl Keys {
    pub fn new(channel: &str) -> Self {
        Self {
            history: format!("{{{channel}}}:history"),
            epoch: format!("{{{channel}}}:epoch"),
            seq: format!("{{{channel}}}:seq"),
            batch: format!("{{{channel}}}:batch:"),
        }
    }
}

/// A name for this publisher, unique enough to tell its batches from every other process's.
fn publisher_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:016x}", h.finish())
}

impl RedisBus {
    /// Connects both connections and subscribes, or fails within a few seconds.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn connect(
        url: &str,
        tls: Option<&RedisTls>,
        channel: &str,
        retention: Retention,
        inbox: InboxLimits,
        wait: Option<(u32, Duration)>,
        hub: Arc<Hub>,
        connected: Arc<watch::Sender<bool>>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let keys = Keys::new(channel);
        let metrics = hub.clone();
        let report = Box::new(move |master: &str, failovers: u64| {
            metrics.metrics().set_redis_master(master, failovers);
        });
        let link = Link::open(url, tls, &keys.history, report).await?;
        let pubsub = link.subscribe(channel).await?;
        let history = (retention.max_events > 0).then(|| StreamHistory {
            link: link.clone(),
            keys: keys.clone(),
            hub: Arc::downgrade(&hub),
        });
        let mut last = None;
        if let Some(history) = &history {
            // New clients start at the newest offset: the epoch's last sequence number (the
            // epoch is created now if Redis has none, so that even "nothing yet" names one).
            let floor = hub.head().map_or(0, |h| h.ms);
            let head = init_epoch(&mut link.conn().0, &keys, floor).await.map_err(classify)?;
            // Replaces the head of a memory history this bus may have run before Redis answered.
            hub.reset_head(head);
            last = Some(head);
            hub.set_history(Some(Arc::new(history.clone()) as Arc<dyn History>));
        }
        // Presence and inboxes over the instances: installed in the hub when this bus takes
        // over publishing (`RedisBus::activate`), so no publish falls between two inboxes.
        let directory = super::targeting::RedisDirectory::start(
            link.clone(),
            channel,
            inbox.ttl,
            &hub,
            connected.subscribe(),
            shutdown.clone(),
        );
        connected.send_replace(true);
        let receiver = Receiver {
            link: link.clone(),
            channel: channel.to_string(),
            history,
            hub: hub.clone(),
            connected,
            last,
        };
        super::runtime::spawn(link.clone().watch(shutdown.clone()));
        super::runtime::spawn(receiver.run(pubsub, shutdown));
        let script = redis::Script::new(&format!("{EPOCH_LUA}{PUBLISH_SCRIPT_BODY}"));
        Ok(Self {
            link,
            channel: channel.to_string(),
            batch_key: format!("{}{}", keys.batch, publisher_id()),
            keys,
            retention,
            script,
            batches: 0,
            hub,
            wait,
            prefix: super::targeting::key_prefix(channel),
            inbox,
            directory,
        })
    }

    /// From now on this bus publishes: presence and inboxes are kept in Redis.
    pub(super) fn activate(&self, hub: &Hub) {
        hub.set_directory(Some(self.directory.clone() as Arc<dyn Directory>));
    }

    /// Numbers the next batch: a batch sent again after a lost acknowledgement keeps its number
    /// (see [`RedisBus::publish`]), so it is applied once.
    pub(super) fn next_batch(&mut self) -> u64 {
        self.batches += 1;
        self.batches
    }

    /// Publishes a batch in one round trip, in order (two with `redisWaitReplicas`: then
    /// `WAIT`). `number`: from [`RedisBus::next_batch`], the same for every attempt of one
    /// batch. A failure that may be an outage or a failover (`ERR_REDIS_UNAVAILABLE`) is worth
    /// sending the batch again; `ERR_REDIS_REPLICATION` is final (the events went out).
    pub(super) async fn publish<'a>(
        &mut self,
        number: u64,
        events: impl Iterator<Item = &'a Event>,
    ) -> Result<()> {
        let (mut conn, generation) = self.link.conn();
        let sent = self.send(&mut conn, number, events).await;
        if let Err(e) = sent {
            // The master may have moved (a failover): find it again before the retry.
            if let Err(renew) = self.link.renew(generation).await {
                log::debug!("bus: looking for the Redis master again failed: {renew}");
            }
            return Err(unavailable(e));
        }
        let Some((replicas, timeout)) = self.wait else { return Ok(()) };
        let started = std::time::Instant::now();
        let acked = match conn.wait(replicas, timeout, self.link.slot).await {
            Ok(acked) => acked,
            Err(e) => {
                let _ = self.link.renew(generation).await;
                return Err(Error::new(
                    codes::REDIS_REPLICATION,
                    format!(
                        "the events were published, but whether {replicas} replica(s) have \
                         them is unknown: WAIT failed ({})",
                        e.message()
                    ),
                ));
            }
        };
        self.hub.metrics().replication_waited(started.elapsed(), acked >= replicas);
        if acked < replicas {
            return Err(Error::new(
                codes::REDIS_REPLICATION,
                format!(
                    "the events were published, but only {acked} of the {replicas} replica(s) \
                     redisWaitReplicas asks for acknowledged them within {} ms: a failover now \
                     could lose them (check the replicas, or lower redisWaitReplicas)",
                    timeout.as_millis()
                ),
            ));
        }
        Ok(())
    }

    async fn send<'a>(
        &self,
        conn: &mut Conn,
        number: u64,
        events: impl Iterator<Item = &'a Event>,
    ) -> redis::RedisResult<()> {
        let events: Vec<&Event> = events.collect();
        // Without history plain PUBLISHes do, unless an event is addressed to users (the
        // script decides who is offline and fills their inboxes).
        let addressed = events.iter().any(|e| e.users().is_some());
        if self.retention.max_events == 0 && !addressed {
            let mut pipe = redis::pipe();
            for event in events {
                pipe.cmd("PUBLISH").arg(&self.channel).arg(event.frame().as_str()).ignore();
            }
            return pipe.query_async::<()>(conn).await;
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let cutoff = match self.retention.max_age.as_millis() {
            0 => 0,
            age => now_ms.saturating_sub(age).max(1),
        };
        let mut invocation = self.script.key(&self.keys.history);
        invocation.key(&self.keys.epoch).key(&self.keys.seq).key(&self.batch_key);
        invocation
            .arg(self.hub.head().map_or(0, |h| h.ms))
            .arg(&self.channel)
            .arg(self.retention.max_events)
            .arg(cutoff.to_string())
            .arg(now_ms.to_string())
            .arg(number);
        invocation
            .arg(&self.prefix)
            .arg(super::targeting::PRESENCE_WINDOW.as_millis() as u64)
            .arg(self.inbox.size)
            .arg(self.inbox.ttl.as_millis().max(1) as u64);
        for event in events {
            match event.users_json() {
                None => invocation.arg(event.frame().as_str()),
                Some(users) => invocation.arg(format!("{}\n{users}", event.frame().as_str())),
            };
        }
        invocation.invoke_async::<i64>(conn).await.map(|_| ())
    }
}

/// Creates the epoch if Redis has none (or must begin a new one); returns the newest offset.
async fn init_epoch(conn: &mut Conn, keys: &Keys, floor: u64) -> redis::RedisResult<Offset> {
    let script = redis::Script::new(&format!("{EPOCH_LUA}{INIT_SCRIPT_BODY}"));
    let (epoch, seq): (String, String) = script
        .key(&keys.history)
        .key(&keys.epoch)
        .key(&keys.seq)
        .arg(floor)
        .invoke_async(conn)
        .await?;
    let bad = || redis::RedisError::from((redis::ErrorKind::Parse, "bad epoch", epoch.clone()));
    Ok(Offset { ms: epoch.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
}

type Entries = Vec<(String, Vec<Vec<u8>>)>;

fn parse_offset(id: &str) -> Option<Offset> {
    id.parse().ok()
}

/// The newest entry's offset, if the stream has any.
async fn newest_offset(conn: &mut Conn, stream: &str) -> redis::RedisResult<Option<Offset>> {
    let entries: Entries = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(entries.first().and_then(|(id, _)| parse_offset(id)))
}

/// An entry as a frame: its `e` field re-encoded with the entry id as offset, addressed to the
/// users of its `u` field if it has one.
fn entry_frame(id: &str, fields: &[Vec<u8>]) -> Option<(Offset, Event)> {
    let offset = parse_offset(id)?;
    let field = |name: &[u8]| {
        fields.chunks(2).find(|kv| kv.first().map(Vec::as_slice) == Some(name))?.get(1)
    };
    let mut event = Event::from_json(field(b"e")?).ok()?;
    if let Some(users) = field(b"u") {
        let users: Vec<String> = serde_json::from_slice(users).ok()?;
        event = event.to_users(&users).ok()?;
    }
    Some((offset, event.at(offset)))
}

/// Whether `entries` are exactly the events after `since` up to `until`: the same epoch, and
/// every sequence number from `since.seq + 1` to `until.seq`, none missing. Anything else would
/// be a replay with a hole (a restart without persistence, a failover that lost writes, entries
/// trimmed or deleted), or an offset from another history or of an older format.
pub fn contiguous(since: Offset, until: Offset, offsets: &[Offset]) -> bool {
    if since.ms != until.ms || since.seq > until.seq {
        return false;
    }
    offsets.len() as u64 == until.seq - since.seq
        && offsets.iter().zip(since.seq + 1..).all(|(o, seq)| o.ms == since.ms && o.seq == seq)
}

/// Whether a receiver that dispatched `prev` missed nothing before `next`: the next sequence
/// number, or the first of a new epoch. (Across epochs, what the old epoch's last moments held
/// cannot be known; connected clients are not all told to refetch for it, which would stampede
/// the marketplace after every Redis restart. Resuming from an old epoch's offset is refused.)
pub fn follows(prev: Offset, next: Offset) -> bool {
    if next.ms == prev.ms {
        next.seq == prev.seq + 1
    } else {
        next.seq == 1
    }
}

/// The shared history in the Redis Stream.
#[derive(Clone)]
struct StreamHistory {
    link: Arc<Link>,
    keys: Keys,
    hub: std::sync::Weak<Hub>,
}

impl StreamHistory {
    /// Entries with `since < offset <= until`, oldest first (`until` None: to the newest).
    async fn range(
        &self,
        since: Offset,
        until: Option<Offset>,
    ) -> redis::RedisResult<Vec<(Offset, Event)>> {
        let (mut conn, generation) = self.link.conn();
        let end = until.map_or("+".to_string(), |u| u.to_string());
        let entries: redis::RedisResult<Entries> = redis::cmd("XRANGE")
            .arg(&self.keys.history)
            .arg(format!("({since}"))
            .arg(end)
            .query_async(&mut conn)
            .await;
        if entries.is_err() {
            let _ = self.link.renew(generation).await;
        }
        let entries: Entries = entries?;
        Ok(entries.iter().filter_map(|(id, fields)| entry_frame(id, fields)).collect())
    }
}

impl History for StreamHistory {
    fn between(
        &self,
        since: Offset,
        until: Offset,
    ) -> Pin<Box<dyn Future<Output = Replay> + Send + '_>> {
        Box::pin(async move {
            if since == until {
                return Replay::Frames(Vec::new());
            }
            // Another epoch (or an old-format offset), or more than the history can hold.
            let span = until.seq.saturating_sub(since.seq);
            if since.ms != until.ms || since.seq > until.seq || span > 4 * HISTORY_CAP {
                return Replay::ResyncRequired;
            }
            if self.hub.upgrade().and_then(|hub| hub.head()).is_none() {
                return Replay::ResyncRequired;
            }
            match self.range(since, Some(until)).await {
                Ok(entries) => {
                    let offsets: Vec<Offset> = entries.iter().map(|(o, _)| *o).collect();
                    if !contiguous(since, until, &offsets) {
                        return Replay::ResyncRequired;
                    }
                    Replay::Frames(entries.iter().map(|(_, event)| Frame::of(event)).collect())
                }
                Err(e) => {
                    log::warn!("bus: history read failed: {e}");
                    Replay::ResyncRequired
                }
            }
        })
    }

    fn newest(&self) -> Pin<Box<dyn Future<Output = Option<Offset>> + Send + '_>> {
        Box::pin(async move {
            newest_offset(&mut self.link.conn().0, &self.keys.history).await.ok().flatten()
        })
    }
}

/// No replay spans more events than this (4x it is refused without reading): the largest
/// history the options allow is far below.
const HISTORY_CAP: u64 = 1_000_000;

/// Feeds the hub from the subscription, catching up from the stream after every reconnect.
struct Receiver {
    link: Arc<Link>,
    channel: String,
    history: Option<StreamHistory>,
    hub: Arc<Hub>,
    connected: Arc<watch::Sender<bool>>,
    /// The newest offset dispatched: what a catch-up starts from, and what deduplicates.
    last: Option<Offset>,
}

impl Receiver {
    async fn run(mut self, first: PubSub, shutdown: CancellationToken) {
        let mut pubsub = Some(first);
        let mut attempt = 0u32;
        loop {
            let Some(conn) = pubsub.take() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt = attempt.saturating_add(1);
                match self.link.subscribe(&self.channel).await {
                    Ok(conn) => {
                        if let Err(e) = self.catch_up().await {
                            log::debug!("bus: catch-up after reconnect failed: {e}");
                            continue;
                        }
                        log::info!(
                            channel = self.channel.as_str(), attempt;
                            "bus: Redis subscription restored on {}", self.channel
                        );
                        self.hub.metrics().redis_reconnected();
                        self.connected.send_replace(true);
                        attempt = 0;
                        pubsub = Some(conn);
                    }
                    Err(e) => log::debug!("bus: Redis reconnect attempt {attempt} failed: {e}"),
                }
                continue;
            };
            let mut messages = conn.into_on_message();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    msg = messages.next() => match msg {
                        Some(msg) => self.on_message(msg.get_payload_bytes()).await,
                        None => break,
                    },
                }
            }
            self.connected.send_replace(false);
            log::warn!("bus: lost the Redis subscription on {}; reconnecting", self.channel);
        }
    }

    async fn on_message(&mut self, payload: &[u8]) {
        let (event, offset) = match Event::from_json_with_offset(payload) {
            Ok(parsed) => parsed,
            Err(e) => {
                log::warn!("bus: ignored a message on {}: {}", self.channel, e.message());
                return;
            }
        };
        match offset.as_deref().and_then(parse_offset) {
            // Our own publishes: in the history, ordered; drop what a catch-up already sent.
            Some(offset) if self.history.is_some() => {
                if let Some(last) = self.last {
                    if offset.ms == last.ms && offset.seq <= last.seq {
                        return;
                    }
                    // Not the next one (a message lost on the way, or a new epoch): the stream
                    // tells what came between (and has this one), or that clients must refetch.
                    if offset.ms != last.ms || offset.seq != last.seq + 1 {
                        match self.catch_up().await {
                            Ok(())
                                if self
                                    .last
                                    .is_some_and(|l| l.ms == offset.ms && offset.seq <= l.seq) =>
                            {
                                return;
                            }
                            // Not in the history: an offset this bus never gave (e.g. a frame a
                            // client received, PUBLISHed again by hand): broadcast it as a bare
                            // message, without touching the sequence.
                            Ok(()) => {
                                log::debug!(
                                    "bus: a message on {} carries offset {offset}, which the \
                                     history does not hold; broadcast without it",
                                    self.channel
                                );
                                self.hub.dispatch(&event).await;
                                return;
                            }
                            Err(e) => {
                                log::warn!("bus: could not read the history to fill a gap: {e}");
                                self.lost_events(Some(last), Some(offset));
                            }
                        }
                    }
                }
                self.last = Some(offset);
                self.hub.dispatch(&event.at(offset)).await;
            }
            // A bare PUBLISH from an outside client (or history off): as it is.
            _ => self.hub.dispatch(&event).await,
        }
    }

    fn lost_events(&self, after: Option<Offset>, next: Option<Offset>) {
        let show = |o: Option<Offset>| o.map_or("?".to_string(), |o| o.to_string());
        log::warn!(
            "bus: events are missing from the history of {} between {} and {} (a failover or a \
             restart lost them, or they were trimmed); clients must resync",
            self.channel,
            show(after),
            show(next)
        );
        self.hub.resync_all();
    }

    /// Dispatches what the stream holds after the last offset dispatched. When the entries
    /// after it do not follow on (trimmed or lost events), clients are told to resync.
    async fn catch_up(&mut self) -> redis::RedisResult<()> {
        let (Some(history), Some(last)) = (&self.history, self.last) else {
            return Ok(());
        };
        let entries = history.range(last, None).await?;
        let mut told = false;
        for (offset, event) in entries {
            let Some(prev) = self.last else { break };
            if offset.ms == prev.ms && offset.seq <= prev.seq {
                continue;
            }
            if !told && !follows(prev, offset) {
                self.lost_events(Some(prev), Some(offset));
                told = true;
            }
            if offset.ms != prev.ms {
                log::info!(
                    "bus: the history of {} began a new epoch ({}); offsets from before it \
                     cannot be resumed",
                    self.channel,
                    offset.ms
                );
            }
            self.last = Some(offset);
            self.hub.dispatch(&event).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(ms: u64, seq: u64) -> Offset {
        Offset { ms, seq }
    }

    #[test]
    fn history_entries_keep_their_users() {
        let e = br#"{"type":"parcel_updated","parcel_id":"p"}"#.to_vec();
        let fields = vec![b"e".to_vec(), e.clone(), b"u".to_vec(), br#"["a","b"]"#.to_vec()];
        let (offset, event) = entry_frame("5-1", &fields).unwrap();
        assert_eq!(offset, Offset { ms: 5, seq: 1 });
        assert_eq!(
            event.frame().as_str(),
            r#"{"type":"parcel_updated","parcel_id":"p","offset":"5-1"}"#
        );
        let frame = Frame::of(&event);
        assert!(frame.is_for(Some("a")) && frame.is_for(Some("b")));
        assert!(!frame.is_for(Some("c")) && !frame.is_for(None), "nobody else's replay");
        let (_, broadcast) = entry_frame("5-2", &[b"e".to_vec(), e.clone()]).unwrap();
        assert!(Frame::of(&broadcast).is_for(None));
        // Users that do not parse: the entry is skipped, never replayed to everyone.
        assert!(entry_frame("5-3", &[b"e".to_vec(), e, b"u".to_vec(), b"[1]".to_vec()]).is_none());
    }

    #[test]
    fn every_key_of_a_channel_shares_one_hash_slot() {
        let keys = Keys::new("parcel_events");
        for key in [&keys.history, &keys.epoch, &keys.seq, &keys.batch] {
            assert!(key.starts_with("{parcel_events}:"), "{key}");
        }
    }

    #[test]
    fn a_replay_must_follow_on_from_since_in_the_same_epoch() {
        let e = 1_765_000_000_000_000;
        assert!(contiguous(o(e, 3), o(e, 5), &[o(e, 4), o(e, 5)]));
        assert!(contiguous(o(e, 0), o(e, 2), &[o(e, 1), o(e, 2)]), "from the epoch's start");
        assert!(contiguous(o(e, 5), o(e, 5), &[]), "caught up");
        assert!(!contiguous(o(e, 3), o(e, 5), &[o(e, 5)]), "a hole: 4 was lost");
        assert!(!contiguous(o(e, 3), o(e, 6), &[o(e, 4), o(e, 6)]), "a hole in the middle");
        assert!(!contiguous(o(e, 3), o(e, 5), &[o(e, 4)]), "the end is missing");
        assert!(!contiguous(o(e - 1, 3), o(e, 2), &[o(e, 1), o(e, 2)]), "another epoch");
        // A stream id of the old format (milliseconds) is never the current epoch.
        let old: Offset = "1732590000000-42".parse().unwrap();
        assert!(!contiguous(old, o(e, 2), &[o(e, 1), o(e, 2)]));
        assert!(old < o(e, 0), "old offsets order before every epoch");
        assert!(!contiguous(o(e, 6), o(e, 5), &[]), "since after until");
    }

    #[test]
    fn offsets_order_by_epoch_then_sequence() {
        let e = 1_765_000_000_000_000;
        let mut offsets = vec![o(e + 1, 1), o(e, 10), o(e, 9), o(e + 1, 0)];
        offsets.sort();
        assert_eq!(offsets, [o(e, 9), o(e, 10), o(e + 1, 0), o(e + 1, 1)]);
        assert_eq!(o(e, 7).to_string(), "1765000000000000-7");
        assert_eq!("1765000000000000-7".parse::<Offset>().unwrap(), o(e, 7));
    }
}
