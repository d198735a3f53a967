//! How many instances of a template a cluster has room for.
//!
//! Per node group: instances per node is the minimum over every requested resource of
//! `floor(free / request)` (each instance also takes one `pods` slot), capped by
//! `maxInstancesPerNode`; the cluster's room is that times the group's node count,
//! summed over groups. Exact integer arithmetic throughout (see
//! [`flotilla_api::quantity`]).

use flotilla_api::CapacityModel;
use flotilla_api::quantity::Amount;
use flotilla_api::resources::{self, PODS, Requests};

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

/// Estimates room for instances requesting `requests` (one `pods` slot each, implied).
/// `None` capacity (not reported) counts as unlimited.
pub fn estimate(model: Option<&CapacityModel>, requests: &Requests, max_per_node: Option<u32>) -> Estimate {
    let Some(model) = model else {
        return Estimate { instances: UNLIMITED, short_of: None };
    };
    let mut total: u128 = 0;
    // (resource, nodes short of it), to explain a zero.
    let mut shortages: Vec<(String, Amount, u64)> = Vec::new();
    for group in &model.node_groups {
        let free = resources::free_resources(&group.free);
        let mut per_node: u128 = u128::MAX;
        let mut limit = |name: &str, need: Amount| {
            let have = free.get(name).copied().unwrap_or_default();
            let fit = have.fits(need).unwrap_or(u128::MAX);
            per_node = per_node.min(fit);
            if fit == 0 && group.count > 0 {
                match shortages.iter_mut().find(|(n, _, _)| n == name) {
                    Some(s) => s.2 += u64::from(group.count),
                    None => shortages.push((name.to_string(), need, u64::from(group.count))),
                }
            }
        };
        for (name, &need) in requests {
            limit(name, need);
        }
        if free.contains_key(PODS) {
            limit(PODS, Amount::units(1));
        }
        if let Some(cap) = max_per_node {
            per_node = per_node.min(u128::from(cap));
        }
        total = total.saturating_add(per_node.saturating_mul(u128::from(group.count)));
    }
    let instances = u32::try_from(total).unwrap_or(UNLIMITED);
    let short_of = if instances == 0 {
        // Most nodes short of it first; ties by name.
        shortages.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        shortages.into_iter().next().map(|(n, need, _)| (n, need))
    } else {
        None
    };
    Estimate { instances, short_of }
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
            free: free.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect(),
        }
    }

    fn req(pairs: &[(&str, &str)]) -> Requests {
        pairs.iter().map(|(k, v)| (k.to_string(), parse(v).unwrap())).collect()
    }

    fn model(groups: Vec<NodeGroup>) -> CapacityModel {
        CapacityModel { node_groups: groups }
    }

    #[test]
    fn takes_the_scarcest_resource_per_node() {
        let m = model(vec![group(10, &[("cpu", "15"), ("memory", "60Gi"), ("pods", "100"), ("flotilla.io/network-mbps", "10000")])]);
        let r = req(&[("cpu", "1"), ("memory", "4Gi"), ("flotilla.io/network-mbps", "200")]);
        assert_eq!(estimate(Some(&m), &r, None).instances, 150);
        assert_eq!(estimate(Some(&m), &r, Some(1)).instances, 10);
        assert_eq!(estimate(Some(&m), &req(&[("cpu", "1"), ("memory", "16Gi")]), None).instances, 30);
    }

    #[test]
    fn pods_limit_and_groups_add_up() {
        let m = model(vec![group(2, &[("cpu", "64"), ("pods", "3")]), group(3, &[("cpu", "2500m")])]);
        assert_eq!(estimate(Some(&m), &req(&[("cpu", "500m")]), None).instances, 2 * 3 + 3 * 5);
    }

    #[test]
    fn a_missing_resource_means_no_room_and_says_which() {
        let m = model(vec![group(4, &[("cpu", "8"), ("pods", "10")])]);
        let e = estimate(Some(&m), &req(&[("cpu", "1"), ("nvidia.com/gpu", "1")]), None);
        assert_eq!(e.instances, 0);
        assert_eq!(e.short_of, Some(("nvidia.com/gpu".to_string(), parse("1").unwrap())));
    }

    #[test]
    fn unknown_or_unlimited_capacity_saturates() {
        assert_eq!(estimate(None, &Requests::new(), None).instances, UNLIMITED);
        let m = model(vec![group(u32::MAX, &[("cpu", "1000")])]);
        assert_eq!(estimate(Some(&m), &req(&[("cpu", "1m")]), None).instances, UNLIMITED);
        let empty: BTreeMap<String, Quantity> = BTreeMap::new();
        let m = model(vec![NodeGroup { count: 5, free: empty }]);
        assert_eq!(estimate(Some(&m), &Requests::new(), Some(2)).instances, 10);
    }
}
