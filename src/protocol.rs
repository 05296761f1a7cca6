//! The protocol's one vocabulary, in one place: what a client may send (parsed here), every frame
//! the server sends (one builder each), every way a connection ends ([`Disconnect`]) and every
//! refusal before the upgrade ([`Refusal`]).
//!
//! The tables drive the wire (close codes and reasons, HTTP statuses and bodies), the logs, the
//! metrics' labels and, through a test that reads `README.md`, the README's protocol tables:
//! adding a close code or a refusal is one line here (and one row in the README, which the test
//! demands).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::auth::AuthError;
use crate::event::{validate_parcel_id, Offset};

/// The subprotocol a client may offer (alone, or beside `bearer.<JWT>`).
pub const SUBPROTOCOL: &str = "realtime-events";
/// A subprotocol starting with this carries the token (browsers cannot set headers).
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";

// ---------------------------------------------------------------------------------------------
// Client -> server

/// The messages a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Request {
    Ping,
    Subscribe { parcel_ids: Option<Vec<Value>>, all: Option<bool> },
    Unsubscribe { parcel_ids: Option<Vec<Value>> },
    Refresh { token: String },
    Resume { since: String },
}

/// The `type`s of [`Request`].
const REQUEST_TYPES: [&str; 5] = ["ping", "subscribe", "unsubscribe", "refresh", "resume"];

/// Why a client message was refused: the `code` of the `error` frame that answers it. The
/// connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageError {
    InvalidJson,
    UnknownMessageType,
    InvalidMessage,
    UnsupportedMessage,
    InvalidSubscription,
    SubscriptionLimit,
    InvalidOffset,
}

impl MessageError {
    #[cfg(test)]
    const ALL: [MessageError; 7] = [
        MessageError::InvalidJson,
        MessageError::UnknownMessageType,
        MessageError::InvalidMessage,
        MessageError::UnsupportedMessage,
        MessageError::InvalidSubscription,
        MessageError::SubscriptionLimit,
        MessageError::InvalidOffset,
    ];

    pub fn code(self) -> &'static str {
        match self {
            MessageError::InvalidJson => "INVALID_JSON",
            MessageError::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            MessageError::InvalidMessage => "INVALID_MESSAGE",
            MessageError::UnsupportedMessage => "UNSUPPORTED_MESSAGE",
            MessageError::InvalidSubscription => "INVALID_SUBSCRIPTION",
            MessageError::SubscriptionLimit => "SUBSCRIPTION_LIMIT",
            MessageError::InvalidOffset => "INVALID_OFFSET",
        }
    }
}

/// Parses a client message, or returns the `error` frame to answer with.
pub(crate) fn parse_request(text: &str) -> Result<Request, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| frame::error(MessageError::InvalidJson, "messages must be JSON objects"))?;
    let Some(kind) = value.get("type").and_then(|t| t.as_str()).map(str::to_string) else {
        let why = "messages need a string \"type\"";
        return Err(frame::error(MessageError::UnknownMessageType, why));
    };
    if !REQUEST_TYPES.contains(&kind.as_str()) {
        let message = format!("unknown message type {:?}", truncate(&kind, 64));
        return Err(frame::error(MessageError::UnknownMessageType, &message));
    }
    serde_json::from_value(value).map_err(|e| {
        let message = format!("malformed {:?} message: {}", kind, truncate(&e.to_string(), 120));
        frame::error(MessageError::InvalidMessage, &message)
    })
}

