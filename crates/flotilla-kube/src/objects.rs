//! The Kubernetes objects of an InstanceSet, as pure functions: the Pod and PVCs an
//! ordinal becomes, what a listed Pod or PVC tells the planner, and the patches of an
//! in-place update or a role change.
//!
//! ```text
//!   InstanceSet + ordinal ──pod()/claim()──▶ Pod `<set>-<ordinal>`, PVC `<claim>-<set>-<ordinal>`
//!   listed Pod / PVC ──instance()/volume()──▶ flotilla_instanceset::{Instance, Volume}
//!   InstanceSet + Pod ──in_place_patch()──▶ strategic merge patch, or None when current
//!   Redis set announcing Hostname ──headless_service()──▶ Service `<set>` (clusterIP None)
//! ```
//!
//! # In-place updates
//! The planner counts a pod as updated from its revision label and as ready from its
//! Ready condition. Both would hold the moment an image patch lands: the kubelet
//! restarts the container some time later, and until then the pod stays Ready on the
//! old image. So the patch also records, in [`IN_PLACE_UPDATE_ANNOTATION`], the target
//! revision and, for every container whose image it changes, that container's
//! `imageID` and `restartCount` as they were. [`instance`] reports the pod not ready
//! while any of those containers still shows both unchanged (or has no status): the
//! rollout waits for the restart, as `maxUnavailable` and `Serial` mean it to. Once
//! every one restarted or runs another image, the annotation is inert; nothing removes
//! it, and the next in-place update overwrites it.
//!
//! Everything here is a plain function of its inputs so that the exact objects the
//! backend sends can be unit-tested without an API server.
//!
//! # Dispersion
//! Kubernetes has no "at most N pods of a set per node" rule, so:
//! - `maxInstancesPerNode: 1` → a *required* pod anti-affinity on `flotilla.io/set`
//!   over `kubernetes.io/hostname`: exact.
//! - `maxInstancesPerNode: N > 1` → a topology spread constraint over
//!   `kubernetes.io/hostname` with `maxSkew: N`, `whenUnsatisfiable: DoNotSchedule` and
//!   `minDomains` = the slice's size. A pod may land on a node only if that node's count
//!   of the set plus one is at most N above the emptiest eligible node's count. With
//!   `minDomains` at the slice's size, the emptiest count is 0 whenever it matters
//!   (fewer eligible nodes than instances make the scheduler treat it as 0; at least as
//!   many nodes as instances leave one empty), so the bound is exactly N per node.
//!   The API server refuses two constraints with one topologyKey and
//!   whenUnsatisfiable, so a template's own `kubernetes.io/hostname` / `DoNotSchedule`
//!   constraint is tightened into this one (the smaller maxSkew, at least this
//!   minDomains, this set's selector) rather than joined by it.
//! - Always → a *preferred* pod anti-affinity (weight 100) on `flotilla.io/set`, so the
//!   scheduler fills nodes without the set first. Roles are not known when a pod is
//!   created (they are probed later, and affinity cannot change on a running pod), so
//!   "different roles of one set never share a node when possible" is obtained by
//!   keeping *all* instances of the set apart when possible.

use std::collections::BTreeMap;

use flotilla_api::object::API_VERSION;
use flotilla_api::set::Retention;
use flotilla_api::{InstanceSet, Kind as _};
use flotilla_instanceset::{Instance, Phase, Revision, Volume, instance_name, volume_name};
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod,
    PodAffinityTerm, PodSpec, Service, ServicePort, ServiceSpec, TopologySpreadConstraint,
    Volume as PodVolume, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Every pod and PVC of a set carries the set's name here; the backend lists by it.
pub const SET_LABEL: &str = "flotilla.io/set";
/// The instance's ordinal.
pub const ORDINAL_LABEL: &str = "flotilla.io/ordinal";
/// The template revision a pod was made from (see `flotilla_instanceset::Revision`).
pub const REVISION_LABEL: &str = "flotilla.io/revision";
/// The template shape a pod was made from: same shape, update in place.
pub const SHAPE_LABEL: &str = "flotilla.io/shape";
/// The probed role, once known.
pub const ROLE_LABEL: &str = "flotilla.io/role";
/// On PVCs: the volume claim template's name.
pub const CLAIM_LABEL: &str = "flotilla.io/claim";
/// The probe-result version the role label was set from.
pub const ROLE_VERSION_ANNOTATION: &str = "flotilla.io/role-version";
/// Which agent process the role version counts in. Probe versions come from one
/// counter per controller, which restarts at 0 with the agent; a version written by
/// another process is older than every probe this one takes, so it is read as 0.
pub const ROLE_EPOCH_ANNOTATION: &str = "flotilla.io/role-epoch";
/// On a pod patched in place: which restarts the patch is waiting for (see the
/// module documentation), as JSON [`InPlaceUpdate`].
pub const IN_PLACE_UPDATE_ANNOTATION: &str = "flotilla.io/in-place-update";
/// The field manager of every write (server-side apply of status included).
pub const FIELD_MANAGER: &str = "flotilla";
/// The node topology key.
pub const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";

/// The set's namespace (`default` when unset).
pub fn namespace(set: &InstanceSet) -> &str {
    set.namespace().unwrap_or("default")
}

/// `<namespace>/<name>` of the set, for messages.
pub fn set_key(set: &InstanceSet) -> String {
    format!("{}/{}", namespace(set), set.name())
}

