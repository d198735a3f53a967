//! The pure parts of federating one set: the clusters it is planned against, and the
//! slices its plan becomes. Shared by the controller and the what-if `Plan` call.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::instanceset::EXCLUSIVE_ROLES_ELSEWHERE;
use flotilla_api::quantity::Amount;
use flotilla_api::resources::{self, PODS};
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
) -> InstanceSet {
    let mut s: InstanceSet = Object::new(set.name(), set.spec.slice(ordinals));
    s.metadata.namespace = Some(set.namespace().unwrap_or("default").to_string());
    s.metadata.labels = Some(BTreeMap::from([
        (CLUSTER_LABEL.to_string(), cluster.to_string()),
        (SET_LABEL.to_string(), set.name().to_string()),
    ]));
    if let Some(home) = home.filter(|h| *h != cluster) {
        s.metadata.annotations = Some(BTreeMap::from([(
            EXCLUSIVE_ROLES_ELSEWHERE.to_string(),
            home.to_string(),
        )]));
    }
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

/// The ordinals of each cluster's slice under `plan`, holding back any ordinal another
/// live cluster still runs (its agent reports it): an instance moves only once its old
/// member has removed it, so no ordinal ever runs in two clusters. A cluster whose
/// heartbeat lapsed cannot confirm anything; its ordinals move when the plan moves
/// them (failover `Reschedule`, a `NoExecute` taint, the cluster's removal).
pub fn slice_ordinals(
    plan: &Plan,
    reports: &BTreeMap<String, &InstanceSetStatus>,
    alive: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, Vec<u32>> {
    let mut running: BTreeMap<u32, BTreeSet<&str>> = BTreeMap::new();
    for (cluster, report) in reports {
        if alive(cluster) {
            for i in &report.instances {
                running
                    .entry(i.ordinal)
                    .or_default()
                    .insert(cluster.as_str());
            }
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
                    running
                        .get(o)
                        .is_none_or(|holders| holders.iter().all(|h| *h == cp.cluster))
                })
                .collect();
            (cp.cluster.clone(), ordinals)
        })
        .filter(|(_, o): &(String, Vec<u32>)| !o.is_empty())
        .collect()
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

    #[test]
    fn an_ordinal_moves_only_after_its_old_member_dropped_it() {
        let plan = plan(&[("a", &[0, 1]), ("b", &[2, 3])]);
        let a = running(&[0, 1, 3]); // 3 moved from a to b; a still runs it
        let b = running(&[2]);
        let reports = BTreeMap::from([("a".to_string(), &a), ("b".to_string(), &b)]);
        let got = slice_ordinals(&plan, &reports, &|_| true);
        assert_eq!(got["a"], vec![0, 1]);
        assert_eq!(got["b"], vec![2], "3 waits until a has removed it");
        // a's heartbeat lapsed: it cannot confirm, the plan's move goes ahead.
        let got = slice_ordinals(&plan, &reports, &|c| c != "a");
        assert_eq!(got["b"], vec![2, 3]);
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
        let first = slice(&set, "a", &[0, 1], None, Some("a"));
        assert!(
            first.metadata.annotations.is_none(),
            "the home slice elects"
        );
        let other = slice(&set, "b", &[2], None, Some("a"));
        assert_eq!(
            other.metadata.annotations.unwrap()[EXCLUSIVE_ROLES_ELSEWHERE],
            "a"
        );
        assert_eq!(first.metadata.generation, Some(1));
        assert_eq!(first.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(first.metadata.labels.as_ref().unwrap()[CLUSTER_LABEL], "a");
        let same = slice(&set, "a", &[0, 1], Some(&first), Some("a"));
        assert_eq!(same.metadata.generation, Some(1));
        let grown = slice(&set, "a", &[0, 1, 2], Some(&first), Some("a"));
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
        let sa = slice(&set, "a", &[2, 3], None, Some("a"));
        let sb = slice(&set, "b", &[0, 1], None, Some("a"));
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
