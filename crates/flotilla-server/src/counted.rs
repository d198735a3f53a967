//! The store as the server uses it, counting every write it makes (puts and deletes,
//! and the bytes of their keys and values) into the metrics: what a converged set costs
//! (nothing) and what a change costs are read from `/metrics`
//! (`store_writes`, `store_write_bytes`), by the fleet benchmark and by operators.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_store::{
    Committed, Condition, KeyValue, Lease, LeaseId, Listing, Result, Revision, Store, Txn, TxnOp,
    WatchStream,
};

use crate::metrics::Metrics;

/// A [`Store`] that counts the writes made through it.
#[derive(Debug)]
pub struct Counted {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Counted {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Counted {
        Counted { inner, metrics }
    }

    fn count(&self, bytes: usize) {
        self.metrics.store_writes.inc();
        self.metrics.store_write_bytes.inc_by(bytes as u64);
    }
}

#[async_trait::async_trait]
impl Store for Counted {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
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
        let bytes = key.len() + value.len();
        let r = self.inner.put(key, value, condition, lease).await?;
        tracing::trace!(key, bytes, "store put");
        self.count(bytes);
        Ok(r)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Option<Revision>> {
        let r = self.inner.delete(key, expected).await?;
        if r.is_some() {
            self.count(key.len());
        }
        Ok(r)
    }

    async fn txn(&self, txn: Txn) -> Result<Committed> {
        let sizes: Vec<usize> = txn
            .ops
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, .. } => key.len() + value.len(),
                TxnOp::Delete { key } => key.len(),
            })
            .collect();
        let committed = self.inner.txn(txn).await?;
        for (bytes, changed) in sizes.iter().zip(&committed.changed) {
            if *changed {
                self.count(*bytes);
            }
        }
        Ok(committed)
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
