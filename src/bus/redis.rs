//! The Redis bus.
//!
//! Publishing: one Lua script per batch appends each event to a capped Redis Stream
//! (`<channel>:history`: the history every server shares, whose entry ids are the offsets) and
//! PUBLISHes it on the channel with its offset, atomically and in order, in one round trip.
//! Plain pub/sub subscribers (e.g. `redis-cli SUBSCRIBE parcel_events`) see every event.
//!
//! Receiving: a dedicated SUBSCRIBE connection feeds the hub. After a loss it resubscribes and
//! first reads the stream from the last offset it dispatched, so connected clients miss nothing
//! published meanwhile by other processes (duplicates between the catch-up and the live
//! subscription are dropped by offset). Messages that an outside client PUBLISHed without an
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
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff;
use crate::config::RedisTls;
use crate::error::{codes, Error, Result};
use crate::event::Frame;
use crate::event::{Event, Offset};
use crate::history::{check, History, Replay, Retention};
use crate::hub::{Directory, Hub};
use crate::inbox::InboxLimits;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// KEYS[1]: stream. ARGV: channel, max length (0: no history), min id (or "0"), then the
/// targeting settings (key prefix `{channel}:`, presence window ms, inbox size, inbox TTL ms),
/// then one event JSON per event (without offset). An event addressed to users is followed by
/// "\n" and its users as a JSON array (a compact JSON frame never holds a raw newline): its
/// stream entry keeps them (field `u`), its message carries them (`"users"`), and users with no
/// connection on any live instance (`targeting.rs`) get it in their inbox, decided here,
/// atomically with the publish. Returns the offsets.
const PUBLISH_SCRIPT: &str = r#"
local prefix, window, size, ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
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
local ids = {}
for i = 8, #ARGV do
  local event, users = ARGV[i], nil
  local cut = string.find(event, '\n', 1, true)
  if cut then
    users = string.sub(event, cut + 1)
    event = string.sub(event, 1, cut - 1)
  end
  local message = event
  if ARGV[2] ~= '0' then
    local id
    if users then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', event, 'u', users)
    else
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', event)
    end
    message = string.sub(event, 1, -2) .. ',"offset":"' .. id .. '"}'
    ids[#ids + 1] = id
  end
  if users then
    redis.call('PUBLISH', ARGV[1], string.sub(message, 1, -2) .. ',"users":' .. users .. '}')
    inbox(message, cjson.decode(users))
  else
    redis.call('PUBLISH', ARGV[1], message)
  end
end
if ARGV[3] ~= '0' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3]) end
return ids
"#;

pub(super) struct RedisBus {
    publisher: ConnectionManager,
    channel: String,
    stream: String,
    retention: Retention,
    script: redis::Script,
    /// `{channel}:`, the prefix of the presence and inbox keys (`targeting.rs`).
    prefix: String,
    inbox: InboxLimits,
    directory: Arc<super::targeting::RedisDirectory>,
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::new(codes::REDIS_UNAVAILABLE, format!("Redis is unavailable: {e}"))
}

/// The client for `url`; a `rediss://` URL with the CA, client certificate and verification
/// that `tls` asks for.
fn client(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client> {
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
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert: tls.ca.as_ref().map(|ca| ca.as_bytes().to_vec()),
    };
    redis::Client::build_with_tls(url.as_str(), certificates).map_err(|e| {
        Error::new(codes::INVALID_OPTION, format!("invalid redisTls or redisUrl: {e}"))
    })
}

