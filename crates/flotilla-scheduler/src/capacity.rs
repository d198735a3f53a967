//! How many instances of a template a cluster has room for.
//!
//! Per node group: instances per node is the minimum over every requested resource of
//! `floor(free / request)` (each instance also takes one `pods` slot), capped by
//! `maxInstancesPerNode`; the cluster's room is that times the group's node count,
//! summed over groups. Exact integer arithmetic throughout (see
//! [`flotilla_api::quantity`]).

use flotilla_api::CapacityModel;
use flotilla_api::quantity::{self, Amount};
use flotilla_api::resources::{PODS, Requests};

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
        let mut resources: Vec<String> = Vec::new();
        for g in &model.node_groups {
            for name in g.free.keys() {
                if let Err(at) = resources.binary_search(name) {
                    resources.insert(at, name.clone());
                }
            }
        }
        let groups = model
            .node_groups
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

    /// Room for instances requesting `requests` (each also takes one `pods` slot where
    /// a group reports `pods`), at most `max_per_node` per node.
    pub fn estimate(&self, requests: &Requests, max_per_node: Option<u32>) -> Estimate {
        let index = |name: &str| {
            self.resources
                .binary_search_by(|r| r.as_str().cmp(name))
                .ok()
        };
        let wants: Vec<Want<'_>> = requests
            .iter()
            .map(|(name, &need)| Want {
                name,
                column: index(name),
                need,
                absent_unlimited: false,
            })
            .chain(index(PODS).map(|c| Want {
                name: PODS,
                column: Some(c),
                need: Amount::units(1),
                absent_unlimited: true,
            }))
            .collect();
        let mut total: u128 = 0;
        for (count, free) in &self.groups {
            let mut per_node = wants.iter().map(|w| w.fit(free)).min().unwrap_or(u128::MAX);
            if let Some(cap) = max_per_node {
                per_node = per_node.min(u128::from(cap));
            }
            total = total.saturating_add(per_node.saturating_mul(u128::from(*count)));
        }
        let instances = u32::try_from(total).unwrap_or(UNLIMITED);
        if instances > 0 {
            return Estimate {
                instances,
                short_of: None,
            };
        }
        // Nothing fits: name the resource most nodes are short of (ties by name).
        let short = wants
            .iter()
            .map(|w| {
                let nodes: u64 = self
                    .groups
                    .iter()
                    .filter(|(_, free)| w.fit(free) == 0)
                    .map(|(c, _)| u64::from(*c))
                    .sum();
                (nodes, w)
            })
            .filter(|(nodes, _)| *nodes > 0)
            .min_by(|a, b| b.0.cmp(&a.0).then(a.1.name.cmp(b.1.name)));
        Estimate {
            instances,
            short_of: short.map(|(_, w)| (w.name.to_string(), w.need)),
        }
    }
}

/// One resource an instance needs, located in a [`CapacityIndex`].
struct Want<'a> {
    name: &'a str,
    /// Its column in the index; `None` when no group reports it.
    column: Option<usize>,
    need: Amount,
    /// A group that does not report it has no limit on it (true for `pods`).
    absent_unlimited: bool,
}

impl Want<'_> {
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
