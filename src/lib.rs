//! `realtime-events`: a WebSocket broadcast engine for parcel updates.
//!
//! Layers, each using only those below it:
//! - `addon` (feature `node`): the napi-rs skin that Node loads; converts types and errors only.
//! - `server`: accept, HTTP upgrade with refusals, drain and shutdown; `endpoints`: `/health`,
//!   `/metrics`, `/stats` and the dashboard on the same port.
//! - `connection`: one task per client (welcome, replay, live events, control messages, limits).
//! - `protocol`: the vocabulary: client messages, server frames, the `Disconnect` and `Refusal`
//!   tables.
//! - `hub`: the broadcast ring and the per-parcel index that connections read from; `history`:
//!   the recent past for resume.
//! - `bus`: in-memory or Redis pub/sub, feeding the hub.
//! - `metrics`: the counters and their renderings; `drain`: the drain plan; `logger`: structured
//!   logs (installed by the skin).
//! - `event`, `auth`, `config`, `http`, `clock`, `error`: the pieces.
//!
//! Modules are private: what a Rust user (the napi skin, the integration tests) needs is
//! re-exported below, so rustc reports whatever else nothing uses.
//!
//! The engine is plain Rust: `cargo test --no-default-features` tests it without Node.

mod auth;
mod bus;
mod clock;
mod config;
mod connection;
mod drain;
mod endpoints;
mod error;
mod event;
mod history;
mod http;
mod hub;
mod inbox;
// Installed by the napi skin; its own tests run without it.
#[cfg_attr(not(feature = "node"), allow(dead_code))]
mod logger;
mod metrics;
mod protocol;
mod server;

#[cfg(feature = "node")]
mod addon;

pub use auth::TokenChecks;
pub use bus::{Bus, Mode};
pub use config::{BusConfig, ServerConfig};
pub use error::{codes, Error, Result};
pub use event::Event;
pub use inbox::InboxLimits;
pub use metrics::{Health, ServerMetrics, Snapshot};
pub use protocol::{Disconnect, Refusal, Refused, SUBPROTOCOL};
pub use server::{Server, UserValidator};
