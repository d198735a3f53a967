//! Fenced writes: the federation controller's store, whose every write commits only
//! while this server still holds the lead it had when the controller started.
//!
//! ```text
//!   elector: put /flotilla/leader (Absent, our lease) ─▶ Term { create_revision, lease }
//!                │ published on `terms` (None when it steps down)
//!                ▼
//!   controller run: pin(term) ─▶ list, watch, reconcile ─▶ Fenced::put/delete/txn
//!                                                            │ one Txn:
//!                                    create_revision(/flotilla/leader) == term's ─┐
//!                                    + the write's own condition                  ├▶ commit
//!                                    + the write                                  ┘  or nothing
//!                  term ends (published value differs) ─▶ the run stops, unpin
//! ```
//!
//! A leader that stalls past its lease (a stopped process, a long pause) and wakes up
//! may still believe it leads for a moment: its timers have not fired yet, its cache
//! is old. The store decides instead: the leader key it created is gone (its lease
//! ended) or was created again by another server at a later revision, so the compare
//! on the key's create revision fails and nothing of the write happens. A new term of
//! the same server has another create revision, so a controller run that outlived its
//! term cannot write in the next one either: each run lists the store afresh.
//!
//! Reads pass through unfenced. Writes outside a pinned term are refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_store::{
    Committed, Compare, Condition, Error, Expect, Lease, LeaseId, Listing, Result, Revision, Store,
    Txn, TxnOp, WatchStream,
};
use tokio::sync::watch;

use crate::keys;
use crate::metrics::Metrics;

/// One term of this server as leader: the leader key it created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// The revision that created `/flotilla/leader` for this term.
    pub create_revision: Revision,
    /// The lease the key lives under.
    pub lease: LeaseId,
}

/// The controller's store: reads pass through, every write is one transaction fenced
/// on the pinned term.
#[derive(Debug)]
pub struct Fenced {
    inner: Arc<dyn Store>,
    /// The elector's current term (`None` while it does not lead).
    terms: watch::Receiver<Option<Term>>,
    /// The term the controller's current run writes under.
    pinned: Mutex<Option<Term>>,
    metrics: Arc<Metrics>,
}

impl Fenced {
    pub fn new(
        inner: Arc<dyn Store>,
        terms: watch::Receiver<Option<Term>>,
        metrics: Arc<Metrics>,
    ) -> Fenced {
        Fenced {
            inner,
            terms,
            pinned: Mutex::new(None),
            metrics,
        }
    }

    /// Waits until this server leads and pins that term for the writes to come; `None`
    /// when the elector is gone.
    pub async fn pin(&self) -> Option<Term> {
        let mut terms = self.terms.clone();
        let term = (*terms.wait_for(Option::is_some).await.ok()?)?;
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) = Some(term);
        Some(term)
    }

    /// Resolves once `term` is no longer the elector's (it stepped down, or leads in a
    /// new term).
    pub async fn ended(&self, term: Term) {
        let mut terms = self.terms.clone();
        let _ = terms.wait_for(|t| *t != Some(term)).await;
    }

    /// No more writes until the next [`Fenced::pin`].
    pub fn unpin(&self) {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn term(&self, key: &str) -> Result<Term> {
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "write of {key:?} refused: this server's federation controller holds no \
                     leader term"
                ))
            })
    }

    /// Runs `txn` behind the fence (the fence is compare 0; the caller's compares follow
    /// from 1). A refused fence is counted and logged here.
    async fn fenced(&self, what: &str, mut txn: Txn) -> Result<Committed> {
        let term = self.term(what)?;
        txn.compares.insert(
            0,
            Compare::create_revision(keys::LEADER, term.create_revision),
        );
        match self.inner.txn(txn).await {
            Err(Error::TxnRefused {
                index: 0, actual, ..
            }) => {
                self.metrics.fenced_writes_refused.inc();
                tracing::warn!(key = %what, term = term.create_revision, leader_key = ?actual, "write refused: this server no longer holds the lead it had");
                Err(Error::TxnRefused {
                    index: 0,
                    key: keys::LEADER.to_string(),
                    expected: Expect::CreateRevision(term.create_revision),
                    actual,
                })
            }
            Err(Error::TxnRefused {
                index,
                key,
                expected,
                actual,
            }) => Err(Error::TxnRefused {
                index: index - 1,
                key,
                expected,
                actual,
            }),
            other => other,
        }
    }
}

/// When the write's own compare on `key` failed (not the fence, which is on the leader
/// key), the error a plain put or delete would have given.
fn unfenced_refusal(key: &str, condition: Condition, error: Error) -> Error {
    match (error, condition) {
        (
            Error::TxnRefused {
                key: k,
                actual: Some(actual),
                ..
            },
            Condition::Absent,
        ) if k == key => Error::AlreadyExists {
            key: k,
            mod_revision: actual.mod_revision,
        },
        (Error::TxnRefused { key: k, actual, .. }, Condition::ModRevision(expected))
            if k == key =>
        {
            Error::Conflict {
                key: k,
                expected,
                actual: actual.map(|a| a.mod_revision),
            }
        }
        (other, _) => other,
    }
}

fn compare(key: &str, condition: Condition) -> Option<Compare> {
    match condition {
        Condition::Any => None,
        Condition::Absent => Some(Compare::absent(key)),
        Condition::ModRevision(r) => Some(Compare::mod_revision(key, r)),
    }
}