/// The label selector of every object of `set`.
pub fn selector(set: &InstanceSet) -> String {
    format!("{SET_LABEL}={}", set.name())
}

/// The reference that makes `set` the controller of a pod (or PVC).
pub fn owner_reference(set: &InstanceSet) -> Result<OwnerReference> {
    let uid = set
        .metadata
        .uid
        .clone()
        .ok_or_else(|| Error::NoUid(set_key(set)))?;
    Ok(OwnerReference {
        api_version: API_VERSION.to_string(),
        kind: flotilla_api::InstanceSetSpec::KIND.to_string(),
        name: set.name().to_string(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The labels every object of one instance carries.
fn identity_labels(set: &InstanceSet, ordinal: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SET_LABEL.to_string(), set.name().to_string()),
        (ORDINAL_LABEL.to_string(), ordinal.to_string()),
    ])
}

/// The labels a pod of the current template carries (the template's, then Flotilla's,
/// which win).
fn pod_labels(set: &InstanceSet, ordinal: u32, revision: &Revision) -> BTreeMap<String, String> {
    let mut labels = set
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.extend(identity_labels(set, ordinal));
    labels.insert(REVISION_LABEL.to_string(), revision.revision.clone());
    labels.insert(SHAPE_LABEL.to_string(), revision.shape.clone());
    labels
}

fn template_annotations(set: &InstanceSet) -> BTreeMap<String, String> {
    set.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// The pod `<set>-<ordinal>`: the template, its hostname, its volumes, Flotilla's
/// labels, placement rules, and the set as its controlling owner.
pub fn pod(set: &InstanceSet, ordinal: u32) -> Result<Pod> {
    let name = instance_name(set.name(), ordinal);
    let revision = Revision::of(&set.spec);
    let annotations = template_annotations(set);
    let mut spec = set.spec.template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if announces_hostname(set) {
        // `<pod>.<set>.<ns>.svc` resolves through the headless Service `<set>`.
        spec.subdomain = Some(set.name().to_string());
    }
    mount_claims(set, ordinal, &mut spec);
    redis_command(set, ordinal, &mut spec);
    place(set, &mut spec);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace(set).to_string()),
            labels: Some(pod_labels(set, ordinal, &revision)),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner_reference(set)?]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// A pod's endpoint for `set`, once it has an IP: `<podIP>:<port>` of the set's Redis
/// port (the port named `redis`, else the first), or with `spec.redis.announce:
/// Hostname` its DNS name ([`dns_name`]) and that port.
pub fn endpoint(pod: &Pod, set: &InstanceSet) -> Option<String> {
    let port = flotilla_api::redis::port_of(&set.spec.template);
    let addr = pod_addr(pod, port)?;
    if !announces_hostname(set) {
        return Some(addr);
    }
    let ordinal = ordinal_of(&pod.metadata)?;
    Some(format!("{}:{port}", dns_name(set, ordinal)))
}

/// Whether `set` announces DNS names (`spec.redis.announce: Hostname`) rather than pod
/// IPs.
pub fn announces_hostname(set: &InstanceSet) -> bool {
    set.spec
        .redis
        .as_ref()
        .is_some_and(|r| r.announce == flotilla_api::redis::Announce::Hostname)
}

/// The DNS name of ordinal `ordinal`'s pod through the headless Service `<set>`:
/// `<set>-<ordinal>.<set>.<namespace>.svc` (the cluster domain left to the resolver's
/// search path, so it holds whatever the cluster domain is).
pub fn dns_name(set: &InstanceSet, ordinal: u32) -> String {
    format!(
        "{}.{}.{}.svc",
        instance_name(set.name(), ordinal),
        set.name(),
        namespace(set)
    )
}

/// The headless Service `<set>` that gives every pod of a `spec.redis.announce:
/// Hostname` set its DNS name: no cluster IP, the set's pods by label, not-ready pods
/// published too (a replica must resolve its primary, and a held-back instance itself,
/// before they are ready), the Redis port, owned by the set.
pub fn headless_service(set: &InstanceSet) -> Result<Service> {
    let port = flotilla_api::redis::port_of(&set.spec.template);
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(set.name().to_string()),
            namespace: Some(namespace(set).to_string()),
            labels: Some(BTreeMap::from([(
                SET_LABEL.to_string(),
                set.name().to_string(),
            )])),
            owner_references: Some(vec![owner_reference(set)?]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(
                SET_LABEL.to_string(),
                set.name().to_string(),
            )])),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("redis".into()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(port))),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Whether `service` is the one [`headless_service`] makes for `set` (owned by it):
/// a Service of that name made by someone else is not taken over.
pub fn owns_service(set: &InstanceSet, service: &Service) -> bool {
    service
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| Some(&r.uid) == set.metadata.uid.as_ref())
}

