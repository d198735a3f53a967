//! One scheduling decision: a set, the clusters, and the previous placement in; every
//! cluster's ordinals, the shortfall and the reasons out.
//!
//! ```text
//!  clusters ──▶ members: eligible? room (capacity::estimate), weight, bounds
//!  previous ──▶ kept (eligible) │ stuck (ineligible, failover Keep) │ released
//!                  │ trim what policy no longer allows (max, share, maxClusters, maxGroups)
//!                  ▼
//!      kept + stuck ≤ replicas ─▶ scale up: select clusters, divide with lo = kept,
//!                  │                        new ordinals lowest free first (not busy)
//!      kept + stuck > replicas ─▶ scale down: remove from the clusters furthest above
//!                                 their target, highest ordinal first
//! ```
//!
//! Everything is a function of its inputs: members are in name order, every tie is
//! broken by name, and no hash map's iteration order reaches the output.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::ordinals::display_list;
use flotilla_api::resources::{self, Requests};
use flotilla_api::selector::{self, display_taint};
use flotilla_api::{
    Cluster, FailoverPolicy, FederatedInstanceSet, FieldError, Invalid, OrdinalSpace, Placement,
    Valid, Weights,
};
use serde::{Deserialize, Serialize};

use std::sync::{Arc, Mutex};

use crate::capacity::{CapacityIndex, Estimate, Template, UNLIMITED};
use crate::digest::{Capacity, Digest};
use crate::divide::{Slot, divide};

/// The scheduler's answer; also what `--previous` reads back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Every registered cluster, by name, with its ordinals (possibly none).
    pub placement: Vec<ClusterPlan>,
    /// Instances no cluster could take.
    #[serde(default)]
    pub unschedulable: u32,
    /// Why clusters were passed over, what moved, what did not fit.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// One cluster's part of a [`Plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// The cluster's name.
    pub cluster: String,
    /// Its estimated room for this template before placing, from its capacity model
    /// whether or not it may take new instances (the messages say why it may not);
    /// [`UNLIMITED`] when it reports no capacity model.
    #[serde(default)]
    pub capacity: u32,
    /// The ordinals it runs, ascending.
    pub ordinals: Vec<u32>,
}

impl Plan {
    /// Ordinals by cluster, for clusters holding any.
    pub fn by_cluster(&self) -> BTreeMap<&str, &[u32]> {
        self.placement
            .iter()
            .filter(|p| !p.ordinals.is_empty())
            .map(|p| (p.cluster.as_str(), p.ordinals.as_slice()))
            .collect()
    }

    /// How many instances are placed.
    pub fn placed(&self) -> u32 {
        self.placement.iter().map(|p| p.ordinals.len() as u32).sum()
    }
}

/// A cluster as this decision sees it.
#[derive(Debug)]
struct Member<'a> {
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
    estimate: Estimate,
    /// Why it may take no new instances; empty when eligible.
    why_not: Vec<String>,
    /// An untolerated `NoExecute` taint: its instances move whatever the failover policy.
    evict: bool,
    /// An untolerated `PreferNoSchedule` taint: chosen last.
    last_choice: bool,
    weight: u64,
    min: u32,
    /// `min(perCluster.max, maxSharePerCluster)`, and which of them binds.
    policy_max: u32,
    policy_max_why: MaxWhy,
    /// Previous ordinals it keeps (eligible clusters), ascending.
    kept: Vec<u32>,
    /// Previous ordinals left on it although it is not eligible (failover `Keep`).
    stuck: Vec<u32>,
}

impl Member<'_> {
    fn eligible(&self) -> bool {
        self.why_not.is_empty()
    }

    /// The most it may hold: policy, and room (but never below what it already runs).
    fn hi(&self) -> u32 {
        if !self.eligible() {
            return 0;
        }
        self.policy_max
            .min(self.estimate.instances.max(self.kept.len() as u32))
    }

    /// Selection always takes it: eligible, with room and a perCluster minimum.
    fn pinned(&self) -> bool {
        self.min > 0 && self.hi() > 0
    }

    fn current(&self) -> u32 {
        (self.kept.len() + self.stuck.len()) as u32
    }
}

/// Which limit sets a member's `policy_max` (said only when instances exceed it).
#[derive(Debug)]
enum MaxWhy {
    None,
    PerCluster(u32),
    Share { share: u32, replicas: u32, cap: u32 },
}

