//! The one event this module carries, `parcel_updated`, and its wire form.
//!
//! An event is encoded to JSON exactly once, when it enters the process; every WebSocket
//! connection then sends the same shared bytes (`Utf8Bytes` is a reference-counted `Bytes`).
//! It is also stamped with the moment it entered the process (a compact [`now_us`] stamp), which
//! the publish-to-send latency histogram (see `metrics.rs`) measures from.

use crate::clock::now_us;

use std::sync::Arc;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::{codes, Error, Result};
use crate::protocol::frame;

/// Longest accepted parcel id, in bytes. Ids are database keys; anything longer is a bug or abuse.
pub const MAX_PARCEL_ID_BYTES: usize = 256;

/// Largest `data` object a publisher may attach, in bytes of compact JSON.
pub const MAX_DATA_BYTES: usize = 4096;

/// A position in the event history: `<epoch>-<seq>`, ordered as a pair of integers; within an
/// epoch the sequence numbers are contiguous (1, 2, 3, ...), so a hole is visible. In Redis mode
/// the epoch is the master's clock in microseconds when the history began (a Redis that lost its
/// data, or a new master, begins a new one) and the offset is also the Redis Stream entry id
/// (shared by every server); in memory mode it is `<process start ms>-<n>`. Clients treat it as
/// an opaque string. (`ms` is the epoch.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for Offset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            Error::new(
                codes::INVALID_OFFSET,
                "an offset looks like \"1732590000000-5\" (as received)",
            )
        };
        let (ms, seq) = s.split_once('-').ok_or_else(invalid)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(invalid());
        }
        Ok(Offset {
            ms: ms.parse().map_err(|_| invalid())?,
            seq: seq.parse().map_err(|_| invalid())?,
        })
    }
}

/// A parcel update, ready to send: its id, optional data and offset, its encoded frame, and when
/// it entered the process. Two events are equal when their content is (the stamp is not compared).
#[derive(Debug, Clone)]
pub struct Event {
    parcel_id: Box<str>,
    data: Option<Box<str>>,
    offset: Option<Offset>,
    frame: Utf8Bytes,
    entered: u32,
    /// The users it is addressed to (`None`: a broadcast, to every client).
    users: Option<Users>,
}

/// The user ids a targeted event is addressed to: shared by every copy of its frame.
pub type Users = Arc<Box<[Box<str>]>>;

/// The most users one event may be addressed to.
pub const MAX_USERS: usize = 1000;
/// The longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.parcel_id == other.parcel_id
            && self.users == other.users
            && self.data == other.data
            && self.offset == other.offset
            && self.frame == other.frame
    }
}

impl Eq for Event {}

impl Event {
    /// Validates the id and encodes the frame `{"type":"parcel_updated","parcel_id":"..."}`.
    pub fn new(parcel_id: &str) -> Result<Self> {
        Self::with_data(parcel_id, None)
    }

    /// Like [`Event::new`], with an optional `data` object given as JSON text (e.g.
    /// `{"owner_id":"u1","price":100}`), added to the frame as `"data"`.
    pub fn with_data(parcel_id: &str, data: Option<&str>) -> Result<Self> {
        validate_parcel_id(parcel_id)?;
        let data = data.map(encode_data).transpose()?.map(String::into_boxed_str);
        let frame = Utf8Bytes::from(frame::parcel_updated(parcel_id, data.as_deref(), None));
        Ok(Self {
            parcel_id: parcel_id.into(),
            data,
            offset: None,
            frame,
            entered: now_us(),
            users: None,
        })
    }

    /// An empty stand-in, for a slot whose event was moved out (never sent).
    pub(crate) fn placeholder() -> Self {
        Self {
            parcel_id: "".into(),
            data: None,
            offset: None,
            frame: Utf8Bytes::from_static(""),
            entered: 0,
            users: None,
        }
    }

