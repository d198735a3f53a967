//! Nodes and placement for members that schedule instances themselves (the simulated
//! member, the process member): node groups become nodes, instances are placed
//! first-fit, and what is left free is the member's capacity.
//!
//! ```text
//!   nodeGroups [{count: 2, free: {cpu: 4, pods: 110}}, {count: 1, ...}]
//!        └─▶ node-0-0  node-0-1  node-1-0          (node-<group>-<i>)
//!   place(demand, instances of the set per node, only)
//!        └─▶ first node with none of the set that fits, else first that fits
//!            (never past maxInstancesPerNode; one `pods` slot each) ─▶ reserved
//!   release(node, demand) ─▶ given back;  capacity() ─▶ CapacityModel::from_nodes
//! ```
//!
//! Preferring nodes without the set keeps instances of different roles off one node
//! while there are enough nodes, as a Kubernetes spread preference would.

use std::collections::BTreeMap;

use flotilla_api::quantity::{self, Amount};
use flotilla_api::resources::{self, PODS, Requests};
use flotilla_api::{CapacityModel, FieldError, InstanceSetSpec, Invalid, NodeGroup};

/// What one instance of a set asks of the node it is placed on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Its effective requests (`pods` not included: every instance takes one slot).
    pub requests: Requests,
    /// At most this many instances of its set on one node.
    pub max_per_node: Option<u32>,
}

impl Demand {
    /// The demand of one instance of `spec`; `Err` names the quantities that do not
    /// parse.
    pub fn of(spec: &InstanceSetSpec) -> Result<Demand, Invalid> {
        let requests = match &spec.template.spec {
            Some(pod) => resources::pod_requests(pod)?,
            None => Requests::new(),
        };
        Ok(Demand {
            requests,
            max_per_node: spec.max_instances_per_node,
        })
    }
}

#[derive(Debug)]
struct Node {
    name: String,
    allocatable: Requests,
    used: Requests,
    pods: u32,
    failed: bool,
}

/// A member's nodes and what is reserved on them. Nodes are named by index
/// (`usize`, stable for the life of a `Nodes`) and by name (`node-<group>-<i>`,
/// stable across restarts with the same node groups).
#[derive(Debug)]
pub struct Nodes {
    nodes: Vec<Node>,
}

impl Nodes {
    /// `count` nodes per group, each with the group's `free` resources allocatable
    /// and nothing reserved.
    pub fn new(groups: &[NodeGroup]) -> Nodes {
        let mut nodes = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let allocatable = resources::free_resources(&group.free);
            for i in 0..group.count {
                nodes.push(Node {
                    name: format!("node-{g}-{i}"),
                    allocatable: allocatable.clone(),
                    used: Requests::new(),
                    pods: 0,
                    failed: false,
                });
            }
        }
        Nodes { nodes }
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The name of node `node`.
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// The node named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `node` failed.
    pub fn is_failed(&self, node: usize) -> bool {
        self.nodes[node].failed
    }

    /// Fails the node named `name`: nothing is placed there again and it no longer
    /// counts as capacity. Returns its index.
    pub fn fail(&mut self, name: &str) -> Option<usize> {
        let idx = self.find(name)?;
        self.nodes[idx].failed = true;
        Some(idx)
    }

    /// Places one instance first-fit and reserves what it takes: a node with room for
    /// its requests and a free `pods` slot, below `maxInstancesPerNode` of its set
    /// (`of_set`: instances of the set per node), preferably one with none of the set
    /// yet; only node `only` when given (its volumes are bound there).
    pub fn place(
        &mut self,
        demand: &Demand,
        of_set: &BTreeMap<usize, u32>,
        only: Option<usize>,
    ) -> Option<usize> {
        let here = |i: usize| of_set.get(&i).copied().unwrap_or(0);
        let fits = |i: usize, n: &Node| {
            !n.failed
                && only.is_none_or(|o| o == i)
                && demand.max_per_node.is_none_or(|max| here(i) < max)
                && demand.requests.iter().all(|(r, need)| {
                    let have = n.allocatable.get(r).copied().unwrap_or_default();
                    let used = n.used.get(r).copied().unwrap_or_default();
                    have.saturating_sub(used) >= *need
                })
                && n.allocatable
                    .get(PODS)
                    .is_none_or(|max| u128::from(n.pods) < max.fits(Amount::units(1)).unwrap_or(0))
        };
        let idx = (0..self.nodes.len())
            .find(|&i| here(i) == 0 && fits(i, &self.nodes[i]))
            .or_else(|| (0..self.nodes.len()).find(|&i| fits(i, &self.nodes[i])))?;
        self.reserve(idx, demand);
        Some(idx)
    }

