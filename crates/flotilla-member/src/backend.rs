//! The one trait every member backend implements: Kubernetes, or the simulated member.

use std::future::Future;

use flotilla_api::{CapacityModel, InstanceSet, InstanceSetStatus};
use flotilla_instanceset::{Action, Observed};

use std::time::Duration;

use crate::redis::Reply;
use crate::{Error, Result};

/// Whether a request changed anything. Converged sets must cost zero writes, so every
/// backend says when an action's end state already held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Something was written.
    Wrote,
    /// The end state already held; nothing was written.
    Unchanged,
}

/// A member cluster as the controller sees it. Every method is idempotent.
pub trait Backend: Send + Sync + 'static {
    /// The set's instances and volumes as they are now (probe results not included:
    /// the controller keeps those).
    fn observe(&self, set: &InstanceSet) -> impl Future<Output = Result<Observed>> + Send;

    /// Applies one planned action. A failed switchover is `Err(Error::Switchover)`.
    fn apply(
        &self,
        set: &InstanceSet,
        action: &Action,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// Writes the set's status.
    fn write_status(
        &self,
        set: &InstanceSet,
        status: &InstanceSetStatus,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// Asks one instance for its role (already mapped to the set's role names);
    /// `Ok(None)` when it reports none.
    fn probe_role(
        &self,
        set: &InstanceSet,
        ordinal: u32,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Free capacity, bucketed into node groups, for the federation's scheduler.
    fn capacity(&self) -> impl Future<Output = Result<CapacityModel>> + Send;

    /// Sends one command to the Redis port of instance `ordinal` of a `spec.redis` set
    /// and reads its reply, within `timeout`. The Redis engine runs everything it does
    /// to instances through this (probes, replication, switchovers, config).
    fn redis(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        args: &[&str],
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply>> + Send {
        let _ = (args, timeout);
        let instance = format!("{}-{ordinal}", set.name());
        async move {
            Err(Error::Unsupported(format!(
                "{instance}: this member cannot reach Redis instances"
            )))
        }
    }

    /// Sends one command to `endpoint`, an address an instance announced (a sentinel of
    /// the set's shard, perhaps in another member), and reads its reply within `timeout`.
    /// By default a direct TCP connection; a backend that cannot reach its own
    /// instances' addresses directly (the Kubernetes agent outside the cluster, through
    /// port-forward) maps the addresses of its own instances to them.
    fn redis_at(
        &self,
        set: &InstanceSet,
        endpoint: &str,
        args: &[&str],
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply>> + Send {
        let _ = set;
        crate::redis::command(endpoint, args, timeout)
    }
}
