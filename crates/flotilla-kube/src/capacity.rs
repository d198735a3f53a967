//! A member's free capacity from its Nodes and Pods, as the federation's scheduler
//! reads it: node groups of identical free resources.
//!
//! ```text
//!   Node.status.allocatable ─┐
//!   requests of the node's   ├─▶ free per node ──round down──▶ group identical ──▶ CapacityModel
//!   non-terminated pods ─────┘
//! ```
//!
//! Which nodes count: schedulable (not cordoned), `Ready`, and without `NoSchedule` or
//! `NoExecute` taints. The model is not per set, so it cannot know which taints a
//! set tolerates; counting tainted nodes as full errs on the side of not promising
//! room that is not there.
//!
//! Which resources: `cpu`, `memory`, `pods`, and extended resources (names with a
//! `/`, such as `flotilla.io/network-mbps`). Free cpu is rounded down to 100m and free
//! memory to 128Mi before grouping, so that a 5,000-node cluster whose nodes differ by
//! a few bytes stays a few dozen groups; rounding down never overstates room.

use std::collections::BTreeMap;

use flotilla_api::CapacityModel;
use flotilla_api::quantity::Amount;
use flotilla_api::resources::{self, PODS, Requests};
use k8s_openapi::api::core::v1::{Node, Pod};

const CPU: &str = "cpu";
const MEMORY: &str = "memory";
/// 100m, in nano-units.
const CPU_STEP: u128 = 100_000_000;
/// 128Mi, in nano-units.
const MEMORY_STEP: u128 = (128 << 20) * 1_000_000_000;

/// Whether new pods can land on `node` at all.
fn usable(node: &Node) -> bool {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| {
            ts.iter()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        });
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    !cordoned && !tainted && ready
}

fn counted(resource: &str) -> bool {
    resource == CPU || resource == MEMORY || resource == PODS || resource.contains('/')
}

/// Whether a pod still holds its node's resources (not `Succeeded` or `Failed`).
fn holds_resources(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The capacity model of `nodes` with `pods` running on them.
pub fn model(nodes: &[Node], pods: &[Pod]) -> CapacityModel {
    let mut used: BTreeMap<&str, (Requests, u64)> = BTreeMap::new();
    for pod in pods.iter().filter(|p| holds_resources(p)) {
        let Some(spec) = &pod.spec else { continue };
        let Some(node) = spec.node_name.as_deref() else {
            continue;
        };
        // Pods in a cluster have valid quantities; one that somehow does not counts
        // as requesting nothing but still takes a pod slot.
        let requests = resources::pod_requests(spec).unwrap_or_default();
        let (sum, count) = used.entry(node).or_default();
        for (r, amount) in requests {
            let e = sum.entry(r).or_default();
            *e = e.saturating_add(amount);
        }
        *count += 1;
    }
    let mut free_per_node = Vec::new();
    for node in nodes.iter().filter(|n| usable(n)) {
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map(resources::free_resources)
            .unwrap_or_default();
        let empty = (Requests::new(), 0);
        let (sum, count) = node
            .metadata
            .name
            .as_deref()
            .and_then(|n| used.get(n))
            .unwrap_or(&empty);
        let free: BTreeMap<String, Amount> = allocatable
            .into_iter()
            .filter(|(r, _)| counted(r))
            .map(|(r, have)| {
                let taken = if r == PODS {
                    Amount::units(*count)
                } else {
                    sum.get(&r).copied().unwrap_or_default()
                };
                let free = have.saturating_sub(taken);
                let free = match r.as_str() {
                    CPU => round_down(free, CPU_STEP),
                    MEMORY => round_down(free, MEMORY_STEP),
                    _ => free,
                };
                (r, free)
            })
            .collect();
        free_per_node.push(free);
    }
    CapacityModel::from_nodes(free_per_node)
}

fn round_down(a: Amount, step: u128) -> Amount {
    Amount::from_nanos(a.nanos() - a.nanos() % step)
}

#[cfg(test)]
mod tests {
    use flotilla_api::NodeGroup;
    use k8s_openapi::api::core::v1::{
        Container, NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus, ResourceRequirements,
        Taint,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(name: &str, cpu: &str, memory: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".into(), Quantity(cpu.into())),
                    ("memory".into(), Quantity(memory.into())),
                    ("pods".into(), Quantity("110".into())),
                    ("ephemeral-storage".into(), Quantity("100Gi".into())),
                    ("flotilla.io/network-mbps".into(), Quantity("1000".into())),
                ])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
        }
    }

    fn pod(node: &str, cpu: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta::default(),
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(BTreeMap::from([
                            ("cpu".into(), Quantity(cpu.into())),
                            ("flotilla.io/network-mbps".into(), Quantity("200".into())),
                        ])),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
        }
    }

    fn free(g: &NodeGroup) -> Vec<(String, String)> {
        g.free
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
    }

    #[test]
    fn free_is_allocatable_minus_live_requests_grouped_and_rounded_down() {
        let mut cordoned = node("c", "8", "32Gi");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let mut tainted = node("t", "8", "32Gi");
        tainted.spec.as_mut().unwrap().taints = Some(vec![Taint {
            key: "node-role.kubernetes.io/control-plane".into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }]);
        let nodes = [
            node("a", "8", "32Gi"),
            node("b", "8", "32Gi"),
            // A few bytes more memory: the same group once rounded down.
            node("d", "8", "34359740000"),
            node("e", "16", "32Gi"),
            cordoned,
            tainted,
        ];
        let pods = [
            pod("a", "2", "Running"),
            pod("b", "2", "Pending"),
            pod("d", "1950m", "Running"),
            pod("d", "4", "Succeeded"),
        ];
        let model = model(&nodes, &pods);
        assert_eq!(model.node_groups.len(), 2, "{model:?}");
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        let expect_a = vec![
            s("cpu", "6"),
            s("flotilla.io/network-mbps", "800"),
            s("memory", "32Gi"),
            s("pods", "109"),
        ];
        let groups: Vec<_> = model
            .node_groups
            .iter()
            .map(|g| (g.count, free(g)))
            .collect();
        assert!(groups.contains(&(3, expect_a)), "{groups:?}");
        let expect_e = vec![
            s("cpu", "16"),
            s("flotilla.io/network-mbps", "1000"),
            s("memory", "32Gi"),
            s("pods", "110"),
        ];
        assert!(groups.contains(&(1, expect_e)), "{groups:?}");
    }
}
