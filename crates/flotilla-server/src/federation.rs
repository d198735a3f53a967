//! The pure parts of federating one set: the clusters it is planned against, and the
//! slices its plan becomes. Shared by the controller and the what-if `Plan` call.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::instanceset::EXCLUSIVE_ROLES_ELSEWHERE;
use flotilla_api::quantity::Amount;
use flotilla_api::resources::{self, PODS};
use flotilla_api::set::FailoverPolicy;
use flotilla_api::status::Condition;
use flotilla_api::{
    Cluster, ClusterStatus, FederatedInstanceSet, InstanceSet, InstanceSetStatus, NodeGroup,
    Object, Valid, validate,
};
use flotilla_scheduler::Plan;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The label on every slice naming the member cluster it is for.
pub const CLUSTER_LABEL: &str = "flotilla.io/cluster";
/// The label on every slice naming the FederatedInstanceSet it comes from.
pub const SET_LABEL: &str = "flotilla.io/federated-set";

/// One registered cluster as the server knows it.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    pub cluster: &'a Cluster,
    pub status: Option<&'a ClusterStatus>,
    /// Its lease is current.
    pub alive: bool,
}

/// The clusters `set` is planned against: each registered cluster with its status,
/// ready only while its heartbeat is current, and with the room the set's own
/// instances there take counted back in (agents report free capacity after every pod,
/// this set's included, while the scheduler wants the room this set may use in all).
///
/// The add-back is exact when resources alone limit the set. With
/// `maxInstancesPerNode`, the capacity model cannot say which nodes hold the set's
/// instances: a node holding one still counts as room for `maxInstancesPerNode` more,
/// so counting the instances back in too would place instances that can never
/// schedule. Then nothing is added: the estimate is a lower bound (never more than
/// fits), and the scheduler never plans below what already runs.
pub fn clusters_for(
    set: &FederatedInstanceSet,
    members: &[Member<'_>],
    reports: &BTreeMap<String, &InstanceSetStatus>,
) -> Vec<Valid<Cluster>> {
    let requests = set
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|pod| resources::pod_requests(pod).ok())
        .unwrap_or_default();
    members
        .iter()
        .filter_map(|m| {
            let mut c = m.cluster.clone();
            let mut status = m.status.cloned().unwrap_or_default();
            status.ready = status.ready && m.alive;
            let own = reports
                .get(c.name())
                .map(|r| r.instances.len() as u32)
                .unwrap_or(0);
            if own > 0
                && set.spec.placement.max_instances_per_node.is_none()
                && let Some(capacity) = status.capacity.as_mut()
            {
                capacity.node_groups.push(own_room(own, &requests));
            }
            c.status = Some(status);
            match validate::cluster(c) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(cluster = m.cluster.name(), error = %e, "cluster left out of planning");
                    None
                }
            }
        })
        .collect()
}

/// `count` nodes, each with exactly one instance's room.
fn own_room(count: u32, requests: &BTreeMap<String, Amount>) -> NodeGroup {
    let mut free: BTreeMap<String, Quantity> = requests
        .iter()
        .map(|(r, a)| (r.clone(), Quantity(a.to_string())))
        .collect();
    free.insert(PODS.to_string(), Quantity("1".to_string()));
    NodeGroup { count, free }
}

/// The slice of `set` for `cluster`: its ordinals, and a generation that moves only
/// when the slice's spec does.
pub fn slice(
    set: &FederatedInstanceSet,
    cluster: &str,
    ordinals: &[u32],
    existing: Option<&InstanceSet>,
    home: Option<&str>,
    leaving: &BTreeSet<u32>,
    extra: &BTreeMap<String, String>,
) -> InstanceSet {
    let mut s: InstanceSet = Object::new(set.name(), set.spec.slice(ordinals));
    s.metadata.namespace = Some(set.namespace().unwrap_or("default").to_string());
    s.metadata.labels = Some(BTreeMap::from([
        (CLUSTER_LABEL.to_string(), cluster.to_string()),
        (SET_LABEL.to_string(), set.name().to_string()),
    ]));
    let mut annotations = extra.clone();
    if let Some(home) = home.filter(|h| *h != cluster) {
        annotations.insert(EXCLUSIVE_ROLES_ELSEWHERE.to_string(), home.to_string());
    }
    if !leaving.is_empty() {
        let list: Vec<u32> = leaving.iter().copied().collect();
        annotations.insert(
            LEAVING_ANNOTATION.to_string(),
            flotilla_api::ordinals::compact_list(&list),
        );
    }
    s.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    s.metadata.generation = Some(match existing {
        Some(e) if e.spec == s.spec => e.metadata.generation.unwrap_or(1),
        Some(e) => e.metadata.generation.unwrap_or(1) + 1,
        None => 1,
    });
    s.metadata.creation_timestamp = existing.and_then(|e| e.metadata.creation_timestamp.clone());
    s
}

