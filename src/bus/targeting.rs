//! Events addressed to users across instances (Redis mode): presence and inboxes in Redis.
//!
//! Keys, all under the channel's hash tag (one Redis Cluster slot, so every script may use them):
//! - `{<channel>}:instances`: a sorted set, instance id → the Redis time (ms) of its last
//!   heartbeat. An instance counts as live for [`PRESENCE_WINDOW`] after it; older members are
//!   removed by the next heartbeat of any instance.
//! - `{<channel>}:presence:<instance>`: a hash, user id → that instance's connection count (users
//!   with none are absent). It expires [`PRESENCE_WINDOW`] after the instance's last heartbeat, so
//!   an instance that dies (SIGKILL, a lost host) stops being counted within that window.
//! - `{<channel>}:inbox:<user>`: a list of `"<ms> <event JSON with offset>"`, oldest first, at
//!   most `inboxSize` long, expiring `inboxTtlMs` after its last addition. The publish script
//!   (`redis.rs`) fills it, atomically with its presence check; a connection's `joined` script
//!   empties it, atomically with counting the connection.
//!
//! One task per bus writes this instance's presence (absolute counts read from the hub, so the
//! last write always holds the truth, whatever order changes happened in) and answers the
//! inbox takes, a batch per round trip, and beats every [`HEARTBEAT`].

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::link::Link;
use crate::error::{codes, Error, Result};
use crate::event::{Event, Frame, MAX_USERS};
use crate::hub::{Directory, Hub};

/// How long an instance is counted after its last heartbeat: the longest a dead instance's
/// connections keep counting in `presence()` (and keep their users' events out of their inbox).
pub const PRESENCE_WINDOW: Duration = Duration::from_secs(15);
/// How often an instance beats (a third of the window: two missed beats are tolerated).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Most connection opens answered in one round trip.
const JOINS_PER_BATCH: usize = 512;

/// The prefix of every key of `channel`'s targeting: `{<channel>}:`.
pub fn key_prefix(channel: &str) -> String {
    format!("{{{channel}}}:")
}

/// KEYS[1]: instances, KEYS[2]: this instance's presence hash. ARGV: instance id, window ms,
/// inbox key prefix, replace ("1": the counts given are all there are), n, then n (user, count)
/// pairs, then the users whose inbox to take. Returns the Redis time (ms), then one list per
/// user taken.
const JOIN_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
local n = tonumber(ARGV[5])
for i = 0, n - 1 do
  local user, count = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  if count == '0' then redis.call('HDEL', KEYS[2], user) else redis.call('HSET', KEYS[2], user, count) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
local out = { tostring(now) }
for i = 6 + 2 * n, #ARGV do
  local key = ARGV[3] .. ARGV[i]
  out[#out + 1] = redis.call('LRANGE', key, 0, -1)
  redis.call('DEL', key)
end
return out
"#;

/// KEYS[1]: instances, KEYS[2]: this instance's presence hash. ARGV: instance id, window ms,
/// how many users this instance has. Returns how many the hash holds (0 when Redis lost it):
/// when that differs, the counts are written again.
const HEARTBEAT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))
if ARGV[3] ~= '0' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return redis.call('HLEN', KEYS[2])
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 0
"#;

/// KEYS[1]: instances. ARGV: window ms, presence key prefix, then user ids. Returns each user's
/// connection count over the live instances.
const COUNT_SCRIPT: &str = r#"
if #ARGV < 3 then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
local counts = {}
for i = 3, #ARGV do counts[i - 2] = 0 end
for _, instance in ipairs(live) do
  local got = redis.call('HMGET', ARGV[2] .. 'presence:' .. instance, unpack(ARGV, 3))
  for i = 1, #got do
    if got[i] then counts[i] = counts[i] + tonumber(got[i]) end
  end
end
return counts
"#;

type Join = (Arc<str>, oneshot::Sender<Vec<Frame>>);