impl MaxWhy {
    /// What sets the limit of cluster `name`.
    fn describe(&self, name: &str) -> String {
        match self {
            MaxWhy::None => String::new(),
            MaxWhy::PerCluster(max) => format!("placement.perCluster.{name}.max {max}"),
            MaxWhy::Share {
                share,
                replicas,
                cap,
            } => format!("placement.maxSharePerCluster {share}% of {replicas} replicas is {cap}"),
        }
    }
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The clusters plans are made against, digested once: in name order, capacity
/// models parsed, and every template's room estimated once (planning a set again
/// estimates nothing). Build one when the cluster list changes and plan every set
/// against it; a [`crate::CapacityCache`] builds them reusing the digests of clusters
/// whose capacity did not change.
#[derive(Debug)]
pub struct Inventory<'a> {
    clusters: Vec<(&'a Valid<Cluster>, Option<Capacity>)>,
    /// Every cluster's estimate, by template (most recently used last, bounded).
    estimates: Mutex<Vec<(Template, Arc<[Estimate]>)>>,
}

/// How many templates' estimates an inventory remembers.
const ESTIMATES: usize = 8;

impl<'a> Inventory<'a> {
    /// Digests `clusters` (validated, so names are unique).
    pub fn new(clusters: &'a [Valid<Cluster>]) -> Inventory<'a> {
        Inventory::from_digests(
            clusters
                .iter()
                .map(|c| {
                    let capacity = c.status.as_ref().and_then(|s| s.capacity.as_ref());
                    let capacity = capacity.map(|m| Capacity {
                        base: Arc::new(Digest::new(CapacityIndex::new(m))),
                        extra: None,
                    });
                    (c, capacity)
                })
                .collect(),
        )
    }

    pub(crate) fn from_digests(
        mut list: Vec<(&'a Valid<Cluster>, Option<Capacity>)>,
    ) -> Inventory<'a> {
        list.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        Inventory {
            clusters: list,
            estimates: Mutex::new(Vec::new()),
        }
    }

    /// Every cluster's room for `template`, in cluster order, estimated once.
    fn estimates(&self, template: &Template) -> Arc<[Estimate]> {
        // A poisoned lock only means a panic elsewhere: the entries are still whole.
        let mut memo = self.estimates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = memo.iter().rposition(|(t, _)| t == template) {
            let hit = memo.remove(at);
            let estimates = hit.1.clone();
            memo.push(hit);
            return estimates;
        }
        let estimates: Arc<[Estimate]> = self
            .clusters
            .iter()
            .map(|(_, capacity)| match capacity {
                Some(c) => c.estimate(template),
                None => Estimate {
                    instances: UNLIMITED,
                    short_of: None,
                },
            })
            .collect();
        if memo.len() == ESTIMATES {
            memo.remove(0);
        }
        memo.push((template.clone(), estimates.clone()));
        estimates
    }

    #[cfg(test)]
    pub(crate) fn capacity_of(&self, name: &str) -> Option<&Capacity> {
        self.clusters
            .iter()
            .find(|(c, _)| c.name() == name)
            .and_then(|(_, capacity)| capacity.as_ref())
    }

    /// Places `set` on these clusters, sticking to `previous` where it can; see [`plan`].
    pub fn plan(
        &self,
        set: &Valid<FederatedInstanceSet>,
        previous: Option<&Plan>,
    ) -> Result<Plan, Invalid> {
        plan_on(self, set, previous, &BTreeSet::new())
    }

    /// Like [`Inventory::plan`], but no ordinal in `busy` is given out as a new one:
    /// for sets whose instances are replaced before they are removed (a Redis shard
    /// moving between members), the ordinals still running where they are leaving.
    /// Ordinals already placed stay where they are, busy or not.
    pub fn plan_avoiding(
        &self,
        set: &Valid<FederatedInstanceSet>,
        previous: Option<&Plan>,
        busy: &BTreeSet<u32>,
    ) -> Result<Plan, Invalid> {
        plan_on(self, set, previous, busy)
    }
}

/// Places `set` on `clusters`, sticking to `previous` where it can.
///
/// Fails only when `previous` contradicts itself (an ordinal in two clusters); the set
/// and clusters are valid by construction. To plan many sets against the same
/// clusters, build an [`Inventory`] once.
pub fn plan(
    set: &Valid<FederatedInstanceSet>,
    clusters: &[Valid<Cluster>],
    previous: Option<&Plan>,
) -> Result<Plan, Invalid> {
    Inventory::new(clusters).plan(set, previous)
}

fn plan_on(
    inventory: &Inventory<'_>,
    set: &Valid<FederatedInstanceSet>,
    previous: Option<&Plan>,
    busy: &BTreeSet<u32>,
) -> Result<Plan, Invalid> {
    let spec = &set.spec;
    let p = &spec.placement;
    let replicas = spec.replicas;
    let requests = match &spec.template.spec {
        Some(pod) => resources::pod_requests(pod)?,
        None => Requests::new(),
    };
    let space = OrdinalSpace::new(spec.ordinals.as_ref(), &spec.offline_ordinals);
    let mut notes = Vec::new();
    let template = Template {
        requests,
        max_per_node: p.max_instances_per_node,
    };

    let estimates = inventory.estimates(&template);
    let mut members: Vec<Member<'_>> = inventory
        .clusters
        .iter()
        .zip(estimates.iter())
        .map(|((c, _), estimate)| member(c, estimate.clone(), p, replicas))
        .collect();
    note_unknown_names(p, &members, &mut notes);
    // Ineligible clusters that held instances are explained with those instances.
    let mut held = vec![false; members.len()];
    for (ci, c) in previous
        .iter()
        .flat_map(|prev| prev.placement.iter().enumerate())
    {
        if !c.ordinals.is_empty()
            && let Some(i) = find(&members, &c.cluster, ci)
        {
            held[i] = true;
        }
    }
    for (m, _) in members
        .iter()
        .zip(&held)
        .filter(|(m, held)| !**held || m.eligible())
    {
        note_eligibility(m, &mut notes);
    }
    if let Some(prev) = previous {
        take_previous(prev, &space, p.failover.policy, &mut members, &mut notes)?;
    }
    trim_to_policy(p, &mut members, &mut notes);
    for m in &members {
        let room = m.estimate.instances.max(m.kept.len() as u32);
        if m.min > 0 && (!m.eligible() || room < m.min) {
            let has = if m.eligible() {
                format!("has room for {room}")
            } else {
                "is not eligible".into()
            };
            notes.push(format!(
                "cluster {}: placement.perCluster.{}.min is {}, but it {has}",
                m.name, m.name, m.min
            ));
        }
    }

    let stuck: u32 = members.iter().map(|m| m.stuck.len() as u32).sum();
    let kept: u32 = members.iter().map(|m| m.kept.len() as u32).sum();
    let blocked = if stuck + kept > replicas {
        scale_down(p, replicas, &mut members);
        false
    } else {
        scale_up(p, replicas - stuck, &space, busy, &mut members, &mut notes)
    };
    if !blocked {
        unmet_minimums(p, replicas, &members, &mut notes);
    }

    let placed: u32 = members.iter().map(Member::current).sum();
    let unschedulable = replicas.saturating_sub(placed);
    if unschedulable > 0 {
        let room: u64 = members
            .iter()
            .filter(|m| m.eligible())
            .map(|m| u64::from(m.hi()))
            .sum();
        notes.push(format!(
            "{unschedulable} of {replicas} instances could not be placed; eligible clusters have room for {room} in all under this placement"
        ));
    }
    let placement: Vec<ClusterPlan> = members
        .into_iter()
        .map(|m| {
            // Both are ascending, and only one of them is ever non-empty.
            let ordinals = if m.stuck.is_empty() {
                m.kept
            } else if m.kept.is_empty() {
                m.stuck
            } else {
                let mut all = m.kept;
                all.extend(m.stuck);
                all.sort_unstable();
                all
            };
            debug_assert!(ordinals.is_sorted());
            ClusterPlan {
                cluster: m.name.to_string(),
                capacity: m.estimate.instances,
                ordinals,
            }
        })
        .collect();
    Ok(Plan {
        placement,
        unschedulable,
        messages: notes,
    })
}

/// Says why a cluster gets nothing new, or has no room at all.
fn note_eligibility(m: &Member<'_>, notes: &mut Vec<String>) {
    if !m.eligible() {
        if !m
            .why_not
            .iter()
            .all(|w| w.starts_with("not in placement.clusterAffinity.clusterNames"))
        {
            notes.push(format!(
                "cluster {}: {}; it gets no new instances",
                m.name,
                m.why_not.join("; ")
            ));
        }
    } else if m.estimate.instances == 0 {
        let why = match &m.estimate.short_of {
            Some((res, need)) => format!("short of {res} (one instance needs {need})"),
            None => "no node group has a free node".to_string(),
        };
        notes.push(format!(
            "cluster {}: no room for one instance: {why}",
            m.name
        ));
    }
}

/// Where `name` is among `members` (in name order); `hint` is where it usually is.
fn find(members: &[Member<'_>], name: &str, hint: usize) -> Option<usize> {
    if members.get(hint).is_some_and(|m| m.name == name) {
        return Some(hint);
    }
    members.binary_search_by(|m| m.name.cmp(name)).ok()
}

/// How `cluster` stands for this set.
fn member<'a>(
    cluster: &'a Valid<Cluster>,
    estimate: Estimate,
    p: &Placement,
    replicas: u32,
) -> Member<'a> {
    let name = cluster.name();
    let labels = cluster.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
    let status = cluster.status.as_ref();
    let mut why_not = Vec::new();
    match status {
        Some(s) if s.ready => {}
        Some(s) => why_not.push(match &s.reason {
            Some(r) => format!("not ready ({r})"),
            None => "not ready".to_string(),
        }),
        None => why_not.push("not ready (no status reported)".to_string()),
    }
    if let Some(a) = &p.cluster_affinity {
        if !a.cluster_names.is_empty() && !a.cluster_names.iter().any(|n| n == name) {
            why_not.push("not in placement.clusterAffinity.clusterNames".into());
        }
        if let Some(sel) = &a.label_selector
            && !selector::matches(sel, labels)
        {
            why_not.push("labels do not match placement.clusterAffinity.labelSelector".into());
        }
    }
    let mut evict = false;
    let mut last_choice = false;
    for t in &cluster.spec.taints {
        if selector::tolerated(t, &p.tolerations) {
            continue;
        }
        match t.effect.as_str() {
            "PreferNoSchedule" => last_choice = true,
            effect => {
                evict |= effect == "NoExecute";
                why_not.push(format!("taint {} is not tolerated", display_taint(t)));
            }
        }
    }
    for (i, c) in p.spread.iter().enumerate() {
        if !labels.contains_key(&c.by_label) {
            why_not.push(format!(
                "no label {}, which placement.spread[{i}] spreads by",
                c.by_label
            ));
        }
    }
    let weight = match &p.weights {
        None => 1,
        Some(Weights::Static(w)) => u64::from(w.get(name).copied().unwrap_or(0)),
        Some(Weights::Dynamic(_)) => u64::from(estimate.instances),
    };
    let bounds = p.per_cluster.get(name).copied().unwrap_or_default();
    let mut policy_max = UNLIMITED;
    let mut policy_max_why = MaxWhy::None;
    if let Some(max) = bounds.max {
        policy_max = max;
        policy_max_why = MaxWhy::PerCluster(max);
    }
    if let Some(share) = p.max_share_per_cluster {
        let cap = (u64::from(replicas) * u64::from(share) / 100) as u32;
        if cap < policy_max {
            policy_max = cap;
            policy_max_why = MaxWhy::Share {
                share,
                replicas,
                cap,
            };
        }
    }
    Member {
        name,
        labels,
        estimate,
        why_not,
        evict,
        last_choice,
        weight,
        min: bounds.min.unwrap_or(0),
        policy_max,
        policy_max_why,
        kept: Vec::new(),
        stuck: Vec::new(),
    }
}

/// Points out cluster names in the placement that match no registered cluster (typos).
fn note_unknown_names(p: &Placement, members: &[Member<'_>], notes: &mut Vec<String>) {
    let mut named: BTreeSet<(&str, &str)> = BTreeSet::new();
    if let Some(a) = &p.cluster_affinity {
        named.extend(
            a.cluster_names
                .iter()
                .map(|n| (n.as_str(), "clusterAffinity.clusterNames")),
        );
    }
    if let Some(Weights::Static(w)) = &p.weights {
        named.extend(w.keys().map(|n| (n.as_str(), "weights.static")));
    }
    named.extend(p.per_cluster.keys().map(|n| (n.as_str(), "perCluster")));
    for (name, field) in named {
        if find(members, name, 0).is_none() {
            notes.push(format!(
                "placement.{field} names cluster {name}, which is not registered"
            ));
        }
    }
}

/// Sorts the previous placement into kept, stuck and released ordinals.
fn take_previous(
    prev: &Plan,
    space: &OrdinalSpace,
    policy: FailoverPolicy,
    members: &mut [Member<'_>],
    notes: &mut Vec<String>,
) -> Result<(), Invalid> {
    let ascending = consistent_and_ascending(prev);
    if !ascending {
        check_previous(prev)?;
    }
    let mut dropped: Vec<u32> = Vec::new();
    for (ci, entry) in prev.placement.iter().enumerate() {
        let (Some(&first), Some(&last)) = (entry.ordinals.first(), entry.ordinals.last()) else {
            continue;
        };
        let ords = if ascending && space.contains_span(first, last) {
            // Room to grow a little without moving (a scale-up adds to it).
            let mut ords = Vec::with_capacity(entry.ordinals.len() * 17 / 16 + 4);
            ords.extend_from_slice(&entry.ordinals);
            ords
        } else {
            let (mut ords, gone): (Vec<u32>, Vec<u32>) =
                entry.ordinals.iter().partition(|&&o| space.contains(o));
            dropped.extend(gone);
            if ords.is_empty() {
                continue;
            }
            ords.sort_unstable();
            ords
        };
        let list = || display_list(&ords);
        let n = ords.len();
        match find(members, &entry.cluster, ci).map(|i| &mut members[i]) {
            None => notes.push(format!(
                "cluster {} is not registered; its {n} instances (ordinals {}) are placed again",
                entry.cluster,
                list()
            )),
            Some(m) if m.eligible() => m.kept = ords,
            Some(m) if m.evict => notes.push(format!(
                "cluster {}: {}; its {n} instances (ordinals {}) move",
                m.name,
                m.why_not.join("; "),
                list()
            )),
            Some(m) if policy == FailoverPolicy::Reschedule => notes.push(format!(
                "cluster {}: {}; its {n} instances (ordinals {}) move (failover policy Reschedule)",
                m.name,
                m.why_not.join("; "),
                list()
            )),
            Some(m) => {
                notes.push(format!(
                    "cluster {}: {}; its {n} instances (ordinals {}) stay (failover policy Keep; set placement.failover.policy: Reschedule to move them)",
                    m.name,
                    m.why_not.join("; "),
                    list()
                ));
                m.stuck = ords;
            }
        }
    }
    if !dropped.is_empty() {
        notes.push(format!(
            "ordinals {} are no longer in the set's ordinal space (or are offline); their instances are removed",
            display_list(&dropped)
        ));
    }
    Ok(())
}

/// True when `prev` is what plans look like: cluster names ascending, every cluster's
/// ordinals ascending, no ordinal in two clusters. Costs one pass over the ordinals and
/// a sort of their runs, where [`check_previous`] sorts every ordinal.
fn consistent_and_ascending(prev: &Plan) -> bool {
    if !prev
        .placement
        .windows(2)
        .all(|w| w[0].cluster < w[1].cluster)
    {
        return false;
    }
    let mut spans: Vec<(u32, u32)> = Vec::with_capacity(prev.placement.len());
    for entry in &prev.placement {
        let ords = &entry.ordinals;
        // Without early exit, so that it compiles to a vector loop.
        if !ords.windows(2).fold(true, |ok, w| ok & (w[0] < w[1])) {
            return false;
        }
        push_runs(ords, &mut spans);
    }
    spans.sort_unstable();
    spans.windows(2).all(|w| w[0].1 < w[1].0)
}

/// Appends the runs of consecutive ordinals of `sorted` (ascending, no repeats).
fn push_runs(sorted: &[u32], runs: &mut Vec<(u32, u32)>) {
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        return;
    };
    if u64::from(last - first) + 1 == sorted.len() as u64 {
        runs.push((first, last));
        return;
    }
    let mut start = first;
    for w in sorted.windows(2) {
        if w[1] != w[0] + 1 {
            runs.push((start, w[0]));
            start = w[1];
        }
    }
    runs.push((start, last));
}

/// Refuses a previous placement that places a cluster or an ordinal twice, naming
/// every place it does.
fn check_previous(prev: &Plan) -> Result<(), Invalid> {
    let mut errors = Vec::new();
    let mut clusters_seen = BTreeSet::new();
    for (ci, entry) in prev.placement.iter().enumerate() {
        if !clusters_seen.insert(entry.cluster.as_str()) {
            errors.push(FieldError::new(
                format!("placement[{ci}].cluster"),
                format!("{:?} appears twice", entry.cluster),
            ));
        }
    }
    // Every (ordinal, entry, position), sorted: a repeated ordinal sits next to its twin.
    let mut all: Vec<(u32, usize, usize)> = prev
        .placement
        .iter()
        .enumerate()
        .flat_map(|(ci, e)| {
            e.ordinals
                .iter()
                .enumerate()
                .map(move |(oi, &o)| (o, ci, oi))
        })
        .collect();
    all.sort_unstable();
    for pair in all.windows(2) {
        let ((o, c1, _), (_, c2, oi)) = (pair[0], pair[1]);
        if o == pair[1].0 {
            let why = if c1 == c2 {
                format!("{o} is listed twice")
            } else {
                format!(
                    "{o} is also placed in cluster {}",
                    prev.placement[c1].cluster
                )
            };
            errors.push(FieldError::new(
                format!("placement[{c2}].ordinals[{oi}]"),
                why,
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Invalid(errors));
    }
    Ok(())
}

/// Releases kept instances that the placement no longer allows: above a cluster's
/// max or share, on more clusters than `maxClusters`, in more groups than `maxGroups`.
fn trim_to_policy(p: &Placement, members: &mut [Member<'_>], notes: &mut Vec<String>) {
    for m in members.iter_mut() {
        if m.kept.len() as u32 > m.policy_max {
            let extra = m.kept.split_off(m.policy_max as usize);
            let why = m.policy_max_why.describe(m.name);
            notes.push(format!(
                "cluster {}: {} instances exceed {why}; ordinals {} leave it",
                m.name,
                extra.len(),
                display_list(&extra)
            ));
        }
    }
    if let Some(max) = p.max_clusters {
        loop {
            let used = members.iter().filter(|m| m.current() > 0).count() as u32;
            if used <= max {
                break;
            }
            // The eligible cluster with the fewest instances goes; ties: the later name.
            // Clusters with a perCluster minimum stay: selection always takes them.
            let Some(m) = members
                .iter_mut()
                .filter(|m| !m.kept.is_empty() && !m.pinned())
                .min_by(|a, b| {
                    a.kept
                        .len()
                        .cmp(&b.kept.len())
                        .then_with(|| b.name.cmp(a.name))
                })
            else {
                break;
            };
            let gone = std::mem::take(&mut m.kept);
            notes.push(format!(
                "placement.maxClusters is {max}: cluster {}'s {} instances (ordinals {}) leave it",
                m.name,
                gone.len(),
                display_list(&gone)
            ));
        }
    }
    for (ci, c) in p.spread.iter().enumerate() {
        let Some(max) = c.max_groups else { continue };
        loop {
            // value → (instances, has movable instances, pinned by a perCluster minimum)
            let mut groups: BTreeMap<&str, (u32, bool, bool)> = BTreeMap::new();
            for m in members.iter().filter(|m| m.current() > 0 || m.pinned()) {
                if let Some(v) = m.labels.get(&c.by_label) {
                    let g = groups.entry(v.as_str()).or_default();
                    g.0 += m.current();
                    g.1 |= !m.kept.is_empty();
                    g.2 |= m.pinned();
                }
            }
            if groups.len() as u32 <= max {
                break;
            }
            // The movable group with the fewest instances goes; ties: the later value.
            let Some(value) = groups
                .iter()
                .filter(|(_, g)| g.1 && !g.2)
                .min_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| b.0.cmp(a.0)))
                .map(|(v, _)| v.to_string())
            else {
                break;
            };
            for m in members
                .iter_mut()
                .filter(|m| m.labels.get(&c.by_label) == Some(&value))
            {
                let gone = std::mem::take(&mut m.kept);
                if !gone.is_empty() {
                    notes.push(format!(
                        "placement.spread[{ci}].maxGroups is {max}: cluster {} ({}={value})'s {} instances (ordinals {}) leave it",
                        m.name,
                        c.by_label,
                        gone.len(),
                        display_list(&gone)
                    ));
                }
            }
        }
    }
}

/// Which clusters may receive instances, and which must get at least one to meet
/// `minClusters` and the spread minimums.
#[derive(Debug)]
struct Selection {
    chosen: Vec<bool>,
    /// Clusters picked to meet a minimum, in the order picked.
    needs_one: Vec<usize>,
    /// Minimums that cannot be met.
    problems: Vec<String>,
}

fn select<'a>(p: &Placement, members: &[Member<'a>], hi: &[u32]) -> Selection {
    let n = members.len();
    let candidate = |i: usize| members[i].eligible() && hi[i] > 0;
    // Best first: no PreferNoSchedule taint, higher weight, more room, then name.
    let mut order: Vec<usize> = (0..n).filter(|&i| candidate(i)).collect();
    // Members are in name order, so their index is the name's tie-break.
    order.sort_unstable_by(|&a, &b| {
        let (x, y) = (&members[a], &members[b]);
        x.last_choice
            .cmp(&y.last_choice)
            .then(y.weight.cmp(&x.weight))
            .then(y.estimate.instances.cmp(&x.estimate.instances))
            .then(a.cmp(&b))
    });
    let mut chosen = vec![false; n];
    let mut used = members.iter().filter(|m| !m.stuck.is_empty()).count() as u32;
    let mut groups: Vec<BTreeSet<&'a str>> = vec![BTreeSet::new(); p.spread.len()];
    let value = |i: usize, ci: usize| -> Option<&'a str> {
        let labels: &'a BTreeMap<String, String> = members[i].labels;
        labels.get(&p.spread[ci].by_label).map(String::as_str)
    };
    let take =
        |i: usize, chosen: &mut Vec<bool>, used: &mut u32, groups: &mut Vec<BTreeSet<&'a str>>| {
            chosen[i] = true;
            *used += 1;
            for (ci, g) in groups.iter_mut().enumerate() {
                g.extend(value(i, ci));
            }
        };
    for (i, m) in members.iter().enumerate() {
        if !m.stuck.is_empty() {
            for (ci, g) in groups.iter_mut().enumerate() {
                g.extend(value(i, ci));
            }
        }
        if candidate(i) && (!m.kept.is_empty() || m.min > 0) {
            take(i, &mut chosen, &mut used, &mut groups);
        }
    }
    let fits = |i: usize, chosen: &[bool], used: u32, groups: &[BTreeSet<&'a str>]| {
        !chosen[i]
            && p.max_clusters.is_none_or(|max| used < max)
            && p.spread.iter().enumerate().all(|(ci, c)| {
                c.max_groups.is_none_or(|max| {
                    value(i, ci).is_some_and(|v| groups[ci].contains(v))
                        || (groups[ci].len() as u32) < max
                })
            })
    };
    // Whether, after taking `i`, minClusters and every minGroups can still be met: a
    // pick that uses up a maxGroups slot on a small group can make them unreachable.
    let promising = |i: usize, chosen: &[bool], used: u32, groups: &[BTreeSet<&'a str>]| {
        let (mut chosen, mut used, mut groups) = (chosen.to_vec(), used, groups.to_vec());
        take(i, &mut chosen, &mut used, &mut groups);
        let left = |ci: usize| -> BTreeMap<&'a str, u32> {
            let mut by_value = BTreeMap::new();
            for &j in order.iter().filter(|&&j| !chosen[j]) {
                *by_value
                    .entry(value(j, ci).unwrap_or_default())
                    .or_insert(0) += 1;
            }
            by_value
        };
        let unchosen = order.iter().filter(|&&j| !chosen[j]).count() as u32;
        let mut reach = used + unchosen;
        if let Some(max) = p.max_clusters {
            reach = reach.min(max);
        }
        for (ci, c) in p.spread.iter().enumerate() {
            let by_value = left(ci);
            let inside: u32 = groups[ci].iter().filter_map(|v| by_value.get(v)).sum();
            let mut outside: Vec<u32> = by_value
                .iter()
                .filter(|(v, _)| !groups[ci].contains(*v))
                .map(|(_, &n)| n)
                .collect();
            outside.sort_unstable_by(|a, b| b.cmp(a));
            let slots = c.max_groups.map_or(outside.len(), |max| {
                (max as usize)
                    .saturating_sub(groups[ci].len())
                    .min(outside.len())
            });
            reach = reach.min(used + inside + outside[..slots].iter().sum::<u32>());
            if c.min_groups
                .is_some_and(|min| groups[ci].len() + slots < min as usize)
            {
                return false;
            }
        }
        reach >= p.min_clusters.unwrap_or(0)
    };
    // The best candidate that keeps every minimum reachable, else the best that fits.
    let best =
        |ok: &dyn Fn(usize) -> bool, chosen: &[bool], used: u32, groups: &[BTreeSet<&'a str>]| {
            let fitting = || {
                order
                    .iter()
                    .copied()
                    .filter(|&i| fits(i, chosen, used, groups) && ok(i))
            };
            fitting()
                .find(|&i| promising(i, chosen, used, groups))
                .or_else(|| fitting().next())
        };
    let mut needs_one = Vec::new();
    let mut problems = Vec::new();
    for (ci, c) in p.spread.iter().enumerate() {
        let Some(min) = c.min_groups else { continue };
        while (groups[ci].len() as u32) < min {
            let new_group = |i: usize| value(i, ci).is_some_and(|v| !groups[ci].contains(v));
            let pick = best(&new_group, &chosen, used, &groups);
            let Some(i) = pick else {
                problems.push(format!(
                    "placement.spread[{ci}] needs instances in {min} distinct {} values, but only {} can have any ({})",
                    c.by_label,
                    groups[ci].len(),
                    groups[ci].iter().copied().collect::<Vec<_>>().join(", ")
                ));
                break;
            };
            take(i, &mut chosen, &mut used, &mut groups);
            needs_one.push(i);
        }
    }
    if let Some(min) = p.min_clusters {
        while used < min {
            let Some(i) = best(&|_| true, &chosen, used, &groups) else {
                problems.push(format!(
                    "placement.minClusters is {min}, but only {used} eligible clusters with room can run instances"
                ));
                break;
            };
            take(i, &mut chosen, &mut used, &mut groups);
            needs_one.push(i);
        }
    }
    for &i in &order {
        if fits(i, &chosen, used, &groups) {
            take(i, &mut chosen, &mut used, &mut groups);
        }
    }
    Selection {
        chosen,
        needs_one,
        problems,
    }
}

