//! Why a run ended, with its cause kept as a `#[source]`, and the one place that says what
//! each kind of error means for the process: its exit code, and whether a process that
//! lost its lease waits the error out to stand by again.
//!
//! Each stage keeps its own error type (`SourceError`, `SetupError`, `StateError`,
//! `ConfigError`, `TargetError`, ...); `RunError` only says at which step of a run one
//! happened, which decides its class. Messages are written for the operator: every one
//! names what to fix.

use crate::pg::PgError;
use crate::source::setup::SetupError;
use crate::source::SourceError;
use crate::state::StateError;

/// What an error that ended a run means for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The config cannot run as written (exit 2): fix the file.
    Config,
    /// Something outside walhook is missing, refused or unreachable (exit 3): the message
    /// says what to set up.
    Prerequisite,
    /// The run failed while it ran (exit 1).
    Runtime,
    /// This process lost the slot's lease to another one: it stands by again.
    Fenced,
}

impl Class {
    /// The process's exit code (0 is a clean stop and has no class).
    pub fn exit_code(self) -> i32 {
        match self {
            Class::Config => 2,
            Class::Prerequisite => 3,
            Class::Runtime | Class::Fenced => 1,
        }
    }

    /// Whether a process that stood by once keeps retrying after this error, instead of
    /// exiting: what stops a start (a database not answering yet) is waited out so that
    /// it stands by again; a config it cannot run is not.
    pub fn waited_out_after_fencing(self) -> bool {
        matches!(self, Class::Prerequisite | Class::Runtime)
    }
}

/// Why a run of walhook (or a command that reads the source) ended.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config cannot run as written; the message names the key and the fix.
    #[error("{0}")]
    Config(String),
    /// Rules or subscribers that cannot be compiled, each with its key path.
    #[error("{}", crate::config::fmt_problems(.0))]
    Compile(Vec<crate::config::Problem>),
    /// A prerequisite found missing by the checks before a start; the message names the
    /// fix.
    #[error("{0}")]
    Prerequisite(String),
    /// A database named by the config (its key in `what`) cannot be connected to.
    #[error("{}", crate::pg::connect_message(what, &source.0))]
    Connect {
        what: &'static str,
        #[source]
        source: PgError,
    },
    /// The source could not be prepared: publication, slot, replica identity, types.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The state database could not be reached or migrated at start.
    #[error("state database: {0}")]
    StateStart(#[source] StateError),
    /// The state database failed while the run set up its lanes.
    #[error(transparent)]
    State(#[from] StateError),
    /// The replication stream ended with an error it cannot recover from.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A read-only catalog query of a command failed.
    #[error("catalog query failed: {0}")]
    Catalog(#[source] PgError),
    /// This process lost the slot's lease.
    #[error("this walhook lost the slot's lease")]
    Fenced,
}

impl RunError {
    /// The one classification of run errors.
    pub fn class(&self) -> Class {
        match self {
            RunError::Config(_) | RunError::Compile(_) => Class::Config,
            RunError::Prerequisite(_)
            | RunError::Connect { .. }
            | RunError::Setup(_)
            | RunError::StateStart(_)
            | RunError::Source(_) => Class::Prerequisite,
            RunError::State(_) | RunError::Catalog(_) => Class::Runtime,
            RunError::Fenced => Class::Fenced,
        }
    }

    pub fn exit_code(&self) -> i32 {
        self.class().exit_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_keep_the_documented_exit_codes() {
        assert_eq!(RunError::Config("x".into()).exit_code(), 2);
        assert_eq!(RunError::Prerequisite("x".into()).exit_code(), 3);
        assert_eq!(
            RunError::Source(SourceError::StreamEnded).exit_code(),
            3,
            "a stream that ends for good is reported like a missing prerequisite"
        );
        assert_eq!(RunError::State(StateError::Url("bad".into())).exit_code(), 1);
        assert_eq!(RunError::Fenced.exit_code(), 1);
        assert!(!Class::Config.waited_out_after_fencing());
        assert!(Class::Runtime.waited_out_after_fencing());
    }

    #[test]
    fn causes_are_kept() {
        use std::error::Error;
        let e = RunError::StateStart(StateError::Url("missing host".into()));
        assert_eq!(e.to_string(), "state database: state.url: missing host");
        assert!(e.source().is_some(), "the state error is its source");
    }
}
