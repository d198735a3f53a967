//! How many instances of a template a cluster has room for.
//!
//! Per node group: instances per node is the minimum over every requested resource of
//! `floor(free / request)` (each instance also takes one `pods` slot), capped by
//! `maxInstancesPerNode`; the cluster's room is that times the group's node count,
//! summed over groups. Exact integer arithmetic throughout (see
//! [`flotilla_api::quantity`]).

use flotilla_api::quantity::{self, Amount};
use flotilla_api::resources::{PODS, Requests};
use flotilla_api::{CapacityModel, NodeGroup};

/// Room reported for a cluster without a capacity model or without any limit; also the
/// ceiling of every estimate, which keeps the division's arithmetic exact in `u128`.
pub const UNLIMITED: u32 = u32::MAX;

/// A cluster's room for one template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// How many instances fit (at most [`UNLIMITED`]).
    pub instances: u32,
    /// When nothing fits: the resource most nodes are short of, and what one instance
    /// needs of it.
    pub short_of: Option<(String, Amount)>,
}

/// A capacity model with its quantities parsed once, so that estimating room for many
/// templates costs integer arithmetic only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapacityIndex {
    /// Resource names seen in any node group, sorted.
    resources: Vec<String>,
    /// Per node group: its node count and, aligned with `resources`, what each node
    /// has free (`None`: the group does not report it).
    groups: Vec<(u32, Vec<Option<Amount>>)>,
}

impl CapacityIndex {
    /// Parses a capacity model (validated: a quantity that does not parse counts as 0).
    pub fn new(model: &CapacityModel) -> CapacityIndex {
        CapacityIndex::from_groups(&model.node_groups)
    }

    /// Parses some node groups of a capacity model.
    pub fn from_groups(node_groups: &[NodeGroup]) -> CapacityIndex {
        let mut resources: Vec<String> = Vec::new();
        for g in node_groups {
            for name in g.free.keys() {
                if let Err(at) = resources.binary_search(name) {
                    resources.insert(at, name.clone());
                }
            }
        }
        let groups = node_groups
            .iter()
            .map(|g| {
                let mut free = vec![None; resources.len()];
                for (name, q) in &g.free {
                    if let Ok(col) = resources.binary_search(name) {
                        free[col] = Some(quantity::parse(&q.0).unwrap_or_default());
                    }
                }
                (g.count, free)
            })
            .collect();
        CapacityIndex { resources, groups }
    }

    /// How many node groups it holds.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// True when it holds no node group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The index of its first `n` node groups, as [`CapacityIndex::from_groups`] would
    /// build it from them (resources no remaining group reports are dropped).
    pub fn prefix(&self, n: usize) -> CapacityIndex {
        let groups = &self.groups[..n.min(self.groups.len())];
        let keep: Vec<usize> = (0..self.resources.len())
            .filter(|&c| groups.iter().any(|(_, free)| free[c].is_some()))
            .collect();
        CapacityIndex {
            resources: keep.iter().map(|&c| self.resources[c].clone()).collect(),
            groups: groups
                .iter()
                .map(|(count, free)| (*count, keep.iter().map(|&c| free[c]).collect()))
                .collect(),
        }
    }

    /// Room for instances requesting `requests` (each also takes one `pods` slot where
    /// a group reports `pods`), at most `max_per_node` per node.
    pub fn estimate(&self, requests: &Requests, max_per_node: Option<u32>) -> Estimate {
        let template = Template {
            requests: requests.clone(),
            max_per_node,
        };
        self.room(&template).estimate(&template)
    }

    /// Room for `template` in these node groups, in a form that adds up across groups.
    pub(crate) fn room(&self, template: &Template) -> Room {
        let wants = self.wants(template);
        let mut instances: u128 = 0;
        for (count, free) in &self.groups {
            let mut per_node = wants.iter().map(|w| w.fit(free)).min().unwrap_or(u128::MAX);
            if let Some(cap) = template.max_per_node {
                per_node = per_node.min(u128::from(cap));
            }
            instances = instances.saturating_add(per_node.saturating_mul(u128::from(*count)));
        }
        // Only an estimate of nothing names what is short, so only then count it.
        let short = (instances == 0).then(|| {
            wants
                .iter()
                .map(|w| {
                    self.groups
                        .iter()
                        .filter(|(_, free)| w.fit(free) == 0)
                        .map(|(c, _)| u64::from(*c))
                        .sum()
                })
                .collect()
        });
        Room { instances, short }
    }

    /// What `template` needs, in [`Template::wants`] order, located in this index.
    fn wants(&self, template: &Template) -> Vec<Want> {
        let index = |name: &str| {
            self.resources
                .binary_search_by(|r| r.as_str().cmp(name))
                .ok()
        };
        template
            .wants()
            .map(|(name, need, absent_unlimited)| Want {
                column: index(name),
                need,
                absent_unlimited,
            })
            .collect()
    }
}

/// What an instance asks of a node: the key under which estimates are remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) requests: Requests,
    pub(crate) max_per_node: Option<u32>,
}

impl Template {
    /// Every resource an instance needs: its requests, then one `pods` slot (a group
    /// that does not report `pods` has no limit on it), with whether an absent column
    /// is unlimited.
    fn wants(&self) -> impl Iterator<Item = (&str, Amount, bool)> {
        self.requests
            .iter()
            .map(|(name, &need)| (name.as_str(), need, false))
            .chain(std::iter::once((PODS, Amount::units(1), true)))
    }
}

