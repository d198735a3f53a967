//! Lost nodes and node-local volumes, as pure functions: what the planner's instance
//! rebuild (`instanceRebuild.whenNodeLost`) needs to know on Kubernetes.
//!
//! ```text
//!   Node list ──lost()──▶ which nodes are lost (gone, out of service, or not Ready
//!                         for longer than NodeLoss::after)
//!   PV of a claim ──pinned()──▶ node-local? pinned to which node (label key=value)?
//!   pods + claims + nodes + PVs ──mark()──▶ Instance::node_lost, Volume::node_local
//! ```
//!
//! # When is a node lost
//! - Its Node object no longer exists (deleted by a cloud provider's node controller or
//!   an administrator), or it carries the `node.kubernetes.io/out-of-service` taint (an
//!   administrator's statement that it is shut down for good: Kubernetes' non-graceful
//!   node shutdown). Both count at once.
//! - Or it has not been `Ready` (condition `False` or `Unknown`) for at least
//!   [`NodeLoss::after`], measured from the Ready condition's `lastTransitionTime`, or
//!   from the `timeAdded` of the node controller's `node.kubernetes.io/unreachable` /
//!   `not-ready` `NoExecute` taint, whichever is earlier. A node whose Ready condition is
//!   `True` is never lost, whatever its taints say (they lag the condition). The default,
//!   five minutes, is when Kubernetes itself evicts pods from such a node (the default
//!   `tolerationSeconds` of those taints), so a brief blip never rebuilds anything.
//!   Times are compared with the agent's clock: a skew between it and the control
//!   plane shifts the grace period by as much.
//!
//! # When is a volume node-local
//! A claim is node-local when it is bound to a PersistentVolume whose data lives on one
//! node: `spec.local`, `spec.hostPath`, or a required node affinity that pins it to one
//! node: a single node selector term with an `In` expression of exactly one value on a
//! per-node label key ([`NodeLoss::node_keys`], by default `kubernetes.io/hostname`;
//! add e.g. `topology.topolvm.io/node` for TopoLVM), or a `matchFields` expression on
//! `metadata.name`. Zone or region affinity (network disks) is not node-local. An
//! unbound claim holds no data, so it is not node-local (the scheduler picks a node for
//! it again if the one it selected is gone).
//!
//! # Which instances are stranded
//! - A pod scheduled on a lost node (`Instance::node_lost`).
//! - A pod not scheduled anywhere whose node-local volume is pinned to a lost node: the
//!   pod that replaced one removed from a deleted node (Kubernetes' pod garbage
//!   collector removes those) can only ever run on that node. It is reported on that
//!   node (`Instance::node`: the node's name, or the pinning label's value when the
//!   Node object is gone), lost.
//!
//! A pod on a lost node that is already being deleted (the node controller evicts pods
//! after their toleration) stays `Terminating` for ever, because the kubelet that would
//! confirm the deletion is gone. When such a pod has node-local volumes it is reported
//! as not deleting, so that the planner sees it stranded (and says so, or rebuilds it,
//! which force-deletes it); without node-local volumes it is left as it is: it waits
//! for its node, or for the out-of-service taint that makes Kubernetes remove it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_instanceset::Observed;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::objects::{HOSTNAME_TOPOLOGY, ordinal_of};

/// The node controller's taint on a node that stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// The node controller's taint on a node that reports not ready.
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// An administrator's taint on a node shut down for good.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// When a node counts as lost, and which node labels name exactly one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLoss {
    /// A node not `Ready` for this long is lost (default five minutes).
    pub after: Duration,
    /// Label keys whose value names exactly one node (default `kubernetes.io/hostname`).
    pub node_keys: Vec<String>,
}

impl Default for NodeLoss {
    fn default() -> Self {
        NodeLoss {
            after: Duration::from_secs(300),
            node_keys: vec![HOSTNAME_TOPOLOGY.to_string()],
        }
    }
}

