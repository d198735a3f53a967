//! `FederatedInstanceSet`: what a user submits.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::object::{Kind, Object};
use crate::ordinals::Ordinals;
use crate::redis::RedisSpec;
use crate::status::FederatedInstanceSetStatus;

/// A stateful, role-aware set split across member clusters by ordinal ranges.
pub type FederatedInstanceSet = Object<FederatedInstanceSetSpec, FederatedInstanceSetStatus>;

/// The desired state of a [`FederatedInstanceSet`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederatedInstanceSetSpec {
    /// How many instances run across all clusters.
    pub replicas: u32,
    /// The ordinal space instances are numbered from; default 0, 1, 2, … .
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinals: Option<Ordinals>,
    /// Ordinals that are reserved: never run, never reused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline_ordinals: Vec<u32>,
    /// The pod every instance runs.
    pub template: PodTemplateSpec,
    /// Volumes created per instance, named `<claim>-<set>-<ordinal>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,
    /// The roles instances can hold, e.g. primary and secondary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// How an instance's role is found out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_probe: Option<RoleProbe>,
    /// How changes to the template roll out.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// What happens to volumes when instances are deleted or scaled away.
    #[serde(default)]
    pub persistent_volume_claim_retention_policy: RetentionPolicy,
    /// What happens to an instance whose node is gone.
    #[serde(default)]
    pub instance_rebuild: InstanceRebuild,
    /// Where instances may run and how they are divided between clusters.
    #[serde(default)]
    pub placement: Placement,
    /// Run the instances as one Redis shard (replication, fencing, failover, config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// On the companion set Flotilla runs for a Redis set's sentinels: the shard they
    /// watch. Written by Flotilla, never by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_for: Option<crate::redis::SentinelFor>,
}

impl Kind for FederatedInstanceSetSpec {
    const KIND: &'static str = "FederatedInstanceSet";
    const PLURAL: &'static str = "federatedinstancesets";
    const NAMESPACED: bool = true;
}

/// A named role instances can hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// The role's name, published as the `flotilla.io/role` label.
    pub name: String,
    /// Updates go from the lowest priority to the highest.
    #[serde(default)]
    pub update_priority: i32,
    /// At most one instance holds an exclusive role (a primary); it is switched over
    /// before its holder is updated or removed.
    #[serde(default)]
    pub exclusive: bool,
}

/// How an instance's role is probed: exactly one of `redis` or `exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleProbe {
    /// Send Redis `ROLE` to the instance and map its answer to a role name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisProbe>,
    /// Run a command in the instance; its trimmed output is the role name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Seconds between probes.
    #[serde(default = "default_period")]
    pub period_seconds: u32,
    /// Seconds before a probe counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
}

fn default_period() -> u32 {
    5
}
fn default_timeout() -> u32 {
    1
}

/// A Redis `ROLE` probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisProbe {
    /// The port Redis listens on.
    #[serde(default = "default_redis_port")]
    pub port: u16,
    /// Redis's answer (`master`, `slave`, `sentinel`) → this set's role name.
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
}

fn default_redis_port() -> u16 {
    6379
}

/// A command probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecProbe {
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// How template changes roll out inside a member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// At most this many instances (a count or a percentage) are unavailable at once.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrString,
    /// Order of updates between roles.
    #[serde(default)]
    pub member_update_strategy: MemberUpdateStrategy,
    /// Instances with an ordinal below the partition are not updated.
    #[serde(default)]
    pub partition: u32,
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            max_unavailable: default_max_unavailable(),
            member_update_strategy: MemberUpdateStrategy::default(),
            partition: 0,
        }
    }
}

/// Order of updates between roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MemberUpdateStrategy {
    /// One instance at a time, lowest `updatePriority` first.
    #[default]
    Serial,
    /// Roles in priority order; instances of one role in parallel up to `maxUnavailable`.
    BestEffortParallel,
    /// Any order, up to `maxUnavailable` at once (exclusive roles still switch over first).
    Parallel,
}

