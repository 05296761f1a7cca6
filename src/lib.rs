//! `realtime-events`: a WebSocket broadcast engine for parcel updates.
//!
//! Layers, each using only those below it:
//! - `addon` (feature `node`): the napi-rs skin that Node loads; converts types and errors only.
//! - [`server`]: accept, HTTP upgrade with refusals, shutdown.
//! - [`connection`]: one task per client.
//! - [`bus`]: in-memory or Redis pub/sub, feeding a broadcast ring of encoded frames.
//! - [`ops`]: `/health`, `/metrics`, `/stats` and the dashboard, on the same port; [`metrics`]:
//!   the counters behind them; [`drain`]: graceful drain; [`logger`]: structured logs.
//! - [`event`], [`auth`], [`config`], [`http`], [`error`]: the pieces.
//!
//! The engine is plain Rust: `cargo test --no-default-features` tests it without Node.

pub mod auth;
pub mod bus;
pub mod config;
pub mod connection;
pub mod drain;
pub mod error;
pub mod event;
pub mod history;
pub mod http;
pub mod hub;
pub mod logger;
pub mod metrics;
pub mod ops;
pub mod server;

#[cfg(feature = "node")]
mod addon;

pub use bus::{Bus, Mode};
pub use config::{BusConfig, ServerConfig};
pub use error::{Error, Result};
pub use event::Event;
pub use metrics::{Health, Snapshot};
pub use server::{Server, UserValidator};