/// Since when `node` has not been ready, if it is not: the earlier of its Ready
/// condition's last transition and the node controller's `NoExecute` taint. `None` for
/// a ready node, and for one that never reported a Ready condition and is not tainted.
pub fn not_ready_since(node: &Node) -> Option<Timestamp> {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    if ready.is_some_and(|c| c.status == "True") {
        return None;
    }
    let condition = ready.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0));
    let taint = taints(node)
        .filter(|t| {
            t.effect == "NoExecute" && (t.key == UNREACHABLE_TAINT || t.key == NOT_READY_TAINT)
        })
        .filter_map(|t| t.time_added.as_ref().map(|t| t.0))
        .min();
    match (condition, taint) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn taints(node: &Node) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
}

/// Whether `node` (`None`: its Node object does not exist) is lost at `now`.
pub fn lost(node: Option<&Node>, now: Timestamp, loss: &NodeLoss) -> bool {
    let Some(node) = node else { return true };
    if taints(node).any(|t| t.key == OUT_OF_SERVICE_TAINT) {
        return true;
    }
    let after = SignedDuration::try_from(loss.after).unwrap_or(SignedDuration::MAX);
    not_ready_since(node).is_some_and(|since| now.duration_since(since) >= after)
}

/// Where a PersistentVolume's data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Locality {
    /// Reachable from more than one node (network storage, or unknown).
    Shared,
    /// On one node's disks. `pinned`: the node it is pinned to, as `(label key, value)`
    /// (`metadata.name` for a `matchFields` pin), when its node affinity says so.
    Local {
        /// The pinning label and its value.
        pinned: Option<(String, String)>,
    },
}

/// The locality of `pv` (see the module documentation).
pub fn locality(pv: &PersistentVolume, node_keys: &[String]) -> Locality {
    let Some(spec) = &pv.spec else {
        return Locality::Shared;
    };
    let terms = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    // Terms are ORed: only a single term can pin to one node.
    let pinned = match terms {
        [term] => {
            let by_label = term
                .match_expressions
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|e| {
                    node_keys.contains(&e.key)
                        && e.operator == "In"
                        && e.values.as_ref().is_some_and(|v| v.len() == 1)
                });
            let by_name = term
                .match_fields
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|e| {
                    e.key == "metadata.name"
                        && e.operator == "In"
                        && e.values.as_ref().is_some_and(|v| v.len() == 1)
                });
            by_label
                .or(by_name)
                .and_then(|e| Some((e.key.clone(), e.values.as_ref()?[0].clone())))
        }
        _ => None,
    };
    if pinned.is_some() || spec.local.is_some() || spec.host_path.is_some() {
        Locality::Local { pinned }
    } else {
        Locality::Shared
    }
}

/// The node a `(key, value)` pin names, if it exists.
fn pinned_node<'a>(nodes: &'a [Node], key: &str, value: &str) -> Option<&'a Node> {
    nodes.iter().find(|n| {
        if key == "metadata.name" {
            n.metadata.name.as_deref() == Some(value)
        } else {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .is_some_and(|v| v == value)
        }
    })
}

fn node_named<'a>(nodes: &'a [Node], name: &str) -> Option<&'a Node> {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
}