/// `<podIP>:<port>` (an IPv6 address bracketed), once the pod has an IP.
pub fn pod_addr(pod: &Pod, port: u16) -> Option<String> {
    let ip = pod.status.as_ref()?.pod_ip.as_deref()?;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// A `spec.redis` set: Flotilla owns the first container's command line
/// (`redis-server` with `flotilla_redis::server_config` as arguments: every interface,
/// announcing the pod IP (or its [`dns_name`] with `announce: Hostname`), `dir` where the first claim is mounted — at `/data` unless
/// the template mounts it — and whether it starts as a replica). `$(POD_IP)` is
/// expanded by the kubelet from the variable added here.
fn redis_command(set: &InstanceSet, ordinal: u32, spec: &mut PodSpec) {
    if set.spec.redis.is_none() {
        return;
    }
    let claim = claim_names(set).next().map(str::to_string);
    let Some(c) = spec.containers.first_mut() else {
        return;
    };
    let mounts = c.volume_mounts.get_or_insert_default();
    let dir = match &claim {
        Some(claim) => match mounts.iter().find(|m| m.name == *claim) {
            Some(m) => m.mount_path.clone(),
            None => {
                mounts.push(k8s_openapi::api::core::v1::VolumeMount {
                    name: claim.clone(),
                    mount_path: "/data".into(),
                    ..Default::default()
                });
                "/data".into()
            }
        },
        None => "/data".into(),
    };
    if mounts.is_empty() {
        c.volume_mounts = None;
    }
    let port = flotilla_api::redis::port_of(&set.spec.template);
    let announce = if announces_hostname(set) {
        dns_name(set, ordinal)
    } else {
        "$(POD_IP)".to_string()
    };
    let own = format!("{announce}:{port}");
    // The arguments outlive this decision: the kubelet restarts the container with
    // them (a crash, an in-place update). So once the shard has a primary, every pod of
    // a shard of more than one starts held back (a replica of itself, which feeds no
    // replica) and the engine wires it: a restart can never come back as a master
    // that replicas resync from.
    let shard = set
        .spec
        .redis
        .as_ref()
        .and_then(|r| r.shard_replicas)
        .unwrap_or(1);
    let start = if shard > 1 && flotilla_api::redis::primary_of(set).is_some() {
        flotilla_redis::Start::ReplicaOf(own.clone())
    } else {
        flotilla_redis::startup(set, ordinal, &own, false)
    };
    let lines = flotilla_redis::server_config(
        set,
        port,
        flotilla_redis::Bind::All {
            announce: &announce,
        },
        &dir,
        &start,
    );
    c.command = Some(vec!["redis-server".into()]);
    c.args = Some(flotilla_redis::server_args(&lines));
    let env = c.env.get_or_insert_default();
    if !env.iter().any(|e| e.name == "POD_IP") {
        env.insert(
            0,
            k8s_openapi::api::core::v1::EnvVar {
                name: "POD_IP".into(),
                value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                    field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                        field_path: "status.podIP".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
}

/// Mounts every claim template's PVC as a volume named after the claim, replacing a
/// template volume of the same name (as a StatefulSet does).
fn mount_claims(set: &InstanceSet, ordinal: u32, spec: &mut PodSpec) {
    let volumes = spec.volumes.get_or_insert_default();
    for claim in claim_names(set) {
        let volume = PodVolume {
            name: claim.to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume_name(claim, set.name(), ordinal),
                read_only: None,
            }),
            ..PodVolume::default()
        };
        match volumes.iter_mut().find(|v| v.name == claim) {
            Some(v) => *v = volume,
            None => volumes.push(volume),
        }
    }
    if volumes.is_empty() {
        spec.volumes = None;
    }
}

fn claim_names(set: &InstanceSet) -> impl Iterator<Item = &str> {
    set.spec
        .volume_claim_templates
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
}

/// Adds the dispersion rules described in the module documentation to the template's
/// own affinity and spread constraints.
fn place(set: &InstanceSet, spec: &mut PodSpec) {
    let same_set = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            SET_LABEL.to_string(),
            set.name().to_string(),
        )])),
        match_expressions: None,
    };
    let term = PodAffinityTerm {
        label_selector: Some(same_set.clone()),
        topology_key: HOSTNAME_TOPOLOGY.to_string(),
        ..PodAffinityTerm::default()
    };
    let anti = spec
        .affinity
        .get_or_insert_default()
        .pod_anti_affinity
        .get_or_insert_default();
    anti.preferred_during_scheduling_ignored_during_execution
        .get_or_insert_default()
        .push(WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: term.clone(),
        });
    match set.spec.max_instances_per_node {
        Some(1) => anti
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_default()
            .push(term),
        Some(n) => {
            let slice = set.spec.ordinals.to_vec().len().max(1);
            let max_skew = i32::try_from(n).unwrap_or(i32::MAX);
            let min_domains = i32::try_from(slice).unwrap_or(i32::MAX);
            let constraints = spec.topology_spread_constraints.get_or_insert_default();
            // The API server refuses two constraints with the same topologyKey and
            // whenUnsatisfiable, so a template's own one over nodes is tightened into
            // ours instead: the smaller skew, at least our minDomains, and our
            // selector (without matchLabelKeys, which would narrow it), since the
            // per-node bound is exact only counting this set's pods.
            match constraints.iter_mut().find(|c| {
                c.topology_key == HOSTNAME_TOPOLOGY && c.when_unsatisfiable == "DoNotSchedule"
            }) {
                Some(theirs) => {
                    theirs.max_skew = theirs.max_skew.min(max_skew);
                    theirs.min_domains = Some(theirs.min_domains.unwrap_or(0).max(min_domains));
                    theirs.label_selector = Some(same_set);
                    theirs.match_label_keys = None;
                }
                None => constraints.push(TopologySpreadConstraint {
                    label_selector: Some(same_set),
                    max_skew,
                    min_domains: Some(min_domains),
                    topology_key: HOSTNAME_TOPOLOGY.to_string(),
                    when_unsatisfiable: "DoNotSchedule".to_string(),
                    ..TopologySpreadConstraint::default()
                }),
            }
        }
        None => {}
    }
}

