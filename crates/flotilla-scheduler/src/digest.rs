//! Clusters' capacity models, digested once and kept while they do not change.
//!
//! ```text
//!  Cluster status ──▶ node groups ──(equal prefix?)──▶ CapacityCache entry: Digest
//!                                        │ yes: reuse it; parse only the groups after it
//!                                        │ no:  parse the model again
//!  Inventory: per cluster, Capacity { base: Arc<Digest>, extra } ──▶ estimate(template)
//!  Digest: parsed groups + the room already estimated per template (bounded memo)
//! ```
//!
//! Parsing a capacity model (every quantity of every node group) is the costly part of
//! building an [`Inventory`]; estimating a template's room on it is the costly part of
//! a plan. A [`CapacityCache`] keeps both per cluster name, keyed by the node groups
//! they were made from, so a re-plan on clusters whose capacity did not change parses
//! nothing and estimates nothing.
//!
//! Room adds up over node groups, so a digest also serves a model that has more
//! groups after the ones it was made from (the controller appends one group of room
//! for a set's own instances): only the extra groups are parsed and estimated.
//!
//! Results never depend on the cache: an inventory from it plans exactly as
//! [`Inventory::new`] on the same clusters (a property test checks it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flotilla_api::{Cluster, NodeGroup, Valid};

use crate::capacity::{CapacityIndex, Estimate, Room, Template};
use crate::plan::Inventory;

/// How many templates' room a digest remembers (the oldest is forgotten first).
const MEMO: usize = 32;

/// Parsed node groups, and the room already estimated on them.
#[derive(Debug)]
pub(crate) struct Digest {
    index: CapacityIndex,
    /// Most recently used last.
    memo: Mutex<Vec<(Template, Room)>>,
}

impl Digest {
    pub(crate) fn new(index: CapacityIndex) -> Digest {
        Digest {
            index,
            memo: Mutex::new(Vec::new()),
        }
    }

    /// `template`'s room in these groups, estimated once.
    fn room(&self, template: &Template) -> Room {
        // A poisoned memo only means a panic elsewhere: its entries are still whole.
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = memo.iter().rposition(|(t, _)| t == template) {
            let room = memo[at].1.clone();
            if at + 1 != memo.len() {
                let hit = memo.remove(at);
                memo.push(hit);
            }
            return room;
        }
        let room = self.index.room(template);
        if memo.len() == MEMO {
            memo.remove(0);
        }
        memo.push((template.clone(), room.clone()));
        room
    }
}

/// A cluster's capacity as an inventory holds it: a digest, and the groups that follow
/// the ones it was made from.
#[derive(Debug)]
pub(crate) struct Capacity {
    pub(crate) base: Arc<Digest>,
    pub(crate) extra: Option<CapacityIndex>,
}

impl Capacity {
    pub(crate) fn estimate(&self, template: &Template) -> Estimate {
        let mut room = self.base.room(template);
        if let Some(extra) = &self.extra {
            room = room.add(extra.room(template));
        }
        room.estimate(template)
    }
}

/// Per cluster name: the groups a digest was made from, and the digest.
#[derive(Debug)]
struct Entry {
    groups: Vec<NodeGroup>,
    digest: Arc<Digest>,
}

/// Capacity digests kept between [`Inventory`]s, so that one is rebuilt only for the
/// clusters whose capacity model changed. Keep one per caller that plans repeatedly
/// (the federation controller), and build every inventory through
/// [`CapacityCache::inventory`].
#[derive(Debug, Default)]
pub struct CapacityCache {
    entries: BTreeMap<String, Entry>,
}

impl CapacityCache {
    /// An empty cache.
    pub fn new() -> CapacityCache {
        CapacityCache::default()
    }

