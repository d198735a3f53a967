//! Deleting a cluster: drain it first, then remove its records in one transaction.
//!
//! ```text
//!   delete cluster eu-1
//!     │ it holds slices?   no ──────────────────────────────────────────────┐
//!     ▼ yes                                                                 │
//!   taint it flotilla.io/deleting:NoExecute (CAS) ─▶ the controller moves its │
//!     ordinals away: its slices shrink, its agent receives that, its member │
//!     removes the instances and reports it, the controller deletes the      │
//!     emptied slices (the agent receives those deletions)                   │
//!     │ until /flotilla/slices/eu-1/ is empty, or the timeout:               │
//!     │   FailedPrecondition naming each set still there and why            │
//!     ▼                                                                     ▼
//!   one txn: delete the cluster, its token, its status and its lease key (only if
//!   the cluster still exists): the agent's token stops working only now
//! ```
//!
//! `force` skips the drain: the records go at once, the controller places the
//! cluster's ordinals elsewhere without its member's word, and the member keeps running
//! its instances until its agent is stopped (it can no longer connect).
//!
//! The drain uses what the controller already does for a live member with a
//! `NoExecute` taint, so no ordinal runs in two clusters while a cluster drains: its
//! ordinals join another member only once it has said it removed them. A member whose
//! agent is not connected cannot say so, and the drain times out saying that.

use std::time::Duration;

use bytes::Bytes;
use flotilla_api::{Cluster, InstanceSet};
use flotilla_store::{Compare, Condition, Error as StoreError, Store, Txn};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Taint;
use tokio::time::Instant;
use tonic::Status;

use crate::keys;
use crate::store_status;

/// How long a delete waits for a cluster to drain unless the request says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The taint that drains a cluster being deleted.
pub const TAINT_KEY: &str = "flotilla.io/deleting";

/// Drains cluster `name` (unless `force`) and deletes its records. `Ok(None)`: there
/// is no such cluster; `Ok(Some(generation))`: deleted, with the generation it had.
pub async fn delete_cluster(
    store: &dyn Store,
    name: &str,
    force: bool,
    timeout: Duration,
) -> Result<Option<Option<i64>>, Status> {
    let key = keys::cluster(name);
    let Some(kv) = store.get(&key).await.map_err(store_status)? else {
        return Ok(None);
    };
    let generation = serde_json::from_slice::<Cluster>(&kv.value)
        .ok()
        .and_then(|c| c.metadata.generation);
    if !force {
        drain(store, name, timeout).await?;
    }
    // Everything of the cluster at once, and only while it exists: a concurrent delete
    // finds it gone, never half of it.
    let txn = Txn::new()
        .when(Compare::exists(key.as_str()))
        .delete(key.as_str())
        .delete(keys::token(name))
        .delete(keys::cluster_status(name))
        .delete(keys::alive(name));
    match store.txn(txn).await {
        Ok(_) => Ok(Some(generation)),
        Err(StoreError::TxnRefused { .. }) => Ok(None),
        Err(e) => Err(store_status(e)),
    }
}

/// Taints the cluster and waits until it holds no slice.
async fn drain(store: &dyn Store, name: &str, timeout: Duration) -> Result<(), Status> {
    let deadline = Instant::now() + timeout;
    let prefix = keys::slices_of(name);
    let mut tainted = false;
    loop {
        let listing = store.list(&prefix).await.map_err(store_status)?;
        if listing.items.is_empty() {
            return Ok(());
        }
        if !tainted {
            taint(store, name).await?;
            tainted = true;
            tracing::info!(cluster = %name, slices = listing.items.len(), "draining the cluster before deleting it");
        }
        let mut watch = store
            .watch(&prefix, listing.revision + 1)
            .await
            .map_err(store_status)?;
        // Any change under the prefix: look again.
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(_) => {}
            Err(_) => return Err(not_drained(store, name, timeout, &listing.items).await),
        }
    }
}

/// Adds the drain taint to the cluster (compare-and-swap, again on a conflict).
async fn taint(store: &dyn Store, name: &str) -> Result<(), Status> {
    let key = keys::cluster(name);
    for _ in 0..10 {
        let Some(kv) = store.get(&key).await.map_err(store_status)? else {
            return Err(Status::not_found(format!("clusters {name:?} not found")));
        };
        let mut cluster: Cluster = serde_json::from_slice(&kv.value).map_err(|e| {
            Status::internal(format!("the stored cluster {name:?} does not decode: {e}"))
        })?;
        if cluster.spec.taints.iter().any(|t| t.key == TAINT_KEY) {
            return Ok(());
        }
        cluster.spec.taints.push(Taint {
            key: TAINT_KEY.into(),
            value: Some("true".into()),
            effect: "NoExecute".into(),
            time_added: None,
        });
        cluster.metadata.generation = Some(cluster.metadata.generation.unwrap_or(0) + 1);
        let bytes = serde_json::to_vec(&cluster).map_err(|e| Status::internal(e.to_string()))?;
        match store
            .put(
                &key,
                Bytes::from(bytes),
                Condition::ModRevision(kv.mod_revision),
                None,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_status(e)),
        }
    }
    Err(Status::aborted(format!(
        "cluster {name:?} kept changing while it was being tainted for deletion; try again"
    )))
}

/// What still holds the cluster, and why, as the delete's refusal.
async fn not_drained(
    store: &dyn Store,
    name: &str,
    timeout: Duration,
    slices: &[flotilla_store::KeyValue],
) -> Status {
    let mut held = Vec::new();
    for kv in slices {
        let set = kv
            .key
            .strip_prefix(&keys::slices_of(name))
            .unwrap_or(&kv.key);
        let ordinals = serde_json::from_slice::<InstanceSet>(&kv.value)
            .map(|s| s.spec.ordinals.to_vec())
            .unwrap_or_default();
        let report = store
            .get(&keys::report(name, set))
            .await
            .ok()
            .flatten()
            .and_then(|r| flotilla_api::report::Report::decode(&r.value).ok())
            .map(|r| r.status);
        let reported = match report {
            Some(r) if !r.leaving.is_empty() => format!(
                "its member reports {} instances, ordinals {:?} still being removed",
                r.replicas + u32::try_from(r.leaving.len()).unwrap_or(u32::MAX),
                r.leaving
            ),
            Some(r) => format!("its member reports {} instances", r.replicas),
            None => "no report from its member".into(),
        };
        held.push(format!("{set} (slice ordinals {ordinals:?}; {reported})"));
    }
    let agent = match store.get(&keys::alive(name)).await {
        Ok(Some(_)) => "its agent is connected, so its member is still removing them".to_string(),
        _ => "its agent is not connected, so its member cannot confirm that it removed them"
            .to_string(),
    };
    Status::failed_precondition(format!(
        "cluster {name:?} did not drain within {}s: it still holds {}; {agent}. Its token \
         still works and nothing else was deleted: run the delete again to keep waiting \
         (--timeout-seconds), or add --force to delete it now (its instances are then \
         placed elsewhere without its member's word and keep running in it until its agent \
         is stopped)",
        timeout.as_secs(),
        held.join(", ")
    ))
}