/// The PVC `<claim>-<set>-<ordinal>` from one volume claim template. Owned by the set
/// only when the retention policy deletes volumes with the set, so that Kubernetes'
/// garbage collector does it (as a StatefulSet's `whenDeleted: Delete` does).
pub fn claim(
    set: &InstanceSet,
    template: &PersistentVolumeClaim,
    ordinal: u32,
) -> Result<PersistentVolumeClaim> {
    let claim = template.metadata.name.as_deref().unwrap_or_default();
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    labels.extend(identity_labels(set, ordinal));
    labels.insert(CLAIM_LABEL.to_string(), claim.to_string());
    let owned = set
        .spec
        .persistent_volume_claim_retention_policy
        .when_deleted
        == Retention::Delete;
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(volume_name(claim, set.name(), ordinal)),
            namespace: Some(namespace(set).to_string()),
            labels: Some(labels),
            annotations: template.metadata.annotations.clone(),
            owner_references: if owned {
                Some(vec![owner_reference(set)?])
            } else {
                None
            },
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    })
}

/// The ordinal an object's label says it belongs to.
pub fn ordinal_of(meta: &ObjectMeta) -> Option<u32> {
    label(meta, ORDINAL_LABEL)?.parse().ok()
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// What a listed pod tells the planner; `None` for a pod without a valid ordinal label
/// (not one of ours). `epoch` is this process's role epoch (see
/// [`ROLE_EPOCH_ANNOTATION`]).
pub fn instance(pod: &Pod, epoch: &str) -> Option<Instance> {
    let meta = &pod.metadata;
    let ordinal = ordinal_of(meta)?;
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => Phase::Running,
        // A pod that exited for good never runs again: recreate it.
        Some("Failed" | "Succeeded") => Phase::Failed,
        // Pending, Unknown (node not reporting) or not reported yet.
        _ => Phase::Pending,
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && !restart_pending(pod);
    let same_epoch = annotation(meta, ROLE_EPOCH_ANNOTATION) == Some(epoch);
    let role_version = annotation(meta, ROLE_VERSION_ANNOTATION)
        .filter(|_| same_epoch)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Instance {
        ordinal,
        revision: label(meta, REVISION_LABEL).unwrap_or_default().to_string(),
        shape: label(meta, SHAPE_LABEL).unwrap_or_default().to_string(),
        phase,
        ready,
        deleting: meta.deletion_timestamp.is_some(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        // Needs the Node list: `locality::mark` sets it.
        node_lost: false,
        role: label(meta, ROLE_LABEL).map(str::to_string),
        role_version,
        probe: None,
        // Needs the set's port: the backend's observe sets it.
        endpoint: None,
    })
}

/// What an in-place patch waits for: the revision it brings the pod to, and the
/// containers it changed the image of, each as it was before the patch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InPlaceUpdate {
    /// The revision label the patch set.
    pub revision: String,
    /// By container name (containers and restartable init containers share one name
    /// space in a pod).
    pub containers: BTreeMap<String, ContainerBefore>,
}

/// A container's status when its image was patched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerBefore {
    /// `status.containerStatuses[].imageID` (empty when it had no status).
    #[serde(default, rename = "imageID")]
    pub image_id: String,
    /// `status.containerStatuses[].restartCount` (0 when it had no status).
    #[serde(default, rename = "restartCount")]
    pub restart_count: i32,
}

impl ContainerBefore {
    fn of(status: Option<&ContainerStatus>) -> ContainerBefore {
        ContainerBefore {
            image_id: status.map(|s| s.image_id.clone()).unwrap_or_default(),
            restart_count: status.map_or(0, |s| s.restart_count),
        }
    }
}

/// The status of the container `name`, whether a container or an init container.
fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|s| s.name == name)
}

/// Whether an in-place patch of this pod's current revision still waits for a
/// container to restart on its new image: the container shows the imageID and
/// restart count it had before the patch, or no status at all. An annotation that does
/// not parse is someone else's doing and is ignored.
pub fn restart_pending(pod: &Pod) -> bool {
    let meta = &pod.metadata;
    let Some(update) = annotation(meta, IN_PLACE_UPDATE_ANNOTATION)
        .and_then(|a| serde_json::from_str::<InPlaceUpdate>(a).ok())
    else {
        return false;
    };
    if label(meta, REVISION_LABEL) != Some(update.revision.as_str()) {
        // Written for another revision: a later patch or a recreated pod supersedes it.
        return false;
    }
    update
        .containers
        .iter()
        .any(|(name, before)| match container_status(pod, name) {
            None => true,
            Some(now) => {
                now.image_id == before.image_id && now.restart_count == before.restart_count
            }
        })
}

/// What a listed PVC tells the planner; `None` without claim and ordinal labels.
pub fn volume(pvc: &PersistentVolumeClaim) -> Option<Volume> {
    let meta = &pvc.metadata;
    Some(Volume {
        claim: label(meta, CLAIM_LABEL)?.to_string(),
        ordinal: ordinal_of(meta)?,
        deleting: meta.deletion_timestamp.is_some(),
        // Needs the bound PersistentVolume: `locality::mark` sets it.
        node_local: false,
    })
}