/// Whether volumes outlive their instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// When the set is deleted.
    #[serde(default)]
    pub when_deleted: Retention,
    /// When an ordinal leaves a member (scale-in or a move).
    #[serde(default)]
    pub when_scaled: Retention,
}

/// Keep or delete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Retention {
    /// Keep the volume.
    #[default]
    Retain,
    /// Delete the volume.
    Delete,
}

/// Instance rebuild: an instance whose node is gone cannot come back while its volume
/// is bound to that node (local storage). Rebuilding deletes the volume and the
/// instance so it starts elsewhere with an empty volume, and its data comes back from
/// its peers (replication). Opt-in, because it gives up that copy of the data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRebuild {
    /// What to do when an instance's node is gone and it has a node-local volume.
    #[serde(default)]
    pub when_node_lost: NodeLost,
}

/// Choices for an instance stranded on a lost node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodeLost {
    /// Wait for the node to come back; the set reports the instance as stranded.
    #[default]
    Wait,
    /// Delete its node-local volumes and the instance, so it is rebuilt elsewhere.
    Rebuild,
}

/// Where a set may run and how it is divided.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Which clusters may run instances; absent = every registered cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_affinity: Option<ClusterAffinity>,
    /// How replicas are divided; absent = equal weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Per-cluster bounds on instance counts, by cluster name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_cluster: BTreeMap<String, ClusterBounds>,
    /// At least this many clusters run instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_clusters: Option<u32>,
    /// At most this many clusters run instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clusters: Option<u32>,
    /// Spread instances over distinct values of cluster labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<SpreadConstraint>,
    /// At most this many instances of the set on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances_per_node: Option<u32>,
    /// At most this percentage of `replicas` in any one cluster (rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_share_per_cluster: Option<u32>,
    /// Cluster taints this set tolerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// What happens to instances on clusters that stop being eligible.
    #[serde(default)]
    pub failover: Failover,
}

/// Cluster affinity: names and/or a label selector; both must match when both are set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAffinity {
    /// Only these clusters (absent or empty = any name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_names: Vec<String>,
    /// Only clusters whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// How replicas are divided between eligible clusters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Weights {
    /// Fixed weights by cluster name; unlisted clusters have weight 0 and only take
    /// what the weighted clusters have no room for.
    Static(BTreeMap<String, u32>),
    /// Weights computed from live state.
    Dynamic(DynamicWeight),
}

/// Sources of dynamic weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DynamicWeight {
    /// Proportional to each cluster's estimated room for this template.
    AvailableCapacity,
}

/// Bounds on one cluster's instance count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterBounds {
    /// At least this many (when the cluster is eligible and has room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// At most this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

/// Spread over distinct values of a cluster label (e.g. `region`). Clusters without the
/// label get no new instances while the constraint is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpreadConstraint {
    /// The cluster label to spread by.
    pub by_label: String,
    /// Instances run in at least this many distinct label values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_groups: Option<u32>,
    /// Instances run in at most this many distinct label values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_groups: Option<u32>,
}

/// Failover: what happens to instances on a cluster that is no longer eligible (not
/// ready, outside the affinity, or tainted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// The policy; default `Keep`.
    #[serde(default)]
    pub policy: FailoverPolicy,
}

/// Failover policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailoverPolicy {
    /// Instances stay where they are (the data plane keeps running them); the status
    /// says why they are not moved. A `NoExecute` taint still moves them.
    #[default]
    #[serde(alias = "Never")]
    Keep,
    /// Instances move to eligible clusters, keeping their ordinals where possible.
    #[serde(alias = "Move")]
    Reschedule,
}

impl FailoverPolicy {
    /// The name users write.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverPolicy::Keep => "Keep",
            FailoverPolicy::Reschedule => "Reschedule",
        }
    }
}