/// Parcel ids of a (un)subscribe request: a non-empty list of valid ids, deduplicated.
pub(crate) fn check_parcel_ids(ids: Option<Vec<Value>>) -> Result<Vec<String>, String> {
    let invalid = |why: &str| frame::error(MessageError::InvalidSubscription, why);
    let Some(ids) = ids else {
        return Err(invalid("send \"parcel_ids\": [..] (or \"all\": true to receive every event)"));
    };
    let mut out = Vec::with_capacity(ids.len());
    let mut seen = HashSet::new();
    for id in ids {
        let Value::String(id) = id else {
            return Err(invalid("parcel_ids must be strings"));
        };
        validate_parcel_id(&id).map_err(|e| invalid(e.message()))?;
        if seen.insert(id.clone()) {
            out.push(id);
        }
    }
    Ok(out)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------------
// Server -> client

/// One builder per server frame. Frames are written by hand (not through serde) so that `type`
/// always comes first and `offset` last, as the README shows them.
pub(crate) mod frame {
    use super::*;

    /// The original design's greeting; with history on, an `offset` field follows.
    pub const WELCOME: &str =
        r#"{"type":"connected","message":"WebSocket connection established"}"#;
    pub const PONG: &str = r#"{"type":"pong"}"#;
    /// What a client that resumed across a bus change (memory to Redis) or a lost history gets
    /// when it has no offset to name.
    pub const RESYNC_UNKNOWN: &str = r#"{"type":"resync_required","since":null,"offset":null}"#;

    /// The welcome, with the offset of the last event before this connection's live stream.
    pub fn welcome(offset: Option<Offset>) -> String {
        match offset {
            None => WELCOME.to_string(),
            Some(head) => format!("{},\"offset\":\"{head}\"}}", &WELCOME[..WELCOME.len() - 1]),
        }
    }

    /// `{"type":"parcel_updated","parcel_id":..[,"data":{..}][,"offset":".."]}`; `data` is
    /// already compact JSON.
    pub fn parcel_updated(parcel_id: &str, data: Option<&str>, offset: Option<Offset>) -> String {
        let mut json = String::with_capacity(parcel_id.len() + 80 + data.map_or(0, str::len));
        json.push_str(r#"{"type":"parcel_updated","parcel_id":"#);
        // serde_json escapes quotes, backslashes and control characters; non-ASCII passes as is.
        json.push_str(&serde_json::to_string(parcel_id).expect("a str always serializes"));
        if let Some(data) = data {
            json.push_str(r#","data":"#);
            json.push_str(data);
        }
        if let Some(offset) = offset {
            let _ = write!(json, r#","offset":"{offset}""#);
        }
        json.push('}');
        json
    }

    pub fn resumed(since: Offset, replayed: usize) -> String {
        format!(r#"{{"type":"resumed","since":"{since}","replayed":{replayed}}}"#)
    }

    pub fn resync_required(since: Offset, current: Option<Offset>) -> String {
        let offset = current.map_or("null".to_string(), |h| format!("\"{h}\""));
        format!(r#"{{"type":"resync_required","since":"{since}","offset":{offset}}}"#)
    }

    /// Which request a subscription state answers.
    #[derive(Debug, Clone, Copy)]
    pub enum Ack {
        Subscribed,
        Unsubscribed,
    }

    /// The state a (un)subscribe results in: `ids` is `None` for "every event".
    pub fn subscription(ack: Ack, ids: Option<&Vec<String>>) -> String {
        let kind = match ack {
            Ack::Subscribed => "subscribed",
            Ack::Unsubscribed => "unsubscribed",
        };
        match ids {
            None => format!(r#"{{"type":"{kind}","all":true,"parcel_ids":[]}}"#),
            Some(ids) => format!(
                r#"{{"type":"{kind}","all":false,"parcel_ids":{}}}"#,
                serde_json::to_string(ids).expect("strings serialize")
            ),
        }
    }

    /// The answer to a `refresh`: the new token's `exp` (`null` when it has none).
    pub fn refreshed(exp: Option<&Value>) -> String {
        format!(r#"{{"type":"refreshed","exp":{}}}"#, exp.unwrap_or(&Value::Null))
    }

    pub fn error(code: MessageError, message: &str) -> String {
        format!(
            r#"{{"type":"error","code":{},"message":{}}}"#,
            Value::from(code.code()),
            Value::from(message)
        )
    }

    /// The drain notice a client receives at its moment in the drain window.
    pub fn reconnect(close_in: Duration) -> String {
        format!(
            r#"{{"type":"reconnect","message":"This server is shutting down: open a new connection now and keep reading this one until it closes (code 1001)","close_in_ms":{}}}"#,
            close_in.as_millis()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// How a connection ends

/// Declares [`Disconnect`] and its table in one place: variant => close code sent (`None`: no
/// close frame), close reason sent, metric label, log text.
macro_rules! disconnects {
    ($($(#[$doc:meta])* $name:ident => $code:expr, $reason:literal, $label:literal, $log:literal;)*) => {
        /// Every way a WebSocket connection ends: the close frame it gets, the label it is
        /// counted under in `realtime_connections_closed_total{reason}` and its log line.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Disconnect { $($(#[$doc])* $name,)* }

        impl Disconnect {
            pub const ALL: &'static [Disconnect] = &[$(Disconnect::$name,)*];

            /// The close code sent, if a close frame is sent at all.
            pub fn close_code(self) -> Option<u16> {
                match self { $(Disconnect::$name => $code,)* }
            }
            /// The close frame's reason text.
            pub fn reason(self) -> &'static str {
                match self { $(Disconnect::$name => $reason,)* }
            }
            /// The `reason` label of `realtime_connections_closed_total`.
            pub fn metric_label(self) -> &'static str {
                match self { $(Disconnect::$name => $label,)* }
            }
            /// How the log line says it.
            pub fn log_text(self) -> &'static str {
                match self { $(Disconnect::$name => $log,)* }
            }
        }
    };
}

disconnects! {
    /// The client closed, or its socket went away.
    ClientClosed => None, "", "client", "closed by client";
    /// Shutdown or the end of its drain slot.
    ServerShutdown => Some(1001), "server shutting down", "shutdown", "server shutting down";
    /// It fell behind while publishers waited for it.
    TooSlow => Some(1013), "too slow: events were dropped; reconnect", "too_slow", "too slow";
    /// Its socket accepted nothing for `sendTimeoutMs`: dropped without a close frame.
    Stuck => None, "", "stuck", "not reading; write timed out";
    /// It sent a message over `maxMessageBytes`.
    TooLarge => Some(1009), "message too large", "too_large", "message too large";
    /// It sent a message in more fragments than allowed.
    TooFragmented => Some(1009), "message in too many fragments", "too_large",
        "message in too many fragments";
    /// It sent a text message that is not UTF-8.
    InvalidUtf8 => Some(1007), "text message is not UTF-8", "protocol_error", "invalid UTF-8";
    /// It broke the WebSocket protocol.
    ProtocolError => Some(1002), "protocol error", "protocol_error", "protocol error";
    /// Its token expired without a successful `refresh`.
    TokenExpired => Some(4401), "token expired", "token_expired", "token expired";
    /// A `refresh` carried an invalid token.
    RefreshRefused => Some(4403), "refresh token refused", "refresh_refused", "refresh refused";
    /// A `refresh` carried a valid token of another user.
    RefreshOtherUser => Some(4403), "refresh token is for another user", "refresh_refused",
        "refresh refused: token for another user";
    /// A `refresh` carried a token without `exp` for a connection whose token had one.
    RefreshWithoutExp => Some(4403), "refresh token has no exp", "refresh_refused",
        "refresh refused: token without exp";
    /// It did not answer the server's ping in time.
    HeartbeatTimeout => Some(4408), "no answer to ping", "heartbeat_timeout", "no answer to ping";
    /// It sent messages faster than `messagesPerSecond` / `messageBurst`.
    RateLimited => Some(4429), "too many messages", "rate_limited", "too many messages";
}

impl Disconnect {
    /// The distinct metric labels, in table order (two disconnects may share one).
    pub fn metric_labels() -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for d in Disconnect::ALL {
            if !out.contains(&d.metric_label()) {
                out.push(d.metric_label());
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals before the upgrade

/// Declares [`Refused`]: variant => HTTP status, code, message (and extra response headers).
macro_rules! refusals {
    ($($(#[$doc:meta])* $name:ident => $status:literal, $code:literal, $message:literal $(, $headers:expr)?;)*) => {
        /// The refusals other than a token's (see [`Refusal`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Refused { $($(#[$doc])* $name,)* }

        impl Refused {
            pub const ALL: &'static [Refused] = &[$(Refused::$name,)*];

            fn spec(self) -> (u16, &'static str, &'static str, &'static [(&'static str, &'static str)]) {
                match self {
                    $(Refused::$name => ($status, $code, $message, refusals!(@headers $($headers)?)),)*
                }
            }
        }
    };
    (@headers) => { &[] };
    (@headers $headers:expr) => { $headers };
}

const UPGRADE_HEADERS: &[(&str, &str)] =
    &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")];
const VERSION_HEADERS: &[(&str, &str)] = &[("Sec-WebSocket-Version", "13")];

refusals! {
    /// Not HTTP.
    Malformed => 400, "BAD_REQUEST", "Malformed HTTP request";
    /// No `Sec-WebSocket-Key`.
    MissingKey => 400, "BAD_REQUEST", "Missing Sec-WebSocket-Key";
    /// An upgrade over HTTP/1.0 (RFC 6455 asks for 1.1).
    OldHttp => 400, "BAD_REQUEST", "WebSocket upgrades need HTTP/1.1";
    /// No `Host` header.
    MissingHost => 400, "BAD_REQUEST", "Missing Host";
    /// A `Sec-WebSocket-Key` that is not 16 base64-encoded bytes.
    BadKey => 400, "BAD_REQUEST", "Sec-WebSocket-Key must be 16 base64-encoded bytes";
    /// `Authorization`, `Sec-WebSocket-Key`, `Origin` or `Host` given twice.
    DuplicateHeader => 400, "BAD_REQUEST",
        "Host, Authorization, Sec-WebSocket-Key and Origin may appear once";
    /// Only `bearer.<JWT>` offered as subprotocol: echoing it would put the token in the answer.
    SubprotocolRequired => 400, "SUBPROTOCOL_REQUIRED",
        "Offer the realtime-events subprotocol beside bearer.<JWT>";
    /// `?parcels=` holds an invalid id.
    InvalidParcels => 400, "INVALID_PARCELS", "?parcels= holds an invalid parcel id";
    /// `?parcels=` lists more than `maxSubscriptions`.
    TooManyParcels => 400, "INVALID_PARCELS", "?parcels= lists more parcels than allowed";
    /// `?since=` is not an offset.
    InvalidOffset => 400, "INVALID_OFFSET",
        "?since= must be an offset as received, e.g. 1732590000000-5";
    /// The browser's `Origin` is not in `allowedOrigins`.
    OriginNotAllowed => 403, "ORIGIN_NOT_ALLOWED", "This Origin may not connect (see allowedOrigins)";
    /// An operations endpoint asked for under a `Host` that is not this server's (DNS
    /// rebinding): not an IP, `localhost`, a single-label name or in `allowedHosts`.
    HostNotAllowed => 403, "HOST_NOT_ALLOWED",
        "This Host may not read the operations endpoints (see allowedHosts, opsToken)";
    /// `opsToken` is set and the request to an operations endpoint does not carry it.
    OpsTokenRequired => 401, "OPS_TOKEN_REQUIRED",
        "The operations endpoints need the opsToken: Authorization: Bearer <opsToken>";
    /// `validateUser` said no, threw or rejected.
    UserRejected => 403, "USER_REJECTED", "User is not allowed to connect";
    /// Another path than the WebSocket path (and not an operations endpoint).
    NotFound => 404, "NOT_FOUND", "Not found: WebSocket clients connect to the configured path";
    /// The handshake took longer than `handshakeTimeoutMs`.
    HandshakeTimeout => 408, "HANDSHAKE_TIMEOUT", "handshake took too long";
    /// A plain HTTP request on the WebSocket path.
    UpgradeRequired => 426, "UPGRADE_REQUIRED", "This endpoint speaks WebSocket only", UPGRADE_HEADERS;
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion => 426, "UNSUPPORTED_VERSION", "Only WebSocket version 13 is supported",
        VERSION_HEADERS;
    /// `maxConnectionsPerIp` reached for this address.
    TooManyFromIp => 429, "TOO_MANY_CONNECTIONS_FROM_IP", "Too many connections from this address";
    /// The request head is over 8 KiB.
    HeadersTooLarge => 431, "HEADERS_TOO_LARGE", "Request head too large";
    /// `maxConnections` reached.
    TooManyConnections => 503, "TOO_MANY_CONNECTIONS",
        "The server holds as many connections as it may; try another instance or later";
    /// The server is draining.
    Draining => 503, "DRAINING", "This server is shutting down; connect to another instance";
}

/// Why an upgrade was refused: answered as plain HTTP with `{"error": message, "code": code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token is missing or invalid: 401 with the token's code.
    Token(AuthError),
    Other(Refused),
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Self {
        Refusal::Other(r)
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        Refusal::Token(e)
    }
}

impl Refusal {
    /// Every refusal, token ones first.
    pub fn all() -> impl Iterator<Item = Refusal> {
        let tokens = AuthError::ALL.iter().map(|&e| Refusal::Token(e));
        tokens.chain(Refused::ALL.iter().map(|&r| Refusal::Other(r)))
    }

    /// Every refusal code, once each, in table order (the series `/metrics` shows from the start).
    pub fn codes() -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for r in Refusal::all() {
            if !out.contains(&r.code()) {
                out.push(r.code());
            }
        }
        out
    }

    pub fn status(self) -> u16 {
        match self {
            Refusal::Token(_) => 401,
            Refusal::Other(r) => r.spec().0,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::Token(e) => e.code(),
            Refusal::Other(r) => r.spec().1,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Token(e) => e.message(),
            Refusal::Other(r) => r.spec().2,
        }
    }

    /// Response headers beyond the usual ones (426 says which upgrade it wants).
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Token(_) => &[],
            Refusal::Other(r) => r.spec().3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> String {
        parse_request(text).unwrap_err()
    }

    #[test]
    fn parses_requests_and_explains_refusals() {
        assert!(matches!(parse_request(r#"{"type":"ping"}"#), Ok(Request::Ping)));
        assert!(matches!(
            parse_request(r#"{"type":"subscribe","parcel_ids":["a"]}"#),
            Ok(Request::Subscribe { parcel_ids: Some(_), all: None })
        ));
        assert!(matches!(
            parse_request(r#"{"type":"refresh","token":"t"}"#),
            Ok(Request::Refresh { .. })
        ));
        assert!(reply("{oops").contains("INVALID_JSON"));
        assert!(reply(r#"{"type":"dance"}"#).contains("UNKNOWN_MESSAGE_TYPE"));
        assert!(reply("[]").contains("UNKNOWN_MESSAGE_TYPE"));
        assert!(reply(r#"{"type":"refresh"}"#).contains("INVALID_MESSAGE"));
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(500));
        assert!(reply(&long).len() < 300);
        assert!(reply("{oops").starts_with(r#"{"type":"error","code":"INVALID_JSON""#));
    }

    #[test]
    fn checks_parcel_ids() {
        let ids = |v: Value| check_parcel_ids(serde_json::from_value(v).unwrap());
        assert_eq!(ids(serde_json::json!(["a", "b", "a"])).unwrap(), ["a", "b"]);
        assert!(ids(serde_json::json!([1])).unwrap_err().contains("INVALID_SUBSCRIPTION"));
        assert!(ids(serde_json::json!([""])).unwrap_err().contains("INVALID_SUBSCRIPTION"));
        assert!(check_parcel_ids(None).unwrap_err().contains("INVALID_SUBSCRIPTION"));
    }

    #[test]
    fn every_frame_is_json_with_its_type_first() {
        let offset: Offset = "1732590000000-5".parse().unwrap();
        let ids = ["a".to_string()];
        let frames = [
            frame::welcome(None),
            frame::welcome(Some(offset)),
            frame::PONG.to_string(),
            frame::RESYNC_UNKNOWN.to_string(),
            frame::parcel_updated("p\"1", Some(r#"{"x":1}"#), Some(offset)),
            frame::resumed(offset, 3),
            frame::resync_required(offset, None),
            frame::subscription(frame::Ack::Subscribed, None),
            frame::subscription(frame::Ack::Unsubscribed, Some(&ids.to_vec())),
            frame::refreshed(None),
            frame::error(MessageError::InvalidJson, "a \"quoted\" word"),
            frame::reconnect(Duration::from_millis(1250)),
        ];
        let notice: Value =
            serde_json::from_str(&frame::reconnect(Duration::from_millis(1250))).unwrap();
        assert_eq!(notice["close_in_ms"], 1250);
        for f in frames {
            let v: Value = serde_json::from_str(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(f.starts_with(r#"{"type":""#), "{f}");
            assert!(v["type"].is_string());
        }
        assert!(frame::parcel_updated("p", None, Some(offset))
            .ends_with(r#""offset":"1732590000000-5"}"#));
    }

    /// The README's protocol tables list every close code, close reason label, refusal and error
    /// code defined here: the docs cannot drift from the wire.
    #[test]
    fn the_readme_lists_every_disconnect_refusal_and_error_code() {
        let readme = include_str!("../README.md");
        for d in Disconnect::ALL {
            if let Some(code) = d.close_code() {
                assert!(readme.contains(&format!("close **{code}**")), "README lacks close {code}");
            }
            let label = format!("`{}`", d.metric_label());
            assert!(readme.contains(&label), "README lacks the close label {label}");
        }
        for r in Refusal::all() {
            let row = format!("| {} | `{}` |", r.status(), r.code());
            assert!(readme.contains(&row), "README's refusal table lacks {row}");
        }
        for e in MessageError::ALL {
            assert!(readme.contains(&format!("`{}`", e.code())), "README lacks {}", e.code());
        }
    }

    #[test]
    fn every_refusal_status_has_its_reason_phrase() {
        for r in Refusal::all() {
            let phrase = crate::http::reason_phrase(r.status());
            assert_ne!(phrase, "Error", "HTTP/1.1 {} needs its reason phrase", r.status());
        }
    }

    #[test]
    fn codes_are_unique_where_they_must_be() {
        let labels = Disconnect::metric_labels();
        // Shared labels: the refresh refusals (3), too_large (2), protocol_error (2).
        assert_eq!(labels.len(), Disconnect::ALL.len() - 4, "only these share their label");
        let codes = Refusal::codes();
        assert!(codes.contains(&"TOKEN_EXPIRED") && codes.contains(&"DRAINING"));
        assert_eq!(codes.iter().collect::<HashSet<_>>().len(), codes.len());
    }
}