/// A template's room in some node groups. Rooms add up: the room in two lists of
/// groups is the room in both together, so a digest of a model's groups can be reused
/// when more groups are added to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Room {
    /// Instances that fit (saturating).
    instances: u128,
    /// Only when nothing fits: per [`Template::wants`], the nodes short of it.
    short: Option<Vec<u64>>,
}

impl Room {
    /// The room in both.
    pub(crate) fn add(self, other: Room) -> Room {
        let instances = self.instances.saturating_add(other.instances);
        let short = match (self.short, other.short) {
            (Some(a), Some(b)) if instances == 0 => {
                Some(a.iter().zip(&b).map(|(x, y)| x + y).collect())
            }
            _ => None,
        };
        Room { instances, short }
    }

    /// The estimate for `template` (the template this room was computed for).
    pub(crate) fn estimate(&self, template: &Template) -> Estimate {
        let instances = u32::try_from(self.instances).unwrap_or(UNLIMITED);
        let Some(short) = self.short.as_ref().filter(|_| instances == 0) else {
            return Estimate {
                instances,
                short_of: None,
            };
        };
        // Nothing fits: name the resource most nodes are short of (ties by name).
        let worst = template
            .wants()
            .zip(short)
            .filter(|(_, nodes)| **nodes > 0)
            .min_by(|a, b| b.1.cmp(a.1).then(a.0.0.cmp(b.0.0)));
        Estimate {
            instances,
            short_of: worst.map(|((name, need, _), _)| (name.to_string(), need)),
        }
    }
}

/// One resource an instance needs, located in a [`CapacityIndex`].
struct Want {
    /// Its column in the index; `None` when no group reports it.
    column: Option<usize>,
    need: Amount,
    /// A group that does not report it has no limit on it (true for `pods`).
    absent_unlimited: bool,
}

impl Want {
    /// How many instances one node with `free` can take, as far as this resource goes.
    fn fit(&self, free: &[Option<Amount>]) -> u128 {
        match self.column.and_then(|c| free[c]) {
            Some(have) => have.fits(self.need).unwrap_or(u128::MAX),
            None if self.absent_unlimited => u128::MAX,
            None => 0,
        }
    }
}

/// Estimates room in one step (parses `model` each call; see [`CapacityIndex`] to parse
/// once). `None` capacity (not reported) counts as unlimited.
pub fn estimate(
    model: Option<&CapacityModel>,
    requests: &Requests,
    max_per_node: Option<u32>,
) -> Estimate {
    match model {
        Some(m) => CapacityIndex::new(m).estimate(requests, max_per_node),
        None => Estimate {
            instances: UNLIMITED,
            short_of: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::NodeGroup;
    use flotilla_api::quantity::parse;
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

    fn req(pairs: &[(&str, &str)]) -> Requests {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), parse(v).unwrap()))
            .collect()
    }

    fn model(groups: Vec<NodeGroup>) -> CapacityModel {
        CapacityModel {
            node_groups: groups,
        }
    }

    #[test]
    fn takes_the_scarcest_resource_per_node() {
        let m = model(vec![group(
            10,
            &[
                ("cpu", "15"),
                ("memory", "60Gi"),
                ("pods", "100"),
                ("flotilla.io/network-mbps", "10000"),
            ],
        )]);
        let r = req(&[
            ("cpu", "1"),
            ("memory", "4Gi"),
            ("flotilla.io/network-mbps", "200"),
        ]);
        assert_eq!(estimate(Some(&m), &r, None).instances, 150);
        assert_eq!(estimate(Some(&m), &r, Some(1)).instances, 10);
        assert_eq!(
            estimate(Some(&m), &req(&[("cpu", "1"), ("memory", "16Gi")]), None).instances,
            30
        );
    }

    #[test]
    fn pods_limit_and_groups_add_up() {
        let m = model(vec![
            group(2, &[("cpu", "64"), ("pods", "3")]),
            group(3, &[("cpu", "2500m")]),
        ]);
        assert_eq!(
            estimate(Some(&m), &req(&[("cpu", "500m")]), None).instances,
            2 * 3 + 3 * 5
        );
    }

    #[test]
    fn a_missing_resource_means_no_room_and_says_which() {
        let m = model(vec![group(4, &[("cpu", "8"), ("pods", "10")])]);
        let e = estimate(
            Some(&m),
            &req(&[("cpu", "1"), ("nvidia.com/gpu", "1")]),
            None,
        );
        assert_eq!(e.instances, 0);
        assert_eq!(
            e.short_of,
            Some(("nvidia.com/gpu".to_string(), parse("1").unwrap()))
        );
    }

    #[test]
    fn unknown_or_unlimited_capacity_saturates() {
        assert_eq!(estimate(None, &Requests::new(), None).instances, UNLIMITED);
        let m = model(vec![group(u32::MAX, &[("cpu", "1000")])]);
        assert_eq!(
            estimate(Some(&m), &req(&[("cpu", "1m")]), None).instances,
            UNLIMITED
        );
        let empty: BTreeMap<String, Quantity> = BTreeMap::new();
        let m = model(vec![NodeGroup {
            count: 5,
            free: empty,
        }]);
        assert_eq!(estimate(Some(&m), &Requests::new(), Some(2)).instances, 10);
    }
}
