//! Flotilla's storage: one [`Store`] trait, two backends, one contract.
//!
//! Everything the federation server keeps (sets, clusters, placements, leases for
//! heartbeats and leadership) goes through [`Store`]. Two backends implement it:
//!
//! - [`EtcdStore`]: production, over a real etcd cluster (`etcd-client`).
//! - [`EmbeddedStore`]: one durable file (`redb`), the default for `flotilla dev` and
//!   single-node use.
//!
//! Both follow etcd's revision model, because controllers are built on it:
//!
//! ```text
//!   write ──▶ revision R+1 (global, every write bumps it; each key keeps
//!             create_revision and mod_revision)
//!
//!   controller: list(prefix) ──▶ items @ R ──▶ watch(prefix, R+1) ──▶ Put/Delete…
//!                   ▲                                                     │
//!                   └──────────── Error::Compacted (history gone) ◀──────┘
//!
//!   writer:     get ──▶ value @ mod_revision m ──▶ update(key, new, m)
//!                                                    └─▶ Error::Conflict if someone
//!                                                        wrote in between
//! ```
//!
//! The contract, checked against both backends by one conformance suite
//! (`tests/conformance.rs`): create fails on an existing key; update and delete can
//! compare-and-swap on the key's mod revision, and a stale write is refused with
//! [`Error::Conflict`], never applied; a watch delivers every event after its start
//! revision once, in revision order, including the ones written between a list and the
//! watch; a start revision whose history is gone is refused with [`Error::Compacted`];
//! acknowledged writes survive a crash and revisions keep increasing after it; keys put
//! under a lease vanish, with a Delete event, when the lease is revoked or not renewed;
//! a transaction ([`Txn`]: compares on several keys, then puts and deletes) commits
//! whole at one revision or, when a compare fails, writes nothing and says which
//! compare failed ([`Error::TxnRefused`]).
//!
//! Every request is bounded in time ([`DEFAULT_REQUEST_TIMEOUT`] unless the backend's
//! options say otherwise): a store that does not answer fails it with
//! [`Error::Timeout`], naming the request, instead of hanging its caller.
//!
//! # Why `async-trait`
//! The server holds its store as `Arc<dyn Store>` and picks the backend at startup, so
//! the trait must be object safe. Native `async fn` in traits is not; `async-trait`
//! boxes each call's future, which costs one allocation next to a network round trip
//! (etcd) or an fsync (embedded), and keeps every method an ordinary `async fn` to
//! write and to read. Watches return a boxed [`WatchStream`] for the same reason.

pub mod embedded;
pub mod error;
pub mod etcd;
#[cfg(feature = "testing")]
pub mod testing;
pub mod txn;

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

pub use embedded::{Clock, EmbeddedOptions, EmbeddedStore, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use etcd::{DEFAULT_MAX_RESPONSE_BYTES, EtcdOptions, EtcdStore, MIN_RESPONSE_BYTES};
pub use txn::{Committed, Compare, Expect, KeyState, Txn, TxnOp};

/// How long one store request may take before it fails with [`Error::Timeout`], unless
/// the backend's options say otherwise: 10 s. A request to etcd that gets no answer in
/// that time (etcd stopped, partitioned, or its disk stuck) fails instead of hanging
/// its caller; etcd's own requests give up after about 7 s on the server side, so a
/// healthy but slow cluster answers well within it. A timed-out write may still have
/// been applied: read again before acting on either outcome.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A revision of the whole store. Every write (put, delete, a lease's keys going away)
/// makes exactly one new revision, greater than every earlier one. The empty store is
/// at revision 1, as in etcd.
pub type Revision = i64;

/// A lease's id, as the store granted it.
pub type LeaseId = i64;

/// One key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value: opaque bytes.
    pub value: Bytes,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision of the last write to the key; what compare-and-swap compares.
    pub mod_revision: Revision,
    /// Writes to the key since it was created: 1 after the create.
    pub version: i64,
    /// The lease the key lives under, if any.
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, read at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The store's revision when the list was read: watch from `revision + 1` to see
    /// everything that happened after it.
    pub revision: Revision,
    /// The keys, in byte order of the key.
    pub items: Vec<KeyValue>,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created or overwritten; `mod_revision` is the event's revision.
    Put(KeyValue),
    /// The key was deleted (by a delete, or because its lease ended).
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// The revision at which it happened.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its id, to put keys under it, renew or revoke it.
    pub id: LeaseId,
    /// How long it lives without a renewal. etcd counts in whole seconds and has a
    /// minimum, so this may be longer than what was asked.
    pub ttl: Duration,
}