#[async_trait::async_trait]
impl Store for Fenced {
    async fn get(&self, key: &str) -> Result<Option<flotilla_store::KeyValue>> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.inner.list(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        let mut txn = Txn::new();
        txn.compares.extend(compare(key, condition));
        txn.ops.push(TxnOp::Put {
            key: key.to_string(),
            value,
            lease,
        });
        match self.fenced(key, txn).await {
            Ok(committed) => committed
                .revision
                .ok_or_else(|| Error::Corrupt(format!("a fenced put of {key:?} took no revision"))),
            Err(e) => Err(unfenced_refusal(key, condition, e)),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Option<Revision>> {
        let condition = expected.map_or(Condition::Any, Condition::ModRevision);
        let mut txn = Txn::new();
        txn.compares.extend(compare(key, condition));
        txn.ops.push(TxnOp::Delete {
            key: key.to_string(),
        });
        match self.fenced(key, txn).await {
            Ok(committed) => Ok(committed.revision),
            Err(e) => Err(unfenced_refusal(key, condition, e)),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<Committed> {
        let what = txn
            .ops
            .first()
            .map_or_else(|| "a transaction".to_string(), |op| op.key().to_string());
        self.fenced(&what, txn).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        self.inner.watch(prefix, from).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.revoke_lease(lease).await
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }
}

#[cfg(test)]
mod tests {
    use flotilla_store::testing::EtcdServer;
    use flotilla_store::{EtcdOptions, EtcdStore};

    use super::*;

    async fn lead(store: &dyn Store) -> Term {
        let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        let rev = store
            .put(
                keys::LEADER,
                Bytes::from_static(b"{}"),
                Condition::Absent,
                Some(lease.id),
            )
            .await
            .unwrap();
        Term {
            create_revision: rev,
            lease: lease.id,
        }
    }

    /// A real etcd: the leader key passes to another server while this one's fenced
    /// store still holds its old term, as a leader that stalled past its lease would.
    #[tokio::test]
    async fn writes_commit_only_within_the_term_they_were_pinned_in() {
        let etcd = EtcdServer::start().await;
        let inner: Arc<dyn Store> = Arc::new(
            EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
                .await
                .unwrap(),
        );
        let metrics = Arc::new(Metrics::new());
        let (terms_tx, terms) = watch::channel(None);
        let fenced = Fenced::new(inner.clone(), terms, metrics.clone());
        let slice = "/flotilla/slices/eu-1/default/cache";

        // Not pinned: nothing is written.
        let err = fenced
            .put(slice, Bytes::from_static(b"0"), Condition::Any, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("holds no leader term"), "{err}");

        let first = lead(&*inner).await;
        terms_tx.send_replace(Some(first));
        assert_eq!(fenced.pin().await, Some(first));
        let r = fenced
            .put(slice, Bytes::from_static(b"1"), Condition::Absent, None)
            .await
            .unwrap();
        // The write's own condition still reads as a plain put's would.
        let err = fenced
            .put(slice, Bytes::from_static(b"x"), Condition::Absent, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::AlreadyExists { ref key, mod_revision } if key == slice && mod_revision == r),
            "{err:?}"
        );
        let err = fenced
            .put(
                slice,
                Bytes::from_static(b"x"),
                Condition::ModRevision(r - 1),
                None,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict { expected, actual: Some(a), .. } if expected == r - 1 && a == r),
            "{err:?}"
        );
        let r = fenced
            .put(
                slice,
                Bytes::from_static(b"2"),
                Condition::ModRevision(r),
                None,
            )
            .await
            .unwrap();

        // The lease lapses and another server leads: the key has a new create revision.
        inner.revoke_lease(first.lease).await.unwrap();
        let second = lead(&*inner).await;
        let err = fenced
            .put(
                slice,
                Bytes::from_static(b"stale"),
                Condition::ModRevision(r),
                None,
            )
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, Error::TxnRefused { index: 0, ref key, expected: Expect::CreateRevision(c), actual: Some(a) }
                if key == keys::LEADER && c == first.create_revision && a.create_revision == second.create_revision),
            "{err:?}"
        );
        assert!(message.contains("/flotilla/leader"), "{message}");
        let err = fenced.delete(slice, None).await.unwrap_err();
        assert!(matches!(err, Error::TxnRefused { index: 0, .. }), "{err:?}");
        let err = fenced.txn(Txn::new().delete(slice)).await.unwrap_err();
        assert!(matches!(err, Error::TxnRefused { index: 0, .. }), "{err:?}");
        let kv = inner.get(slice).await.unwrap().unwrap();
        assert_eq!(
            (kv.value.as_ref(), kv.mod_revision),
            (&b"2"[..], r),
            "nothing written"
        );
        assert_eq!(metrics.fenced_writes_refused.get(), 3);

        // The elector's new term ends the old one; the next run writes in the new one.
        terms_tx.send_replace(Some(second));
        fenced.ended(first).await;
        fenced.unpin();
        assert_eq!(fenced.pin().await, Some(second));
        assert!(fenced.delete(slice, Some(r)).await.unwrap().is_some());

        // A key deleted (lease gone, nobody leads): refused too.
        inner.revoke_lease(second.lease).await.unwrap();
        let err = fenced
            .put(slice, Bytes::from_static(b"3"), Condition::Any, None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::TxnRefused {
                    index: 0,
                    actual: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(inner.get(slice).await.unwrap(), None);
    }
}