    /// The same event addressed to `users` only (a non-empty list of non-empty ids of at most
    /// [`MAX_USER_ID_BYTES`] bytes, at most [`MAX_USERS`] of them; duplicates are dropped).
    pub fn to_users(self, users: &[String]) -> Result<Self> {
        let invalid = |m: String| Error::new(codes::INVALID_USERS, m);
        if users.is_empty() {
            return Err(invalid("users must be a non-empty array of user ids".into()));
        }
        if users.len() > MAX_USERS {
            return Err(invalid(format!(
                "users lists {} ids; the limit is {MAX_USERS}",
                users.len()
            )));
        }
        let mut out: Vec<Box<str>> = Vec::with_capacity(users.len());
        for user in users {
            if user.is_empty() || user.len() > MAX_USER_ID_BYTES {
                return Err(invalid(format!(
                    "each user id must be a non-empty string of at most {MAX_USER_ID_BYTES} bytes"
                )));
            }
            if !out.iter().any(|u| **u == **user) {
                out.push(user.as_str().into());
            }
        }
        Ok(Self { users: Some(Arc::new(out.into_boxed_slice())), ..self })
    }

    /// The users this event is addressed to; `None` for a broadcast.
    pub fn users(&self) -> Option<&Users> {
        self.users.as_ref()
    }

    /// The users as a JSON array (`["a","b"]`), for an addressed event.
    pub fn users_json(&self) -> Option<String> {
        let users: Vec<&str> = self.users.as_ref()?.iter().map(|u| &**u).collect();
        Some(serde_json::to_string(&users).expect("strings always serialize"))
    }

    /// The same event at a place in the history; its frame then carries `"offset"`.
    pub fn at(self, offset: Offset) -> Self {
        let frame = Utf8Bytes::from(frame::parcel_updated(
            &self.parcel_id,
            self.data.as_deref(),
            Some(offset),
        ));
        Self { offset: Some(offset), frame, ..self }
    }

    /// Parses an event that arrived from the bus (e.g. any Redis client's `PUBLISH`).
    /// Accepts the JSON object `{"type":"parcel_updated","parcel_id":"...","data":{..}}` in any
    /// key order and spacing (other fields, `offset` included, are ignored) and re-encodes it.
    pub fn from_json(payload: &[u8]) -> Result<Self> {
        Ok(Self::from_json_with_offset(payload)?.0)
    }

    /// Like [`Event::from_json`], also returning the `offset` field if the message carried one.
    pub fn from_json_with_offset(payload: &[u8]) -> Result<(Self, Option<String>)> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: Option<std::borrow::Cow<'a, str>>,
            parcel_id: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            data: Option<&'a serde_json::value::RawValue>,
            offset: Option<String>,
            /// An addressed event's users (as the Redis bus carries them, or an outside
            /// publisher gives them): an array of strings, else the message is refused (never
            /// broadcast by mistake).
            users: Option<Vec<String>>,
        }
        let wire: Wire<'_> = serde_json::from_slice(payload).map_err(|e| {
            Error::new(codes::INVALID_PARCEL_ID, format!("bus message is not a JSON event: {e}"))
        })?;
        match (wire.kind.as_deref(), wire.parcel_id) {
            (Some("parcel_updated"), Some(id)) => {
                let data = wire.data.map(|d| d.get()).filter(|d| *d != "null");
                let event = Self::with_data(&id, data)?;
                let event = match wire.users {
                    Some(users) => event.to_users(&users)?,
                    None => event,
                };
                Ok((event, wire.offset))
            }
            _ => Err(Error::new(
                codes::INVALID_PARCEL_ID,
                r#"bus message is not {"type":"parcel_updated","parcel_id":"..."}"#,
            )),
        }
    }

    pub fn parcel_id(&self) -> &str {
        &self.parcel_id
    }

    pub fn offset(&self) -> Option<Offset> {
        self.offset
    }

    /// The encoded frame; cloning it shares the bytes.
    pub fn frame(&self) -> &Utf8Bytes {
        &self.frame
    }

    /// When the event entered this process: the `publish` call (memory bus) or its arrival from
    /// the Redis subscription (Redis bus).
    pub fn entered(&self) -> u32 {
        self.entered
    }
}