/// What must hold for a put to happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Nothing: write whatever is there.
    Any,
    /// The key must not exist ([`Error::AlreadyExists`] otherwise).
    Absent,
    /// The key must exist with this mod revision ([`Error::Conflict`] otherwise).
    ModRevision(Revision),
}

/// The events of one watch, in revision order. It ends only after yielding an error:
/// [`Error::Compacted`] when the history it needed is gone (list again), or the
/// backend's failure (watch again from the revision after the last event seen).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// Flotilla's storage: a revisioned key-value store with compare-and-swap, watches from
/// a revision, and leases. See the crate documentation for the contract.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The key, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix` (`""` for all), and the revision they were read
    /// at, as one consistent snapshot.
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// Writes `value` at `key` if `condition` holds, and returns the new revision.
    ///
    /// With `lease`, the key goes away when the lease does ([`Error::LeaseNotFound`] if
    /// it is already gone); without, a key that was under a lease leaves it (as in etcd).
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision>;

    /// Deletes `key`, if `expected` is `None` or its mod revision ([`Error::Conflict`]
    /// otherwise). Returns the revision of the delete, or `None` when there was nothing
    /// to delete (no write happened).
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Option<Revision>>;

    /// Every event on keys starting with `prefix` from revision `from` (inclusive) on.
    /// Refused with [`Error::Compacted`] when that history is gone.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;

    /// Forgets the history before `revision`: watches from an earlier revision are then
    /// refused with [`Error::Compacted`]. Compacting at or below an earlier compaction
    /// does nothing.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Grants a lease that ends `ttl` after the last renewal.
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease>;

    /// Renews the lease for another full TTL, which it returns.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Ends the lease now, deleting its keys (one revision for all of them).
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Commits every op of `txn` at once, at one new revision, if every compare holds;
    /// otherwise writes nothing and fails with [`Error::TxnRefused`] naming the first
    /// compare that did not hold. A transaction that changes nothing (no ops, or only
    /// deletes of absent keys) takes no revision. See [`txn`] for the limits.
    async fn txn(&self, txn: Txn) -> Result<Committed>;

    /// Whether other processes can use this store at the same time (etcd), or it is
    /// this process's alone (the embedded file, which one process opens at a time).
    fn shared(&self) -> bool {
        true
    }

    /// Creates `key`; [`Error::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision> {
        self.put(key, value, Condition::Absent, None).await
    }

    /// Overwrites `key` if it is still at `mod_revision`; [`Error::Conflict`] otherwise.
    async fn update(&self, key: &str, value: Bytes, mod_revision: Revision) -> Result<Revision> {
        self.put(key, value, Condition::ModRevision(mod_revision), None)
            .await
    }
}

/// Refuses what neither backend can store: an empty key.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("a key must not be empty".into()));
    }
    Ok(())
}

/// Refuses what no backend commits: an empty key, a key written twice, more ops or
/// compares than [`txn::MAX_OPS`].
fn check_txn(txn: &Txn) -> Result<()> {
    txn.check()
}

/// Refuses watch start revisions below 1 (etcd reads 0 as "now", which would hide
/// events between a list and the watch).
fn check_start(from: Revision) -> Result<()> {
    if from < 1 {
        return Err(Error::InvalidArgument(format!(
            "a watch starts at revision 1 or later, not {from}"
        )));
    }
    Ok(())
}

/// Refuses a zero TTL: such a lease would end before anything could be put under it.
fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::InvalidArgument(
            "a lease TTL must not be zero".into(),
        ));
    }
    Ok(())
}