/// A failed connect as the caller must see it: credentials that Redis refused are a
/// misconfiguration (`ERR_REDIS_AUTH`, never a silent fallback), anything else is unavailability.
fn classify(e: redis::RedisError) -> Error {
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
                 channel (&CHANNEL), its history key (~CHANNEL:*), its presence and inbox keys \
                 (~{{CHANNEL}}:*) and PUBLISH, SUBSCRIBE, EVALSHA, EVAL, XADD, XRANGE, XREVRANGE, \
                 XTRIM, XINFO"
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

/// The stream that holds the shared history of `channel`.
pub fn stream_key(channel: &str) -> String {
    format!("{channel}:history")
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
        hub: Arc<Hub>,
        connected: Arc<watch::Sender<bool>>,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let client = client(url, tls)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let publisher = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unavailable("connection timed out"))?
        .map_err(classify)?;
        let pubsub = subscribe(&client, channel).await?;
        let stream = stream_key(channel);
        let history = (retention.max_events > 0).then(|| StreamHistory {
            connection: publisher.clone(),
            stream: stream.clone(),
            hub: Arc::downgrade(&hub),
        });
        let mut last = None;
        if let Some(history) = &history {
            // New clients start at the newest entry; "0-0" when the stream is empty.
            let mut conn = publisher.clone();
            let newest = newest_offset(&mut conn, &stream).await.map_err(classify)?;
            let head = newest.unwrap_or(Offset { ms: 0, seq: 0 });
            // Replaces the head of a memory history this bus may have run before Redis answered.
            hub.reset_head(head);
            last = Some(head);
            hub.set_history(Some(Arc::new(history.clone()) as Arc<dyn History>));
        }
        // Presence and inboxes over the instances: installed in the hub when this bus takes
        // over publishing (`RedisBus::activate`), so no publish falls between two inboxes.
        let directory = super::targeting::RedisDirectory::start(
            publisher.clone(),
            channel,
            inbox.ttl,
            &hub,
            connected.subscribe(),
            shutdown.clone(),
        );
        connected.send_replace(true);
        let receiver =
            Receiver { client, channel: channel.to_string(), history, hub, connected, last };
        tokio::spawn(receiver.run(pubsub, shutdown));
        Ok(Self {
            publisher,
            channel: channel.to_string(),
            stream,
            retention,
            script: redis::Script::new(PUBLISH_SCRIPT),
            prefix: super::targeting::key_prefix(channel),
            inbox,
            directory,
        })
    }

    /// From now on this bus publishes: presence and inboxes are kept in Redis.
    pub(super) fn activate(&self, hub: &Hub) {
        hub.set_directory(Some(self.directory.clone() as Arc<dyn Directory>));
    }

    /// Publishes a batch in one round trip, in order.
    pub(super) async fn publish<'a>(
        &mut self,
        events: impl Iterator<Item = &'a Event>,
    ) -> Result<()> {
        let events: Vec<&Event> = events.collect();
        let addressed = events.iter().any(|e| e.users().is_some());
        if self.retention.max_events == 0 && !addressed {
            let mut pipe = redis::pipe();
            for event in events {
                pipe.cmd("PUBLISH").arg(&self.channel).arg(event.frame().as_str()).ignore();
            }
            return pipe.query_async::<()>(&mut self.publisher).await.map_err(unavailable);
        }
        let min_id = match self.retention.max_events {
            0 => "0".to_string(),
            _ => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                now.saturating_sub(self.retention.max_age.as_millis()).to_string()
            }
        };
        let mut invocation = self.script.key(&self.stream);
        invocation.arg(&self.channel).arg(self.retention.max_events).arg(min_id);
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
        invocation
            .invoke_async::<Vec<String>>(&mut self.publisher)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> Result<PubSub> {
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

type Entries = Vec<(String, Vec<Vec<u8>>)>;

fn parse_offset(id: &str) -> Option<Offset> {
    id.parse().ok()
}

/// The newest entry's offset, if the stream has any.
async fn newest_offset(
    conn: &mut ConnectionManager,
    stream: &str,
) -> redis::RedisResult<Option<Offset>> {
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

/// The newest offset ever trimmed from the stream (`max-deleted-entry-id`, Redis 7).
async fn max_deleted(conn: &mut ConnectionManager, stream: &str) -> Option<Offset> {
    let info: Vec<redis::Value> =
        redis::cmd("XINFO").arg("STREAM").arg(stream).query_async(conn).await.ok()?;
    let mut pairs = info.chunks(2);
    pairs.find_map(|kv| match kv {
        [redis::Value::BulkString(k), redis::Value::BulkString(v)]
            if k == b"max-deleted-entry-id" =>
        {
            std::str::from_utf8(v).ok()?.parse().ok()
        }
        [redis::Value::SimpleString(k), redis::Value::BulkString(v)]
            if k == "max-deleted-entry-id" =>
        {
            std::str::from_utf8(v).ok()?.parse().ok()
        }
        _ => None,
    })
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

/// The shared history in the Redis Stream.
#[derive(Clone)]
struct StreamHistory {
    connection: ConnectionManager,
    stream: String,
    hub: std::sync::Weak<Hub>,
}

impl StreamHistory {
    /// Entries with `since < offset <= until`, oldest first (`until` None: to the newest).
    async fn range(
        &self,
        since: Offset,
        until: Option<Offset>,
    ) -> redis::RedisResult<Vec<(Offset, Event)>> {
        let mut conn = self.connection.clone();
        let end = until.map_or("+".to_string(), |u| u.to_string());
        let entries: Entries = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg(format!("({since}"))
            .arg(end)
            .query_async(&mut conn)
            .await?;
        Ok(entries.iter().filter_map(|(id, fields)| entry_frame(id, fields)).collect())
    }

    async fn oldest(&self) -> redis::RedisResult<Option<Offset>> {
        let mut conn = self.connection.clone();
        let entries: Entries = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(entries.first().and_then(|(id, _)| parse_offset(id)))
    }
}

impl History for StreamHistory {
    fn between(
        &self,
        since: Offset,
        until: Offset,
    ) -> Pin<Box<dyn Future<Output = Replay> + Send + '_>> {
        Box::pin(async move {
            let head = self.hub.upgrade().and_then(|hub| hub.head());
            let Ok(first) = self.oldest().await else {
                return Replay::ResyncRequired;
            };
            if !check(since, until, first, head) {
                return Replay::ResyncRequired;
            }
            match self.range(since, Some(until)).await {
                Ok(entries) => {
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
            let mut conn = self.connection.clone();
            newest_offset(&mut conn, &self.stream).await.ok().flatten()
        })
    }
}

/// Feeds the hub from the subscription, catching up from the stream after every reconnect.
struct Receiver {
    client: redis::Client,
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
                match subscribe(&self.client, &self.channel).await {
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
                if self.last.is_some_and(|last| offset <= last) {
                    return;
                }
                self.last = Some(offset);
                self.hub.dispatch(&event.at(offset)).await;
            }
            // A bare PUBLISH from an outside client (or history off): as it is.
            _ => self.hub.dispatch(&event).await,
        }
    }

    /// Dispatches what the stream holds after the last offset dispatched. Events trimmed away
    /// meanwhile cannot be recovered: clients are told to resync.
    async fn catch_up(&mut self) -> redis::RedisResult<()> {
        let (Some(history), Some(last)) = (&self.history, self.last) else {
            return Ok(());
        };
        let entries = history.range(last, None).await?;
        // Entries after `last` were trimmed before we could read them: clients must refetch.
        // (A Redis that restarted empty deleted nothing: what it lost cannot be known, and
        // telling every client to refetch at once would only stampede the marketplace.)
        if max_deleted(&mut history.connection.clone(), &history.stream)
            .await
            .is_some_and(|d| d > last)
        {
            log::warn!("bus: events were trimmed from the history while Redis was unreachable; clients must resync");
            self.hub.resync_all();
        }
        for (offset, event) in entries {
            if self.last.is_some_and(|l| offset <= l) {
                continue;
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
}
