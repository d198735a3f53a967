//! Transactions: several compares and several writes, committed atomically.
//!
//! ```text
//!   Txn::new()
//!     .when(Compare::absent("/clusters/eu-1"))        ─┐ every compare holds?
//!     .when(Compare::create_revision("/leader", 42))  ─┘
//!     .put("/clusters/eu-1", cluster)                 ─┐ yes: all ops, one new revision
//!     .put("/tokens/eu-1", digest)                    ─┘ no: nothing; TxnRefused names
//!                                                         the first compare that failed
//! ```
//!
//! etcd's semantics, on both backends: the compares are evaluated and the ops applied
//! as one step (etcd: one `Txn` request; the embedded store: one op of its writer's redb
//! transaction), so no other write can come between them. Every op of a committed
//! transaction shares one revision, and a watch sees its events at that revision in the
//! order of the ops. A transaction that changes nothing (no ops, or only deletes of
//! absent keys) takes no revision, as in etcd.
//!
//! Limits, the same on both backends so that what one accepts the other does: at most
//! [`MAX_OPS`] ops and [`MAX_OPS`] compares (etcd's default `--max-txn-ops`), no key
//! written twice (etcd refuses it), no empty key.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

use crate::{Error, LeaseId, Result, Revision};

/// At most this many ops, and this many compares, in one transaction (etcd's default
/// `--max-txn-ops`).
pub const MAX_OPS: usize = 128;

/// What must hold of one key for a transaction to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key.
    pub key: String,
    /// What must hold of it.
    pub expect: Expect,
}

/// What a [`Compare`] expects of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists (at any revision).
    Exists,
    /// The key exists and was last written at this revision.
    ModRevision(Revision),
    /// The key exists and was created at this revision: it has not been deleted and
    /// created again since (what a leader's fence compares).
    CreateRevision(Revision),
    /// The key exists under this lease.
    Lease(LeaseId),
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `value` at `key` (under `lease`, if given; a key that was under a lease
    /// leaves it otherwise, as with [`crate::Store::put`]).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// The lease the key will live under.
        lease: Option<LeaseId>,
    },
    /// Deletes `key` if it exists.
    Delete {
        /// The key.
        key: String,
    },
}

impl TxnOp {
    /// The key the op writes.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// Compares, then ops applied only if every compare holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// What must hold, all of it.
    pub compares: Vec<Compare>,
    /// What is written, in order, if it does.
    pub ops: Vec<TxnOp>,
}

/// A key's state as a compare saw it, for the refusal's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyState {
    /// The revision that created it.
    pub create_revision: Revision,
    /// The revision that last wrote it.
    pub mod_revision: Revision,
    /// Its lease, if any.
    pub lease: Option<LeaseId>,
}

/// What a committed transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The revision of every change it made, or `None` when it changed nothing.
    pub revision: Option<Revision>,
    /// For each op, in order, whether it changed its key (a put always does; a delete
    /// only when the key existed).
    pub changed: Vec<bool>,
}

impl Compare {
    /// `key` must not exist.
    pub fn absent(key: impl Into<String>) -> Compare {
        Compare {
            key: key.into(),
            expect: Expect::Absent,
        }
    }

    /// `key` must exist.
    pub fn exists(key: impl Into<String>) -> Compare {
        Compare {
            key: key.into(),
            expect: Expect::Exists,
        }
    }

    /// `key` must have been last written at `revision`.
    pub fn mod_revision(key: impl Into<String>, revision: Revision) -> Compare {
        Compare {
            key: key.into(),
            expect: Expect::ModRevision(revision),
        }
    }

    /// `key` must exist and have been created at `revision`.
    pub fn create_revision(key: impl Into<String>, revision: Revision) -> Compare {
        Compare {
            key: key.into(),
            expect: Expect::CreateRevision(revision),
        }
    }

    /// `key` must exist under `lease`.
    pub fn lease(key: impl Into<String>, lease: LeaseId) -> Compare {
        Compare {
            key: key.into(),
            expect: Expect::Lease(lease),
        }
    }

    /// Whether the compare holds for the key in state `state` (`None`: absent).
    pub fn holds(&self, state: Option<&KeyState>) -> bool {
        match (self.expect, state) {
            (Expect::Absent, s) => s.is_none(),
            (_, None) => false,
            (Expect::Exists, Some(_)) => true,
            (Expect::ModRevision(r), Some(s)) => s.mod_revision == r,
            (Expect::CreateRevision(r), Some(s)) => s.create_revision == r,
            (Expect::Lease(l), Some(s)) => s.lease == Some(l),
        }
    }
}

impl Txn {
    /// An empty transaction: no compares, no ops.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds a compare.
    pub fn when(mut self, compare: Compare) -> Txn {
        self.compares.push(compare);
        self
    }

