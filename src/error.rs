//! Errors the engine reports to its callers.
//!
//! Every error carries a stable `code` (e.g. `ERR_PORT_IN_USE`): the napi skin turns it into the
//! `code` property of the JS `Error`, so callers can branch on it without parsing messages.

use std::fmt;

/// An engine error: a stable machine-readable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: &'static str,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The stable code, e.g. `ERR_INVALID_PARCEL_ID`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Errors caused by the caller's arguments (the JS skin raises these as `TypeError`).
    pub fn is_invalid_argument(&self) -> bool {
        INVALID_ARGUMENT_CODES.contains(&self.code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

/// The codes of errors caused by the caller's arguments (raised as `TypeError` in JS).
pub const INVALID_ARGUMENT_CODES: [&str; 4] =
    [codes::INVALID_PARCEL_ID, codes::INVALID_DATA, codes::INVALID_USERS, codes::INVALID_OPTION];

/// The codes the engine uses. They are part of the public API: never rename one.
pub mod codes {
    pub const INVALID_PARCEL_ID: &str = "ERR_INVALID_PARCEL_ID";
    pub const INVALID_DATA: &str = "ERR_INVALID_DATA";
    pub const INVALID_USERS: &str = "ERR_INVALID_USERS";
    pub const INVALID_OPTION: &str = "ERR_INVALID_OPTION";
    pub const INVALID_OFFSET: &str = "ERR_INVALID_OFFSET";
    pub const MISSING_SECRET: &str = "ERR_MISSING_JWT_SECRET";
    pub const PORT_IN_USE: &str = "ERR_PORT_IN_USE";
    pub const LISTEN_FAILED: &str = "ERR_LISTEN_FAILED";
    pub const REDIS_UNAVAILABLE: &str = "ERR_REDIS_UNAVAILABLE";
    /// Redis refused the credentials of `redisUrl` (or the ACL user lacks a permission).
    pub const REDIS_AUTH: &str = "ERR_REDIS_AUTH";
    /// TLS with Redis failed: the server's certificate was not trusted, or the client's refused.
    pub const REDIS_TLS: &str = "ERR_REDIS_TLS";
    /// No sentinel of a `redis+sentinel://` URL knows the master name.
    pub const REDIS_SENTINEL: &str = "ERR_REDIS_SENTINEL";
    /// A `redis+cluster://` seed is not in cluster mode, or a `redis://` URL names a cluster node.
    pub const REDIS_CLUSTER: &str = "ERR_REDIS_CLUSTER";
    /// `redisWaitReplicas`: fewer replicas than asked acknowledged a publish in time.
    pub const REDIS_REPLICATION: &str = "ERR_REDIS_REPLICATION";
    pub const BUS_CONFLICT: &str = "ERR_BUS_CONFLICT";
    pub const PUBLISH_QUEUE_FULL: &str = "ERR_PUBLISH_QUEUE_FULL";
    pub const BUS_CLOSED: &str = "ERR_BUS_CLOSED";
}
