//! What a member backend reports about one InstanceSet: its instances and volumes.

use serde::{Deserialize, Serialize};

/// Everything the planner knows about the live state of one set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Instances of the set (found by the set label), any ordinal.
    pub instances: Vec<Instance>,
    /// Volumes of the set.
    pub volumes: Vec<Volume>,
    /// The last switchover the controller ran, if it is still relevant.
    pub last_switchover: Option<SwitchoverOutcome>,
}

/// One instance (a pod, in Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its ordinal.
    pub ordinal: u32,
    /// The template revision it was made from (label).
    pub revision: String,
    /// The template shape it was made from (label); see [`crate::Revision`].
    pub shape: String,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Passing its readiness checks.
    pub ready: bool,
    /// Being deleted (a deletion is in progress; wait for it).
    pub deleting: bool,
    /// The node it runs on.
    pub node: Option<String>,
    /// That node is gone.
    #[serde(default)]
    pub node_lost: bool,
    /// The role label it carries now.
    pub role: Option<String>,
    /// The probe-result version the role label was set from.
    pub role_version: u64,
    /// The newest role probe result.
    pub probe: Option<ProbeResult>,
    /// Its address, `host:port` of the port named `redis` (else the first container
    /// port), once it has one.
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Lifecycle phases, as Kubernetes names pod phases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Created, not running yet.
    #[default]
    Pending,
    /// Running.
    Running,
    /// Exited for good or lost: it must be recreated.
    Failed,
}

impl Phase {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Failed => "Failed",
        }
    }
}

/// A role probe's answer. Versions only grow: a result with a lower version than the
/// one a label was set from is stale and never applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The role name (already mapped to the set's role names), or none.
    pub role: Option<String>,
    /// Monotonic version of this result.
    pub version: u64,
}

/// A volume (a PersistentVolumeClaim, in Kubernetes) of one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The claim template's name.
    pub claim: String,
    /// The ordinal it belongs to.
    pub ordinal: u32,
    /// Being deleted.
    pub deleting: bool,
    /// Bound to one node (local storage): its instance can only run there.
    #[serde(default)]
    pub node_local: bool,
}

/// How the last switchover ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverOutcome {
    /// The exclusive role moved.
    pub role: String,
    /// Its holder before.
    pub from: u32,
    /// The instance asked to take it.
    pub to: u32,
    /// Whether it worked.
    pub succeeded: bool,
    /// What the switchover said.
    pub message: String,
    /// The set's template revision when it ran: a failure blocks the rollout of that
    /// revision only, so changing the template again allows a new attempt.
    pub revision: String,
}
