//! Aggregating what the agents report into `FederatedInstanceSet.status`: pure, so the
//! rules are tested without a store.
//!
//! Conditions, each with a message that says what to do:
//! - `Scheduled`: every instance has a cluster (`False`, `Unschedulable`, with the
//!   scheduler's reasons, when some fit nowhere).
//! - `Available`: every asked-for instance is ready.
//! - `Progressing`: some member has not yet reported its current slice, or instances
//!   are still being created, updated or readied.
//! - `Degraded`: a cluster holding instances lost its heartbeat, instances fit nowhere,
//!   or instances failed.

use std::collections::BTreeMap;

use flotilla_api::ordinals::display_list as ranges;
use flotilla_api::status::{ClusterPlacementStatus, Condition, FederatedInstanceSetStatus};
use flotilla_api::{FederatedInstanceSet, InstanceSet, InstanceSetStatus, InstanceStatus};
use flotilla_scheduler::Plan;

/// What the aggregation reads for one set.
pub struct Inputs<'a> {
    pub set: &'a FederatedInstanceSet,
    pub plan: &'a Plan,
    /// The slices as stored, by cluster.
    pub slices: &'a BTreeMap<String, InstanceSet>,
    /// What each member reported for its slice, by cluster.
    pub reports: &'a BTreeMap<String, InstanceSetStatus>,
    /// Whether each cluster's heartbeat is current.
    pub alive: &'a dyn Fn(&str) -> bool,
    /// The conditions before, to keep transition times of those that did not change.
    pub previous: Option<&'a [Condition]>,
    /// Now, RFC 3339.
    pub now: &'a str,
    /// A Redis set's primary, as the federation decided it.
    pub redis: Option<&'a flotilla_redis::primary::Decision>,
    /// A Redis shard's move between members, while it has not caught up.
    pub migration: Option<&'a crate::migration::Progress>,
}

impl std::fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("set", &self.set.name())
            .finish_non_exhaustive()
    }
}