/// The strategic merge patch that brings `pod` to the set's current template in place
/// (images, labels, annotations), or `None` when it already matches. Labels and
/// annotations are added or changed, never removed: the pod does not record which of
/// its labels came from the template, and other controllers may have added their own.
pub fn in_place_patch(set: &InstanceSet, ordinal: u32, pod: &Pod) -> Option<Value> {
    let revision = Revision::of(&set.spec);
    let meta = &pod.metadata;
    let changed = |want: BTreeMap<String, String>, have: Option<&BTreeMap<String, String>>| {
        want.into_iter()
            .filter(|(k, v)| have.and_then(|h| h.get(k)) != Some(v))
            .collect::<BTreeMap<_, _>>()
    };
    let labels = changed(pod_labels(set, ordinal, &revision), meta.labels.as_ref());
    let mut annotations = changed(template_annotations(set), meta.annotations.as_ref());
    let template = set.spec.template.spec.as_ref();
    let running = pod.spec.as_ref();
    let containers = image_changes(
        template.map(|t| t.containers.as_slice()),
        running.map(|r| r.containers.as_slice()),
    );
    let init = image_changes(
        template.and_then(|t| t.init_containers.as_deref()),
        running.and_then(|r| r.init_containers.as_deref()),
    );
    if labels.is_empty() && annotations.is_empty() && containers.is_empty() && init.is_empty() {
        return None;
    }
    // The restarts this patch causes, so that the pod does not count as updated and
    // ready before they happen (see the module documentation). An init container that
    // is not a sidecar has run to completion and is not restarted for a new image, so
    // only containers and sidecars are waited for.
    let sidecars: Vec<&str> = template
        .and_then(|t| t.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let restarted: BTreeMap<String, ContainerBefore> = containers
        .iter()
        .chain(init.iter().filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|name| sidecars.contains(&name))
        }))
        .filter_map(|c| c["name"].as_str())
        .map(|name| {
            (
                name.to_string(),
                ContainerBefore::of(container_status(pod, name)),
            )
        })
        .collect();
    if !restarted.is_empty() {
        let update = InPlaceUpdate {
            revision: revision.revision.clone(),
            containers: restarted,
        };
        // Plain strings and integers: serializing them cannot fail.
        let text = serde_json::to_string(&update).unwrap_or_default();
        annotations.insert(IN_PLACE_UPDATE_ANNOTATION.to_string(), text);
    }
    let mut patch = json!({});
    if !labels.is_empty() {
        patch["metadata"]["labels"] = json!(labels);
    }
    if !annotations.is_empty() {
        patch["metadata"]["annotations"] = json!(annotations);
    }
    if !containers.is_empty() {
        patch["spec"]["containers"] = Value::Array(containers);
    }
    if !init.is_empty() {
        patch["spec"]["initContainers"] = Value::Array(init);
    }
    Some(patch)
}

/// `{name, image}` for every template container whose image differs from the running
/// container of the same name (strategic merge patches merge containers by name).
fn image_changes(template: Option<&[Container]>, running: Option<&[Container]>) -> Vec<Value> {
    template
        .unwrap_or_default()
        .iter()
        .filter(|want| {
            running
                .unwrap_or_default()
                .iter()
                .find(|have| have.name == want.name)
                .is_none_or(|have| have.image != want.image)
        })
        .filter_map(|want| {
            want.image
                .as_ref()
                .map(|image| json!({"name": want.name, "image": image}))
        })
        .collect()
}