/// One event as the hub and history hold it: its offset (if it has one), its encoded frame, and
/// when it entered this process (a `clock::now_us` stamp: what publish-to-send latency is
/// measured from; 4 bytes, as frames are copied to every connection).
#[derive(Debug, Clone)]
pub struct Frame {
    pub offset: Option<Offset>,
    pub bytes: Utf8Bytes,
    pub entered: u32,
    /// Its place in this process's dispatch order (set by the hub): a connection that receives
    /// both broadcasts and events addressed to its user merges the two by it.
    pub seq: u32,
    /// The users a targeted event is addressed to; `None` for everyone.
    pub users: Option<Users>,
}

impl Frame {
    pub fn of(event: &Event) -> Self {
        Frame {
            offset: event.offset(),
            bytes: event.frame().clone(),
            entered: event.entered(),
            seq: 0,
            users: event.users.clone(),
        }
    }

    /// A frame that is not an event (e.g. `resync_required`), stamped now.
    pub fn control(bytes: Utf8Bytes) -> Self {
        Frame { offset: None, bytes, entered: now_us(), seq: 0, users: None }
    }

    /// Whether this frame was dispatched before `other` (sequence numbers wrap; frames compared
    /// are never billions apart).
    pub fn before(&self, other: u32) -> bool {
        (self.seq.wrapping_sub(other) as i32) < 0
    }

    /// Whether a client authenticated as `user` may receive this frame.
    pub fn is_for(&self, user: Option<&str>) -> bool {
        match &self.users {
            None => true,
            Some(users) => user.is_some_and(|u| users.iter().any(|x| &**x == u)),
        }
    }
}

/// Validates a `data` object and returns its compact encoding.
fn encode_data(data: &str) -> Result<String> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(data)
        .map_err(|_| Error::new(codes::INVALID_DATA, "data must be a plain JSON object"))?;
    let compact = serde_json::to_string(&object).expect("a JSON map always serializes");
    if compact.len() > MAX_DATA_BYTES {
        return Err(Error::new(
            codes::INVALID_DATA,
            format!("data is {} bytes of JSON; the limit is {MAX_DATA_BYTES}", compact.len()),
        ));
    }
    Ok(compact)
}

/// The parcel id of an encoded frame (used rarely: when a connection changes its filter).
pub fn parcel_id_of(frame: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        parcel_id: String,
    }
    serde_json::from_str::<Id>(frame).ok().map(|f| f.parcel_id)
}