/// Lower bounds: what each cluster already runs (`floor`), then one instance for each
/// cluster picked to meet a minimum, then `perCluster` minimums, while `total` allows.
fn lower_bounds(
    members: &[Member<'_>],
    sel: &Selection,
    hi: &[u32],
    total: u32,
    floor: &[u32],
) -> Vec<u32> {
    let mut lo = floor.to_vec();
    let mut budget = total.saturating_sub(lo.iter().sum());
    for &i in &sel.needs_one {
        if lo[i] == 0 && budget > 0 {
            lo[i] = 1;
            budget -= 1;
        }
    }
    for (i, m) in members.iter().enumerate() {
        let want = m.min.min(hi[i]);
        if sel.chosen[i] && want > lo[i] {
            let add = (want - lo[i]).min(budget);
            lo[i] += add;
            budget -= add;
        }
    }
    lo
}

fn slots(members: &[Member<'_>], sel: &Selection, lo: &[u32], hi: &[u32]) -> Vec<Slot> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if sel.chosen[i] {
                Slot {
                    weight: m.weight,
                    lo: lo[i],
                    hi: hi[i],
                }
            } else {
                Slot {
                    weight: 0,
                    lo: lo[i],
                    hi: lo[i],
                }
            }
        })
        .collect()
}

/// Adds instances (new ordinals, lowest free first) until eligible clusters hold
/// `total`, or as many as fit.
fn scale_up(
    p: &Placement,
    total: u32,
    space: &OrdinalSpace,
    busy: &BTreeSet<u32>,
    members: &mut [Member<'_>],
    notes: &mut Vec<String>,
) -> bool {
    let hi: Vec<u32> = members.iter().map(Member::hi).collect();
    let kept: Vec<u32> = members.iter().map(|m| m.kept.len() as u32).collect();
    if kept.iter().sum::<u32>() == total {
        return false;
    }
    let sel = select(p, members, &hi);
    if !sel.problems.is_empty() {
        for problem in sel.problems {
            notes.push(format!(
                "{problem}; no new instances are placed until it can be met"
            ));
        }
        return true;
    }
    let lo = lower_bounds(members, &sel, &hi, total, &kept);
    let counts = divide(total, &slots(members, &sel, &lo, &hi));

    // What each cluster would get with unlimited room, to say who ran out of it.
    let asked_hi: Vec<u32> = members
        .iter()
        .map(|m| if m.eligible() { m.policy_max } else { 0 })
        .collect();
    // Only a cluster held at its room below its policy's limit can have been asked for
    // more than it got.
    let short_of_room = |i: usize| sel.chosen[i] && counts[i] == hi[i] && hi[i] < asked_hi[i];
    let asked = if (0..members.len()).any(short_of_room) {
        divide(total, &slots(members, &sel, &lo, &asked_hi))
    } else {
        counts.clone()
    };
    for (i, m) in members.iter().enumerate() {
        if sel.chosen[i] && counts[i] < asked[i] && counts[i] == hi[i] {
            notes.push(format!(
                "cluster {}: room for {}, {} asked",
                m.name, m.estimate.instances, asked[i]
            ));
        }
    }
    let placed: u32 = counts.iter().sum();
    if placed < total {
        let left_out: Vec<&str> = (0..members.len())
            .filter(|&i| !sel.chosen[i] && members[i].eligible() && hi[i] > 0)
            .map(|i| members[i].name)
            .collect();
        if !left_out.is_empty() {
            notes.push(format!(
                "clusters {} have room but are not used under the placement's limits",
                left_out.join(", ")
            ));
        }
    }

    let wanted: usize = (0..members.len())
        .map(|i| counts[i].saturating_sub(kept[i]) as usize)
        .sum();
    let mut taken: Vec<(u32, u32)> = Vec::new();
    for m in members.iter() {
        push_runs(&m.kept, &mut taken);
        push_runs(&m.stuck, &mut taken);
    }
    let busy: Vec<u32> = busy.iter().copied().collect();
    push_runs(&busy, &mut taken);
    let free = lowest_free(space, taken, wanted);
    let mut free = free.into_iter();
    for (i, m) in members.iter_mut().enumerate() {
        let add = counts[i].saturating_sub(kept[i]) as usize;
        add_ascending(&mut m.kept, free.by_ref().take(add));
    }
    false
}

/// The lowest `n` ordinals of `space` outside `taken` (runs, in any order, possibly
/// overlapping), ascending; fewer when the space runs out.
fn lowest_free(space: &OrdinalSpace, mut taken: Vec<(u32, u32)>, n: usize) -> Vec<u32> {
    taken.sort_unstable();
    let mut out = Vec::with_capacity(n);
    let mut taken = taken.into_iter().peekable();
    'space: for (start, end) in space.runs() {
        let mut next = start;
        while out.len() < n {
            // Runs that end before `next` are behind us.
            while taken.next_if(|&(_, e)| e < next).is_some() {}
            let until = match taken.peek() {
                Some(&(s, e)) if s <= next => {
                    // `next` is taken: skip to the end of that run.
                    match e.checked_add(1) {
                        Some(after) if after <= end => {
                            next = after;
                            continue;
                        }
                        _ => continue 'space,
                    }
                }
                Some(&(s, _)) => end.min(s - 1),
                None => end,
            };
            let take = (u64::from(until - next) + 1).min((n - out.len()) as u64) as u32;
            out.extend(next..next + take);
            match (next + take - 1).checked_add(1) {
                Some(after) if after <= end => next = after,
                _ => continue 'space,
            }
        }
        break;
    }
    out
}