#[derive(Default)]
struct Pending {
    /// Users whose count here changed since the last write.
    changed: HashSet<Arc<str>>,
    /// Connections that opened and wait for their user's inbox.
    joins: Vec<Join>,
    /// Write every count again (at start, and after a failed write or a Redis that lost them).
    rewrite: bool,
    /// Counts every change; the task reports (`flushed`) up to which one it has written.
    generation: u64,
}

/// Presence and inboxes in Redis, for one bus.
pub(super) struct RedisDirectory {
    /// The way to Redis of the moment (the master, across failovers).
    link: Arc<Link>,
    instance: String,
    instances_key: String,
    presence_key: String,
    prefix: String,
    inbox_prefix: String,
    /// Inbox entries older than this are dropped when taken.
    inbox_ttl: Duration,
    pending: Mutex<Pending>,
    wake: Notify,
    /// The last `Pending::generation` written (or given up on: Redis down).
    flushed: watch::Sender<u64>,
    /// Whether the bus's Redis subscription is up: while it is not, new connections do not wait
    /// for Redis (their inbox stays there for a later connection).
    connected: watch::Receiver<bool>,
    join_script: redis::Script,
    heartbeat_script: redis::Script,
    count_script: redis::Script,
}

/// A name for this process among the instances: unique enough (pid and the start time in ns).
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{:x}", std::process::id(), nanos)
}