    /// Reserves `demand` on node `node` whether or not it fits: an instance found
    /// running there (adopted after a restart) takes what it takes.
    pub fn reserve(&mut self, node: usize, demand: &Demand) {
        let node = &mut self.nodes[node];
        for (r, need) in &demand.requests {
            let e = node.used.entry(r.clone()).or_default();
            *e = e.saturating_add(*need);
        }
        node.pods += 1;
    }

    /// Gives what an instance reserved on `node` back.
    pub fn release(&mut self, node: usize, demand: &Demand) {
        let node = &mut self.nodes[node];
        for (r, need) in &demand.requests {
            if let Some(e) = node.used.get_mut(r) {
                *e = e.saturating_sub(*need);
            }
        }
        node.pods = node.pods.saturating_sub(1);
    }

    /// What is free on the nodes that have not failed, bucketed into node groups.
    pub fn capacity(&self) -> CapacityModel {
        let free = self.nodes.iter().filter(|n| !n.failed).map(|n| {
            let mut free: BTreeMap<String, Amount> = n
                .allocatable
                .iter()
                .map(|(r, have)| {
                    let used = n.used.get(r).copied().unwrap_or_default();
                    (r.clone(), have.saturating_sub(used))
                })
                .collect();
            if let Some(p) = free.get_mut(PODS) {
                *p = p.saturating_sub(Amount::units(u64::from(n.pods)));
            }
            free
        });
        CapacityModel::from_nodes(free)
    }
}

/// The problems of configured node groups, each naming its field under `path`
/// (`nodeGroups`): quantities that do not parse, and no node at all.
pub fn check_groups(groups: &[NodeGroup], path: &str) -> Vec<FieldError> {
    let mut problems = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        for (name, q) in &g.free {
            if let Err(e) = quantity::parse(&q.0) {
                problems.push(FieldError::new(
                    format!("{path}[{i}].free.{name}"),
                    e.to_string(),
                ));
            }
        }
    }
    if groups.iter().all(|g| g.count == 0) {
        problems.push(FieldError::new(path, "needs at least one node"));
    }
    problems
}

/// Counts instances per node index (for [`Nodes::place`]'s `of_set`).
pub fn per_node(nodes: impl IntoIterator<Item = usize>) -> BTreeMap<usize, u32> {
    let mut counts = BTreeMap::new();
    for idx in nodes {
        *counts.entry(idx).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn group(count: u32, free: &[(&str, &str)]) -> NodeGroup {
        NodeGroup {
            count,
            free: free
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        }
    }

    fn cpu(n: u64) -> Demand {
        Demand {
            requests: Requests::from([("cpu".to_string(), Amount::units(n))]),
            max_per_node: None,
        }
    }

    #[test]
    fn placement_prefers_empty_nodes_respects_limits_and_releases() {
        let mut nodes = Nodes::new(&[group(2, &[("cpu", "4"), ("pods", "2")])]);
        assert_eq!(nodes.name(1), "node-0-1");
        let mut of_set = BTreeMap::new();
        let a = nodes.place(&cpu(1), &of_set, None).unwrap();
        of_set = per_node([a]);
        let b = nodes.place(&cpu(1), &of_set, None).unwrap();
        assert_ne!(a, b, "a node without the set first");
        of_set = per_node([a, b]);
        let c = nodes.place(&cpu(1), &of_set, None).unwrap();
        assert_eq!(c, 0, "then first fit");
        of_set = per_node([a, b, c]);
        assert_eq!(
            nodes.place(&cpu(1), &of_set, Some(0)),
            None,
            "node 0 has no pods slot left"
        );
        let limited = Demand {
            max_per_node: Some(1),
            ..cpu(1)
        };
        assert_eq!(nodes.place(&limited, &of_set, None), None);
        nodes.release(c, &cpu(1));
        let free = nodes.capacity();
        assert_eq!(free.node_groups.len(), 1, "both alike again: {free:?}");
        assert_eq!(free.node_groups[0].count, 2);
        assert_eq!(free.node_groups[0].free["cpu"].0, "3");
        assert_eq!(free.node_groups[0].free["pods"].0, "1");
        nodes.fail("node-0-1").unwrap();
        assert_eq!(nodes.capacity().node_groups[0].count, 1);
        assert_eq!(nodes.place(&cpu(1), &of_set, Some(1)), None, "failed");
    }
}