/// The set's status.
pub fn aggregate(i: &Inputs<'_>) -> FederatedInstanceSetStatus {
    let wanted = i.set.spec.replicas;
    let mut clusters = Vec::new();
    let mut instances = Vec::new();
    let mut failed = Vec::new();
    let mut waiting = Vec::new();
    let mut stale = Vec::new();
    let mut lost = Vec::new();
    for cp in i.plan.placement.iter().filter(|c| !c.ordinals.is_empty()) {
        let report = i.reports.get(&cp.cluster);
        let by_ordinal: BTreeMap<u32, &InstanceStatus> = report
            .map(|r| r.instances.iter().map(|s| (s.ordinal, s)).collect())
            .unwrap_or_default();
        let mut ready = 0;
        for &ordinal in &cp.ordinals {
            let mut s = by_ordinal
                .get(&ordinal)
                .map(|s| (*s).clone())
                .unwrap_or(InstanceStatus {
                    ordinal,
                    ..InstanceStatus::default()
                });
            s.cluster = Some(cp.cluster.clone());
            if s.ready {
                ready += 1;
            } else {
                waiting.push(format!("{ordinal} ({})", cp.cluster));
            }
            if s.phase.as_deref() == Some("Failed") {
                failed.push(format!("{ordinal} ({})", cp.cluster));
            }
            instances.push(s);
        }
        clusters.push(ClusterPlacementStatus {
            cluster: cp.cluster.clone(),
            ordinals: cp.ordinals.clone(),
            ready_replicas: ready,
        });
        if !(i.alive)(&cp.cluster) {
            lost.push(format!(
                "{} (ordinals {})",
                cp.cluster,
                ranges(&cp.ordinals)
            ));
        }
        let current = i
            .slices
            .get(&cp.cluster)
            .map(|s| s.metadata.generation.unwrap_or(1));
        let reported = report.and_then(|r| r.observed_generation);
        let updated = report.is_some_and(|r| r.updated_replicas as usize >= cp.ordinals.len());
        if current.is_none() || reported < current || !updated {
            stale.push(cp.cluster.clone());
        }
    }
    instances.sort_by_key(|s| s.ordinal);
    let exclusive: Vec<&str> = i.set.spec.exclusive_roles().collect();
    let mut split = Vec::new();
    for role in &exclusive {
        let holders: Vec<String> = instances
            .iter()
            .filter(|s| s.role.as_deref() == Some(*role))
            .map(|s| format!("{} ({})", s.ordinal, s.cluster.as_deref().unwrap_or("?")))
            .collect();
        if holders.len() > 1 {
            split.push(format!(
                "{} instances hold the exclusive role {role}: {}",
                holders.len(),
                holders.join(", ")
            ));
        }
    }
    let placed = instances.len() as u32;
    let ready = instances.iter().filter(|s| s.ready).count() as u32;

    let mut conditions = Vec::new();
    let unschedulable = i.plan.unschedulable;
    conditions.push(if unschedulable == 0 {
        condition(
            "Scheduled",
            true,
            "Scheduled",
            format!(
                "all {placed} instances placed on {} cluster(s)",
                clusters.len()
            ),
        )
    } else {
        condition(
            "Scheduled",
            false,
            "Unschedulable",
            format!(
                "{unschedulable} of {wanted} instances fit in no cluster: {}. Add capacity or \
                 clusters, or relax the placement",
                explain(&i.plan.messages)
            ),
        )
    });
    conditions.push(if ready >= wanted {
        condition(
            "Available",
            true,
            "AllReady",
            format!("{ready}/{wanted} instances ready"),
        )
    } else {
        condition(
            "Available",
            false,
            "NotAllReady",
            format!(
                "{ready}/{wanted} instances ready; not ready: {}",
                list(&waiting, "none placed yet")
            ),
        )
    });
    let progressing = !stale.is_empty() || ready < placed || i.migration.is_some();
    conditions.push(if let Some(m) = i.migration {
        condition("Progressing", true, "Migrating", m.message())
    } else if progressing {
        let mut why = Vec::new();
        if !stale.is_empty() {
            why.push(format!(
                "waiting for {} to roll out their slices",
                stale.join(", ")
            ));
        }
        if ready < placed {
            why.push(format!("{} instance(s) not ready yet", placed - ready));
        }
        condition("Progressing", true, "RollingOut", why.join("; "))
    } else {
        condition(
            "Progressing",
            false,
            "Converged",
            "every member runs its current slice".to_string(),
        )
    });
    // (reason, message) of every problem; the first one's reason names the condition.
    let mut degraded: Vec<(&str, String)> = Vec::new();
    if !lost.is_empty() {
        degraded.push((
            "ClusterUnavailable",
            format!(
                "no heartbeat from {}: their instances are left alone and nothing new is \
                 placed there; check those agents (failover Reschedule moves the instances)",
                lost.join(", ")
            ),
        ));
    }
    if let Some(problem) = i.redis.and_then(|d| d.problem.as_ref()) {
        degraded.push(("PrimaryLost", problem.clone()));
    }
    if let Some(d) = i.redis.filter(|d| !d.also_masters.is_empty()) {
        let others: Vec<String> = d.also_masters.iter().map(u32::to_string).collect();
        degraded.push((
            "SecondMaster",
            format!(
                "instance {} also runs as a master holding data, beside primary {}: it is \
                 never demoted automatically (a resync would drop what only it holds); \
                 compare its data with the primary's, then REPLICAOF it by hand or delete \
                 its instance",
                others.join(", "),
                d.primary
                    .as_ref()
                    .map_or("(none)".to_string(), |p| p.ordinal.to_string())
            ),
        ));
    }
    if !split.is_empty() {
        degraded.push((
            "ExclusiveRoleSplit",
            format!(
                "{}; the federation keeps the role in one member and the others step down \
                 (check replication if this persists)",
                split.join("; ")
            ),
        ));
    }
    if !failed.is_empty() {
        degraded.push((
            "InstancesFailed",
            format!(
                "instances failed: {} (their members recreate them)",
                failed.join(", ")
            ),
        ));
    }
    if unschedulable > 0 {
        degraded.push((
            "Unschedulable",
            format!("{unschedulable} instance(s) have no cluster"),
        ));
    }
    conditions.push(match degraded.first() {
        None => condition("Degraded", false, "Healthy", "nothing is wrong".to_string()),
        Some((reason, _)) => {
            let message = degraded
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            condition("Degraded", true, reason, message)
        }
    });
    for c in &mut conditions {
        let before = i
            .previous
            .and_then(|p| p.iter().find(|p| p.type_ == c.type_));
        c.last_transition_time = match before {
            Some(b) if b.status == c.status => b.last_transition_time.clone(),
            _ => Some(i.now.to_string()),
        };
    }
    FederatedInstanceSetStatus {
        observed_generation: i.set.metadata.generation,
        replicas: placed,
        ready_replicas: ready,
        unschedulable,
        clusters,
        instances,
        primary: i.redis.and_then(|d| d.primary.clone()),
        conditions,
    }
}

fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: None,
    }
}

fn explain(messages: &[String]) -> String {
    if messages.is_empty() {
        "no cluster has room".to_string()
    } else {
        messages.join("; ")
    }
}

/// At most ten entries, then a count.
fn list(items: &[String], empty: &str) -> String {
    match items.len() {
        0 => empty.to_string(),
        n if n <= 10 => items.join(", "),
        n => format!("{}, and {} more", items[..10].join(", "), n - 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::{FederatedInstanceSetSpec, InstanceSetSpec, Object};
    use flotilla_scheduler::ClusterPlan;

    fn set(replicas: u32) -> FederatedInstanceSet {
        let mut s = Object::new(
            "r",
            FederatedInstanceSetSpec {
                replicas,
                ..FederatedInstanceSetSpec::default()
            },
        );
        s.metadata.generation = Some(3);
        s
    }

    fn plan(placement: &[(&str, &[u32])], unschedulable: u32) -> Plan {
        Plan {
            placement: placement
                .iter()
                .map(|(c, o)| ClusterPlan {
                    cluster: c.to_string(),
                    capacity: 10,
                    ordinals: o.to_vec(),
                })
                .collect(),
            unschedulable,
            messages: vec!["cluster b: room for 1, 2 asked".into()],
        }
    }

    fn slice(generation: i64) -> InstanceSet {
        let mut s = Object::new("r", InstanceSetSpec::default());
        s.metadata.generation = Some(generation);
        s
    }

    fn report(generation: i64, ready: &[u32], all: &[u32]) -> InstanceSetStatus {
        InstanceSetStatus {
            observed_generation: Some(generation),
            replicas: all.len() as u32,
            ready_replicas: ready.len() as u32,
            updated_replicas: all.len() as u32,
            instances: all
                .iter()
                .map(|&o| InstanceStatus {
                    ordinal: o,
                    phase: Some("Running".into()),
                    ready: ready.contains(&o),
                    role: Some(if o == 0 { "primary" } else { "replica" }.into()),
                    ..InstanceStatus::default()
                })
                .collect(),
            ..InstanceSetStatus::default()
        }
    }

    fn get<'a>(s: &'a FederatedInstanceSetStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn all_ready_everywhere_is_available_and_converged() {
        let set = set(4);
        let plan = plan(&[("a", &[0, 1]), ("b", &[2, 3])], 0);
        let slices = BTreeMap::from([("a".to_string(), slice(1)), ("b".to_string(), slice(2))]);
        let reports = BTreeMap::from([
            ("a".to_string(), report(1, &[0, 1], &[0, 1])),
            ("b".to_string(), report(2, &[2, 3], &[2, 3])),
        ]);
        let s = aggregate(&Inputs {
            set: &set,
            plan: &plan,
            slices: &slices,
            reports: &reports,
            alive: &|_| true,
            previous: None,
            now: "2026-01-01T00:00:00Z",
            redis: None,
            migration: None,
        });
        assert_eq!((s.replicas, s.ready_replicas, s.unschedulable), (4, 4, 0));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.clusters[1].ordinals, vec![2, 3]);
        assert_eq!(s.instances[2].cluster.as_deref(), Some("b"));
        assert_eq!(s.instances[0].role.as_deref(), Some("primary"));
        assert_eq!(get(&s, "Available").status, "True");
        assert_eq!(get(&s, "Progressing").status, "False");
        assert_eq!(get(&s, "Degraded").status, "False");
        assert_eq!(get(&s, "Scheduled").status, "True");

        // Same again later: transition times stay.
        let again = aggregate(&Inputs {
            set: &set,
            plan: &plan,
            slices: &slices,
            reports: &reports,
            alive: &|_| true,
            previous: Some(&s.conditions),
            now: "2026-01-01T00:05:00Z",
            redis: None,
            migration: None,
        });
        assert_eq!(again, s);
    }

    #[test]
    fn a_second_master_holding_data_degrades_the_set_naming_it() {
        let set = set(4);
        let plan = plan(&[("a", &[0, 1]), ("b", &[2, 3])], 0);
        let slices = BTreeMap::from([("a".to_string(), slice(1)), ("b".to_string(), slice(2))]);
        let reports = BTreeMap::from([
            ("a".to_string(), report(1, &[0, 1], &[0, 1])),
            ("b".to_string(), report(2, &[2, 3], &[2, 3])),
        ]);
        let decision = flotilla_redis::primary::Decision {
            primary: Some(flotilla_api::status::PrimaryStatus {
                ordinal: 0,
                cluster: Some("a".into()),
                endpoint: "10.0.0.1:6379".into(),
            }),
            also_masters: vec![2],
            ..Default::default()
        };
        let s = aggregate(&Inputs {
            set: &set,
            plan: &plan,
            slices: &slices,
            reports: &reports,
            alive: &|_| true,
            previous: None,
            now: "2026-01-01T00:00:00Z",
            redis: Some(&decision),
            migration: None,
        });
        let degraded = get(&s, "Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "SecondMaster");
        assert!(
            degraded
                .message
                .contains("instance 2 also runs as a master")
                && degraded.message.contains("beside primary 0"),
            "{}",
            degraded.message
        );
        assert_eq!(s.primary.as_ref().map(|p| p.ordinal), Some(0));
    }

    #[test]
    fn a_stale_report_a_lost_cluster_and_unschedulable_instances_are_explained() {
        let set = set(5);
        let plan = plan(&[("a", &[0, 1]), ("b", &[2, 3])], 1);
        let slices = BTreeMap::from([("a".to_string(), slice(2)), ("b".to_string(), slice(1))]);
        let reports = BTreeMap::from([
            ("a".to_string(), report(1, &[0], &[0, 1])),
            ("b".to_string(), report(1, &[2, 3], &[2, 3])),
        ]);
        let s = aggregate(&Inputs {
            set: &set,
            plan: &plan,
            slices: &slices,
            reports: &reports,
            alive: &|c| c != "b",
            previous: None,
            now: "2026-01-01T00:00:00Z",
            redis: None,
            migration: None,
        });
        assert_eq!((s.replicas, s.ready_replicas, s.unschedulable), (4, 3, 1));
        let sched = get(&s, "Scheduled");
        assert_eq!(
            (sched.status.as_str(), sched.reason.as_str()),
            ("False", "Unschedulable")
        );
        assert!(
            sched.message.contains("room for 1, 2 asked"),
            "{}",
            sched.message
        );
        let avail = get(&s, "Available");
        assert!(
            avail.message.contains("3/5") && avail.message.contains("1 (a)"),
            "{}",
            avail.message
        );
        let prog = get(&s, "Progressing");
        assert!(
            prog.status == "True" && prog.message.contains("waiting for a"),
            "{}",
            prog.message
        );
        let deg = get(&s, "Degraded");
        assert_eq!(deg.reason, "ClusterUnavailable");
        assert!(deg.message.contains("b (ordinals 2-3)"), "{}", deg.message);
    }

    #[test]
    fn two_holders_of_an_exclusive_role_are_degraded() {
        let mut set = set(4);
        set.spec.roles = vec![flotilla_api::Role {
            name: "primary".into(),
            exclusive: true,
            ..flotilla_api::Role::default()
        }];
        let plan = plan(&[("a", &[0, 1]), ("b", &[2, 3])], 0);
        let slices = BTreeMap::from([("a".to_string(), slice(1)), ("b".to_string(), slice(1))]);
        let mut b = report(1, &[2, 3], &[2, 3]);
        b.instances[0].role = Some("primary".into());
        let reports = BTreeMap::from([
            ("a".to_string(), report(1, &[0, 1], &[0, 1])),
            ("b".to_string(), b),
        ]);
        let s = aggregate(&Inputs {
            set: &set,
            plan: &plan,
            slices: &slices,
            reports: &reports,
            alive: &|_| true,
            previous: None,
            now: "2026-01-01T00:00:00Z",
            redis: None,
            migration: None,
        });
        let deg = get(&s, "Degraded");
        assert_eq!(
            (deg.status.as_str(), deg.reason.as_str()),
            ("True", "ExclusiveRoleSplit")
        );
        assert!(deg.message.contains("0 (a), 2 (b)"), "{}", deg.message);
    }
}
