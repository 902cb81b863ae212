//! Source: the replication connection (spoken on `postgres-protocol` over tokio), and the
//! checks and setup that run before streaming starts (wal_level, privileges, tables,
//! replica identity, publication, slot), each failing with one message naming the fix.

pub mod conn;
pub mod inspect;
pub mod preflight;
pub mod refusal;
pub mod setup;

pub use conn::{ReplConn, ReplMessage, ServerError, PINNED_SETTINGS};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection error: {0}")]
    Io(#[source] std::io::Error),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("server error: {0}")]
    Server(ServerError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("malformed replication message at {lsn}: {source}")]
    Decode {
        lsn: String,
        #[source]
        source: crate::decode::DecodeError,
    },
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error("the server sent nothing for {0:?}, not even when asked for a reply (source.receive_timeout); the connection counts as dead")]
    Silent(std::time::Duration),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("replication slot {0:?} does not exist")]
    SlotMissing(String),
    /// The server refuses to stream the slot for good; the message names the fix and
    /// what it loses (`refusal::explain`).
    #[error("{0}")]
    Refused(String),
    /// Shown with PostgreSQL's message and SQLSTATE (see `pg::PgError`).
    #[error("catalog query failed: {0}")]
    Catalog(#[source] crate::pg::PgError),
}

impl From<tokio_postgres::Error> for SourceError {
    fn from(e: tokio_postgres::Error) -> Self {
        SourceError::Catalog(crate::pg::PgError(e))
    }
}

impl SourceError {
    /// SQLSTATE of a server error, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SourceError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// Errors that reconnecting cannot fix.
    pub fn is_fatal(&self) -> bool {
        match self {
            SourceError::Auth(_) | SourceError::SlotMissing(_) | SourceError::Refused(_) => true,
            SourceError::Server(e) => {
                // 28xxx: authorization; 42704: undefined object (slot or publication gone);
                // 55000: object not in prerequisite state (e.g. invalidated slot).
                e.code.starts_with("28") || e.code == "42704" || e.code == "55000"
            }
            _ => false,
        }
    }
}
