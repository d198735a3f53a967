//! Status types: written by Flotilla, read by users.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The aggregated state of a federated set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederatedInstanceSetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Instances placed in some cluster.
    #[serde(default)]
    pub replicas: u32,
    /// Instances reported ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Instances no cluster could take.
    #[serde(default)]
    pub unschedulable: u32,
    /// Per cluster: its ordinals and counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterPlacementStatus>,
    /// Per ordinal: where it runs, its role, whether it is ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// A Redis set's primary: the instance every other one replicates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimaryStatus>,
    /// Scheduled, Available, Progressing, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One cluster's share of a federated set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlacementStatus {
    /// The cluster's name.
    pub cluster: String,
    /// The ordinals assigned to it.
    pub ordinals: Vec<u32>,
    /// How many of them are ready.
    #[serde(default)]
    pub ready_replicas: u32,
}

/// One instance as its member reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// The instance's ordinal.
    pub ordinal: u32,
    /// The cluster it runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `Pending`, `Running`, `Failed`, … .
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Its current role, if probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Whether it passes its readiness checks.
    #[serde(default)]
    pub ready: bool,
    /// The node it runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The template revision it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Its address, `host:port` of the port named `redis` (else the first container
    /// port), as its member announces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What Redis itself says, for a Redis set's running instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisInstanceStatus>,
}

/// A Redis set's primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryStatus {
    /// Its ordinal.
    pub ordinal: u32,
    /// The member it runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Its address, `host:port`.
    pub endpoint: String,
}

/// One Redis instance as `INFO` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisInstanceStatus {
    /// Redis's own role: `master` or `slave`.
    pub role: String,
    /// For a replica: the `host:port` it replicates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// For a replica: its link to that primary is up.
    #[serde(default)]
    pub link_up: bool,
    /// For a replica without a working link: the replication offset it stopped at,
    /// which the federation compares to choose who takes over. 0 otherwise (it moves
    /// with every write, and a report that changed with every write would be a write
    /// storm).
    #[serde(default)]
    pub offset: u64,
    /// Its dataset is empty (no key in any database).
    #[serde(default)]
    pub empty: bool,
    /// For a primary: the replicas connected to it, `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The Redis process's `run_id` (another one: it restarted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// The user's parameters as the instance runs them (`CONFIG GET`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: std::collections::BTreeMap<String, String>,
}

/// The state of one member's slice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Instances that exist.
    #[serde(default)]
    pub replicas: u32,
    /// Instances that are ready.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Instances running the current template revision.
    #[serde(default)]
    pub updated_replicas: u32,
    /// The current template revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Per ordinal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// Ordinals outside the slice whose instances still exist here (being removed).
    /// The federation gives such an ordinal to another member only once it is gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<u32>,
    /// Conditions with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A Kubernetes-style condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Scheduled`, `Available`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase machine-readable reason.
    #[serde(default)]
    pub reason: String,
    /// What happened and what to do about it.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}
