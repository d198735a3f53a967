//! The store's one error type.
//!
//! The first variants are the contract's outcomes, the same from both backends, so that
//! callers can act on them without knowing which store they hold: `AlreadyExists` and
//! `Conflict` (someone else wrote: re-read), `Compacted` (history gone: re-list),
//! `LeaseNotFound` (the lease ended: grant a new one). The rest are failures of a
//! backend, with the cause kept as `source`.

use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use crate::txn::{Expect, KeyState};
use crate::{LeaseId, Revision};

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A create found the key already there.
    #[error("key {key:?} already exists (mod revision {mod_revision})")]
    AlreadyExists {
        /// The key.
        key: String,
        /// Its current mod revision.
        mod_revision: Revision,
    },

    /// A compare-and-swap found the key at another revision (or gone): the caller's copy
    /// is stale and nothing was written.
    #[error("key {key:?} is not at mod revision {expected} (it is {}): nothing written", match .actual { Some(r) => format!("at {r}"), None => "absent".into() })]
    Conflict {
        /// The key.
        key: String,
        /// The mod revision the caller expected.
        expected: Revision,
        /// The key's mod revision, or `None` if it does not exist.
        actual: Option<Revision>,
    },

    /// A transaction's compare did not hold: nothing of the transaction was written.
    #[error("transaction refused, nothing written: compare {index} failed: key {key:?} was to be {expected}, {}", crate::txn::describe(.actual))]
    TxnRefused {
        /// The compare's position in the transaction (from 0).
        index: usize,
        /// Its key.
        key: String,
        /// What it expected.
        expected: Expect,
        /// The key's state when the transaction was evaluated (`None`: absent).
        actual: Option<KeyState>,
    },

    /// A request got no answer in time (see [`crate::DEFAULT_REQUEST_TIMEOUT`]). A
    /// write that timed out may still have been applied.
    #[error(
        "store request {op} timed out after {after:?} (a write may or may not have been applied)"
    )]
    Timeout {
        /// The request (`put`, `txn`, `list`, …).
        op: &'static str,
        /// How long it was given.
        after: Duration,
    },

    /// The history from the requested revision on has been compacted away: list again
    /// and watch from the listing's revision + 1.
    #[error("revision {requested} has been compacted: list again")]
    Compacted {
        /// The first revision the watch needed.
        requested: Revision,
    },

    /// A revision after the store's current one was asked for.
    #[error("revision {requested} is in the future")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
    },

    /// The lease does not exist: never granted, revoked, or expired.
    #[error("lease {lease} not found (expired or revoked)")]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },

    /// An argument no store accepts (an empty key, a zero TTL, a revision below 1).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An etcd request failed (unreachable, refused, timed out).
    #[error("etcd {op} failed")]
    Etcd {
        /// What was being done (`put`, `watch`, …).
        op: &'static str,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },

    /// etcd ended a watch for a reason other than compaction.
    #[error("etcd cancelled the watch: {reason}")]
    WatchCancelled {
        /// etcd's reason.
        reason: String,
    },

    /// etcd closed a watch without saying why (the connection was lost).
    #[error("etcd closed the watch stream")]
    WatchClosed,

    /// The embedded store's file could not be opened.
    #[error("cannot open the store file {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// redb's error (already open by another store, not a store file, I/O).
        #[source]
        source: redb::Error,
    },

    /// A read or write of the embedded store's file failed.
    #[error("embedded store: {op} failed")]
    Database {
        /// What was being done.
        op: &'static str,
        /// redb's error (shared: one failed commit fails every write in it).
        #[source]
        source: Arc<redb::Error>,
    },

    /// Stored data is not what this crate writes (a truncated record, a non-UTF-8 key
    /// written to etcd by another program).
    #[error("corrupt data: {0}")]
    Corrupt(String),

    /// The blocking task running an embedded store read panicked.
    #[error("embedded store worker failed")]
    Worker(#[source] tokio::task::JoinError),

    /// The embedded store's writer thread is gone (it panicked); the store must be
    /// reopened.
    #[error("the embedded store's writer thread stopped")]
    WriterStopped,
}

impl Error {
    /// An embedded-store failure, from any of redb's error types.
    pub(crate) fn db(op: &'static str, source: impl Into<redb::Error>) -> Error {
        Error::Database {
            op,
            source: Arc::new(source.into()),
        }
    }

    /// Whether this is the store refusing a request on its merits (a conflict, a missing
    /// lease, a bad argument), as opposed to failing to carry it out.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::AlreadyExists { .. }
                | Error::Conflict { .. }
                | Error::TxnRefused { .. }
                | Error::Compacted { .. }
                | Error::FutureRevision { .. }
                | Error::LeaseNotFound { .. }
                | Error::InvalidArgument(_)
        )
    }

    /// The same failure, for each write of a batch that failed as a whole.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Database { op, source } => Error::Database {
                op,
                source: source.clone(),
            },
            other => Error::Corrupt(other.to_string()),
        }
    }
}
