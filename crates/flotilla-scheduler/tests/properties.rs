//! Property tests for [`flotilla_scheduler::plan`]: random sets and clusters in, the
//! placement contract checked out.
//!
//! Inputs are small (1–6 clusters `c0`…`c5` of 1–4 node groups, 0–60 replicas) and
//! come from a [`Scenario`]: plain numbers, normalised so that the set validates, and
//! rendered as the YAML a user would write. That YAML is also how proptest prints a
//! failing input. Every expectation (capacity, eligibility, the ordinal space,
//! proportional shares, whether minimums can be met) is worked out here from the
//! scenario, not taken from the scheduler's own helpers.
//!
//! Properties, fresh plans:
//! - well-formed: one entry per cluster in name order, ascending ordinals, no ordinal
//!   twice, `placed + unschedulable == replicas`, ordinals inside the space and not
//!   offline;
//! - the ordinals used are exactly the lowest usable ones;
//! - the reported capacity is the node-group estimate (also for ineligible clusters), and
//!   no cluster holds more than it;
//! - ineligible clusters (not ready, outside the affinity, without the spread label)
//!   get nothing;
//! - `perCluster` max, `maxSharePerCluster` and `maxClusters` hold, and `perCluster`
//!   min holds when it can;
//! - `minClusters`/`minGroups`: nothing is placed when they cannot be met, they are
//!   met when they can, and `maxGroups` holds;
//! - simple configurations divide exactly in proportion to the weights (largest
//!   remainder, ties by name), and never leave usable room while instances are
//!   unschedulable;
//! - the same input gives the same plan, whatever the order of the clusters.
//!
//! Properties, re-planning from a previous plan:
//! - re-planning a plan's own output changes nothing;
//! - scaling up keeps every instance and adds only the lowest free ordinals;
//! - scaling down only removes, exactly the excess, the highest ordinals of a cluster
//!   first;
//! - a cluster that stops being ready keeps its ordinals (failover `Keep`) or loses
//!   them to the lowest free ordinals elsewhere (`Reschedule`);
//! - a plan survives a JSON and a YAML round trip;
//! - an inventory built through a `CapacityCache` that has seen earlier versions of the
//!   clusters (capacity changed, groups added or dropped at the end, clusters gone)
//!   plans exactly as a freshly built one, fresh and from a previous plan, also while
//!   avoiding busy ordinals.
//!
//! Each property runs 256 cases; `PROPTEST_CASES` overrides that.

use std::collections::BTreeSet;
use std::fmt;

use flotilla_api::decode::AnyObject;
use flotilla_api::ordinals::{MAX_ORDINAL, display_list};
use flotilla_api::{Cluster, FederatedInstanceSet, Valid, validate};
use flotilla_scheduler::{CapacityCache, Inventory, Plan, UNLIMITED, plan};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

const API_VERSION: &str = "flotilla.io/v1alpha1";
/// Cluster names, already in name order.
const NAMES: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
/// Values of the `region` label, the one label sets spread by.
const REGIONS: [&str; 3] = ["r1", "r2", "r3"];

// ---------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------

/// `count` nodes with these free resources each (`None` = the resource is absent).
#[derive(Clone, Debug)]
struct NodeGroup {
    count: u32,
    cpu_milli: Option<u64>,
    memory_mi: Option<u64>,
    network_mbps: Option<u64>,
    pods: Option<u64>,
}

/// One member cluster.
#[derive(Clone, Debug)]
struct Member {
    not_ready: bool,
    /// Index into [`REGIONS`]; `None` = no `region` label.
    region: Option<usize>,
    /// `None` = no capacity model reported (unlimited room).
    groups: Option<Vec<NodeGroup>>,
}

#[derive(Clone, Debug)]
enum Weighting {
    /// No `weights`: equal weights.
    Equal,
    /// `weights: {dynamic: AvailableCapacity}`.
    Dynamic,
    /// `weights: {static: …}`, by cluster index; `None` = cluster not listed.
    Static(Vec<Option<u32>>),
}

#[derive(Clone, Copy, Debug, Default)]
struct Bounds {
    min: Option<u32>,
    max: Option<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Spread {
    min_groups: Option<u32>,
    max_groups: Option<u32>,
}

/// A validated set and its validated clusters.
type Inputs = (Valid<FederatedInstanceSet>, Vec<Valid<Cluster>>);

/// An ordinal space: inclusive ranges and discrete ordinals.
type Space = Option<(Vec<(u32, u32)>, Vec<u32>)>;

/// A set and its clusters, as plain numbers.
#[derive(Clone)]
struct Scenario {
    replicas: u32,
    /// What one instance requests.
    cpu_milli: Option<u64>,
    memory_mi: Option<u64>,
    network_mbps: Option<u64>,
    max_per_node: Option<u32>,
    weighting: Weighting,
    /// `perCluster`, by cluster index.
    bounds: Vec<Bounds>,
    min_clusters: Option<u32>,
    max_clusters: Option<u32>,
    max_share: Option<u32>,
    /// `spread: [{byLabel: region, …}]`.
    spread: Option<Spread>,
    /// `clusterAffinity.clusterNames`, by cluster index (none listed = any name).
    affinity: Option<Vec<bool>>,
    /// `ordinals`: inclusive ranges and discrete ordinals.
    space: Space,
    offline: Vec<u32>,
    reschedule: bool,
    members: Vec<Member>,
}

/// Shown as the YAML documents it stands for (set first, then the clusters).
impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n{}", self.yaml())
    }
}

