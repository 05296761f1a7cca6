//! The one event this module carries, `parcel_updated`, and its wire form.
//!
//! An event is encoded to JSON exactly once, when it enters the process; every WebSocket
//! connection then sends the same shared bytes (`Utf8Bytes` is a reference-counted `Bytes`).

use serde::Deserialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::error::{codes, Error, Result};

/// Longest accepted parcel id, in bytes. Ids are database keys; anything longer is a bug or abuse.
pub const MAX_PARCEL_ID_BYTES: usize = 256;

/// The greeting every client receives first, byte for byte as the original design sends it.
pub const WELCOME_FRAME: &str =
    r#"{"type":"connected","message":"WebSocket connection established"}"#;

/// A parcel update, ready to send: its id and its encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    parcel_id: Box<str>,
    frame: Utf8Bytes,
}

impl Event {
    /// Validates the id and encodes the frame `{"type":"parcel_updated","parcel_id":"..."}`.
    pub fn new(parcel_id: &str) -> Result<Self> {
        validate_parcel_id(parcel_id)?;
        let mut json = String::with_capacity(parcel_id.len() + 44);
        json.push_str(r#"{"type":"parcel_updated","parcel_id":"#);
        // serde_json escapes quotes, backslashes and control characters; non-ASCII passes as UTF-8.
        json.push_str(&serde_json::to_string(parcel_id).expect("a str always serializes"));
        json.push('}');
        Ok(Self { parcel_id: parcel_id.into(), frame: Utf8Bytes::from(json) })
    }

    /// Parses an event that arrived from the bus (e.g. any Redis client's `PUBLISH`).
    /// Accepts the JSON object `{"type":"parcel_updated","parcel_id":"..."}` in any key order and
    /// spacing (extra fields are ignored) and re-encodes it canonically.
    pub fn from_json(payload: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: Option<std::borrow::Cow<'a, str>>,
            parcel_id: Option<std::borrow::Cow<'a, str>>,
        }
        let wire: Wire<'_> = serde_json::from_slice(payload).map_err(|e| {
            Error::new(codes::INVALID_PARCEL_ID, format!("bus message is not a JSON event: {e}"))
        })?;
        match (wire.kind.as_deref(), wire.parcel_id) {
            (Some("parcel_updated"), Some(id)) => Self::new(&id),
            _ => Err(Error::new(
                codes::INVALID_PARCEL_ID,
                r#"bus message is not {"type":"parcel_updated","parcel_id":"..."}"#,
            )),
        }
    }

    pub fn parcel_id(&self) -> &str {
        &self.parcel_id
    }

    /// The encoded frame; cloning it shares the bytes.
    pub fn frame(&self) -> &Utf8Bytes {
        &self.frame
    }
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