/// The member cluster that holds the set's exclusive roles (its primary), if it has
/// any: the one that already does while it is alive and keeps instances; else a live
/// cluster whose member reports a holder (lowest ordinal first); else the live cluster
/// of the lowest ordinal. Members other than this one elect no holder of their own
/// (see [`EXCLUSIVE_ROLES_ELSEWHERE`]), so a federated set has one primary.
pub fn exclusive_home(
    set: &FederatedInstanceSet,
    desired: &BTreeMap<String, Vec<u32>>,
    existing: &BTreeMap<String, &InstanceSet>,
    reports: &BTreeMap<String, &InstanceSetStatus>,
    alive: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let exclusive: BTreeSet<&str> = set.spec.exclusive_roles().collect();
    if exclusive.is_empty() || desired.is_empty() {
        return None;
    }
    let usable = |c: &str| alive(c) && desired.contains_key(c);
    let elsewhere = |s: &InstanceSet| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXCLUSIVE_ROLES_ELSEWHERE))
            .cloned()
    };
    let bare: Vec<&String> = existing
        .iter()
        .filter(|(_, s)| elsewhere(s).is_none())
        .map(|(c, _)| c)
        .collect();
    let previous = existing
        .values()
        .find_map(|s| elsewhere(s))
        .or_else(|| (bare.len() == 1).then(|| bare[0].clone()));
    if let Some(home) = previous.filter(|h| usable(h)) {
        return Some(home);
    }
    let holder = reports
        .iter()
        .filter(|(c, _)| usable(c))
        .flat_map(|(c, r)| r.instances.iter().map(move |i| (i, c)))
        .filter(|(i, _)| i.role.as_deref().is_some_and(|r| exclusive.contains(r)))
        .min_by_key(|(i, _)| i.ordinal)
        .map(|(_, c)| c.clone());
    let lowest = |live: bool| {
        desired
            .iter()
            .filter(|(c, _)| !live || alive(c))
            .filter_map(|(c, o)| o.first().map(|first| (*first, c)))
            .min()
            .map(|(_, c)| c.clone())
    };
    holder.or_else(|| lowest(true)).or_else(|| lowest(false))
}

/// On a slice: ordinals taken out of it whose instances its member has not yet
/// confirmed gone (`3,5-7`). Kept in the store with the slice, so that what another
/// member may still run survives a restart of the server.
pub const LEAVING_ANNOTATION: &str = "flotilla.io/leaving";

/// The ordinals a slice says are still leaving it (an unreadable part reads as none:
/// only the server writes it).
pub fn leaving_of(slice: &InstanceSet) -> BTreeSet<u32> {
    slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEAVING_ANNOTATION))
        .map(|t| flotilla_api::ordinals::parse_compact_list(t))
        .unwrap_or_default()
}

/// Every ordinal a member may still run: those of its slice, those leaving it that
/// it has not confirmed gone, and those its last report lists (in the slice or
/// leaving it).
pub fn held_by(slice: Option<&InstanceSet>, report: Option<&InstanceSetStatus>) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    if let Some(s) = slice {
        out.extend(s.spec.ordinals.to_vec());
        out.extend(leaving_of(s));
    }
    if let Some(r) = report {
        out.extend(r.instances.iter().map(|i| i.ordinal));
        out.extend(r.leaving.iter().copied());
    }
    out
}