/// Whether a pod may be on a lost node: it is not ready (the node controller marks the
/// pods of a node that stopped being ready not ready). A set whose pods are all ready
/// needs no Node list.
pub fn suspect(pod: &Pod) -> bool {
    !pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The PersistentVolumes to read: those bound to the claims of suspect pods that are on
/// a lost node, or not scheduled anywhere (their volumes may pin them to one).
pub fn volumes_to_read(
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
    nodes: &[Node],
    now: Timestamp,
    loss: &NodeLoss,
) -> Vec<String> {
    let ordinals: BTreeSet<u32> = pods
        .iter()
        .filter(|p| suspect(p))
        .filter(|p| match node_of(p) {
            Some(node) => lost(node_named(nodes, node), now, loss),
            None => p.metadata.deletion_timestamp.is_none(),
        })
        .filter_map(|p| ordinal_of(&p.metadata))
        .collect();
    let names: BTreeSet<String> = claims
        .iter()
        .filter(|c| ordinal_of(&c.metadata).is_some_and(|o| ordinals.contains(&o)))
        .filter_map(bound_volume)
        .collect();
    names.into_iter().collect()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn bound_volume(claim: &PersistentVolumeClaim) -> Option<String> {
    claim
        .spec
        .as_ref()?
        .volume_name
        .clone()
        .filter(|v| !v.is_empty())
}

/// Sets `node_lost` on stranded instances and `node_local` on volumes bound to one of
/// `volumes` that is local (see the module documentation). Volumes whose
/// PersistentVolume was not read keep `node_local: false`: the planner reads it only
/// for instances on a lost node, and those are the ones whose volumes are read.
pub fn mark(
    observed: &mut Observed,
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
    nodes: &[Node],
    volumes: &[PersistentVolume],
    now: Timestamp,
    loss: &NodeLoss,
) {
    let by_name: BTreeMap<&str, &PersistentVolume> = volumes
        .iter()
        .filter_map(|v| Some((v.metadata.name.as_deref()?, v)))
        .collect();
    // Every node-local claim: (ordinal, claim template) → pin.
    let mut local: BTreeMap<(u32, String), Option<(String, String)>> = BTreeMap::new();
    for claim in claims {
        let Some(volume) = crate::objects::volume(claim) else {
            continue;
        };
        let pv = bound_volume(claim).and_then(|n| by_name.get(n.as_str()).copied());
        if let Some(Locality::Local { pinned }) = pv.map(|pv| locality(pv, &loss.node_keys)) {
            local.insert((volume.ordinal, volume.claim), pinned);
        }
    }
    for v in &mut observed.volumes {
        v.node_local = local.contains_key(&(v.ordinal, v.claim.clone()));
    }
    let pods_by_ordinal: BTreeMap<u32, &Pod> = pods
        .iter()
        .filter_map(|p| Some((ordinal_of(&p.metadata)?, p)))
        .collect();
    for inst in &mut observed.instances {
        let Some(pod) = pods_by_ordinal.get(&inst.ordinal) else {
            continue;
        };
        if !suspect(pod) {
            continue;
        }
        match node_of(pod) {
            Some(node) => inst.node_lost = lost(node_named(nodes, node), now, loss),
            None if !inst.deleting => {
                // Not scheduled: stranded if a node-local volume pins it to a lost node.
                let pins = local
                    .iter()
                    .filter(|((o, _), _)| *o == inst.ordinal)
                    .filter_map(|(_, pin)| pin.as_ref());
                for (key, value) in pins {
                    let node = pinned_node(nodes, key, value);
                    if lost(node, now, loss) {
                        inst.node = Some(
                            node.and_then(|n| n.metadata.name.clone())
                                .unwrap_or_else(|| value.clone()),
                        );
                        inst.node_lost = true;
                        break;
                    }
                }
            }
            None => {}
        }
        let has_local = local.keys().any(|(o, _)| *o == inst.ordinal);
        if inst.node_lost && inst.deleting && has_local {
            // Its deletion cannot finish without its kubelet: see the module docs.
            inst.deleting = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_instanceset::{Instance, Volume};
    use k8s_openapi::api::core::v1::{
        HostPathVolumeSource, LocalVolumeSource, NodeCondition, NodeSelector,
        NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus, PersistentVolumeClaimSpec,
        PersistentVolumeSpec, PodCondition, PodSpec, PodStatus, Taint, VolumeNodeAffinity,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::objects::{CLAIM_LABEL, ORDINAL_LABEL, SET_LABEL};

    const NOW: &str = "2030-01-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    /// `seconds` before [`NOW`].
    fn ago(seconds: i64) -> Time {
        Time(now() - SignedDuration::from_secs(seconds))
    }

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(HOSTNAME_TOPOLOGY.to_string(), format!("host-{name}"))].into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(ago(86_400)),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    /// `node` with its Ready condition `status` since `seconds` ago.
    fn not_ready(mut node: Node, status: &str, seconds: i64) -> Node {
        let c = &mut node.status.as_mut().unwrap().conditions.as_mut().unwrap()[0];
        c.status = status.into();
        c.last_transition_time = Some(ago(seconds));
        node
    }

    fn tainted(mut node: Node, key: &str, seconds: i64) -> Node {
        node.spec
            .as_mut()
            .unwrap()
            .taints
            .get_or_insert_default()
            .push(Taint {
                key: key.into(),
                effect: "NoExecute".into(),
                time_added: Some(ago(seconds)),
                value: None,
            });
        node
    }

    #[test]
    fn a_node_is_lost_when_gone_out_of_service_or_not_ready_past_the_grace() {
        let loss = NodeLoss::default(); // five minutes
        let check = |node: Option<Node>, expect: bool| {
            assert_eq!(lost(node.as_ref(), now(), &loss), expect, "{node:?}");
        };
        check(None, true);
        check(Some(node("a")), false);
        // A blip: not ready for a minute.
        check(Some(not_ready(node("a"), "Unknown", 60)), false);
        check(Some(not_ready(node("a"), "Unknown", 300)), true);
        check(Some(not_ready(node("a"), "False", 3600)), true);
        // The node controller's taint is earlier evidence than a later transition.
        check(
            Some(tainted(
                not_ready(node("a"), "Unknown", 10),
                UNREACHABLE_TAINT,
                400,
            )),
            true,
        );
        check(Some(tainted(node("a"), NOT_READY_TAINT, 10)), false);
        // A Ready node is never lost by the node controller's (lagging) taints.
        check(Some(tainted(node("a"), UNREACHABLE_TAINT, 4000)), false);
        // An administrator's out-of-service taint counts at once.
        check(Some(tainted(node("a"), OUT_OF_SERVICE_TAINT, 0)), true);
        // The grace period is the backend's option.
        let short = NodeLoss {
            after: Duration::from_secs(30),
            ..NodeLoss::default()
        };
        assert!(lost(
            Some(&not_ready(node("a"), "Unknown", 60)),
            now(),
            &short
        ));
    }

    fn pv(name: &str, spec: PersistentVolumeSpec) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn pinned_to(key: &str, values: &[&str]) -> Option<VolumeNodeAffinity> {
        Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: key.into(),
                        operator: "In".into(),
                        values: Some(values.iter().map(|v| v.to_string()).collect()),
                    }]),
                    match_fields: None,
                }],
            }),
        })
    }

    #[test]
    fn local_host_path_and_one_node_affinity_are_node_local_zones_are_not() {
        let keys = NodeLoss::default().node_keys;
        let pin = |v: &str| Some((HOSTNAME_TOPOLOGY.to_string(), v.to_string()));
        let local = PersistentVolumeSpec {
            local: Some(LocalVolumeSource {
                path: "/mnt/disks/a".into(),
                fs_type: None,
            }),
            node_affinity: pinned_to(HOSTNAME_TOPOLOGY, &["host-a"]),
            ..PersistentVolumeSpec::default()
        };
        assert_eq!(
            locality(&pv("l", local), &keys),
            Locality::Local {
                pinned: pin("host-a")
            }
        );
        let host_path = PersistentVolumeSpec {
            host_path: Some(HostPathVolumeSource {
                path: "/data".into(),
                type_: None,
            }),
            ..PersistentVolumeSpec::default()
        };
        assert_eq!(
            locality(&pv("h", host_path), &keys),
            Locality::Local { pinned: None }
        );
        // A CSI volume pinned to one host (e.g. a local-disk driver).
        let csi_one_host = PersistentVolumeSpec {
            node_affinity: pinned_to(HOSTNAME_TOPOLOGY, &["host-b"]),
            ..PersistentVolumeSpec::default()
        };
        assert_eq!(
            locality(&pv("c", csi_one_host), &keys),
            Locality::Local {
                pinned: pin("host-b")
            }
        );
        // Two hosts, or a zone: reachable from more than one node.
        let two_hosts = PersistentVolumeSpec {
            node_affinity: pinned_to(HOSTNAME_TOPOLOGY, &["host-a", "host-b"]),
            ..PersistentVolumeSpec::default()
        };
        assert_eq!(locality(&pv("t", two_hosts), &keys), Locality::Shared);
        let zone = PersistentVolumeSpec {
            node_affinity: pinned_to("topology.kubernetes.io/zone", &["eu-1a"]),
            ..PersistentVolumeSpec::default()
        };
        assert_eq!(locality(&pv("z", zone.clone()), &keys), Locality::Shared);
        // Unless the operator says that label names one node.
        let topolvm = PersistentVolumeSpec {
            node_affinity: pinned_to("topology.topolvm.io/node", &["a"]),
            ..PersistentVolumeSpec::default()
        };
        assert_eq!(locality(&pv("v", topolvm.clone()), &keys), Locality::Shared);
        let more = [keys[0].clone(), "topology.topolvm.io/node".to_string()];
        assert_eq!(
            locality(&pv("v", topolvm), &more),
            Locality::Local {
                pinned: Some(("topology.topolvm.io/node".into(), "a".into()))
            }
        );
    }

    /// A pod of ordinal `o` on `node` (`None`: not scheduled), ready or not.
    fn pod(o: u32, node: Option<&str>, ready: bool, deleting: bool) -> Pod {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("redis-{o}")),
                labels: Some(
                    [
                        (SET_LABEL.to_string(), "redis".to_string()),
                        (ORDINAL_LABEL.to_string(), o.to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(if node.is_some() { "Running" } else { "Pending" }.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        };
        if deleting {
            pod.metadata.deletion_timestamp = Some(ago(100));
        }
        pod
    }

    /// The claim `data-redis-<o>`, bound to `pv` if given.
    fn claim(o: u32, pv: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(format!("data-redis-{o}")),
                labels: Some(
                    [
                        (SET_LABEL.to_string(), "redis".to_string()),
                        (ORDINAL_LABEL.to_string(), o.to_string()),
                        (CLAIM_LABEL.to_string(), "data".to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: pv.map(str::to_string),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }
    }

    fn local_pv(name: &str, host: &str) -> PersistentVolume {
        pv(
            name,
            PersistentVolumeSpec {
                local: Some(LocalVolumeSource {
                    path: "/mnt/disks/ssd0".into(),
                    fs_type: None,
                }),
                node_affinity: pinned_to(HOSTNAME_TOPOLOGY, &[host]),
                ..PersistentVolumeSpec::default()
            },
        )
    }

    /// Runs the whole marking over `pods`, `claims`, `nodes` and the PVs `pvs` (of which
    /// only those `volumes_to_read` names are passed on, as the backend does), and
    /// returns `(ordinal, node, node_lost, deleting)` per instance, `(ordinal,
    /// node_local)` per volume, and the PVs read.
    #[allow(clippy::type_complexity)]
    fn check(
        pods: &[Pod],
        claims: &[PersistentVolumeClaim],
        nodes: &[Node],
        pvs: &[PersistentVolume],
    ) -> (
        Vec<(u32, Option<String>, bool, bool)>,
        Vec<(u32, bool)>,
        Vec<String>,
    ) {
        let loss = NodeLoss::default();
        let mut observed = Observed {
            instances: pods
                .iter()
                .filter_map(|p| crate::objects::instance(p, ""))
                .collect(),
            volumes: claims.iter().filter_map(crate::objects::volume).collect(),
            last_switchover: None,
        };
        let read = volumes_to_read(pods, claims, nodes, now(), &loss);
        let volumes: Vec<PersistentVolume> = pvs
            .iter()
            .filter(|v| read.contains(v.metadata.name.as_ref().unwrap()))
            .cloned()
            .collect();
        mark(&mut observed, pods, claims, nodes, &volumes, now(), &loss);
        (
            observed
                .instances
                .iter()
                .map(|i: &Instance| (i.ordinal, i.node.clone(), i.node_lost, i.deleting))
                .collect(),
            observed
                .volumes
                .iter()
                .map(|v: &Volume| (v.ordinal, v.node_local))
                .collect(),
            read,
        )
    }

    fn on(node: &str) -> Option<String> {
        Some(node.to_string())
    }

    #[test]
    fn a_pod_on_a_vanished_node_with_a_local_volume_is_stranded() {
        let (instances, volumes, read) = check(
            &[
                pod(0, Some("a"), false, false),
                pod(1, Some("b"), true, false),
            ],
            &[claim(0, Some("pv-0")), claim(1, Some("pv-1"))],
            &[node("b")],
            &[local_pv("pv-0", "host-a"), local_pv("pv-1", "host-b")],
        );
        assert_eq!(
            instances,
            [(0, on("a"), true, false), (1, on("b"), false, false)]
        );
        // Only the suspect pod's volume is read (and so known to be local).
        assert_eq!(read, ["pv-0"]);
        assert_eq!(volumes, [(0, true), (1, false)]);
    }

    #[test]
    fn a_brief_blip_strands_nothing_and_reads_no_volume() {
        let (instances, volumes, read) = check(
            &[pod(0, Some("a"), false, false)],
            &[claim(0, Some("pv-0"))],
            &[not_ready(node("a"), "Unknown", 30)],
            &[local_pv("pv-0", "host-a")],
        );
        assert_eq!(instances, [(0, on("a"), false, false)]);
        assert_eq!(volumes, [(0, false)]);
        assert!(read.is_empty());
    }

    #[test]
    fn an_evicted_pod_stuck_terminating_on_a_lost_node_is_stranded_only_with_local_volumes() {
        let lost_node = not_ready(node("a"), "Unknown", 900);
        let (instances, _, _) = check(
            &[pod(0, Some("a"), false, true)],
            &[claim(0, Some("pv-0"))],
            std::slice::from_ref(&lost_node),
            &[local_pv("pv-0", "host-a")],
        );
        assert_eq!(instances, [(0, on("a"), true, false)], "not deleting");
        let network = pv("pv-0", PersistentVolumeSpec::default());
        let (instances, volumes, _) = check(
            &[pod(0, Some("a"), false, true)],
            &[claim(0, Some("pv-0"))],
            &[lost_node],
            &[network],
        );
        assert_eq!(instances, [(0, on("a"), true, true)], "still deleting");
        assert_eq!(volumes, [(0, false)]);
    }

    #[test]
    fn an_unscheduled_replacement_pinned_by_its_volume_to_a_lost_node_is_stranded_there() {
        // The node was deleted and its pods collected; the replacement cannot schedule.
        let (instances, volumes, _) = check(
            &[pod(0, None, false, false)],
            &[claim(0, Some("pv-0"))],
            &[node("b")],
            &[local_pv("pv-0", "host-a")],
        );
        assert_eq!(instances, [(0, on("host-a"), true, false)]);
        assert_eq!(volumes, [(0, true)]);
        // Pinned to a node that is there and ready: just pending.
        let (instances, _, _) = check(
            &[pod(0, None, false, false)],
            &[claim(0, Some("pv-0"))],
            &[node("a")],
            &[local_pv("pv-0", "host-a")],
        );
        assert_eq!(instances, [(0, None, false, false)]);
        // Pinned to a node that is there but lost: reported under its name.
        let (instances, _, _) = check(
            &[pod(0, None, false, false)],
            &[claim(0, Some("pv-0"))],
            &[not_ready(node("a"), "False", 600)],
            &[local_pv("pv-0", "host-a")],
        );
        assert_eq!(instances, [(0, on("a"), true, false)]);
        // An unbound claim holds no data: not local, nothing pins the pod.
        let (instances, volumes, read) =
            check(&[pod(0, None, false, false)], &[claim(0, None)], &[], &[]);
        assert_eq!(instances, [(0, None, false, false)]);
        assert_eq!(volumes, [(0, false)]);
        assert!(read.is_empty());
    }
}