impl RedisDirectory {
    /// Creates the directory of `channel` and starts its task (it stops with `shutdown`).
    pub(super) fn start(
        link: Arc<Link>,
        channel: &str,
        inbox_ttl: Duration,
        hub: &Arc<Hub>,
        connected: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let prefix = key_prefix(channel);
        let instance = instance_id();
        let directory = Arc::new(Self {
            link,
            instances_key: format!("{prefix}instances"),
            presence_key: format!("{prefix}presence:{instance}"),
            inbox_prefix: format!("{prefix}inbox:"),
            prefix,
            instance,
            inbox_ttl,
            // Users who connected before Redis answered (a bad start) are written at once.
            pending: Mutex::new(Pending { rewrite: true, ..Pending::default() }),
            wake: Notify::new(),
            flushed: watch::Sender::new(0),
            connected,
            join_script: redis::Script::new(JOIN_SCRIPT),
            heartbeat_script: redis::Script::new(HEARTBEAT_SCRIPT),
            count_script: redis::Script::new(COUNT_SCRIPT),
        });
        super::runtime::spawn(directory.clone().run(Arc::downgrade(hub), shutdown));
        directory
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self: Arc<Self>, hub: Weak<Hub>, shutdown: CancellationToken) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = beat.tick() => self.heartbeat(&hub).await,
                _ = self.wake.notified() => {}
            }
            if self.flush(&hub).await {
                // More joins than one batch: go on at once.
                self.wake.notify_one();
            }
        }
        // Gone: this instance's connections stop counting now rather than after the window.
        let mut conn = self.link.conn().0;
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(&self.instances_key).arg(&self.instance).ignore();
        pipe.cmd("DEL").arg(&self.presence_key).ignore();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), pipe.query_async::<()>(&mut conn)).await;
    }

    async fn heartbeat(&self, hub: &Weak<Hub>) {
        let Some(hub) = hub.upgrade() else { return };
        let users = hub.user_counts().len();
        let mut conn = self.link.conn().0;
        let result = self
            .heartbeat_script
            .key(&self.instances_key)
            .key(&self.presence_key)
            .arg(&self.instance)
            .arg(PRESENCE_WINDOW.as_millis() as u64)
            .arg(users)
            .invoke_async::<usize>(&mut conn)
            .await;
        match result {
            Ok(held) if held == users => {}
            Ok(held) => {
                // Changes still on their way explain a difference; without any, Redis lost or
                // missed some (a restart, an eviction): write every count again.
                let mut pending = self.lock();
                if pending.changed.is_empty() && pending.joins.is_empty() {
                    log::warn!(
                        "bus: Redis holds presence for {held} users of this instance, not \
                         {users}; writing it again"
                    );
                    pending.rewrite = true;
                }
            }
            Err(e) => {
                log::debug!("bus: presence heartbeat failed: {e}");
                self.lock().rewrite = true;
            }
        }
    }

    /// Writes what changed and answers waiting joins, in one round trip. Returns whether joins
    /// are still waiting.
    async fn flush(&self, hub: &Weak<Hub>) -> bool {
        let generation = self.lock().generation;
        let more = self.write(hub).await;
        self.flushed.send_if_modified(|g| {
            let newer = generation > *g;
            *g = (*g).max(generation);
            newer
        });
        more
    }

    async fn write(&self, hub: &Weak<Hub>) -> bool {
        let (changed, joins, rewrite, more) = {
            let mut pending = self.lock();
            let take = pending.joins.len().min(JOINS_PER_BATCH);
            let joins: Vec<Join> = pending.joins.drain(..take).collect();
            let changed = std::mem::take(&mut pending.changed);
            let rewrite = std::mem::take(&mut pending.rewrite);
            (changed, joins, rewrite, !pending.joins.is_empty())
        };
        // A connection that gave up waiting has no use for its inbox: leave it in Redis (but
        // count the connection).
        let (joins, gave_up): (Vec<Join>, Vec<Join>) =
            joins.into_iter().partition(|(_, tx)| !tx.is_closed());
        let mut changed = changed;
        changed.extend(gave_up.into_iter().map(|(user, _)| user));
        if !*self.connected.borrow() {
            // Redis is down: connections go on without their inbox (dropping `joins` tells them)
            // and every count is written again once it is back.
            self.lock().rewrite = true;
            return more;
        }
        if changed.is_empty() && joins.is_empty() && !rewrite {
            return more;
        }
        let Some(hub) = hub.upgrade() else { return false };
        // Counts read now, after the changes: whatever order they happened in, this is the truth.
        let pairs: Vec<(Arc<str>, usize)> = if rewrite {
            hub.user_counts()
        } else {
            let users: Vec<Arc<str>> =
                changed.iter().cloned().chain(joins.iter().map(|(u, _)| u.clone())).collect();
            let counts = hub.count_of(&users);
            users.into_iter().zip(counts).collect()
        };
        let mut invocation = self.join_script.key(&self.instances_key);
        invocation
            .key(&self.presence_key)
            .arg(&self.instance)
            .arg(PRESENCE_WINDOW.as_millis() as u64)
            .arg(&self.inbox_prefix)
            .arg(if rewrite { "1" } else { "0" })
            .arg(pairs.len());
        for (user, count) in &pairs {
            invocation.arg(&**user).arg(count);
        }
        for (user, _) in &joins {
            invocation.arg(&**user);
        }
        let mut conn = self.link.conn().0;
        match invocation.invoke_async::<Vec<redis::Value>>(&mut conn).await {
            Ok(reply) => {
                let mut reply = reply.into_iter();
                let now: u64 = reply
                    .next()
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mut unclaimed = redis::pipe();
                let mut any = false;
                for ((user, tx), entries) in joins.into_iter().zip(reply) {
                    let entries: Vec<String> = redis::from_redis_value(entries).unwrap_or_default();
                    let frames = inbox_frames(now, self.inbox_ttl, &entries);
                    if tx.send(frames).is_err() && !entries.is_empty() {
                        // The connection gave up meanwhile: the inbox goes back, in front of
                        // anything added since, for a later connection.
                        let key = format!("{}{user}", self.inbox_prefix);
                        unclaimed
                            .cmd("LPUSH")
                            .arg(&key)
                            .arg(entries.iter().rev().collect::<Vec<_>>());
                        unclaimed.cmd("PEXPIRE").arg(&key).arg(self.inbox_ttl.as_millis() as u64);
                        any = true;
                    }
                }
                if any {
                    if let Err(e) = unclaimed.query_async::<()>(&mut conn).await {
                        log::warn!("bus: could not put back an inbox no connection took: {e}");
                    }
                }
            }
            Err(e) => {
                // The inboxes stay in Redis for a later connection; the counts are written again.
                log::warn!("bus: could not write presence to Redis or take inboxes: {e}");
                let mut pending = self.lock();
                pending.rewrite = true;
            }
        }
        more
    }
}