    /// Adds a put without a lease.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Txn {
        self.ops.push(TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        });
        self
    }

    /// Adds a put under `lease`.
    pub fn put_under(
        mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
        lease: LeaseId,
    ) -> Txn {
        self.ops.push(TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Txn {
        self.ops.push(TxnOp::Delete { key: key.into() });
        self
    }

    /// Refuses what no backend commits: an empty key, a key written twice, more than
    /// [`MAX_OPS`] ops or compares.
    pub fn check(&self) -> Result<()> {
        if self.ops.len() > MAX_OPS || self.compares.len() > MAX_OPS {
            return Err(Error::InvalidArgument(format!(
                "a transaction holds at most {MAX_OPS} ops and {MAX_OPS} compares, not {} and {}",
                self.ops.len(),
                self.compares.len()
            )));
        }
        if self.compares.iter().any(|c| c.key.is_empty()) {
            return Err(Error::InvalidArgument(
                "a transaction's compare has an empty key".into(),
            ));
        }
        let mut written = BTreeSet::new();
        for op in &self.ops {
            if op.key().is_empty() {
                return Err(Error::InvalidArgument(
                    "a key must not be empty (in a transaction's op)".into(),
                ));
            }
            if !written.insert(op.key()) {
                return Err(Error::InvalidArgument(format!(
                    "a transaction writes key {:?} twice",
                    op.key()
                )));
            }
        }
        Ok(())
    }

    /// The first compare that does not hold, given each compared key's state, with its
    /// index: what [`Error::TxnRefused`] reports.
    pub(crate) fn first_failed(
        &self,
        state: impl Fn(&str) -> Option<KeyState>,
    ) -> Option<(usize, &Compare, Option<KeyState>)> {
        self.compares.iter().enumerate().find_map(|(i, c)| {
            let s = state(&c.key);
            (!c.holds(s.as_ref())).then_some((i, c, s))
        })
    }

    /// The refusal for a failed compare.
    pub(crate) fn refused(index: usize, compare: &Compare, actual: Option<KeyState>) -> Error {
        Error::TxnRefused {
            index,
            key: compare.key.clone(),
            expected: compare.expect,
            actual,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Absent => write!(f, "absent"),
            Expect::Exists => write!(f, "present"),
            Expect::ModRevision(r) => write!(f, "at mod revision {r}"),
            Expect::CreateRevision(r) => write!(f, "created at revision {r}"),
            Expect::Lease(l) => write!(f, "under lease {l}"),
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "created at revision {}, at mod revision {}",
            self.create_revision, self.mod_revision
        )?;
        match self.lease {
            Some(l) => write!(f, ", under lease {l}"),
            None => write!(f, ", under no lease"),
        }
    }
}

/// How the refusal names the key's actual state.
pub(crate) fn describe(actual: &Option<KeyState>) -> String {
    match actual {
        Some(s) => format!("it is {s}"),
        None => "it is absent".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(create: Revision, modified: Revision, lease: Option<LeaseId>) -> KeyState {
        KeyState {
            create_revision: create,
            mod_revision: modified,
            lease,
        }
    }

    #[test]
    fn compares_hold_as_etcd_evaluates_them() {
        let s = state(3, 7, Some(9));
        let cases = [
            (Compare::absent("k"), None, true),
            (Compare::absent("k"), Some(s), false),
            (Compare::exists("k"), None, false),
            (Compare::exists("k"), Some(s), true),
            (Compare::mod_revision("k", 7), Some(s), true),
            (Compare::mod_revision("k", 3), Some(s), false),
            (Compare::mod_revision("k", 7), None, false),
            (Compare::create_revision("k", 3), Some(s), true),
            (Compare::create_revision("k", 7), Some(s), false),
            (Compare::lease("k", 9), Some(s), true),
            (Compare::lease("k", 8), Some(s), false),
            (Compare::lease("k", 9), None, false),
        ];
        for (compare, state, holds) in cases {
            assert_eq!(
                compare.holds(state.as_ref()),
                holds,
                "{compare:?} on {state:?}"
            );
        }
    }

    #[test]
    fn malformed_transactions_are_refused_with_the_reason() {
        let twice = Txn::new().put("a", "1").delete("a");
        assert!(
            matches!(twice.check(), Err(Error::InvalidArgument(m)) if m.contains("\"a\" twice"))
        );
        let empty = Txn::new().when(Compare::absent(""));
        assert!(matches!(empty.check(), Err(Error::InvalidArgument(m)) if m.contains("empty")));
        let mut big = Txn::new();
        for i in 0..=MAX_OPS {
            big = big.put(format!("k{i}"), "v");
        }
        assert!(matches!(big.check(), Err(Error::InvalidArgument(m)) if m.contains("at most 128")));
        assert!(
            Txn::new()
                .when(Compare::absent("a"))
                .put("a", "1")
                .check()
                .is_ok()
        );
    }

    #[test]
    fn a_refusal_names_the_first_compare_that_failed() {
        let txn = Txn::new()
            .when(Compare::exists("a"))
            .when(Compare::create_revision("leader", 4))
            .when(Compare::absent("b"));
        let (i, c, actual) = txn
            .first_failed(|k| match k {
                "a" => Some(state(2, 2, None)),
                "leader" => Some(state(5, 5, Some(1))),
                _ => None,
            })
            .unwrap();
        assert_eq!((i, c.key.as_str()), (1, "leader"));
        let message = Txn::refused(i, c, actual).to_string();
        assert_eq!(
            message,
            "transaction refused, nothing written: compare 1 failed: key \"leader\" was to be \
             created at revision 4, it is created at revision 5, at mod revision 5, under lease 1"
        );
    }
}