/// Adds ascending ordinals, none of them already there, to an ascending list.
fn add_ascending(list: &mut Vec<u32>, add: impl Iterator<Item = u32>) {
    let from = list.len();
    list.extend(add);
    if from > 0 && from < list.len() && list[from - 1] > list[from] {
        list.sort_unstable();
    }
}

/// Says which minimums the final placement misses (running instances are not moved
/// to meet a minimum that was raised; a scale-up meets it).
fn unmet_minimums(p: &Placement, replicas: u32, members: &[Member<'_>], notes: &mut Vec<String>) {
    let used: Vec<&Member<'_>> = members.iter().filter(|m| m.current() > 0).collect();
    if used.is_empty() {
        return;
    }
    if let Some(min) = p.min_clusters
        && (used.len() as u32) < min.min(replicas)
    {
        notes.push(format!(
            "placement.minClusters is {min}, but instances run in {} clusters; running instances are not moved to meet it",
            used.len()
        ));
    }
    for (ci, c) in p.spread.iter().enumerate() {
        let groups: BTreeSet<&str> = used
            .iter()
            .filter_map(|m| m.labels.get(&c.by_label))
            .map(String::as_str)
            .collect();
        if let Some(min) = c.min_groups
            && (groups.len() as u32) < min.min(replicas)
        {
            notes.push(format!(
                "placement.spread[{ci}] needs {min} distinct {} values, but instances run in {}; running instances are not moved to meet it",
                c.by_label,
                groups.len()
            ));
        }
    }
}

/// Removes instances until the clusters hold `replicas`: always from the cluster
/// furthest above its target (ties: more instances, then name), highest ordinal first.
fn scale_down(p: &Placement, replicas: u32, members: &mut [Member<'_>]) {
    let hi: Vec<u32> = members.iter().map(Member::hi).collect();
    let sel = select(p, members, &hi);
    let lo = lower_bounds(members, &sel, &hi, replicas, &vec![0; members.len()]);
    let target = divide(replicas, &slots(members, &sel, &lo, &hi));
    let current: Vec<i64> = members.iter().map(|m| i64::from(m.current())).collect();
    let over: Vec<i64> = current
        .iter()
        .zip(&target)
        .map(|(&c, &t)| c - i64::from(t))
        .collect();
    let excess: i64 = current.iter().sum::<i64>() - i64::from(replicas);
    // Lower every cluster to `level` above its target, for the lowest level that
    // removes no more than the excess; then take one more from the first few at it.
    let removed_at = |level: i64| -> i64 { over.iter().map(|&d| (d - level).max(0)).sum() };
    let (mut lo_level, mut hi_level) = (0i64, over.iter().copied().max().unwrap_or(0).max(0));
    while lo_level < hi_level {
        let mid = (lo_level + hi_level) / 2;
        if removed_at(mid) <= excess {
            hi_level = mid
        } else {
            lo_level = mid + 1
        }
    }
    let level = lo_level;
    let mut remove: Vec<i64> = over.iter().map(|&d| (d - level).max(0)).collect();
    let mut left = excess - remove.iter().sum::<i64>();
    let mut at_level: Vec<usize> = (0..members.len())
        .filter(|&i| over[i] >= level && current[i] - remove[i] > 0)
        .collect();
    at_level.sort_by(|&a, &b| {
        (current[b] - remove[b])
            .cmp(&(current[a] - remove[a]))
            .then(members[a].name.cmp(members[b].name))
    });
    for i in at_level {
        if left == 0 {
            break;
        }
        remove[i] += 1;
        left -= 1;
    }
    for (m, r) in members.iter_mut().zip(remove) {
        let list = if m.kept.is_empty() {
            &mut m.stuck
        } else {
            &mut m.kept
        };
        let keep = list.len().saturating_sub(r as usize);
        list.truncate(keep);
    }
}
