//! Moving a Redis shard between members while it serves: make before break.
//!
//! ```text
//!   placement change (perCluster {x: {max: 0}}, a taint, new weights, a scale-in)
//!     └─▶ plan with every ordinal a member still runs busy ─▶ new ordinals in y
//!   x's ordinals stay in x's slice, marked retiring (flotilla.io/redis-retiring):
//!     their member keeps them out of elections (replica-priority 0); the primary,
//!     not staying, hands over to a caught-up replica in y (flotilla_redis::primary)
//!   every placed instance ready and caught up (the primary a master, every other a
//!   replica linked to it), the primary a placed ordinal
//!     └─▶ x's ordinals leave as any other (flotilla.io/leaving) and their member
//!         removes them
//! ```
//!
//! Only Redis sets move this way: their data follows the primary, so a new instance
//! can catch up before an old one goes. Nothing is held in a member that is not alive
//! or no longer registered (it could not confirm anything; the usual rules apply), and
//! nothing when the set is scaled to zero.
//!
//! Architecture invariant: no instance of a Redis set is removed from a live member
//! while the shard's primary is one of those leaving, or while a placed instance has
//! not caught up with the primary.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::ordinals::display_list;
use flotilla_api::status::PrimaryStatus;
use flotilla_api::{FederatedInstanceSet, InstanceSet, InstanceSetStatus};
use flotilla_scheduler::Plan;

use crate::federation;

/// Every ordinal some member may still run ([`federation::held_by`]): for a Redis set,
/// none of them is given out as a new ordinal, so a replacement never waits for the
/// instance it replaces to go (and never shares its name).
pub fn busy(
    set: &FederatedInstanceSet,
    slices: &BTreeMap<String, &InstanceSet>,
    reports: &BTreeMap<String, &InstanceSetStatus>,
) -> BTreeSet<u32> {
    if set.spec.redis.is_none() {
        return BTreeSet::new();
    }
    slices
        .iter()
        .flat_map(|(c, s)| federation::held_by(Some(*s), reports.get(c).copied()))
        .collect()
}