    /// How many clusters it holds a digest for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds no digest.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// An inventory of `clusters` (validated), reusing the digest of every cluster
    /// whose node groups start with the ones its digest was made from. Digests of
    /// clusters not in `clusters` are dropped.
    pub fn inventory<'a>(&mut self, clusters: &'a [Valid<Cluster>]) -> Inventory<'a> {
        let mut names: Vec<&str> = clusters.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        self.entries
            .retain(|name, _| names.binary_search(&name.as_str()).is_ok());
        let list = clusters
            .iter()
            .map(|c| {
                let groups = c
                    .status
                    .as_ref()
                    .and_then(|s| s.capacity.as_ref())
                    .map(|m| m.node_groups.as_slice());
                let capacity = match groups {
                    Some(groups) => Some(self.capacity(c.name(), groups)),
                    None => {
                        self.entries.remove(c.name());
                        None
                    }
                };
                (c, capacity)
            })
            .collect();
        Inventory::from_digests(list)
    }

    /// The capacity of cluster `name` with these node groups, from its entry where the
    /// entry's groups are a prefix of them; the entry is replaced otherwise.
    fn capacity(&mut self, name: &str, groups: &[NodeGroup]) -> Capacity {
        let extra = |from: usize| {
            (from < groups.len()).then(|| CapacityIndex::from_groups(&groups[from..]))
        };
        let Some(entry) = self.entries.get_mut(name) else {
            let digest = Arc::new(Digest::new(CapacityIndex::from_groups(groups)));
            self.entries.insert(
                name.to_string(),
                Entry {
                    groups: groups.to_vec(),
                    digest: digest.clone(),
                },
            );
            return Capacity {
                base: digest,
                extra: None,
            };
        };
        let same = entry
            .groups
            .iter()
            .zip(groups)
            .take_while(|(a, b)| a == b)
            .count();
        if same == entry.groups.len() {
            return Capacity {
                base: entry.digest.clone(),
                extra: extra(same),
            };
        }
        if same + 1 == entry.groups.len() {
            // Only the last group differs: the model is the digest's groups with a
            // different tail (a set's own room, counted back in by the controller).
            // Keep the common part, so both tails reuse it.
            entry.groups.truncate(same);
            entry.digest = Arc::new(Digest::new(entry.digest.index.prefix(same)));
            return Capacity {
                base: entry.digest.clone(),
                extra: extra(same),
            };
        }
        entry.groups = groups.to_vec();
        entry.digest = Arc::new(Digest::new(CapacityIndex::from_groups(groups)));
        Capacity {
            base: entry.digest.clone(),
            extra: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_api::quantity::parse;
    use flotilla_api::{ClusterStatus, validate};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn group(count: u32, cpu: &str) -> NodeGroup {
        NodeGroup {
            count,
            free: [("cpu".to_string(), Quantity(cpu.to_string()))].into(),
        }
    }

    fn cluster(name: &str, groups: Vec<NodeGroup>) -> Valid<Cluster> {
        let mut c: Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "flotilla.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": name}, "spec": {},
        }))
        .unwrap();
        c.status = Some(ClusterStatus {
            ready: true,
            capacity: Some(flotilla_api::CapacityModel {
                node_groups: groups,
            }),
            ..ClusterStatus::default()
        });
        validate::cluster(c).unwrap()
    }

    /// The digest and extra groups cluster `name` got.
    fn capacity<'a>(inventory: &'a Inventory<'_>, name: &str) -> &'a Capacity {
        inventory.capacity_of(name).expect("has capacity")
    }

    fn template(cpu: &str) -> Template {
        Template {
            requests: [("cpu".to_string(), parse(cpu).unwrap())].into(),
            max_per_node: None,
        }
    }

    #[test]
    fn unchanged_capacity_reuses_the_digest_and_its_estimates() {
        let base = vec![group(2, "8"), group(3, "4")];
        let clusters = vec![cluster("a", base.clone()), cluster("b", base.clone())];
        let mut cache = CapacityCache::new();
        let first = cache.inventory(&clusters);
        let a1 = capacity(&first, "a").base.clone();
        assert_eq!(capacity(&first, "a").estimate(&template("2")).instances, 14);
        let again = cache.inventory(&clusters);
        assert!(Arc::ptr_eq(&a1, &capacity(&again, "a").base));
        assert!(capacity(&again, "a").extra.is_none());
        assert_eq!(
            a1.memo.lock().unwrap().len(),
            1,
            "the estimate was remembered"
        );

        // b's capacity changes (a group in the middle): only b is parsed again.
        let changed = vec![
            cluster("a", base.clone()),
            cluster("b", vec![group(1, "8"), group(3, "4")]),
        ];
        let third = cache.inventory(&changed);
        assert!(Arc::ptr_eq(&a1, &capacity(&third, "a").base));
        assert!(!Arc::ptr_eq(
            &capacity(&again, "b").base,
            &capacity(&third, "b").base
        ));
        assert_eq!(capacity(&third, "b").estimate(&template("2")).instances, 10);

        // A cluster that goes is forgotten.
        let fewer = vec![cluster("b", vec![group(1, "8"), group(3, "4")])];
        let _ = cache.inventory(&fewer);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn groups_added_at_the_end_are_parsed_alone_and_tails_share_the_rest() {
        let base = vec![group(2, "8"), group(3, "4"), group(1, "16")];
        let with = |tail: NodeGroup| {
            let mut g = base.clone();
            g.push(tail);
            vec![cluster("a", g)]
        };
        let mut cache = CapacityCache::new();
        let plain = vec![cluster("a", base.clone())];
        let first = cache.inventory(&plain);
        let digest = capacity(&first, "a").base.clone();
        // A set's own room appended: the digest stays, one group is parsed.
        let own_a = with(group(5, "2"));
        let inv = cache.inventory(&own_a);
        assert!(Arc::ptr_eq(&digest, &capacity(&inv, "a").base));
        assert_eq!(
            capacity(&inv, "a").extra.as_ref().map(CapacityIndex::len),
            Some(1)
        );
        assert_eq!(
            capacity(&inv, "a").estimate(&template("2")).instances,
            8 + 6 + 8 + 5
        );

        // Starting from a model with one tail, another tail keeps the common groups.
        let mut cache = CapacityCache::new();
        let _ = cache.inventory(&own_a);
        let own_b = with(group(7, "2"));
        let b = cache.inventory(&own_b);
        let shared = capacity(&b, "a").base.clone();
        assert_eq!(shared.index, CapacityIndex::from_groups(&base));
        for clusters in [&own_a, &own_b, &plain] {
            let inv = cache.inventory(clusters);
            assert!(Arc::ptr_eq(&shared, &capacity(&inv, "a").base));
            let fresh = Inventory::new(clusters);
            assert_eq!(
                capacity(&inv, "a").estimate(&template("3")),
                capacity(&fresh, "a").estimate(&template("3"))
            );
        }
    }

    #[test]
    fn rooms_add_up_to_the_estimate_of_all_groups_and_say_what_is_short() {
        let groups = vec![group(2, "1"), group(3, "500m"), group(4, "2")];
        let whole = CapacityIndex::from_groups(&groups);
        for cut in 0..=groups.len() {
            let (head, tail) = groups.split_at(cut);
            for cpu in ["1", "3", "100m"] {
                let t = template(cpu);
                let parts = CapacityIndex::from_groups(head)
                    .room(&t)
                    .add(CapacityIndex::from_groups(tail).room(&t));
                assert_eq!(
                    parts.estimate(&t),
                    whole.room(&t).estimate(&t),
                    "cut {cut}, cpu {cpu}"
                );
                assert_eq!(whole.prefix(cut), CapacityIndex::from_groups(head));
            }
        }
        let none = whole.room(&template("3")).estimate(&template("3"));
        assert_eq!(none.instances, 0);
        assert_eq!(
            none.short_of,
            Some(("cpu".to_string(), parse("3").unwrap()))
        );
    }
}