/// The frames of inbox entries (`"<ms> <event JSON>"`, Redis time), dropping those older than
/// `ttl` at `now` and any that do not parse.
fn inbox_frames(now: u64, ttl: Duration, entries: &[String]) -> Vec<Frame> {
    let ttl = ttl.as_millis() as u64;
    entries
        .iter()
        .filter_map(|entry| {
            let (at, json) = entry.split_once(' ')?;
            let at: u64 = at.parse().ok()?;
            if now.saturating_sub(at) > ttl {
                return None;
            }
            let (event, offset) = Event::from_json_with_offset(json.as_bytes()).ok()?;
            let event = match offset.as_deref().and_then(|o| o.parse().ok()) {
                Some(offset) => event.at(offset),
                None => event,
            };
            Some(Frame::of(&event))
        })
        .collect()
}

impl Directory for RedisDirectory {
    fn joined(&self, user: Arc<str>) -> oneshot::Receiver<Vec<Frame>> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        pending.joins.push((user, tx));
        pending.generation += 1;
        drop(pending);
        self.wake.notify_one();
        rx
    }

    fn left(&self, user: &Arc<str>) {
        let mut pending = self.lock();
        pending.changed.insert(user.clone());
        pending.generation += 1;
        drop(pending);
        self.wake.notify_one();
    }

    fn settle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let target = self.lock().generation;
            let mut flushed = self.flushed.subscribe();
            self.wake.notify_one();
            let _ = flushed.wait_for(|g| *g >= target).await;
        })
    }

    fn count(
        &self,
        users: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<usize>>> + Send + '_>> {
        Box::pin(async move {
            if users.len() > MAX_USERS {
                return Err(Error::new(
                    codes::INVALID_USERS,
                    format!("presence asks for {} users; the limit is {MAX_USERS}", users.len()),
                ));
            }
            if users.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = self.count_script.key(&self.instances_key);
            invocation.arg(PRESENCE_WINDOW.as_millis() as u64).arg(&self.prefix);
            for user in &users {
                invocation.arg(user);
            }
            let mut conn = self.link.conn().0;
            let counts: Vec<i64> = invocation.invoke_async(&mut conn).await.map_err(|e| {
                Error::new(codes::REDIS_UNAVAILABLE, format!("Redis is unavailable: {e}"))
            })?;
            Ok(counts.into_iter().map(|n| n.max(0) as usize).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_entries_become_frames_with_their_offsets_and_expired_ones_are_dropped() {
        let entries = [
            r#"1000 {"type":"parcel_updated","parcel_id":"old","offset":"1000-0"}"#,
            r#"5000 {"type":"parcel_updated","parcel_id":"p","data":{"a":1},"offset":"5000-1"}"#,
            "garbage",
            r#"6000 {"type":"parcel_updated","parcel_id":"no-offset"}"#,
        ]
        .map(String::from);
        let frames = inbox_frames(6000, Duration::from_millis(4000), &entries);
        let texts: Vec<&str> = frames.iter().map(|f| f.bytes.as_str()).collect();
        assert_eq!(
            texts,
            [
                r#"{"type":"parcel_updated","parcel_id":"p","data":{"a":1},"offset":"5000-1"}"#,
                r#"{"type":"parcel_updated","parcel_id":"no-offset"}"#,
            ]
        );
        assert_eq!(frames[0].offset, Some(crate::event::Offset { ms: 5000, seq: 1 }));
        assert_eq!(key_prefix("parcel_events"), "{parcel_events}:");
    }
}