/// The ordinals each member's slice holds that the new placement takes out of it,
/// for the members whose word counts (`usable`: alive and registered): these stay in
/// the slice, retiring, until [`Progress::done`].
pub fn retiring(
    set: &FederatedInstanceSet,
    desired: &BTreeMap<String, Vec<u32>>,
    slices: &BTreeMap<String, &InstanceSet>,
    usable: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, Vec<u32>> {
    if set.spec.redis.is_none() || set.spec.replicas == 0 {
        return BTreeMap::new();
    }
    slices
        .iter()
        .filter(|(c, _)| usable(c))
        .filter_map(|(c, s)| {
            let keep = desired.get(c).map_or(&[][..], Vec::as_slice);
            let out: Vec<u32> = s
                .spec
                .ordinals
                .to_vec()
                .into_iter()
                .filter(|o| !keep.contains(o))
                .collect();
            (!out.is_empty()).then(|| (c.clone(), out))
        })
        .collect()
}

/// A move in progress: what retires where, and what the new placement still waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Retiring ordinals by member.
    pub retiring: BTreeMap<String, Vec<u32>>,
    /// Placed instances.
    pub placed: usize,
    /// Placed instances not caught up yet: `(ordinal, cluster, why)`.
    pub behind: Vec<(u32, String, &'static str)>,
    /// The primary, when it is one of the placed instances.
    pub primary_placed: Option<u32>,
    /// The primary, when it is one of the retiring instances.
    pub primary_retiring: Option<u32>,
}

impl Progress {
    /// The retiring instances may go: every placed instance has caught up and the
    /// primary is one of them.
    pub fn done(&self) -> bool {
        self.placed > 0 && self.behind.is_empty() && self.primary_placed.is_some()
    }

    /// For the status: where the move stands and what it waits for.
    pub fn message(&self) -> String {
        let from: Vec<String> = self
            .retiring
            .iter()
            .map(|(c, o)| format!("{} in {c}", display_list(o)))
            .collect();
        let caught = self.placed - self.behind.len();
        let mut out = format!(
            "replacing instances {}: {caught}/{} placed instances caught up",
            from.join(", "),
            self.placed
        );
        if self.placed == 0 {
            out.push_str("; no cluster can take the shard, so the instances keep running");
            return out;
        }
        if !self.behind.is_empty() {
            let waiting: Vec<String> = self
                .behind
                .iter()
                .take(5)
                .map(|(o, c, why)| format!("{o} in {c} {why}"))
                .collect();
            out.push_str(&format!(
                " (waiting: {}{})",
                waiting.join(", "),
                if self.behind.len() > 5 { ", …" } else { "" }
            ));
        }
        match (self.primary_placed, self.primary_retiring) {
            (Some(p), _) => out.push_str(&format!("; primary {p} has moved")),
            (None, Some(p)) => out.push_str(&format!(
                "; primary {p} hands over to a caught-up replica before anything is removed"
            )),
            (None, None) => out.push_str("; waiting for a primary"),
        }
        out
    }
}

/// Where a move stands (`None`: nothing retires). `slices`: the stored slices (a
/// member's report counts only for its current generation); `primary`: the one the
/// federation decided this pass.
pub fn progress(
    plan: &Plan,
    retiring: &BTreeMap<String, Vec<u32>>,
    slices: &BTreeMap<String, &InstanceSet>,
    reports: &BTreeMap<String, &InstanceSetStatus>,
    primary: Option<&PrimaryStatus>,
) -> Option<Progress> {
    if retiring.is_empty() {
        return None;
    }
    let mut behind = Vec::new();
    let mut placed = 0;
    let mut primary_placed = None;
    for cp in &plan.placement {
        let report = reports.get(&cp.cluster).filter(|r| {
            slices.get(&cp.cluster).is_some_and(|s| {
                r.observed_generation.is_some() && r.observed_generation >= s.metadata.generation
            })
        });
        for &o in &cp.ordinals {
            placed += 1;
            if primary.is_some_and(|p| p.ordinal == o) {
                primary_placed = Some(o);
            }
            if let Some(why) = lag(o, report.copied(), primary) {
                behind.push((o, cp.cluster.clone(), why));
            }
        }
    }
    let primary_retiring = primary
        .map(|p| p.ordinal)
        .filter(|o| retiring.values().any(|r| r.contains(o)));
    Some(Progress {
        retiring: retiring.clone(),
        placed,
        behind,
        primary_placed,
        primary_retiring,
    })
}

/// Why instance `o` has not caught up yet (`None`: it has): it must be ready, and the
/// primary as a master, or a replica whose link to the primary is up (its initial sync
/// done, streaming).
fn lag(
    o: u32,
    report: Option<&InstanceSetStatus>,
    primary: Option<&PrimaryStatus>,
) -> Option<&'static str> {
    let Some(i) = report.and_then(|r| r.instances.iter().find(|i| i.ordinal == o)) else {
        return Some("is not running yet");
    };
    if !i.ready {
        return Some("is not ready");
    }
    let Some(r) = &i.redis else {
        return Some("has not answered INFO yet");
    };
    let Some(p) = primary else {
        return Some("has no primary to follow");
    };
    if p.ordinal == o {
        return (r.role != "master").then_some("is named primary but is not a master yet");
    }
    if r.role != "slave" || r.master.as_deref() != Some(p.endpoint.as_str()) {
        return Some("does not replicate from the primary yet");
    }
    (!r.link_up).then_some("is still syncing from the primary")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::status::{InstanceStatus, RedisInstanceStatus};
    use flotilla_api::{Object, ordinals::Ordinals};
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
            ..Plan::default()
        }
    }

    fn slice(ordinals: &[u32], generation: i64) -> InstanceSet {
        let mut s: InstanceSet = Object::new(
            "cache",
            flotilla_api::InstanceSetSpec {
                ordinals: Ordinals::compact(ordinals),
                ..Default::default()
            },
        );
        s.metadata.generation = Some(generation);
        s
    }

    /// `(ordinal, ready, role, master, link)`.
    fn report(generation: i64, instances: &[(u32, bool, &str, &str, bool)]) -> InstanceSetStatus {
        InstanceSetStatus {
            observed_generation: Some(generation),
            instances: instances
                .iter()
                .map(|&(o, ready, role, master, link)| InstanceStatus {
                    ordinal: o,
                    ready,
                    redis: Some(RedisInstanceStatus {
                        role: role.into(),
                        master: (!master.is_empty()).then(|| master.to_string()),
                        link_up: link,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn primary(o: u32, endpoint: &str) -> PrimaryStatus {
        PrimaryStatus {
            ordinal: o,
            cluster: None,
            endpoint: endpoint.into(),
        }
    }

    #[test]
    fn the_old_member_keeps_its_instances_until_the_new_ones_caught_up_and_the_primary_moved() {
        let x = slice(&[0, 1, 2], 1);
        let y = slice(&[3, 4, 5], 1);
        let slices = BTreeMap::from([("x".to_string(), &x), ("y".to_string(), &y)]);
        let p = plan(&[("x", &[]), ("y", &[3, 4, 5])]);
        let retiring = BTreeMap::from([("x".to_string(), vec![0, 1, 2])]);
        let old = primary(0, "127.0.0.1:1");
        let new = primary(3, "127.0.0.2:1");

        // y syncing: nothing goes.
        let rx = report(1, &[(0, true, "master", "", false)]);
        let ry = report(
            1,
            &[
                (3, true, "slave", "127.0.0.1:1", true),
                (4, true, "slave", "127.0.0.1:1", false),
            ],
        );
        let reports = BTreeMap::from([("x".to_string(), &rx), ("y".to_string(), &ry)]);
        let g = progress(&p, &retiring, &slices, &reports, Some(&old)).unwrap();
        assert!(!g.done());
        assert_eq!(
            g.behind,
            vec![
                (4, "y".into(), "is still syncing from the primary"),
                (5, "y".into(), "is not running yet")
            ]
        );
        assert_eq!(
            g.message(),
            "replacing instances 0-2 in x: 1/3 placed instances caught up (waiting: 4 in y is \
             still syncing from the primary, 5 in y is not running yet); primary 0 hands over \
             to a caught-up replica before anything is removed"
        );

        // All caught up with the old primary: still not, the primary has not moved.
        let ry = report(
            1,
            &[
                (3, true, "slave", "127.0.0.1:1", true),
                (4, true, "slave", "127.0.0.1:1", true),
                (5, true, "slave", "127.0.0.1:1", true),
            ],
        );
        let reports = BTreeMap::from([("x".to_string(), &rx), ("y".to_string(), &ry)]);
        let g = progress(&p, &retiring, &slices, &reports, Some(&old)).unwrap();
        assert!(!g.done(), "{g:?}");
        assert_eq!(g.primary_retiring, Some(0));

        // The primary moved to 3, but 4 and 5 still follow the old one.
        let g = progress(&p, &retiring, &slices, &reports, Some(&new)).unwrap();
        assert!(!g.done());
        assert_eq!(g.behind.len(), 3, "3 is not a master yet, 4 and 5 follow 0");

        // Rewired: done.
        let ry = report(
            1,
            &[
                (3, true, "master", "", false),
                (4, true, "slave", "127.0.0.2:1", true),
                (5, true, "slave", "127.0.0.2:1", true),
            ],
        );
        let reports = BTreeMap::from([("x".to_string(), &rx), ("y".to_string(), &ry)]);
        let g = progress(&p, &retiring, &slices, &reports, Some(&new)).unwrap();
        assert!(g.done(), "{g:?}");

        // A report of an older slice of y says nothing.
        let y2 = slice(&[3, 4, 5], 2);
        let slices = BTreeMap::from([("x".to_string(), &x), ("y".to_string(), &y2)]);
        let g = progress(&p, &retiring, &slices, &reports, Some(&new)).unwrap();
        assert!(!g.done());
    }

    #[test]
    fn nothing_is_held_where_the_shard_has_nowhere_to_go_but_it_keeps_running() {
        let x = slice(&[0, 1], 1);
        let slices = BTreeMap::from([("x".to_string(), &x)]);
        let p = plan(&[("x", &[])]);
        let retiring = BTreeMap::from([("x".to_string(), vec![0, 1])]);
        let g = progress(&p, &retiring, &slices, &BTreeMap::new(), None).unwrap();
        assert!(!g.done(), "with nothing placed the old instances stay");
        assert!(g.message().contains("no cluster can take the shard"));
    }

    #[test]
    fn only_redis_sets_of_live_members_retire_instances() {
        let text = "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {name: cache}\nspec:\n  replicas: 3\n  template: {spec: {containers: [{name: redis, image: redis:7}]}}\n  redis: {}\n";
        let mut docs = flotilla_api::decode::decode_all(text).unwrap();
        let flotilla_api::decode::AnyObject::FederatedInstanceSet(set) = docs.remove(0).object
        else {
            panic!()
        };
        let x = slice(&[0, 1, 2], 1);
        let z = slice(&[6], 1);
        let slices = BTreeMap::from([("x".to_string(), &x), ("z".to_string(), &z)]);
        let desired = BTreeMap::from([("x".to_string(), vec![1]), ("y".to_string(), vec![3, 4])]);
        let live = |c: &str| c != "z";
        let r = retiring(&set, &desired, &slices, &live);
        assert_eq!(r, BTreeMap::from([("x".to_string(), vec![0, 2])]));
        let mut plain = (*set).clone();
        plain.spec.redis = None;
        assert!(retiring(&plain, &desired, &slices, &live).is_empty());
        assert!(busy(&plain, &slices, &BTreeMap::new()).is_empty());
        assert_eq!(
            busy(&set, &slices, &BTreeMap::new()),
            BTreeSet::from([0, 1, 2, 6])
        );
        let mut zero = (*set).clone();
        zero.spec.replicas = 0;
        assert!(retiring(&zero, &desired, &slices, &live).is_empty());
    }
}
