//! The engine's logger for the `log` facade.
//!
//! - Level from `LOG_LEVEL` (error, warn, info, debug, trace, off; default info).
//! - Format from `LOG_FORMAT`: `json` (one JSON object per line: `time`, `level`, `module`,
//!   `msg`, then the record's structured fields), `text` (`[realtime-events] LEVEL message`), or
//!   by default JSON when stderr is not a terminal and text when it is.
//! - A hook ([`set_hook`]) replaces stderr: the napi skin installs one that hands each record to
//!   a JS function. A hook that cannot take a record (its queue is full) drops it; drops are
//!   counted ([`dropped_records`], `realtime_log_records_dropped_total`).
//!
//! Tokens never reach a log line: the engine logs user ids, never tokens or request targets, and
//! as a second line of defence anything shaped like a JWT is replaced by `[redacted-jwt]`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata};
use serde_json::{Map, Value as Json};

/// One log record, as the hook and the JSON format see it.
#[derive(Debug, Clone)]
pub struct Record {
    /// "error", "warn", "info", "debug" or "trace".
    pub level: &'static str,
    /// The engine module that logged it, e.g. "server", "bus".
    pub module: String,
    pub message: String,
    /// Structured fields (user id, reason, ...).
    pub fields: Map<String, Json>,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl Record {
    /// `{"time":"…Z","level":"info","module":"server","msg":"…",…fields}`.
    pub fn to_json(&self) -> String {
        let s = |v: &str| Json::from(v).to_string();
        let mut out = format!(
            r#"{{"time":"{}","level":"{}","module":{},"msg":{}"#,
            rfc3339_ms(self.time_ms),
            self.level,
            s(&self.module),
            s(&self.message)
        );
        for (k, v) in &self.fields {
            if !matches!(k.as_str(), "time" | "level" | "module" | "msg") {
                let _ = write!(out, ",{}:{}", s(k), v);
            }
        }
        out.push('}');
        out
    }

    /// `[realtime-events] INFO message`.
    pub fn to_text(&self) -> String {
        format!("[realtime-events] {} {}", self.level.to_ascii_uppercase(), self.message)
    }
}

/// Receives every record that passes the level filter; returns false when it had to drop it.
pub type Hook = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// Parses `LOG_FORMAT`: `json`, `text` (or `pretty`); anything else means "JSON unless stderr
/// is a terminal".
pub fn parse_format(value: Option<&str>) -> Format {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("json") => Format::Json,
        Some("text" | "pretty") => Format::Text,
        _ if std::io::stderr().is_terminal() => Format::Text,
        _ => Format::Json,
    }
}

static HOOK: RwLock<Option<Hook>> = RwLock::new(None);
static JSON: AtomicBool = AtomicBool::new(true);
static DROPPED: AtomicU64 = AtomicU64::new(0);

struct EngineLogger;

impl Log for EngineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("realtime_events") && metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let rec = make_record(record);
        let hook = HOOK.read().unwrap_or_else(|e| e.into_inner()).clone();
        match hook {
            Some(hook) => {
                if !hook(&rec) {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                let line = if JSON.load(Ordering::Relaxed) { rec.to_json() } else { rec.to_text() };
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    fn flush(&self) {}
}

fn make_record(record: &log::Record<'_>) -> Record {
    let level = match record.level() {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    };
    let module = record
        .module_path()
        .unwrap_or(record.target())
        .trim_start_matches("realtime_events")
        .trim_start_matches("::")
        .split("::")
        .next()
        .filter(|m| !m.is_empty())
        .unwrap_or("engine")
        .to_string();
    let mut fields = Fields(Map::new());
    let _ = record.key_values().visit(&mut fields);
    let time_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    Record { level, module, message: redact(&record.args().to_string()), fields: fields.0, time_ms }
}

struct Fields(Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(b) = value.to_bool() {
            Json::from(b)
        } else if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(n) = value.to_i64() {
            Json::from(n)
        } else if let Some(s) = value.to_borrowed_str() {
            Json::from(redact(s))
        } else if let Some(x) = value.to_f64() {
            Json::from(x)
        } else {
            Json::from(redact(&value.to_string()))
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}

/// Replaces anything shaped like a JWT (`eyJ…` `.` `…` `.` `…`) by `[redacted-jwt]`.
pub fn redact(text: &str) -> String {
    if !text.contains("eyJ") {
        return text.to_string();
    }
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '=';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        out.push_str(&rest[..at]);
        let candidate = &rest[at..];
        // Three dot-separated base64url segments (the signature may be empty for alg none).
        let mut end = 0;
        let mut dots = 0;
        for (i, c) in candidate.char_indices() {
            if is_b64(c) {
                end = i + c.len_utf8();
            } else if c == '.' && dots < 2 {
                dots += 1;
                end = i + 1;
            } else {
                break;
            }
        }
        if dots == 2 {
            out.push_str("[redacted-jwt]");
            rest = &candidate[end..];
        } else {
            out.push_str("eyJ");
            rest = &candidate[3..];
        }
    }
    out.push_str(rest);
    out
}

/// Parses a `LOG_LEVEL` value; unknown values mean `info`.
pub fn parse_level(value: Option<&str>) -> LevelFilter {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("off" | "silent" | "none") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        Some("warn" | "warning") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    }
}

/// Installs the logger once per process (later calls only change the level and format).
pub fn init(level: LevelFilter, format: Format) {
    let _ = log::set_logger(&EngineLogger);
    log::set_max_level(level);
    JSON.store(format == Format::Json, Ordering::Relaxed);
}

/// The format in force.
pub fn format() -> Format {
    if JSON.load(Ordering::Relaxed) {
        Format::Json
    } else {
        Format::Text
    }
}

/// Routes records to `hook` instead of stderr, or back to stderr with `None`.
pub fn set_hook(hook: Option<Hook>) {
    *HOOK.write().unwrap_or_else(|e| e.into_inner()) = hook;
}

/// Records a hook could not take since the start.
pub fn dropped_records() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `2025-01-31T23:59:59.123Z` from milliseconds since the epoch (UTC; proleptic Gregorian).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::with_capacity(24);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[test]
    fn redacts_jwts_only() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl";
        assert_eq!(redact(&format!("token={jwt}&x=1")), "token=[redacted-jwt]&x=1");
        assert_eq!(redact("eyJ alone, eyJa.b"), "eyJ alone, eyJa.b");
        assert_eq!(redact("no token here"), "no token here");
        assert_eq!(redact(&format!("{jwt} {jwt}")), "[redacted-jwt] [redacted-jwt]");
    }

    #[test]
    fn records_render_as_json_and_text() {
        let mut fields = Map::new();
        fields.insert("user".into(), Json::from("u1"));
        fields.insert("msg".into(), Json::from("a field cannot hide the message"));
        let rec = Record {
            level: "info",
            module: "server".into(),
            message: "client connected".into(),
            fields,
            time_ms: 0,
        };
        let v: Json = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["msg"], "client connected");
        assert_eq!(v["user"], "u1");
        assert_eq!(v["module"], "server");
        assert!(rec.to_json().starts_with(r#"{"time":"1970-01-01T00:00:00.000Z","level":"info""#));
        assert_eq!(rec.to_text(), "[realtime-events] INFO client connected");
    }
}