/// A parcel id must be a non-empty string of at most [`MAX_PARCEL_ID_BYTES`] bytes.
pub fn validate_parcel_id(parcel_id: &str) -> Result<()> {
    if parcel_id.is_empty() {
        return Err(Error::new(codes::INVALID_PARCEL_ID, "parcelId must be a non-empty string"));
    }
    if parcel_id.len() > MAX_PARCEL_ID_BYTES {
        return Err(Error::new(
            codes::INVALID_PARCEL_ID,
            format!(
                "parcelId is {} bytes long; the limit is {MAX_PARCEL_ID_BYTES}",
                parcel_id.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(ev: &Event) -> serde_json::Value {
        serde_json::from_str(ev.frame()).unwrap()
    }

    #[test]
    fn encodes_the_original_frame() {
        let ev = Event::new("parcel_123").unwrap();
        assert_eq!(ev.frame().as_str(), r#"{"type":"parcel_updated","parcel_id":"parcel_123"}"#);
    }

    #[test]
    fn escapes_quotes_backslashes_controls_and_keeps_unicode() {
        let id = "a\"b\\c\n\u{1}é🚀";
        let ev = Event::new(id).unwrap();
        assert_eq!(json(&ev)["parcel_id"], id);
        assert_eq!(json(&ev)["type"], "parcel_updated");
    }

    #[test]
    fn rejects_empty_and_oversized_ids() {
        assert_eq!(Event::new("").unwrap_err().code(), codes::INVALID_PARCEL_ID);
        let long = "x".repeat(MAX_PARCEL_ID_BYTES + 1);
        assert_eq!(Event::new(&long).unwrap_err().code(), codes::INVALID_PARCEL_ID);
        assert!(Event::new(&"x".repeat(MAX_PARCEL_ID_BYTES)).is_ok());
    }

    #[test]
    fn parses_bus_messages_in_any_shape() {
        let ev = Event::from_json(br#" { "parcel_id" : "p\"1", "type":"parcel_updated", "x":1 } "#)
            .unwrap();
        assert_eq!(ev.parcel_id(), "p\"1");
        assert_eq!(ev, Event::new("p\"1").unwrap());
    }

    #[test]
    fn attaches_data_objects_and_refuses_anything_else() {
        let ev = Event::with_data("p1", Some(r#"{ "price": 100, "owner_id": "u\"1" }"#)).unwrap();
        assert_eq!(json(&ev)["data"]["price"], 100);
        assert_eq!(json(&ev)["data"]["owner_id"], "u\"1");
        assert!(ev.frame().starts_with(r#"{"type":"parcel_updated","parcel_id":"p1","data":{"#));
        for bad in ["[1]", "5", "\"x\"", "null", "{oops"] {
            let err = Event::with_data("p1", Some(bad)).unwrap_err();
            assert_eq!(err.code(), codes::INVALID_DATA, "{bad}");
        }
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_DATA_BYTES));
        assert_eq!(Event::with_data("p1", Some(&big)).unwrap_err().code(), codes::INVALID_DATA);
        let via_bus = Event::from_json(ev.frame().as_bytes()).unwrap();
        assert_eq!(via_bus, ev);
        assert_eq!(parcel_id_of(ev.frame()).as_deref(), Some("p1"));
    }

    #[test]
    fn offsets_parse_print_and_order() {
        let a: Offset = "1732590000000-5".parse().unwrap();
        assert_eq!(a.to_string(), "1732590000000-5");
        assert!(a < "1732590000000-10".parse().unwrap());
        assert!(a < "1732590000001-0".parse().unwrap());
        for bad in ["", "5", "a-1", "1-", "-1", "1-2-3", "1 -2", "99999999999999999999999-1"] {
            assert_eq!(bad.parse::<Offset>().unwrap_err().code(), codes::INVALID_OFFSET, "{bad}");
        }
        let ev = Event::new("p1").unwrap().at(a);
        assert_eq!(
            ev.frame().as_str(),
            r#"{"type":"parcel_updated","parcel_id":"p1","offset":"1732590000000-5"}"#
        );
        let (parsed, offset) = Event::from_json_with_offset(ev.frame().as_bytes()).unwrap();
        assert_eq!(parsed, Event::new("p1").unwrap());
        assert_eq!(offset.as_deref(), Some("1732590000000-5"));
    }

    #[test]
    fn bus_messages_carry_users_and_bad_users_refuse_the_message() {
        let (ev, offset) = Event::from_json_with_offset(
            br#"{"type":"parcel_updated","parcel_id":"p","data":{"a":1},"offset":"5-1","users":["u1","u2","u1"]}"#,
        )
        .unwrap();
        assert_eq!(offset.as_deref(), Some("5-1"));
        assert_eq!(ev.users_json().as_deref(), Some(r#"["u1","u2"]"#));
        assert_eq!(
            ev.frame().as_str(),
            r#"{"type":"parcel_updated","parcel_id":"p","data":{"a":1}}"#
        );
        for bad in [
            &br#"{"type":"parcel_updated","parcel_id":"p","users":[1]}"#[..],
            br#"{"type":"parcel_updated","parcel_id":"p","users":[]}"#,
            br#"{"type":"parcel_updated","parcel_id":"p","users":[""]}"#,
            br#"{"type":"parcel_updated","parcel_id":"p","users":"u1"}"#,
        ] {
            assert!(Event::from_json(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(Event::new("p").unwrap().users_json().is_none());
    }

    #[test]
    fn refuses_foreign_bus_messages() {
        for bad in [
            &b"not json"[..],
            br#"{"type":"other","parcel_id":"p"}"#,
            br#"{"type":"parcel_updated"}"#,
            br#"{"type":"parcel_updated","parcel_id":5}"#,
            br#"{"type":"parcel_updated","parcel_id":""}"#,
            br#"[1,2]"#,
        ] {
            assert!(Event::from_json(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