/// The ordinals still leaving a member's next slice (of ordinals `next`): those it
/// leaves now, and those that left before unless the member has confirmed them gone
/// (its report describes the current slice's generation and no longer lists them).
pub fn next_leaving(
    existing: Option<&InstanceSet>,
    next: &BTreeSet<u32>,
    report: Option<&InstanceSetStatus>,
) -> BTreeSet<u32> {
    let Some(e) = existing else {
        return BTreeSet::new();
    };
    let confirmed = report
        .is_some_and(|r| r.observed_generation.unwrap_or(0) >= e.metadata.generation.unwrap_or(1));
    let reported: BTreeSet<u32> = report
        .map(|r| {
            r.instances
                .iter()
                .map(|i| i.ordinal)
                .chain(r.leaving.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    let mut out: BTreeSet<u32> = leaving_of(e)
        .into_iter()
        .filter(|o| !confirmed || reported.contains(o))
        .collect();
    out.extend(e.spec.ordinals.to_vec());
    out.retain(|o| !next.contains(o));
    out
}

/// The ordinals of each cluster's slice under `plan`, holding back any ordinal that
/// another member may still run ([`held_by`]): an instance moves only once its old
/// member has removed it and said so, so no ordinal ever runs in two clusters.
/// `waits_for(cluster)` says whether that member's word is awaited: a live one always;
/// one whose heartbeat lapsed unless the move is the point (failover `Reschedule`, a
/// `NoExecute` taint, or the cluster's removal), since it cannot confirm anything.
pub fn slice_ordinals(
    plan: &Plan,
    slices: &BTreeMap<String, &InstanceSet>,
    reports: &BTreeMap<String, &InstanceSetStatus>,
    waits_for: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, Vec<u32>> {
    // A member's slice is deleted only once it has confirmed that nothing is left (or
    // its cluster is gone), so a report without a slice is a leftover: it holds nothing.
    let mut holders: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for (cluster, slice) in slices {
        if !waits_for(cluster) {
            continue;
        }
        let held = held_by(Some(*slice), reports.get(cluster).copied());
        for o in held {
            holders.entry(o).or_default().insert(cluster.as_str());
        }
    }
    plan.placement
        .iter()
        .map(|cp| {
            let ordinals = cp
                .ordinals
                .iter()
                .copied()
                .filter(|o| {
                    holders
                        .get(o)
                        .is_none_or(|h| h.iter().all(|h| *h == cp.cluster))
                })
                .collect();
            (cp.cluster.clone(), ordinals)
        })
        .filter(|(_, o): &(String, Vec<u32>)| !o.is_empty())
        .collect()
}

/// Whether the word of member `cluster` (`None`: no longer registered) is awaited
/// before an ordinal it may run moves elsewhere ([`slice_ordinals`]): always while it
/// is alive; once its heartbeat lapsed, only when moving its instances is not the point
/// (failover `Keep` and no untolerated `NoExecute` taint). A lapsed member under
/// `Keep` keeps its instances, so an ordinal it may run is not placed anywhere else,
/// even after a scale-down and up again.
pub fn awaits(set: &FederatedInstanceSet, cluster: Option<&Cluster>, alive: bool) -> bool {
    if alive {
        return true;
    }
    let Some(c) = cluster else {
        return false;
    };
    let placement = &set.spec.placement;
    placement.failover.policy != FailoverPolicy::Reschedule
        && !c.spec.taints.iter().any(|t| {
            t.effect == "NoExecute" && !flotilla_api::selector::tolerated(t, &placement.tolerations)
        })
}

/// The status of a cluster whose heartbeat lapsed.
pub fn unknown(mut status: ClusterStatus, ttl_seconds: u64, now: &str) -> ClusterStatus {
    status.ready = false;
    status.reason = Some("HeartbeatExpired".to_string());
    set_ready_condition(
        &mut status,
        "Unknown",
        "HeartbeatExpired",
        format!(
            "no heartbeat from the agent for more than {ttl_seconds}s: the cluster gets no new \
             instances and its running instances are left alone; check the agent and its \
             connection to the server"
        ),
        now,
    );
    status
}

/// Sets the `Ready` condition, keeping its transition time if its status is unchanged.
pub fn set_ready_condition(
    status: &mut ClusterStatus,
    value: &str,
    reason: &str,
    message: String,
    now: &str,
) {
    let before = status.conditions.iter().find(|c| c.type_ == "Ready");
    let time = match before {
        Some(b) if b.status == value => b.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    status.conditions = vec![Condition {
        type_: "Ready".to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: time,
    }];
}

/// Now as RFC 3339 (UTC, seconds).
pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::{FederatedInstanceSetSpec, InstanceStatus};
    use flotilla_scheduler::ClusterPlan;

    fn plan(p: &[(&str, &[u32])]) -> Plan {
        Plan {
            placement: p
                .iter()
                .map(|(c, o)| ClusterPlan {
                    cluster: c.to_string(),
                    capacity: 10,
                    ordinals: o.to_vec(),
                })
                .collect(),
            unschedulable: 0,
            messages: vec![],
        }
    }

    fn running(ordinals: &[u32]) -> InstanceSetStatus {
        InstanceSetStatus {
            instances: ordinals
                .iter()
                .map(|&ordinal| InstanceStatus {
                    ordinal,
                    ..InstanceStatus::default()
                })
                .collect(),
            ..InstanceSetStatus::default()
        }
    }

    fn report(generation: i64, instances: &[u32], leaving: &[u32]) -> InstanceSetStatus {
        InstanceSetStatus {
            observed_generation: Some(generation),
            leaving: leaving.to_vec(),
            ..running(instances)
        }
    }

    fn a_slice(ordinals: &[u32], generation: i64, leaving: &[u32]) -> InstanceSet {
        let set = Object::new("r", flotilla_api::FederatedInstanceSetSpec::default());
        let mut s = slice(
            &set,
            "x",
            ordinals,
            None,
            None,
            &leaving.iter().copied().collect(),
            &BTreeMap::new(),
        );
        s.metadata.generation = Some(generation);
        s
    }

    #[test]
    fn an_ordinal_moves_only_after_its_old_member_dropped_it() {
        let plan = plan(&[("a", &[0, 1]), ("b", &[2, 3])]);
        // 3 moved from a to b: a's slice no longer has it, but a still runs it.
        let sa = a_slice(&[0, 1], 2, &[3]);
        let sb = a_slice(&[2], 1, &[]);
        let slices = BTreeMap::from([("a".to_string(), &sa), ("b".to_string(), &sb)]);
        let a = report(1, &[0, 1, 3], &[]);
        let b = report(1, &[2], &[]);
        let reports = BTreeMap::from([("a".to_string(), &a), ("b".to_string(), &b)]);
        let got = slice_ordinals(&plan, &slices, &reports, &|_| true);
        assert_eq!(got["a"], vec![0, 1]);
        assert_eq!(got["b"], vec![2], "3 waits until a has removed it");
        // a took the shrink and is removing 3: still held.
        let a = report(2, &[0, 1], &[3]);
        let reports = BTreeMap::from([("a".to_string(), &a), ("b".to_string(), &b)]);
        assert_eq!(
            slice_ordinals(&plan, &slices, &reports, &|_| true)["b"],
            vec![2]
        );
        // An old report that happens not to list 3 proves nothing: the slice still says
        // 3 is leaving a.
        let stale = report(1, &[0, 1], &[]);
        let reports = BTreeMap::from([("a".to_string(), &stale), ("b".to_string(), &b)]);
        assert_eq!(
            slice_ordinals(&plan, &slices, &reports, &|_| true)["b"],
            vec![2]
        );
        // a's heartbeat lapsed and the move is the point (failover): it goes ahead.
        let got = slice_ordinals(&plan, &slices, &reports, &|c| c != "a");
        assert_eq!(got["b"], vec![2, 3]);
    }

    #[test]
    fn leaving_ordinals_are_kept_until_the_member_confirms_them_gone() {
        let next: BTreeSet<u32> = [0, 1].into();
        // Taken out now: leaving, whatever the report says.
        let e = a_slice(&[0, 1, 2, 3], 1, &[]);
        assert_eq!(next_leaving(Some(&e), &next, None), [2, 3].into());
        // Next pass: the member has not reported the new generation yet.
        let e = a_slice(&[0, 1], 2, &[2, 3]);
        let old = report(1, &[0, 1], &[]);
        assert_eq!(next_leaving(Some(&e), &next, Some(&old)), [2, 3].into());
        // It has, and 2 is still being removed.
        let now = report(2, &[0, 1], &[2]);
        assert_eq!(next_leaving(Some(&e), &next, Some(&now)), [2].into());
        // Both gone.
        let done = report(2, &[0, 1], &[]);
        assert!(next_leaving(Some(&e), &next, Some(&done)).is_empty());
        // An ordinal coming back is no longer leaving.
        let back: BTreeSet<u32> = [0, 1, 2].into();
        assert_eq!(next_leaving(Some(&e), &back, Some(&now)), BTreeSet::new());
        // The annotation reads back compactly.
        let s = a_slice(&[], 3, &[2, 3, 4, 9]);
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[LEAVING_ANNOTATION],
            "2-4,9"
        );
        assert_eq!(leaving_of(&s), [2, 3, 4, 9].into());
        assert_eq!(
            held_by(Some(&s), Some(&report(3, &[], &[11]))),
            [2, 3, 4, 9, 11].into()
        );
    }

    #[test]
    fn slice_generations_move_with_the_spec_only() {
        let set = Object::new(
            "r",
            FederatedInstanceSetSpec {
                replicas: 3,
                ..FederatedInstanceSetSpec::default()
            },
        );
        let none = BTreeSet::new();
        let first = slice(&set, "a", &[0, 1], None, Some("a"), &none, &BTreeMap::new());
        assert!(
            first.metadata.annotations.is_none(),
            "the home slice elects"
        );
        let other = slice(&set, "b", &[2], None, Some("a"), &none, &BTreeMap::new());
        assert_eq!(
            other.metadata.annotations.unwrap()[EXCLUSIVE_ROLES_ELSEWHERE],
            "a"
        );
        assert_eq!(first.metadata.generation, Some(1));
        assert_eq!(first.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(first.metadata.labels.as_ref().unwrap()[CLUSTER_LABEL], "a");
        let same = slice(
            &set,
            "a",
            &[0, 1],
            Some(&first),
            Some("a"),
            &none,
            &BTreeMap::new(),
        );
        assert_eq!(same.metadata.generation, Some(1));
        let grown = slice(
            &set,
            "a",
            &[0, 1, 2],
            Some(&first),
            Some("a"),
            &none,
            &BTreeMap::new(),
        );
        assert_eq!(grown.metadata.generation, Some(2));
    }

    #[test]
    fn own_instances_count_back_as_room() {
        let mut cluster: Cluster = Object::new("a", Default::default());
        cluster.metadata.labels = None;
        let status = ClusterStatus {
            ready: true,
            capacity: Some(flotilla_api::CapacityModel {
                node_groups: vec![NodeGroup {
                    count: 1,
                    free: BTreeMap::from([("cpu".to_string(), Quantity("1".into()))]),
                }],
            }),
            ..ClusterStatus::default()
        };
        let set: FederatedInstanceSet = Object::new("r", FederatedInstanceSetSpec::default());
        let members = [Member {
            cluster: &cluster,
            status: Some(&status),
            alive: true,
        }];
        let r = running(&[0, 1]);
        let reports = BTreeMap::from([("a".to_string(), &r)]);
        let got = clusters_for(&set, &members, &reports);
        let groups = &got[0]
            .status
            .as_ref()
            .unwrap()
            .capacity
            .as_ref()
            .unwrap()
            .node_groups;
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].count, 2);
        assert!(got[0].status.as_ref().unwrap().ready);
        // With a per-node cap the model cannot say which nodes hold them: no add-back.
        let mut capped = set.clone();
        capped.spec.placement.max_instances_per_node = Some(1);
        let got = clusters_for(&capped, &members, &reports);
        let groups = &got[0]
            .status
            .as_ref()
            .unwrap()
            .capacity
            .as_ref()
            .unwrap()
            .node_groups;
        assert_eq!(groups.len(), 1);
        let dead = [Member {
            alive: false,
            ..members[0].clone()
        }];
        assert!(
            !clusters_for(&set, &dead, &reports)[0]
                .status
                .as_ref()
                .unwrap()
                .ready
        );
    }

    #[test]
    fn one_member_holds_the_exclusive_roles_and_keeps_them_while_alive() {
        let mut set: FederatedInstanceSet = Object::new("r", FederatedInstanceSetSpec::default());
        set.spec.roles = vec![flotilla_api::Role {
            name: "primary".into(),
            exclusive: true,
            ..flotilla_api::Role::default()
        }];
        let desired =
            BTreeMap::from([("a".to_string(), vec![2, 3]), ("b".to_string(), vec![0, 1])]);
        let none = BTreeMap::new();
        let no_reports = BTreeMap::new();
        let all = |_: &str| true;
        // Fresh: the cluster of the lowest ordinal.
        assert_eq!(
            exclusive_home(&set, &desired, &none, &no_reports, &all).as_deref(),
            Some("b")
        );
        // A member already reports the holder: there.
        let mut a = running(&[2, 3]);
        a.instances[0].role = Some("primary".into());
        let reports = BTreeMap::from([("a".to_string(), &a)]);
        assert_eq!(
            exclusive_home(&set, &desired, &none, &reports, &all).as_deref(),
            Some("a")
        );
        // The slices say a: a stays home even when b reports a holder too.
        let sa = slice(
            &set,
            "a",
            &[2, 3],
            None,
            Some("a"),
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        let sb = slice(
            &set,
            "b",
            &[0, 1],
            None,
            Some("a"),
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        let existing = BTreeMap::from([("a".to_string(), &sa), ("b".to_string(), &sb)]);
        let mut b = running(&[0, 1]);
        b.instances[0].role = Some("primary".into());
        let both = BTreeMap::from([("b".to_string(), &b)]);
        assert_eq!(
            exclusive_home(&set, &desired, &existing, &both, &all).as_deref(),
            Some("a")
        );
        // a lost its heartbeat: the role moves to a live member.
        let not_a = |c: &str| c != "a";
        assert_eq!(
            exclusive_home(&set, &desired, &existing, &both, &not_a).as_deref(),
            Some("b")
        );
        // No exclusive role: no home.
        set.spec.roles.clear();
        assert_eq!(exclusive_home(&set, &desired, &existing, &both, &all), None);
    }
}