fn cpu(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

fn memory(mi: u64) -> String {
    if mi > 0 && mi.is_multiple_of(1024) {
        format!("{}Gi", mi / 1024)
    } else {
        format!("{mi}Mi")
    }
}

/// `resources` as a Kubernetes resource list (every value a string quantity).
fn resource_list(
    cpu_milli: Option<u64>,
    memory_mi: Option<u64>,
    mbps: Option<u64>,
    pods: Option<u64>,
) -> Map<String, Value> {
    let mut list = Map::new();
    if let Some(m) = cpu_milli {
        list.insert("cpu".into(), cpu(m).into());
    }
    if let Some(m) = memory_mi {
        list.insert("memory".into(), memory(m).into());
    }
    if let Some(m) = mbps {
        list.insert("flotilla.io/network-mbps".into(), m.to_string().into());
    }
    if let Some(p) = pods {
        list.insert("pods".into(), p.to_string().into());
    }
    list
}

impl Scenario {
    fn n(&self) -> usize {
        self.members.len()
    }

    fn set_json(&self) -> Value {
        let requests = resource_list(self.cpu_milli, self.memory_mi, self.network_mbps, None);
        let mut container = json!({"name": "app", "image": "app:1"});
        if !requests.is_empty() {
            container["resources"] = json!({ "requests": requests });
        }
        let mut placement = Map::new();
        if let Some(a) = &self.affinity {
            let names: Vec<&str> = (0..self.n()).filter(|&i| a[i]).map(|i| NAMES[i]).collect();
            placement.insert("clusterAffinity".into(), json!({ "clusterNames": names }));
        }
        match &self.weighting {
            Weighting::Equal => {}
            Weighting::Dynamic => {
                placement.insert("weights".into(), json!({"dynamic": "AvailableCapacity"}));
            }
            Weighting::Static(w) => {
                let map: Map<String, Value> = w
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| w.map(|w| (NAMES[i].to_string(), w.into())))
                    .collect();
                placement.insert("weights".into(), json!({ "static": map }));
            }
        }
        let mut per_cluster = Map::new();
        for (i, b) in self.bounds.iter().enumerate() {
            let mut entry = Map::new();
            if let Some(min) = b.min {
                entry.insert("min".into(), min.into());
            }
            if let Some(max) = b.max {
                entry.insert("max".into(), max.into());
            }
            if !entry.is_empty() {
                per_cluster.insert(NAMES[i].into(), entry.into());
            }
        }
        if !per_cluster.is_empty() {
            placement.insert("perCluster".into(), per_cluster.into());
        }
        if let Some(m) = self.min_clusters {
            placement.insert("minClusters".into(), m.into());
        }
        if let Some(m) = self.max_clusters {
            placement.insert("maxClusters".into(), m.into());
        }
        if let Some(sp) = self.spread {
            let mut c = Map::new();
            c.insert("byLabel".into(), "region".into());
            if let Some(m) = sp.min_groups {
                c.insert("minGroups".into(), m.into());
            }
            if let Some(m) = sp.max_groups {
                c.insert("maxGroups".into(), m.into());
            }
            placement.insert("spread".into(), json!([c]));
        }
        if let Some(m) = self.max_per_node {
            placement.insert("maxInstancesPerNode".into(), m.into());
        }
        if let Some(m) = self.max_share {
            placement.insert("maxSharePerCluster".into(), m.into());
        }
        if self.reschedule {
            placement.insert("failover".into(), json!({"policy": "Reschedule"}));
        }
        let mut spec = json!({
            "replicas": self.replicas,
            "template": {"spec": {"containers": [container]}},
        });
        if let Some((ranges, discrete)) = &self.space {
            let ranges: Vec<Value> = ranges
                .iter()
                .map(|&(s, e)| json!({"start": s, "end": e}))
                .collect();
            spec["ordinals"] = json!({"ranges": ranges, "discrete": discrete});
        }
        if !self.offline.is_empty() {
            spec["offlineOrdinals"] = json!(self.offline);
        }
        if !placement.is_empty() {
            spec["placement"] = placement.into();
        }
        json!({
            "apiVersion": API_VERSION,
            "kind": "FederatedInstanceSet",
            "metadata": {"name": "s"},
            "spec": spec,
        })
    }

    fn cluster_json(&self, i: usize) -> Value {
        let m = &self.members[i];
        let mut metadata = json!({"name": NAMES[i]});
        if let Some(r) = m.region {
            metadata["labels"] = json!({"region": REGIONS[r]});
        }
        let mut status = json!({"ready": !m.not_ready});
        if let Some(groups) = &m.groups {
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let free = resource_list(g.cpu_milli, g.memory_mi, g.network_mbps, g.pods);
                    json!({"count": g.count, "free": free})
                })
                .collect();
            status["capacity"] = json!({ "nodeGroups": groups });
        }
        json!({
            "apiVersion": API_VERSION,
            "kind": "Cluster",
            "metadata": metadata,
            "spec": {},
            "status": status,
        })
    }

    fn yaml(&self) -> String {
        let mut docs = vec![serde_yaml::to_string(&self.set_json()).unwrap()];
        docs.extend((0..self.n()).map(|i| serde_yaml::to_string(&self.cluster_json(i)).unwrap()));
        docs.join("---\n")
    }

    /// The validated set and clusters; `None` when validation refuses them.
    fn inputs(&self) -> Option<Inputs> {
        let set: FederatedInstanceSet =
            serde_json::from_value(self.set_json()).expect("the set decodes");
        let clusters: Vec<Cluster> = (0..self.n())
            .map(|i| serde_json::from_value(self.cluster_json(i)).expect("the cluster decodes"))
            .collect();
        Some((
            validate::federated_instance_set(set).ok()?,
            validate::clusters(clusters).ok()?,
        ))
    }

    /// The same scenario with another replica count (nothing else adjusted).
    fn with_replicas(&self, replicas: u32) -> Scenario {
        Scenario {
            replicas,
            ..self.clone()
        }
    }

    /// The same clusters without `minClusters`, `maxClusters` and `spread`.
    fn unconstrained(mut self) -> Scenario {
        self.min_clusters = None;
        self.max_clusters = None;
        self.spread = None;
        self
    }

    /// Also without `perCluster` bounds and `maxSharePerCluster`.
    fn unbounded(mut self) -> Scenario {
        self.bounds = vec![Bounds::default(); self.n()];
        self.max_share = None;
        self.unconstrained()
    }

    // --- Normalisation: make the set pass validation. ---

    fn normalized(mut self) -> Scenario {
        let n = self.n();
        self.bounds.truncate(n);
        if let Some(a) = &mut self.affinity {
            a.truncate(n);
        }
        if let Weighting::Static(w) = &mut self.weighting {
            w.truncate(n);
            if !w.iter().any(|w| w.is_some_and(|w| w > 0)) {
                w[0] = Some(1);
            }
        }
        if self
            .space
            .as_ref()
            .is_some_and(|(r, d)| r.is_empty() && d.is_empty())
        {
            self.space = None;
        }
        self.replicas = self
            .replicas
            .min(u32::try_from(self.usable_len()).unwrap_or(u32::MAX));
        self.fit_policy();
        self
    }

    /// Adjusts what validation ties to `replicas`: a share that rounds to 0, minimums
    /// above the share or adding up to more than `replicas`, `minClusters` and
    /// `minGroups` above `replicas` or `maxClusters`.
    fn fit_policy(&mut self) {
        let r = self.replicas;
        if let Some(s) = self.max_share
            && r > 0
            && u64::from(r) * u64::from(s) / 100 == 0
        {
            self.max_share = Some(100u32.div_ceil(r));
        }
        let cap = self.share_cap();
        let mut budget = r;
        for b in &mut self.bounds {
            if let (Some(min), Some(max)) = (b.min, b.max)
                && min > max
            {
                b.min = Some(max);
            }
            if let Some(min) = b.min {
                let min = min.min(cap).min(budget);
                budget -= min;
                b.min = Some(min);
            }
        }
        let with_min = self
            .bounds
            .iter()
            .filter(|b| b.min.unwrap_or(0) > 0)
            .count() as u32;
        if let Some(max) = &mut self.max_clusters {
            *max = (*max).max(with_min);
        }
        if let Some(mut min) = self.min_clusters {
            if let Some(max) = self.max_clusters {
                min = min.min(max);
            }
            if r > 0 {
                min = min.min(r);
            }
            self.min_clusters = Some(min);
        }
        if let Some(sp) = &mut self.spread {
            if let (Some(a), Some(b)) = (sp.min_groups, sp.max_groups)
                && a > b
            {
                sp.min_groups = Some(b);
            }
            if let Some(mut min) = sp.min_groups {
                if r > 0 {
                    min = min.min(r);
                }
                if let Some(max) = self.max_clusters {
                    min = min.min(max);
                }
                sp.min_groups = Some(min);
            }
        }
    }

    // --- The contract, computed independently. ---

    /// The explicit ordinal space, if any (before removing offline ordinals).
    fn explicit_space(&self) -> Option<BTreeSet<u32>> {
        self.space.as_ref().map(|(ranges, discrete)| {
            ranges
                .iter()
                .flat_map(|&(s, e)| s..=e)
                .chain(discrete.iter().copied())
                .collect()
        })
    }

    fn in_space(&self, o: u32) -> bool {
        let inside = match self.explicit_space() {
            Some(space) => space.contains(&o),
            None => o <= MAX_ORDINAL,
        };
        inside && !self.offline.contains(&o)
    }

    fn usable_len(&self) -> u64 {
        let offline: BTreeSet<u32> = self.offline.iter().copied().collect();
        match self.explicit_space() {
            Some(space) => space.difference(&offline).count() as u64,
            None => u64::from(MAX_ORDINAL) + 1 - offline.len() as u64,
        }
    }

    /// The `n` lowest usable ordinals not in `taken`, ascending.
    fn lowest_free(&self, n: usize, taken: &BTreeSet<u32>) -> Vec<u32> {
        let usable = |o: &u32| self.in_space(*o) && !taken.contains(o);
        match self.explicit_space() {
            Some(space) => space.into_iter().filter(usable).take(n).collect(),
            None => (0..=MAX_ORDINAL).filter(usable).take(n).collect(),
        }
    }

    fn share_cap(&self) -> u32 {
        self.max_share.map_or(u32::MAX, |s| {
            (u64::from(self.replicas) * u64::from(s) / 100) as u32
        })
    }

    /// May take new instances: ready, inside the affinity, labelled when spreading.
    fn eligible(&self, i: usize) -> bool {
        let in_affinity = match &self.affinity {
            Some(a) if a.iter().any(|&x| x) => a[i],
            _ => true,
        };
        !self.members[i].not_ready
            && in_affinity
            && (self.spread.is_none() || self.members[i].region.is_some())
    }

    /// Room for this template: per node group, the scarcest requested resource (and a
    /// `pods` slot per instance where `pods` is reported), capped by
    /// `maxInstancesPerNode`, times the node count; no model = unlimited.
    fn estimate(&self, i: usize) -> u32 {
        let Some(groups) = &self.members[i].groups else {
            return UNLIMITED;
        };
        let mut total: u128 = 0;
        for g in groups {
            let mut per_node: Option<u64> = None;
            let mut limit = |free: Option<u64>, need: Option<u64>| {
                if let Some(need) = need {
                    let fit = free.unwrap_or(0) / need;
                    per_node = Some(per_node.map_or(fit, |p| p.min(fit)));
                }
            };
            limit(g.cpu_milli, self.cpu_milli);
            limit(g.memory_mi, self.memory_mi);
            limit(g.network_mbps, self.network_mbps);
            limit(g.pods, g.pods.map(|_| 1));
            limit(
                self.max_per_node.map(u64::from),
                self.max_per_node.map(|_| 1),
            );
            let per_node = per_node.map_or(u128::from(UNLIMITED), u128::from);
            total = total.saturating_add(per_node * u128::from(g.count));
        }
        u32::try_from(total).unwrap_or(UNLIMITED)
    }

    fn max_of(&self, i: usize) -> u32 {
        self.bounds[i].max.unwrap_or(u32::MAX)
    }

    fn min_of(&self, i: usize) -> u32 {
        self.bounds[i].min.unwrap_or(0)
    }

    /// The most a fresh plan may put on cluster `i`: room, `perCluster` max, share.
    fn bound(&self, i: usize) -> u32 {
        if !self.eligible(i) {
            return 0;
        }
        self.estimate(i).min(self.max_of(i)).min(self.share_cap())
    }

    fn weight(&self, i: usize) -> u128 {
        match &self.weighting {
            Weighting::Equal => 1,
            Weighting::Dynamic => u128::from(self.estimate(i)),
            Weighting::Static(w) => u128::from(w[i].unwrap_or(0)),
        }
    }

    /// Distinct regions of the clusters in `members`.
    fn groups<I: IntoIterator<Item = usize>>(&self, members: I) -> usize {
        members
            .into_iter()
            .filter_map(|i| self.members[i].region)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Whether the cluster-count and group minimums and maximums can be met, by
    /// trying every set of clusters that could each run one instance (clusters with a
    /// `perCluster` min always among them).
    fn minimums(&self) -> Minimums {
        let n = self.n();
        let candidates: Vec<usize> = (0..n).filter(|&i| self.bound(i) > 0).collect();
        let mandatory: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.min_of(i) > 0)
            .collect();
        let (min_groups, max_groups) = self
            .spread
            .map_or((None, None), |s| (s.min_groups, s.max_groups));
        let max_ok = |clusters: usize, groups: usize| {
            self.max_clusters.is_none_or(|m| clusters as u32 <= m)
                && max_groups.is_none_or(|m| groups as u32 <= m)
        };
        let mut out = Minimums {
            mandatory_ok: max_ok(mandatory.len(), self.groups(mandatory.iter().copied())),
            possible: false,
            affordable: false,
        };
        for mask in 0u32..(1 << n) {
            let chosen: Vec<usize> = (0..n).filter(|&i| mask & (1 << i) != 0).collect();
            if !chosen.iter().all(|i| candidates.contains(i))
                || !mandatory.iter().all(|i| chosen.contains(i))
            {
                continue;
            }
            let groups = self.groups(chosen.iter().copied());
            let ok = max_ok(chosen.len(), groups)
                && self.min_clusters.is_none_or(|m| chosen.len() as u32 >= m)
                && min_groups.is_none_or(|m| groups as u32 >= m);
            if ok {
                out.possible = true;
                let cost: u64 = chosen
                    .iter()
                    .map(|&i| u64::from(self.min_of(i).min(self.bound(i)).max(1)))
                    .sum();
                out.affordable |= cost <= u64::from(self.replicas);
            }
        }
        out
    }

    /// Each eligible cluster's exact share of `replicas` by weight, largest remainder
    /// first, ties by name; `None` when there is no weight or some cluster's share
    /// would not fit its room.
    fn proportional(&self) -> Option<Vec<u32>> {
        let n = self.n();
        let w: Vec<u128> = (0..n)
            .map(|i| if self.eligible(i) { self.weight(i) } else { 0 })
            .collect();
        let total: u128 = w.iter().sum();
        let r = u128::from(self.replicas);
        if total == 0
            || (0..n).any(|i| w[i] > 0 && u128::from(self.estimate(i)) < (r * w[i]).div_ceil(total))
        {
            return None;
        }
        let mut counts: Vec<u32> = w.iter().map(|&w| (r * w / total) as u32).collect();
        let mut by_remainder: Vec<usize> = (0..n).collect();
        by_remainder.sort_by_key(|&i| (std::cmp::Reverse(r * w[i] % total), i));
        let left = self.replicas - counts.iter().sum::<u32>();
        for &i in by_remainder.iter().take(left as usize) {
            counts[i] += 1;
        }
        Some(counts)
    }
}

