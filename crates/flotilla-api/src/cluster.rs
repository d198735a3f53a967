//! `Cluster`: a registered member cluster and its compact capacity model.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::object::{Kind, Object};
use crate::quantity::Amount;

/// A member cluster.
pub type Cluster = Object<ClusterSpec, ClusterStatus>;

/// What the platform team declares about a member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Taints: `NoSchedule` and `NoExecute` keep new instances away unless tolerated
    /// (`NoExecute` also moves existing ones); `PreferNoSchedule` makes the cluster a
    /// last choice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

impl Kind for ClusterSpec {
    const KIND: &'static str = "Cluster";
    const PLURAL: &'static str = "clusters";
    const NAMESPACED: bool = false;
}

/// What the member's agent reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// True while the agent's heartbeat is current.
    #[serde(default)]
    pub ready: bool,
    /// Why the cluster is not ready (e.g. `HeartbeatExpired`), when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The member's Kubernetes version, if it is a Kubernetes cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// RFC 3339 time of the last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    /// Free resources, bucketed; absent = unknown (treated as unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityModel>,
    /// `Ready`: `True` while the agent's heartbeat is current, `Unknown` once it
    /// lapsed (the cluster gets no new instances; its running ones are left alone),
    /// `False` before its agent first connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::status::Condition>,
}

/// Free capacity as node groups, so a 5,000-node cluster stays a few dozen rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityModel {
    /// Groups of nodes with the same free resources.
    #[serde(default)]
    pub node_groups: Vec<NodeGroup>,
}

impl CapacityModel {
    /// Buckets nodes by identical free resources: one node group per distinct set of
    /// free amounts, in a stable order. Members call this to report their capacity.
    pub fn from_nodes(nodes: impl IntoIterator<Item = BTreeMap<String, Amount>>) -> CapacityModel {
        let mut groups: BTreeMap<BTreeMap<String, Amount>, u32> = BTreeMap::new();
        for free in nodes {
            *groups.entry(free).or_default() += 1;
        }
        let node_groups = groups
            .into_iter()
            .map(|(free, count)| NodeGroup {
                count,
                free: free
                    .into_iter()
                    .map(|(r, a)| (r, Quantity(a.to_string())))
                    .collect(),
            })
            .collect();
        CapacityModel { node_groups }
    }
}

/// `count` nodes, each with `free` resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroup {
    /// How many nodes.
    pub count: u32,
    /// Free resources on each node: `cpu`, `memory`, `pods`, extended resources such
    /// as `flotilla.io/network-mbps`. A resource that is absent is not there (0 free);
    /// an absent `pods` does not limit.
    #[serde(default)]
    pub free: BTreeMap<String, Quantity>,
}
