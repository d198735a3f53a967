//! What a member does with the slices the server gives it.
//!
//! The agent tells a [`Member`] what to hold, and nothing else: `replace` for a
//! Snapshot, `put` and `delete` for Changes. These return at once; the member converges
//! on what it holds in the background (creating instances, tearing down removed sets)
//! and publishes each held slice's status on a `watch` channel, from which the agent
//! sends Reports. So a slow or unreachable member cluster never stalls the stream, and
//! a crash between two writes costs nothing but a repeated pass.

use std::collections::BTreeMap;
use std::future::Future;

use flotilla_api::{CapacityModel, InstanceSet, InstanceSetStatus};
use tokio::sync::watch;

use crate::Result;

/// The slices a member holds, by `namespace/name` ([`slice_key`]), as received.
pub type Held = BTreeMap<String, InstanceSet>;

/// The status of every held slice that has one, by `namespace/name`.
pub type Statuses = BTreeMap<String, InstanceSetStatus>;

/// The key of a slice: `namespace/name`.
pub fn slice_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The key of a set: `namespace/name`, namespace `default` when it has none.
pub(crate) fn set_key(set: &InstanceSet) -> String {
    slice_key(set.namespace().unwrap_or("default"), set.name())
}

/// A member cluster as the agent drives it. Implementations must be cheap to call from
/// the session loop: `replace`, `put` and `delete` only record what to hold.
pub trait Member: Send + Sync + 'static {
    /// Holds exactly `slices` (a Snapshot): every slice held that is not among them is
    /// deleted, except those named in `undecoded` (`namespace/name` of the snapshot's
    /// slices that did not decode): a slice the agent cannot read is unknown, not gone,
    /// so what it holds for it stays as it is.
    fn replace(&self, slices: Vec<InstanceSet>, undecoded: &[String]);

    /// Holds `slice`, replacing the slice of the same `namespace/name`.
    fn put(&self, slice: InstanceSet);

    /// Stops holding the slice `namespace/name`: its instances go away, its volumes
    /// per its `persistentVolumeClaimRetentionPolicy.whenDeleted`.
    fn delete(&self, namespace: &str, name: &str);

    /// The status of every held slice, updated whenever one changes.
    fn statuses(&self) -> watch::Receiver<Statuses>;

    /// The member's free capacity, for the heartbeat.
    fn capacity(&self) -> impl Future<Output = Result<CapacityModel>> + Send;

    /// The member's Kubernetes version (`v1.33.1`); empty for a simulated member.
    fn kubernetes_version(&self) -> impl Future<Output = Result<String>> + Send;
}