/// What [`Scenario::minimums`] found out.
#[derive(Debug)]
struct Minimums {
    /// The clusters with a `perCluster` min respect `maxClusters` and `maxGroups`.
    mandatory_ok: bool,
    /// Some clusters with room meet every cluster and group minimum and maximum.
    possible: bool,
    /// …and can each get one instance (their `perCluster` min) within `replicas`.
    affordable: bool,
}

// ---------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------

fn node_group() -> impl Strategy<Value = NodeGroup> {
    (
        0..=6u32,
        prop::option::weighted(
            0.9,
            prop_oneof![(0..=32u64).prop_map(|c| c * 1000), 0..=32_000u64],
        ),
        prop::option::weighted(
            0.9,
            prop_oneof![(0..=64u64).prop_map(|g| g * 1024), 0..=65_536u64],
        ),
        prop::option::weighted(0.7, 0..=8_000u64),
        prop::option::weighted(0.4, 0..=40u64),
    )
        .prop_map(
            |(count, cpu_milli, memory_mi, network_mbps, pods)| NodeGroup {
                count,
                cpu_milli,
                memory_mi,
                network_mbps,
                pods,
            },
        )
}

fn member() -> impl Strategy<Value = Member> {
    (
        prop::bool::weighted(0.15),
        prop::option::weighted(0.85, 0..REGIONS.len()),
        prop::option::weighted(0.85, prop::collection::vec(node_group(), 1..=4)),
    )
        .prop_map(|(not_ready, region, groups)| Member {
            not_ready,
            region,
            groups,
        })
}