/// The JSON merge patch that sets (or, with `None`, removes) the role label and records
/// the probe version and epoch it comes from; `None` when the pod already says so.
pub fn role_patch(pod: &Pod, role: Option<&str>, version: u64, epoch: &str) -> Option<Value> {
    let meta = &pod.metadata;
    let version = version.to_string();
    let current = label(meta, ROLE_LABEL) == role
        && annotation(meta, ROLE_VERSION_ANNOTATION) == Some(version.as_str())
        && annotation(meta, ROLE_EPOCH_ANNOTATION) == Some(epoch);
    (!current).then(|| {
        json!({
            "metadata": {
                "labels": { ROLE_LABEL: role },
                "annotations": {
                    ROLE_VERSION_ANNOTATION: version,
                    ROLE_EPOCH_ANNOTATION: epoch,
                },
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use flotilla_api::InstanceSetSpec;
    use flotilla_api::ordinals::{OrdinalRange, Ordinals};
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus, PodTemplateSpec};

    use super::*;

    fn set(max_per_node: Option<u32>) -> InstanceSet {
        let mut set = InstanceSet::new(
            "redis",
            InstanceSetSpec {
                ordinals: Ordinals {
                    ranges: vec![OrdinalRange { start: 0, end: 2 }],
                    discrete: vec![7],
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(BTreeMap::from([("app".into(), "redis".into())])),
                        annotations: Some(BTreeMap::from([("team".into(), "cache".into())])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "redis".into(),
                            image: Some("redis:7.2".into()),
                            ..Container::default()
                        }],
                        volumes: Some(vec![PodVolume {
                            name: "data".into(),
                            empty_dir: Some(Default::default()),
                            ..PodVolume::default()
                        }]),
                        ..PodSpec::default()
                    }),
                },
                volume_claim_templates: vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..ObjectMeta::default()
                    },
                    ..PersistentVolumeClaim::default()
                }],
                max_instances_per_node: max_per_node,
                ..InstanceSetSpec::default()
            },
        );
        set.metadata.namespace = Some("cache".into());
        set.metadata.uid = Some("uid-1".into());
        set
    }

    #[test]
    fn a_redis_pod_runs_the_command_line_flotilla_renders() {
        let mut set = set(None);
        set.spec.redis = Some(flotilla_api::redis::RedisSpec {
            min_replicas_to_write: Some(1),
            shard_replicas: Some(3),
            config: BTreeMap::from([("maxmemory".into(), "1gb".into())]),
            ..Default::default()
        });
        set.metadata.annotations = Some(BTreeMap::from([(
            flotilla_api::redis::PRIMARY_ANNOTATION.to_string(),
            "7=10.0.0.7:6379".to_string(),
        )]));
        let replica = pod(&set, 1).unwrap();
        let c = &replica.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.command.as_deref(),
            Some(&["redis-server".to_string()][..])
        );
        let args = c.args.clone().unwrap().join(" ");
        for want in [
            "--port 6379",
            "--bind * -::*",
            "--dir /data",
            "--replica-announce-ip $(POD_IP)",
            "--min-replicas-to-write 1",
            "--replicaof $(POD_IP) 6379",
            "--maxmemory 1gb",
        ] {
            assert!(args.contains(want), "{want:?} in {args}");
        }
        assert_eq!(c.env.as_ref().unwrap()[0].name, "POD_IP");
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            ("data", "/data")
        );
        // The named primary itself too: held back.
        let held = pod(&set, 7).unwrap();
        let args = held.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(args.contains("--replicaof $(POD_IP) 6379"), "{args}");
    }

    #[test]
    fn a_hostname_announcing_set_names_its_pods_through_a_headless_service() {
        let mut set = set(None);
        set.spec.redis = Some(flotilla_api::redis::RedisSpec {
            announce: flotilla_api::redis::Announce::Hostname,
            shard_replicas: Some(3),
            ..Default::default()
        });
        set.metadata.annotations = Some(BTreeMap::from([(
            flotilla_api::redis::PRIMARY_ANNOTATION.to_string(),
            "0=redis-0.redis.cache.svc:6379".to_string(),
        )]));
        let mut p = pod(&set, 2).unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("redis-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("redis"));
        let args = spec.containers[0].args.clone().unwrap().join(" ");
        for want in [
            "--replica-announce-ip redis-2.redis.cache.svc",
            "--replicaof redis-2.redis.cache.svc 6379",
        ] {
            assert!(args.contains(want), "{want:?} in {args}");
        }
        assert_eq!(endpoint(&p, &set), None, "no address before it has an IP");
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some("10.1.2.3".into()),
            ..Default::default()
        });
        assert_eq!(
            endpoint(&p, &set).as_deref(),
            Some("redis-2.redis.cache.svc:6379")
        );
        assert_eq!(pod_addr(&p, 6379).as_deref(), Some("10.1.2.3:6379"));

        let svc = headless_service(&set).unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("redis"));
        assert!(owns_service(&set, &svc));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(
            spec.selector,
            Some(BTreeMap::from([(SET_LABEL.into(), "redis".into())]))
        );
        assert_eq!(spec.ports.unwrap()[0].port, 6379);
        let foreign = Service::default();
        assert!(!owns_service(&set, &foreign));

        // A pod IP set has no subdomain.
        set.spec.redis.as_mut().unwrap().announce = flotilla_api::redis::Announce::PodIp;
        assert_eq!(pod(&set, 2).unwrap().spec.unwrap().subdomain, None);
    }

    #[test]
    fn a_pod_is_named_labelled_owned_and_mounts_its_claims() {
        let set = set(None);
        let pod = pod(&set, 7).unwrap();
        let meta = &pod.metadata;
        assert_eq!(meta.name.as_deref(), Some("redis-7"));
        assert_eq!(meta.namespace.as_deref(), Some("cache"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "redis");
        assert_eq!(labels[SET_LABEL], "redis");
        assert_eq!(labels[ORDINAL_LABEL], "7");
        let rev = Revision::of(&set.spec);
        assert_eq!(labels[REVISION_LABEL], rev.revision);
        assert_eq!(labels[SHAPE_LABEL], rev.shape);
        assert!(!labels.contains_key(ROLE_LABEL));
        assert_eq!(meta.annotations.as_ref().unwrap()["team"], "cache");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("InstanceSet", "redis", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("redis-7"));
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1, "the claim replaces the template's volume");
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-redis-7"
        );
    }

    #[test]
    fn a_set_without_uid_cannot_own_pods() {
        let mut set = set(None);
        set.metadata.uid = None;
        assert!(matches!(pod(&set, 0), Err(Error::NoUid(k)) if k == "cache/redis"));
    }

    #[test]
    fn one_per_node_is_required_anti_affinity() {
        let spec = pod(&set(Some(1)), 0).unwrap().spec.unwrap();
        let anti = spec.affinity.unwrap().pod_anti_affinity.unwrap();
        let required = anti
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(required.len(), 1);
        assert_eq!(required[0].topology_key, HOSTNAME_TOPOLOGY);
        assert_eq!(
            required[0].label_selector.as_ref().unwrap().match_labels,
            Some(BTreeMap::from([(SET_LABEL.into(), "redis".into())]))
        );
        assert!(spec.topology_spread_constraints.is_none());
    }

    #[test]
    fn more_per_node_is_an_exact_spread_constraint_and_a_preference() {
        let spec = pod(&set(Some(3)), 0).unwrap().spec.unwrap();
        let anti = spec.affinity.unwrap().pod_anti_affinity.unwrap();
        assert!(
            anti.required_during_scheduling_ignored_during_execution
                .is_none()
        );
        assert_eq!(
            anti.preferred_during_scheduling_ignored_during_execution
                .unwrap()[0]
                .weight,
            100
        );
        let spread = &spec.topology_spread_constraints.unwrap()[0];
        assert_eq!(spread.max_skew, 3);
        assert_eq!(spread.min_domains, Some(4), "the slice has 4 ordinals");
        assert_eq!(spread.when_unsatisfiable, "DoNotSchedule");
    }

    #[test]
    fn a_template_spread_over_nodes_is_tightened_not_duplicated() {
        let mut set = set(Some(3));
        let theirs = |max_skew: i32, min_domains: Option<i32>| TopologySpreadConstraint {
            label_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".into(), "redis".into())])),
                match_expressions: None,
            }),
            match_label_keys: Some(vec!["pod-template-hash".into()]),
            max_skew,
            min_domains,
            topology_key: HOSTNAME_TOPOLOGY.into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            ..TopologySpreadConstraint::default()
        };
        let zones = TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            ..TopologySpreadConstraint::default()
        };
        let template = set.spec.template.spec.as_mut().unwrap();
        template.topology_spread_constraints = Some(vec![zones.clone(), theirs(5, None)]);
        let spread = pod(&set, 0)
            .unwrap()
            .spec
            .unwrap()
            .topology_spread_constraints
            .unwrap();
        assert_eq!(
            spread.len(),
            2,
            "no second hostname/DoNotSchedule: {spread:?}"
        );
        assert_eq!(spread[0], zones, "other constraints are left alone");
        let node = &spread[1];
        assert_eq!(node.max_skew, 3, "the smaller skew");
        assert_eq!(node.min_domains, Some(4), "the slice's size");
        assert_eq!(
            node.label_selector.as_ref().unwrap().match_labels,
            Some(BTreeMap::from([(SET_LABEL.into(), "redis".into())]))
        );
        assert_eq!(node.match_label_keys, None);

        // Tighter already: kept as tight.
        let template = set.spec.template.spec.as_mut().unwrap();
        template.topology_spread_constraints = Some(vec![theirs(1, Some(9))]);
        let spread = pod(&set, 0)
            .unwrap()
            .spec
            .unwrap()
            .topology_spread_constraints
            .unwrap();
        assert_eq!(spread.len(), 1);
        assert_eq!((spread[0].max_skew, spread[0].min_domains), (1, Some(9)));

        // ScheduleAnyway over nodes is another pair: ours is added beside it.
        let mut soft = theirs(1, None);
        soft.when_unsatisfiable = "ScheduleAnyway".into();
        let template = set.spec.template.spec.as_mut().unwrap();
        template.topology_spread_constraints = Some(vec![soft]);
        let spread = pod(&set, 0)
            .unwrap()
            .spec
            .unwrap()
            .topology_spread_constraints
            .unwrap();
        assert_eq!(spread.len(), 2);
    }

    #[test]
    fn claims_are_labelled_and_owned_only_when_deleted_with_the_set() {
        let mut set = set(None);
        let template = set.spec.volume_claim_templates[0].clone();
        let pvc = claim(&set, &template, 2).unwrap();
        assert_eq!(pvc.metadata.name.as_deref(), Some("data-redis-2"));
        let labels = pvc.metadata.labels.as_ref().unwrap();
        assert_eq!(
            (
                labels[SET_LABEL].as_str(),
                labels[ORDINAL_LABEL].as_str(),
                labels[CLAIM_LABEL].as_str()
            ),
            ("redis", "2", "data")
        );
        assert!(pvc.metadata.owner_references.is_none());
        assert_eq!(
            volume(&pvc),
            Some(Volume {
                claim: "data".into(),
                ordinal: 2,
                deleting: false,
                node_local: false,
            })
        );
        set.spec
            .persistent_volume_claim_retention_policy
            .when_deleted = Retention::Delete;
        assert!(
            claim(&set, &template, 2)
                .unwrap()
                .metadata
                .owner_references
                .is_some()
        );
    }

    fn running(mut pod: Pod, ready: bool) -> Pod {
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn a_listed_pod_becomes_an_instance() {
        let set = set(None);
        let mut pod = running(pod(&set, 1).unwrap(), true);
        pod.spec.as_mut().unwrap().node_name = Some("n1".into());
        let patch = role_patch(&pod, Some("primary"), 9, "e1").unwrap();
        assert_eq!(
            patch["metadata"]["labels"][ROLE_LABEL],
            json!("primary"),
            "{patch}"
        );
        pod.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(ROLE_LABEL.into(), "primary".into());
        pod.metadata.annotations.as_mut().unwrap().extend([
            (ROLE_VERSION_ANNOTATION.to_string(), "9".to_string()),
            (ROLE_EPOCH_ANNOTATION.to_string(), "e1".to_string()),
        ]);
        assert_eq!(role_patch(&pod, Some("primary"), 9, "e1"), None);
        let inst = instance(&pod, "e1").unwrap();
        assert_eq!(inst.ordinal, 1);
        assert_eq!(inst.phase, Phase::Running);
        assert!(inst.ready);
        assert_eq!(inst.node.as_deref(), Some("n1"));
        assert_eq!(inst.role.as_deref(), Some("primary"));
        assert_eq!(inst.role_version, 9);
        assert_eq!(inst.revision, Revision::of(&set.spec).revision);
        assert_eq!(
            instance(&pod, "e2").unwrap().role_version,
            0,
            "a version from another agent process is older than any of ours"
        );
    }

    #[test]
    fn an_in_place_patch_changes_only_what_differs() {
        let old = set(None);
        let pod = running(pod(&old, 0).unwrap(), true);
        assert_eq!(in_place_patch(&old, 0, &pod), None);
        let mut new = old.clone();
        new.spec.template.spec.as_mut().unwrap().containers[0].image = Some("redis:7.4".into());
        let rev = Revision::of(&new.spec);
        let patch = in_place_patch(&new, 0, &pod).unwrap();
        let waiting = InPlaceUpdate {
            revision: rev.revision.clone(),
            containers: BTreeMap::from([("redis".into(), ContainerBefore::default())]),
        };
        let waiting = serde_json::to_string(&waiting).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&waiting).unwrap(),
            json!({
                "revision": rev.revision,
                "containers": {"redis": {"imageID": "", "restartCount": 0}},
            })
        );
        assert_eq!(
            patch,
            json!({
                "metadata": {
                    "labels": {REVISION_LABEL: rev.revision},
                    "annotations": {IN_PLACE_UPDATE_ANNOTATION: waiting},
                },
                "spec": {"containers": [{"name": "redis", "image": "redis:7.4"}]},
            })
        );
    }

    fn with_container(mut pod: Pod, name: &str, image_id: &str, restarts: i32) -> Pod {
        let status = pod.status.get_or_insert_default();
        let statuses = status.container_statuses.get_or_insert_default();
        statuses.retain(|s| s.name != name);
        statuses.push(ContainerStatus {
            name: name.into(),
            image_id: image_id.into(),
            restart_count: restarts,
            ..ContainerStatus::default()
        });
        pod
    }

    /// The pod as the API server returns it after `patch`: labels and annotations
    /// merged, images replaced by container name.
    fn patched(mut pod: Pod, patch: &Value) -> Pod {
        let meta = &mut pod.metadata;
        for (key, map) in [
            ("labels", meta.labels.get_or_insert_default()),
            ("annotations", meta.annotations.get_or_insert_default()),
        ] {
            for (k, v) in patch["metadata"][key].as_object().into_iter().flatten() {
                map.insert(k.clone(), v.as_str().unwrap().to_string());
            }
        }
        for change in patch["spec"]["containers"].as_array().into_iter().flatten() {
            let spec = pod.spec.as_mut().unwrap();
            let c = spec
                .containers
                .iter_mut()
                .find(|c| c.name == change["name"])
                .unwrap();
            c.image = change["image"].as_str().map(str::to_string);
        }
        pod
    }

    #[test]
    fn an_in_place_update_counts_as_ready_only_once_its_containers_restarted() {
        let old = set(None);
        let before = with_container(running(pod(&old, 0).unwrap(), true), "redis", "sha-old", 2);
        let mut new = old.clone();
        new.spec.template.spec.as_mut().unwrap().containers[0].image = Some("redis:7.4".into());
        let patch = in_place_patch(&new, 0, &before).unwrap();
        let recorded: InPlaceUpdate = serde_json::from_str(
            patch["metadata"]["annotations"][IN_PLACE_UPDATE_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            recorded.containers["redis"],
            ContainerBefore {
                image_id: "sha-old".into(),
                restart_count: 2
            },
            "the patch records the container as it was"
        );
        // Right after the patch: new revision label, Ready still True, same container.
        let after = patched(before, &patch);
        let rev = Revision::of(&new.spec).revision;
        let inst = instance(&after, "e").unwrap();
        assert_eq!(inst.revision, rev);
        assert!(
            !inst.ready,
            "the kubelet has not restarted the container yet"
        );
        // No container status (the kubelet is between reports): still waiting.
        let mut no_status = after.clone();
        no_status.status.as_mut().unwrap().container_statuses = None;
        assert!(!instance(&no_status, "e").unwrap().ready);
        // Restarted (same image ID: the new tag is the same image), or a new image ID.
        let restarted = with_container(after.clone(), "redis", "sha-old", 3);
        assert!(instance(&restarted, "e").unwrap().ready);
        let new_image = with_container(after.clone(), "redis", "sha-new", 2);
        assert!(instance(&new_image, "e").unwrap().ready);
        // Restarted but not ready yet: not ready, from the Ready condition.
        let mut starting = restarted.clone();
        starting
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        assert!(!instance(&starting, "e").unwrap().ready);
        // A record of another revision (a later label-only patch) is inert.
        let mut other = after;
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(REVISION_LABEL.into(), "other".into());
        assert!(instance(&other, "e").unwrap().ready);
    }

    #[test]
    fn a_patch_of_labels_only_waits_for_no_restart() {
        let old = set(None);
        let pod = running(pod(&old, 0).unwrap(), true);
        let mut new = old.clone();
        new.spec
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "cache".into());
        let patch = in_place_patch(&new, 0, &pod).unwrap();
        assert!(
            patch["metadata"].get("annotations").is_none(),
            "no image changes, no restart to wait for: {patch}"
        );
        assert!(instance(&patched(pod, &patch), "e").unwrap().ready);
    }
}
