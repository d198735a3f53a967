//! `InstanceSet`: one member's slice of a federated set.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::object::{Kind, Object};
use crate::ordinals::Ordinals;
use crate::redis::RedisSpec;
use crate::set::{
    FederatedInstanceSetSpec, InstanceRebuild, RetentionPolicy, Role, RoleProbe, UpdateStrategy,
};
use crate::status::InstanceSetStatus;

/// The instances of one set that run in one member: the set's template with the
/// member's `ordinals` instead of `replicas`.
pub type InstanceSet = Object<InstanceSetSpec, InstanceSetStatus>;

/// The desired state of an [`InstanceSet`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSetSpec {
    /// Exactly the ordinals this member runs.
    pub ordinals: Ordinals,
    /// The pod every instance runs.
    pub template: PodTemplateSpec,
    /// Volumes per instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<PersistentVolumeClaim>,
    /// Roles instances can hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// How roles are probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_probe: Option<RoleProbe>,
    /// How template changes roll out.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// Volume retention.
    #[serde(default)]
    pub persistent_volume_claim_retention_policy: RetentionPolicy,
    /// What happens to an instance whose node is gone.
    #[serde(default)]
    pub instance_rebuild: InstanceRebuild,
    /// At most this many instances on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances_per_node: Option<u32>,
    /// The Redis engine's settings, with `minReplicasToWrite` resolved for the whole
    /// federated set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// The shard a companion sentinel set watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_for: Option<crate::redis::SentinelFor>,
}

/// Annotation on a member's slice when the set's exclusive roles (its primary) live in
/// another member cluster, named by the value: this member must not elect a holder of
/// its own. The federation sets it on every slice but the one of the cluster that
/// holds (or, with no holder yet, is to hold) the exclusive roles, so a federated set
/// has one primary, not one per member. A Kubernetes member's real replication decides
/// roles there; its probes report what is true, and two holders show as Degraded.
pub const EXCLUSIVE_ROLES_ELSEWHERE: &str = "flotilla.io/exclusive-roles-elsewhere";

/// Whether `set`'s exclusive roles are held in another member (see
/// [`EXCLUSIVE_ROLES_ELSEWHERE`]).
pub fn exclusive_roles_elsewhere(set: &InstanceSet) -> bool {
    set.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(EXCLUSIVE_ROLES_ELSEWHERE))
}

impl Kind for InstanceSetSpec {
    const KIND: &'static str = "InstanceSet";
    const PLURAL: &'static str = "instancesets";
    const NAMESPACED: bool = true;
}

impl FederatedInstanceSetSpec {
    /// The names of its exclusive roles (one holder each).
    pub fn exclusive_roles(&self) -> impl Iterator<Item = &str> {
        self.roles
            .iter()
            .filter(|r| r.exclusive)
            .map(|r| r.name.as_str())
    }

    /// The slice of this set that runs `ordinals` in one member.
    pub fn slice(&self, ordinals: &[u32]) -> InstanceSetSpec {
        InstanceSetSpec {
            ordinals: Ordinals::compact(ordinals),
            template: self.template.clone(),
            volume_claim_templates: self.volume_claim_templates.clone(),
            roles: self.roles.clone(),
            role_probe: self.role_probe.clone(),
            update_strategy: self.update_strategy.clone(),
            persistent_volume_claim_retention_policy: self
                .persistent_volume_claim_retention_policy
                .clone(),
            instance_rebuild: self.instance_rebuild,
            max_instances_per_node: self.placement.max_instances_per_node,
            redis: self.redis.as_ref().map(|r| RedisSpec {
                min_replicas_to_write: Some(r.min_replicas_to_write_for(self.replicas)),
                shard_replicas: Some(self.replicas),
                ..r.clone()
            }),
            sentinel_for: self.sentinel_for.clone(),
        }
    }
}