fn change() -> impl Strategy<Value = property::Change> {
    use property::Change;
    prop_oneof![
        (0..6usize, member()).prop_map(|(i, m)| Change::Replace(i, m)),
        (0..6usize, node_group()).prop_map(|(i, g)| Change::Append(i, g)),
        (0..6usize).prop_map(Change::DropLast),
        (0..6usize).prop_map(Change::Remove),
        (0..=60u32).prop_map(Change::Replicas),
    ]
}

fn weighting() -> impl Strategy<Value = Weighting> {
    prop_oneof![
        Just(Weighting::Equal),
        Just(Weighting::Dynamic),
        prop::collection::vec(prop::option::weighted(0.7, 0..=5u32), NAMES.len())
            .prop_map(Weighting::Static),
    ]
}

fn bounds() -> impl Strategy<Value = Vec<Bounds>> {
    let one = (
        prop::option::weighted(0.15, 0..=6u32),
        prop::option::weighted(0.15, 0..=20u32),
    )
        .prop_map(|(min, max)| Bounds { min, max });
    prop::collection::vec(one, NAMES.len())
}

fn spread() -> impl Strategy<Value = Option<Spread>> {
    prop::option::weighted(
        0.3,
        (prop::option::of(1..=3u32), prop::option::of(1..=3u32)).prop_map(
            |(min_groups, max_groups)| Spread {
                min_groups,
                max_groups,
            },
        ),
    )
}

fn space() -> impl Strategy<Value = Space> {
    let range = (0..=100u32, 0..=40u32).prop_map(|(start, len)| (start, start + len));
    prop::option::weighted(
        0.25,
        (
            prop::collection::vec(range, 0..=3),
            prop::collection::vec(0..=150u32, 0..=4),
        ),
    )
}

/// A valid-by-construction scenario (the tests still check validation).
fn scenario() -> impl Strategy<Value = Scenario> {
    let workload = (
        0..=60u32,
        prop::option::weighted(
            0.8,
            prop_oneof![
                Just(250u64),
                Just(500),
                Just(1000),
                Just(2000),
                100..=3000u64
            ],
        ),
        prop::option::weighted(
            0.6,
            prop_oneof![Just(512u64), Just(1024), Just(4096), 128..=8192u64],
        ),
        prop::option::weighted(0.3, 50..=1000u64),
        prop::option::weighted(0.3, 1..=4u32),
    );
    let policy = (
        weighting(),
        bounds(),
        prop::option::weighted(0.25, 1..=4u32),
        prop::option::weighted(0.25, 1..=5u32),
        prop::option::weighted(0.25, 1..=100u32),
        spread(),
        prop::option::weighted(0.2, prop::collection::vec(any::<bool>(), NAMES.len())),
        any::<bool>(),
    );
    let ordinals = (
        space(),
        prop::option::weighted(0.3, prop::collection::vec(0..=70u32, 1..=5)),
    );
    let members = prop::collection::vec(member(), 1..=NAMES.len());
    (workload, policy, ordinals, members).prop_map(
        |(
            (replicas, cpu_milli, memory_mi, network_mbps, max_per_node),
            (
                weighting,
                bounds,
                min_clusters,
                max_clusters,
                max_share,
                spread,
                affinity,
                reschedule,
            ),
            (space, offline),
            members,
        )| {
            Scenario {
                replicas,
                cpu_milli,
                memory_mi,
                network_mbps,
                max_per_node,
                weighting,
                bounds,
                min_clusters,
                max_clusters,
                max_share,
                spread,
                affinity,
                space,
                offline: offline.unwrap_or_default(),
                reschedule,
                members,
            }
            .normalized()
        },
    )
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    // Failures are kept as named regression tests below, not as files in the tree.
    ProptestConfig {
        cases,
        max_global_rejects: cases.max(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// The name of cluster `i`.
fn name(i: usize) -> &'static str {
    NAMES[i]
}

/// The validated inputs, or a rejected case when validation refuses them.
fn valid(s: &Scenario) -> Result<Inputs, TestCaseError> {
    s.inputs()
        .ok_or_else(|| TestCaseError::reject("input does not validate"))
}

fn run(
    set: &Valid<FederatedInstanceSet>,
    clusters: &[Valid<Cluster>],
    previous: Option<&Plan>,
) -> Plan {
    plan(set, clusters, previous).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

/// `c0=0-3 c1=4 unschedulable=2`.
fn show(p: &Plan) -> String {
    let mut parts: Vec<String> = p
        .placement
        .iter()
        .filter(|c| !c.ordinals.is_empty())
        .map(|c| format!("{}={}", c.cluster, display_list(&c.ordinals)))
        .collect();
    if p.unschedulable > 0 {
        parts.push(format!("unschedulable={}", p.unschedulable));
    }
    if parts.is_empty() {
        "(nothing placed)".into()
    } else {
        parts.join(" ")
    }
}

fn ords(p: &Plan, i: usize) -> &[u32] {
    &p.placement[i].ordinals
}

fn count(p: &Plan, i: usize) -> u32 {
    ords(p, i).len() as u32
}

fn all_ordinals(p: &Plan) -> BTreeSet<u32> {
    p.placement
        .iter()
        .flat_map(|c| c.ordinals.iter().copied())
        .collect()
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    a.iter().all(|o| b.contains(o))
}

/// Clusters running at least one instance.
fn used(p: &Plan) -> Vec<usize> {
    (0..p.placement.len())
        .filter(|&i| !p.placement[i].ordinals.is_empty())
        .collect()
}

/// The structural invariants of any plan.
fn check_well_formed(s: &Scenario, p: &Plan) -> Result<(), TestCaseError> {
    let names: Vec<&str> = p.placement.iter().map(|c| c.cluster.as_str()).collect();
    prop_assert_eq!(
        &names[..],
        &NAMES[..s.n()],
        "one entry per cluster, in name order"
    );
    let mut seen = BTreeSet::new();
    for c in &p.placement {
        prop_assert!(
            c.ordinals.windows(2).all(|w| w[0] < w[1]),
            "{}: ordinals not ascending: {:?}",
            c.cluster,
            c.ordinals
        );
        for &o in &c.ordinals {
            prop_assert!(seen.insert(o), "ordinal {} is placed twice: {}", o, show(p));
            prop_assert!(
                s.in_space(o),
                "ordinal {} is outside the ordinal space or offline: {}",
                o,
                show(p)
            );
        }
    }
    prop_assert_eq!(
        p.placed() + p.unschedulable,
        s.replicas,
        "placed + unschedulable != replicas: {}",
        show(p)
    );
    Ok(())
}

/// `perCluster` max, the share cap and `maxClusters` (plans without stuck instances).
fn check_maximums(s: &Scenario, p: &Plan) -> Result<(), TestCaseError> {
    for i in 0..s.n() {
        prop_assert!(
            count(p, i) <= s.max_of(i),
            "{} exceeds perCluster max {}: {}",
            name(i),
            s.max_of(i),
            show(p)
        );
        prop_assert!(
            count(p, i) <= s.share_cap(),
            "{} exceeds the share cap {}: {}",
            name(i),
            s.share_cap(),
            show(p)
        );
    }
    if let Some(max) = s.max_clusters {
        prop_assert!(
            used(p).len() as u32 <= max,
            "more than maxClusters {} clusters used: {}",
            max,
            show(p)
        );
    }
    Ok(())
}

/// Unschedulable instances leave no usable room: with no cluster-count or spread
/// constraint, every eligible cluster is at its room, `perCluster` max or share cap.
fn check_no_room_left(s: &Scenario, p: &Plan) -> Result<(), TestCaseError> {
    if p.unschedulable == 0 {
        return Ok(());
    }
    for i in (0..s.n()).filter(|&i| s.eligible(i)) {
        prop_assert_eq!(
            count(p, i),
            s.bound(i),
            "{} unschedulable, yet {} is below its bound (room {}, max {}, share cap {}): {}",
            p.unschedulable,
            name(i),
            s.estimate(i),
            s.max_of(i),
            s.share_cap(),
            show(p)
        );
    }
    Ok(())
}

/// A deterministic shuffle (xorshift), so a failing order can be replayed.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

// ---------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------

/// One property, checked for one generated input.
mod property {
    use super::*;

    type Check = Result<(), TestCaseError>;

    /// The validated inputs and a fresh plan for them.
    fn fresh(s: &Scenario) -> Result<(Inputs, Plan), TestCaseError> {
        let (set, clusters) = valid(s)?;
        let p = run(&set, &clusters, None);
        Ok(((set, clusters), p))
    }

    /// `s` with more replicas (as many more as its ordinal space allows).
    fn grown(s: &Scenario, delta: u32) -> Scenario {
        let most = u32::try_from(s.usable_len()).unwrap_or(u32::MAX);
        s.with_replicas(s.replicas.saturating_add(delta).min(most))
    }

    fn yaml(p: &Plan) -> String {
        serde_yaml::to_string(p).unwrap()
    }

    pub fn fresh_plans_are_well_formed(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        check_well_formed(s, &p)
    }

    pub fn fresh_plans_use_the_lowest_usable_ordinals(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        let used: Vec<u32> = all_ordinals(&p).into_iter().collect();
        let lowest = s.lowest_free(p.placed() as usize, &BTreeSet::new());
        prop_assert_eq!(used, lowest, "{}", show(&p));
        Ok(())
    }

    pub fn capacity_is_the_node_group_estimate(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        for i in 0..s.n() {
            prop_assert_eq!(
                p.placement[i].capacity,
                s.estimate(i),
                "capacity of {}",
                name(i)
            );
            prop_assert!(
                count(&p, i) <= s.estimate(i),
                "{} holds more than its room {}: {}",
                name(i),
                s.estimate(i),
                show(&p)
            );
        }
        Ok(())
    }

    pub fn ineligible_clusters_get_nothing(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        for i in (0..s.n()).filter(|&i| !s.eligible(i)) {
            prop_assert!(
                ords(&p, i).is_empty(),
                "ineligible {} got instances: {}",
                name(i),
                show(&p)
            );
        }
        Ok(())
    }

    pub fn per_cluster_bounds_share_cap_and_max_clusters_hold(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        check_maximums(s, &p)?;
        // perCluster min: met on every eligible cluster with room for it, when the
        // minimums together fit in replicas and no minimum made the plan place nothing.
        let mins: u32 = (0..s.n())
            .filter(|&i| s.eligible(i))
            .map(|i| s.min_of(i))
            .sum();
        let min_groups = s.spread.and_then(|sp| sp.min_groups);
        let extra = s.min_clusters.unwrap_or(0) + min_groups.unwrap_or(0);
        let refused = (s.min_clusters.is_some() || min_groups.is_some()) && p.placed() == 0;
        if mins + extra <= s.replicas && !refused {
            for i in (0..s.n()).filter(|&i| s.eligible(i) && s.estimate(i) >= s.min_of(i)) {
                prop_assert!(
                    count(&p, i) >= s.min_of(i),
                    "{} below perCluster min {}: {}",
                    name(i),
                    s.min_of(i),
                    show(&p)
                );
            }
        }
        Ok(())
    }

    pub fn cluster_and_group_minimums_are_met_or_nothing_is_placed(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        let m = s.minimums();
        let groups = s.groups(used(&p)) as u32;
        let min_groups = s.spread.and_then(|sp| sp.min_groups);
        let minimums = s.min_clusters.is_some() || min_groups.is_some();
        if minimums && s.replicas > 0 && m.mandatory_ok && !m.possible {
            prop_assert_eq!(
                p.placed(),
                0,
                "the minimums cannot be met, yet instances were placed: {}",
                show(&p)
            );
        }
        if minimums && s.replicas > 0 && m.affordable {
            prop_assert!(
                p.placed() > 0,
                "the minimums can be met ({:?}), yet nothing was placed: {:?}",
                m,
                p.messages
            );
        }
        if p.placed() > 0 && m.affordable {
            let min = s.min_clusters.unwrap_or(0);
            prop_assert!(
                used(&p).len() as u32 >= min,
                "fewer than minClusters {} clusters used: {}",
                min,
                show(&p)
            );
            let min = min_groups.unwrap_or(0);
            prop_assert!(
                groups >= min,
                "fewer than minGroups {} regions used: {}",
                min,
                show(&p)
            );
        }
        if let Some(max) = s.spread.and_then(|sp| sp.max_groups)
            && m.mandatory_ok
        {
            prop_assert!(
                groups <= max,
                "more than maxGroups {} regions used: {}",
                max,
                show(&p)
            );
        }
        Ok(())
    }

    pub fn simple_divisions_are_proportional(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        if let Some(expect) = s.proportional() {
            let got: Vec<u32> = (0..s.n()).map(|i| count(&p, i)).collect();
            prop_assert_eq!(got, expect, "{}", show(&p));
        }
        Ok(())
    }

    pub fn unschedulable_instances_leave_no_room_unused(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        check_no_room_left(s, &p)
    }

    pub fn plans_are_deterministic_whatever_the_cluster_order(s: &Scenario, seed: u64) -> Check {
        let ((set, mut clusters), p) = fresh(s)?;
        prop_assert_eq!(
            &run(&set, &clusters, None),
            &p,
            "same input, different plan"
        );
        shuffle(&mut clusters, seed);
        prop_assert_eq!(
            &run(&set, &clusters, None),
            &p,
            "shuffled clusters, different plan"
        );
        Ok(())
    }

    pub fn plans_survive_json_and_yaml_round_trips(s: &Scenario) -> Check {
        let (_, p) = fresh(s)?;
        let json: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        prop_assert_eq!(&json, &p);
        let from_yaml: Plan = serde_yaml::from_str(&yaml(&p)).unwrap();
        prop_assert_eq!(&from_yaml, &p);
        Ok(())
    }

    pub fn replanning_its_own_output_changes_nothing(s: &Scenario) -> Check {
        let ((set, clusters), p) = fresh(s)?;
        let q = run(&set, &clusters, Some(&p));
        prop_assert_eq!(&q.placement, &p.placement, "previous:\n{}", yaml(&p));
        prop_assert_eq!(q.unschedulable, p.unschedulable);
        Ok(())
    }

    pub fn scaling_up_adds_only_the_lowest_free_ordinals(s: &Scenario, delta: u32) -> Check {
        let big = grown(s, delta);
        let (big_set, _) = valid(&big)?;
        let ((_, clusters), p) = fresh(s)?;
        let q = run(&big_set, &clusters, Some(&p));
        let (before, after, previous) = (show(&p), show(&q), yaml(&p));
        check_well_formed(&big, &q)?;
        check_maximums(&big, &q)?;
        for i in 0..s.n() {
            prop_assert!(
                is_subset(ords(&p, i), ords(&q, i)),
                "{} lost instances: {} -> {}\nprevious:\n{}",
                name(i),
                before,
                after,
                previous
            );
            prop_assert!(
                count(&q, i) <= s.estimate(i),
                "{} holds more than its room {}: {}",
                name(i),
                s.estimate(i),
                after
            );
        }
        let old = all_ordinals(&p);
        let added: Vec<u32> = all_ordinals(&q).difference(&old).copied().collect();
        prop_assert_eq!(
            &added,
            &big.lowest_free(added.len(), &old),
            "new ordinals are not the lowest free: {} -> {}",
            before,
            after
        );
        if big.min_clusters.is_none() && big.max_clusters.is_none() && big.spread.is_none() {
            check_no_room_left(&big, &q)?;
        }
        Ok(())
    }

    pub fn scaling_down_removes_exactly_the_excess_highest_first(
        s: &Scenario,
        delta: u32,
    ) -> Check {
        let big = grown(s, delta);
        let (big_set, clusters) = valid(&big)?;
        let (small_set, _) = valid(s)?;
        let p = run(&big_set, &clusters, None);
        let q = run(&small_set, &clusters, Some(&p));
        let (before, after, previous) = (show(&p), show(&q), yaml(&p));
        check_well_formed(s, &q)?;
        check_maximums(s, &q)?;
        // Fewer replicas can mean a smaller share cap: each cluster first keeps only the
        // lowest ordinals the new cap allows. When that leaves too few, the rest are
        // placed again (only adding); otherwise the excess is removed, highest first.
        let under_cap: Vec<&[u32]> = (0..s.n())
            .map(|i| &ords(&p, i)[..count(&p, i).min(s.share_cap()) as usize])
            .collect();
        let kept: u32 = under_cap.iter().map(|o| o.len() as u32).sum();
        for (i, &was) in under_cap.iter().enumerate() {
            let now = ords(&q, i);
            if kept <= s.replicas {
                prop_assert!(
                    is_subset(was, now),
                    "{} lost instances: {} -> {}\nprevious:\n{}",
                    name(i),
                    before,
                    after,
                    previous
                );
            } else {
                prop_assert!(
                    now.len() <= was.len() && was[..now.len()] == *now,
                    "{} did not just lose its highest ordinals: {} -> {}\nprevious:\n{}",
                    name(i),
                    before,
                    after,
                    previous
                );
            }
        }
        if kept >= s.replicas {
            prop_assert_eq!(
                q.placed(),
                s.replicas,
                "not exactly the excess removed: {} -> {}\nprevious:\n{}",
                before,
                after,
                previous
            );
        }
        Ok(())
    }

    pub fn a_cluster_that_stops_being_ready_keeps_or_loses_its_ordinals(
        s: &Scenario,
        pick: Index,
    ) -> Check {
        let ((set, _), p) = fresh(s)?;
        let candidates = used(&p);
        prop_assume!(!candidates.is_empty());
        // The previous plan must honour the policy: when `perCluster` minimums force
        // more regions than `maxGroups`, losing a cluster with a minimum rightly moves
        // other instances.
        prop_assume!(s.minimums().mandatory_ok);
        let x = candidates[pick.index(candidates.len())];
        let mut down = s.clone();
        down.members[x].not_ready = true;
        let (_, clusters) = valid(&down)?;
        let q = run(&set, &clusters, Some(&p));
        let (before, after, previous) = (show(&p), show(&q), yaml(&p));
        check_well_formed(&down, &q)?;
        if s.reschedule {
            prop_assert!(
                ords(&q, x).is_empty(),
                "{} kept instances under Reschedule: {}\nprevious:\n{}",
                name(x),
                after,
                previous
            );
        } else {
            prop_assert_eq!(
                ords(&q, x),
                ords(&p, x),
                "{} lost instances under Keep: {}\nprevious:\n{}",
                name(x),
                after,
                previous
            );
        }
        let mut stayed = BTreeSet::new();
        for i in (0..s.n()).filter(|&i| i != x) {
            prop_assert!(
                is_subset(ords(&p, i), ords(&q, i)),
                "{} lost instances: {} -> {}\nprevious:\n{}",
                name(i),
                before,
                after,
                previous
            );
            stayed.extend(ords(&p, i));
        }
        if !s.reschedule {
            stayed.extend(ords(&p, x));
        }
        // Moved instances keep their ordinals where they can: the new ones are the
        // lowest free.
        let added: Vec<u32> = all_ordinals(&q).difference(&stayed).copied().collect();
        prop_assert_eq!(
            &added,
            &s.lowest_free(added.len(), &stayed),
            "{} -> {}\nprevious:\n{}",
            before,
            after,
            previous
        );
        Ok(())
    }

    /// How one step changes the clusters before planning again.
    #[derive(Clone, Debug)]
    pub enum Change {
        /// Cluster `i` reports `member`'s capacity instead.
        Replace(usize, Member),
        /// Cluster `i` gets a node group at the end (as the controller adds a set's
        /// own room).
        Append(usize, NodeGroup),
        /// Cluster `i` loses its last node group.
        DropLast(usize),
        /// Cluster `i` is deregistered.
        Remove(usize),
        /// Nothing changes but the replicas.
        Replicas(u32),
    }

    pub fn cached_inventories_plan_as_fresh_ones(s: &Scenario, changes: &[Change]) -> Check {
        let mut cache = CapacityCache::new();
        let mut s = s.clone();
        let mut previous: Option<Plan> = None;
        for change in std::iter::once(None).chain(changes.iter().map(Some)) {
            let n = s.n();
            match change {
                None => {}
                Some(Change::Replace(i, m)) => s.members[i % n].groups = m.groups.clone(),
                Some(Change::Append(i, g)) => {
                    if let Some(groups) = s.members[i % n].groups.as_mut() {
                        groups.push(g.clone());
                    }
                }
                Some(Change::DropLast(i)) => {
                    if let Some(groups) = s.members[i % n].groups.as_mut() {
                        groups.pop();
                    }
                }
                Some(Change::Remove(i)) if n > 1 => {
                    s.members.remove(i % n);
                    s.bounds.truncate(s.members.len());
                    if let Some(a) = s.affinity.as_mut() {
                        a.truncate(s.members.len());
                    }
                    if let Weighting::Static(w) = &mut s.weighting {
                        w.truncate(s.members.len());
                    }
                }
                Some(Change::Remove(_)) => {}
                Some(Change::Replicas(r)) => s.replicas = *r,
            }
            let Some((set, clusters)) = s.clone().normalized().inputs() else {
                continue;
            };
            let cached = cache.inventory(&clusters);
            let fresh = Inventory::new(&clusters);
            prop_assert_eq!(
                cache.len(),
                clusters
                    .iter()
                    .filter(|c| c.status.as_ref().is_some_and(|st| st.capacity.is_some()))
                    .count()
            );
            prop_assert_eq!(
                cached.plan(&set, None).unwrap(),
                fresh.plan(&set, None).unwrap()
            );
            if let Some(prev) = &previous {
                let a = cached.plan(&set, Some(prev));
                prop_assert_eq!(&a, &fresh.plan(&set, Some(prev)));
                let busy: std::collections::BTreeSet<u32> = (0..8).map(|o| o * 3).collect();
                prop_assert_eq!(
                    cached.plan_avoiding(&set, Some(prev), &busy),
                    fresh.plan_avoiding(&set, Some(prev), &busy)
                );
                previous = a.ok();
            } else {
                previous = Some(fresh.plan(&set, None).unwrap());
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(config())]

    // Fresh plans.

    #[test]
    fn fresh_plans_are_well_formed(s in scenario()) {
        property::fresh_plans_are_well_formed(&s)?;
    }

    #[test]
    fn fresh_plans_use_the_lowest_usable_ordinals(s in scenario()) {
        property::fresh_plans_use_the_lowest_usable_ordinals(&s)?;
    }

    #[test]
    fn capacity_is_the_node_group_estimate(s in scenario()) {
        property::capacity_is_the_node_group_estimate(&s)?;
    }

    #[test]
    fn ineligible_clusters_get_nothing(s in scenario()) {
        property::ineligible_clusters_get_nothing(&s)?;
    }

    #[test]
    fn per_cluster_bounds_share_cap_and_max_clusters_hold(s in scenario()) {
        property::per_cluster_bounds_share_cap_and_max_clusters_hold(&s)?;
    }

    #[test]
    fn cluster_and_group_minimums_are_met_or_nothing_is_placed(s in scenario()) {
        property::cluster_and_group_minimums_are_met_or_nothing_is_placed(&s)?;
    }

    #[test]
    fn simple_divisions_are_proportional(s in scenario().prop_map(Scenario::unbounded)) {
        property::simple_divisions_are_proportional(&s)?;
    }

    #[test]
    fn unschedulable_instances_leave_no_room_unused(
        s in scenario().prop_map(Scenario::unconstrained),
    ) {
        property::unschedulable_instances_leave_no_room_unused(&s)?;
    }

    #[test]
    fn plans_are_deterministic_whatever_the_cluster_order(s in scenario(), seed in any::<u64>()) {
        property::plans_are_deterministic_whatever_the_cluster_order(&s, seed)?;
    }

    #[test]
    fn plans_survive_json_and_yaml_round_trips(s in scenario()) {
        property::plans_survive_json_and_yaml_round_trips(&s)?;
    }

    // Re-planning from a previous plan.

    #[test]
    fn replanning_its_own_output_changes_nothing(s in scenario()) {
        property::replanning_its_own_output_changes_nothing(&s)?;
    }

    #[test]
    fn scaling_up_adds_only_the_lowest_free_ordinals(s in scenario(), delta in 1..=30u32) {
        property::scaling_up_adds_only_the_lowest_free_ordinals(&s, delta)?;
    }

    #[test]
    fn scaling_down_removes_exactly_the_excess_highest_first(s in scenario(), delta in 1..=30u32) {
        property::scaling_down_removes_exactly_the_excess_highest_first(&s, delta)?;
    }

    #[test]
    fn a_cluster_that_stops_being_ready_keeps_or_loses_its_ordinals(
        s in scenario(),
        pick in any::<Index>(),
    ) {
        property::a_cluster_that_stops_being_ready_keeps_or_loses_its_ordinals(&s, pick)?;
    }

    // Digests kept between inventories.

    #[test]
    fn cached_inventories_plan_as_fresh_ones(
        s in scenario(),
        changes in prop::collection::vec(change(), 1..=6),
    ) {
        property::cached_inventories_plan_as_fresh_ones(&s, &changes)?;
    }
}

// ---------------------------------------------------------------------------------
// Regressions: minimal inputs of the bugs the properties found
// ---------------------------------------------------------------------------------

/// The validated set (first document) and clusters (the rest) of a YAML text.
fn from_yaml(text: &str) -> Inputs {
    let mut set = None;
    let mut clusters = Vec::new();
    for doc in flotilla_api::decode::decode_all(text).unwrap_or_else(|e| panic!("{e}")) {
        match doc.object {
            AnyObject::FederatedInstanceSet(s) => {
                set = Some(validate::federated_instance_set(*s).unwrap())
            }
            AnyObject::Cluster(c) => clusters.push(*c),
            AnyObject::InstanceSet(_) => panic!("unexpected InstanceSet"),
        }
    }
    (set.expect("a set"), validate::clusters(clusters).unwrap())
}

/// `minClusters: 2` within `maxGroups: 1`: only the two r2 clusters can meet it.
const MIN_CLUSTERS_WITHIN_MAX_GROUPS: &str = r#"
apiVersion: flotilla.io/v1alpha1
kind: FederatedInstanceSet
metadata: {name: s}
spec:
  replicas: 2
  template: {spec: {containers: [{name: app, image: "app:1"}]}}
  placement:
    minClusters: 2
    spread: [{byLabel: region, maxGroups: 1}]
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c0, labels: {region: r1}}
status: {ready: true}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c1, labels: {region: r2}}
status: {ready: true}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c2, labels: {region: r2}}
status: {ready: true}
"#;

/// The minimums can be met (c1 and c2, one instance each); the scheduler used to pick
/// c0 (r1) first, find no second r1 cluster and place nothing.
#[test]
fn regression_min_clusters_are_found_within_max_groups() {
    let (set, clusters) = from_yaml(MIN_CLUSTERS_WITHIN_MAX_GROUPS);
    let p = run(&set, &clusters, None);
    assert_eq!(show(&p), "c1=0 c2=1", "messages: {:#?}", p.messages);
}

/// `perCluster` minimums on clusters in two regions, with `maxGroups: 1`.
const MINIMUMS_ACROSS_MAX_GROUPS: &str = r#"
apiVersion: flotilla.io/v1alpha1
kind: FederatedInstanceSet
metadata: {name: s}
spec:
  replicas: 2
  template: {spec: {containers: [{name: app, image: "app:1"}]}}
  placement:
    perCluster: {c0: {min: 1}, c1: {min: 1}}
    spread: [{byLabel: region, maxGroups: 1}]
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c0, labels: {region: r1}}
status: {ready: true}
---
apiVersion: flotilla.io/v1alpha1
kind: Cluster
metadata: {name: c1, labels: {region: r2}}
status: {ready: true}
"#;

/// The fresh plan lets the minimums win over `maxGroups` (c0=0 c1=1); scaling up to 3
/// used to let `maxGroups` win when trimming the previous placement and the minimum
/// win again when adding, so ordinal 1 moved from c1 to c0 (c0=0-1 c1=2) instead of
/// the scale-up only adding ordinal 2.
#[test]
fn regression_scale_up_keeps_instances_of_clusters_with_minimums() {
    let (small, clusters) = from_yaml(MINIMUMS_ACROSS_MAX_GROUPS);
    let (big, _) = from_yaml(&MINIMUMS_ACROSS_MAX_GROUPS.replace("replicas: 2", "replicas: 3"));
    let p = run(&small, &clusters, None);
    assert_eq!(show(&p), "c0=0 c1=1", "messages: {:#?}", p.messages);
    let q = run(&big, &clusters, Some(&p));
    for (before, after) in p.placement.iter().zip(&q.placement) {
        assert!(
            is_subset(&before.ordinals, &after.ordinals),
            "{} lost instances on a scale-up: {} -> {}; messages: {:#?}",
            before.cluster,
            show(&p),
            show(&q),
            q.messages
        );
    }
}
