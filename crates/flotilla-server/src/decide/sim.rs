//! A property test of [`decide`] and its commit: random sequences of members applying
//! their slices (wholly or only their removals), reports the controller sees late,
//! heartbeats lapsing and coming back, `NoExecute` taints, capacity changes, scaling,
//! and leader changes (a new leader reads everything afresh, with an empty capacity
//! cache). After every step:
//! - no ordinal is in two clusters' slices;
//! - no ordinal runs in two members, unless one of them was written off (its heartbeat
//!   lapsed and moving its instances is the point: failover `Reschedule`, or a
//!   `NoExecute` taint);
//! - the plan places `replicas` ordinals, each once, less only those that fit nowhere,
//!   and none fit nowhere while every cluster is alive with room for all.
//!
//! and once every member is back and has applied what it was given, the slices hold
//! exactly the plan (no ordinal lost), each member runs exactly its slice, and with
//! room for all, `replicas` instances run.
//!
//! The commit is modelled as the controller makes it: each write compare-and-swap on
//! the revision the decision read; shrinks and deletions first, all of them stored
//! before any grow; a deleted slice takes its report with it.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_api::{
    CapacityModel, Cluster, ClusterSpec, ClusterStatus, FederatedInstanceSet, InstanceSet,
    InstanceSetStatus, InstanceStatus, NodeGroup, Object,
};
use flotilla_scheduler::{CapacityCache, Plan};
use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;

use super::{View, decide};
use crate::federation::Member;
use crate::records::StatusRecord;

const CLUSTERS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Step {
    /// Member `c` applies its slice: removes what left it, and unless `removals_only`,
    /// starts what it gained; then reports.
    Apply { c: usize, removals_only: bool },
    /// The controller's watch delivers member `c`'s newest report.
    Deliver { c: usize },
    /// A pass of the controller over the set.
    Reconcile,
    /// `c`'s heartbeat lapses (it keeps running what it runs, and does nothing).
    Lapse { c: usize },
    /// `c`'s agent is back.
    Return { c: usize },
    /// A `NoExecute` taint is put on (or taken off) `c`.
    Taint { c: usize },
    /// `c`'s room for instances becomes `room`.
    Room { c: usize, room: u32 },
    /// The set is scaled.
    Scale { replicas: u32 },
    /// Another server becomes leader: its cache is the store as it is now.
    NewLeader,
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0..CLUSTERS.len();
    prop_oneof![
        6 => (c.clone(), any::<bool>()).prop_map(|(c, r)| Step::Apply { c, removals_only: r }),
        4 => c.clone().prop_map(|c| Step::Deliver { c }),
        8 => Just(Step::Reconcile),
        1 => c.clone().prop_map(|c| Step::Lapse { c }),
        2 => c.clone().prop_map(|c| Step::Return { c }),
        1 => c.clone().prop_map(|c| Step::Taint { c }),
        1 => (c, 0u32..7).prop_map(|(c, room)| Step::Room { c, room }),
        1 => (0u32..9).prop_map(|replicas| Step::Scale { replicas }),
        1 => Just(Step::NewLeader),
    ]
}

fn set(replicas: u32, reschedule: bool) -> FederatedInstanceSet {
    let policy = if reschedule { "Reschedule" } else { "Keep" };
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: s, namespace: default, generation: 1}}\nspec:\n  replicas: {replicas}\n  template: {{spec: {{containers: [{{name: c, image: i, resources: {{requests: {{cpu: '1'}}}}}}]}}}}\n  placement: {{failover: {{policy: {policy}}}}}\n"
    );
    let mut docs = decode_all(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let AnyObject::FederatedInstanceSet(s) = docs.remove(0).object else {
        panic!("not a set")
    };
    *s
}

/// A stored record and its revision.
#[derive(Clone, Debug)]
struct Stored<T> {
    value: T,
    rev: u64,
}

#[derive(Debug)]
struct World {
    set: FederatedInstanceSet,
    clusters: Vec<Cluster>,
    /// Each member's room for instances of the set (one node of that many cores).
    room: Vec<u32>,
    alive: BTreeSet<String>,
    /// What each member runs, whatever anyone knows.
    running: BTreeMap<String, BTreeSet<u32>>,
    /// The store.
    slices: BTreeMap<String, Stored<InstanceSet>>,
    reports: BTreeMap<String, Stored<InstanceSetStatus>>,
    placement: Option<Stored<Plan>>,
    status: Option<Stored<StatusRecord>>,
    revision: u64,
    /// The controller's cache of reports (the rest of its cache is written through).
    seen: BTreeMap<String, InstanceSetStatus>,
    capacity: CapacityCache,
    /// Members written off: their heartbeat lapsed while moving their instances was
    /// the point, and they have not applied their slice since.
    written_off: BTreeSet<String>,
}

impl World {
    fn new(replicas: u32, reschedule: bool, room: Vec<u32>) -> World {
        World {
            set: set(replicas, reschedule),
            clusters: CLUSTERS
                .iter()
                .map(|n| Object::new(n, ClusterSpec::default()))
                .collect(),
            room,
            alive: CLUSTERS.iter().map(|c| c.to_string()).collect(),
            running: BTreeMap::new(),
            slices: BTreeMap::new(),
            reports: BTreeMap::new(),
            placement: None,
            status: None,
            revision: 0,
            seen: BTreeMap::new(),
            capacity: CapacityCache::new(),
            written_off: BTreeSet::new(),
        }
    }

    fn next_rev(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn tainted(&self, c: &str) -> bool {
        self.clusters
            .iter()
            .find(|k| k.name() == c)
            .is_some_and(|k| k.spec.taints.iter().any(|t| t.effect == "NoExecute"))
    }

    /// What the member reports as its free capacity: its room less what it runs.
    fn cluster_status(&self, i: usize) -> ClusterStatus {
        let name = CLUSTERS[i];
        let used = self.running.get(name).map_or(0, |r| r.len() as u32);
        let free = self.room[i].saturating_sub(used);
        ClusterStatus {
            ready: true,
            capacity: Some(CapacityModel {
                node_groups: vec![NodeGroup {
                    count: 1,
                    free: BTreeMap::from([
                        ("cpu".to_string(), Quantity(free.to_string())),
                        ("memory".to_string(), Quantity("1Ti".to_string())),
                        ("pods".to_string(), Quantity("110".to_string())),
                    ]),
                }],
            }),
            ..ClusterStatus::default()
        }
    }

    fn apply_member(&mut self, i: usize, removals_only: bool) {
        let name = CLUSTERS[i].to_string();
        if !self.alive.contains(&name) {
            return;
        }
        let Some(slice) = self.slices.get(&name).map(|s| s.value.clone()) else {
            // No slice: nothing to run (and no report to make).
            self.running.remove(&name);
            self.written_off.remove(&name);
            return;
        };
        let want: BTreeSet<u32> = slice.spec.ordinals.to_vec().into_iter().collect();
        self.written_off.remove(&name);
        let run = self.running.entry(name.clone()).or_default();
        run.retain(|o| want.contains(o));
        if !removals_only {
            run.extend(want.iter().copied());
        }
        let instances: Vec<InstanceStatus> = run
            .iter()
            .map(|&ordinal| InstanceStatus {
                ordinal,
                ready: true,
                ..InstanceStatus::default()
            })
            .collect();
        let report = InstanceSetStatus {
            observed_generation: slice.metadata.generation,
            replicas: want.len() as u32,
            ready_replicas: instances.len() as u32,
            updated_replicas: instances.len() as u32,
            instances,
            ..InstanceSetStatus::default()
        };
        let rev = self.next_rev();
        self.reports.insert(name, Stored { value: report, rev });
    }

    fn deliver(&mut self, i: usize) {
        let name = CLUSTERS[i];
        match self.reports.get(name) {
            Some(r) => self.seen.insert(name.to_string(), r.value.clone()),
            None => self.seen.remove(name),
        };
    }

    fn new_leader(&mut self) {
        self.seen = self
            .reports
            .iter()
            .map(|(c, r)| (c.clone(), r.value.clone()))
            .collect();
        self.capacity = CapacityCache::new();
    }

    /// One pass: decide from the controller's view, then commit as the controller does.
    fn reconcile(&mut self) -> Result<(), TestCaseError> {
        let statuses: Vec<ClusterStatus> = (0..CLUSTERS.len())
            .map(|i| self.cluster_status(i))
            .collect();
        let members: Vec<Member<'_>> = self
            .clusters
            .iter()
            .zip(&statuses)
            .map(|(c, s)| Member {
                cluster: c,
                status: Some(s),
                alive: self.alive.contains(c.name()),
            })
            .collect();
        let slices: BTreeMap<String, &InstanceSet> = self
            .slices
            .iter()
            .map(|(c, s)| (c.clone(), &s.value))
            .collect();
        let reports: BTreeMap<String, &InstanceSetStatus> =
            self.seen.iter().map(|(c, r)| (c.clone(), r)).collect();
        let view = View {
            set: &self.set,
            members: &members,
            alive: &self.alive,
            slices: &slices,
            reports: &reports,
            placement: self.placement.as_ref().map(|p| &p.value),
            status: self.status.as_ref().map(|s| &s.value),
            sentinels: &[],
            watched_primary: None,
            now: "2026-12-03T00:00:00Z",
        };
        let d = decide(&view, &mut self.capacity)
            .map_err(|e| TestCaseError::fail(format!("decide: {e}")))?;
        // The same view always gives the same decision, whatever the cache holds.
        let again = decide(&view, &mut CapacityCache::new())
            .map_err(|e| TestCaseError::fail(format!("decide: {e}")))?;
        prop_assert_eq!(&d.plan, &again.plan);
        prop_assert_eq!(&d.shrink, &again.shrink);
        prop_assert_eq!(&d.grow, &again.grow);
        // The room the controller can see: a member's capacity already counts the
        // instances it started, which its undelivered reports have not yet told the
        // controller about (heartbeats and reports travel apart).
        let informed = self
            .reports
            .iter()
            .all(|(c, r)| self.seen.get(c) == Some(&r.value));
        check_plan(&self.set, &d.plan, &self.alive, &self.room, informed, |c| {
            self.tainted(c)
        })?;
        // The view was read from the store without an await in between: every
        // compare-and-swap holds.
        let revs: BTreeMap<String, u64> = self
            .slices
            .iter()
            .map(|(c, s)| (c.clone(), s.rev))
            .collect();
        drop(members);
        if d.placement_changed {
            let rev = self.next_rev();
            self.placement = Some(Stored {
                value: d.plan.clone(),
                rev,
            });
        }
        for w in d.shrink.iter().chain(&d.grow) {
            prop_assert_eq!(w.exists, revs.contains_key(&w.cluster), "{:?}", w.cluster);
            match &w.slice {
                Some(s) => {
                    let rev = self.next_rev();
                    self.slices.insert(
                        w.cluster.clone(),
                        Stored {
                            value: s.clone(),
                            rev,
                        },
                    );
                }
                None => {
                    self.slices.remove(&w.cluster);
                    // Its report goes with it (and the controller's cache takes it).
                    self.reports.remove(&w.cluster);
                    self.seen.remove(&w.cluster);
                }
            }
            // Checked after every single write: a crash may stop the commit anywhere.
            self.check_slices()?;
        }
        if d.status_changed {
            let rev = self.next_rev();
            self.status = Some(Stored {
                value: d.status,
                rev,
            });
        }
        Ok(())
    }

    /// Marks the members whose instances may now be moved without their word.
    fn write_off(&mut self) {
        use flotilla_api::set::FailoverPolicy;
        let reschedule = self.set.spec.placement.failover.policy == FailoverPolicy::Reschedule;
        for c in CLUSTERS {
            if !self.alive.contains(c) && (reschedule || self.tainted(c)) {
                self.written_off.insert(c.to_string());
            }
        }
    }

    fn written_off(&self, c: &str) -> bool {
        self.written_off.contains(c)
    }

    fn check_slices(&self) -> Result<(), TestCaseError> {
        let mut owner: BTreeMap<u32, &str> = BTreeMap::new();
        for (c, s) in &self.slices {
            for o in s.value.spec.ordinals.to_vec() {
                if let Some(other) = owner.insert(o, c) {
                    return Err(TestCaseError::fail(format!(
                        "ordinal {o} is in the slices of {other} and {c}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_running(&self) -> Result<(), TestCaseError> {
        let mut owner: BTreeMap<u32, &str> = BTreeMap::new();
        for (c, run) in &self.running {
            for &o in run {
                if let Some(other) = owner.insert(o, c)
                    && !self.written_off(other)
                    && !self.written_off(c)
                {
                    return Err(TestCaseError::fail(format!(
                        "ordinal {o} runs in {other} and {c}, neither written off"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The plan places each ordinal once, `replicas` of them less those that fit nowhere,
/// and fits them all when every cluster is alive, untainted and has the room, and the
/// controller has every member's newest report.
fn check_plan(
    set: &FederatedInstanceSet,
    plan: &Plan,
    alive: &BTreeSet<String>,
    room: &[u32],
    informed: bool,
    tainted: impl Fn(&str) -> bool,
) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    for cp in &plan.placement {
        for &o in &cp.ordinals {
            prop_assert!(seen.insert(o), "ordinal {} placed twice: {:?}", o, plan);
        }
    }
    let placed = seen.len() as u32;
    prop_assert_eq!(placed + plan.unschedulable, set.spec.replicas, "{:?}", plan);
    let all_well = CLUSTERS.iter().all(|c| alive.contains(*c) && !tainted(c));
    if all_well && informed && room.iter().sum::<u32>() >= set.spec.replicas {
        prop_assert_eq!(plan.unschedulable, 0, "room for all: {:?}", plan);
    }
    Ok(())
}

fn run(
    replicas: u32,
    reschedule: bool,
    room: Vec<u32>,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let mut w = World::new(replicas, reschedule, room);
    for s in steps {
        match *s {
            Step::Apply { c, removals_only } => w.apply_member(c, removals_only),
            Step::Deliver { c } => w.deliver(c),
            Step::Reconcile => w.reconcile()?,
            Step::Lapse { c } => {
                w.alive.remove(CLUSTERS[c]);
            }
            Step::Return { c } => {
                w.alive.insert(CLUSTERS[c].to_string());
            }
            Step::Taint { c } => {
                let taints = &mut w.clusters[c].spec.taints;
                if taints.is_empty() {
                    taints.push(Taint {
                        key: "maintenance".to_string(),
                        effect: "NoExecute".to_string(),
                        ..Taint::default()
                    });
                } else {
                    taints.clear();
                }
            }
            Step::Room { c, room } => w.room[c] = room,
            Step::Scale { replicas } => {
                w.set.spec.replicas = replicas;
                w.set.metadata.generation = w.set.metadata.generation.map(|g| g + 1);
            }
            Step::NewLeader => w.new_leader(),
        }
        w.write_off();
        w.check_slices()?;
        w.check_running()?;
    }

    // Every member comes back and does what it is told; the controller sees it all.
    w.alive = CLUSTERS.iter().map(|c| c.to_string()).collect();
    for _ in 0..12 {
        for c in 0..CLUSTERS.len() {
            w.apply_member(c, false);
            w.deliver(c);
        }
        w.reconcile()?;
        w.check_running()?;
    }
    let plan = w
        .placement
        .as_ref()
        .map(|p| p.value.clone())
        .unwrap_or_default();
    for cp in &plan.placement {
        let slice: Vec<u32> = w
            .slices
            .get(&cp.cluster)
            .map(|s| s.value.spec.ordinals.to_vec())
            .unwrap_or_default();
        prop_assert_eq!(
            &slice,
            &cp.ordinals,
            "the slice of {} is its plan",
            cp.cluster
        );
    }
    let planned: BTreeSet<&str> = plan
        .placement
        .iter()
        .filter(|c| !c.ordinals.is_empty())
        .map(|c| c.cluster.as_str())
        .collect();
    for (c, s) in &w.slices {
        prop_assert!(
            planned.contains(c.as_str()) || s.value.spec.ordinals.to_vec().is_empty(),
            "{} keeps ordinals {:?} the plan does not give it",
            c,
            s.value.spec.ordinals.to_vec()
        );
    }
    for (c, run) in &w.running {
        let slice: BTreeSet<u32> = w
            .slices
            .get(c)
            .map(|s| s.value.spec.ordinals.to_vec().into_iter().collect())
            .unwrap_or_default();
        prop_assert_eq!(run, &slice, "{} runs its slice", c);
    }
    let untainted = CLUSTERS.iter().all(|c| !w.tainted(c));
    let running: usize = w.running.values().map(BTreeSet::len).sum();
    if untainted && w.room.iter().sum::<u32>() >= w.set.spec.replicas {
        prop_assert_eq!(running as u32, w.set.spec.replicas, "room for all: all run");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn no_ordinal_is_ever_in_two_slices_or_lost(
        replicas in 0u32..9,
        reschedule in any::<bool>(),
        room in proptest::collection::vec(0u32..7, CLUSTERS.len()),
        steps in proptest::collection::vec(step(), 0..60),
    ) {
        run(replicas, reschedule, room, &steps)?;
    }
}

#[test]
fn a_member_that_lapsed_keeps_its_ordinals_under_keep() {
    // Two instances in a, one in b; a lapses; the set scales and the controller passes
    // many times: nothing of a's is placed in b or c while a may still run it.
    let steps = [
        Step::Reconcile,
        Step::Apply {
            c: 0,
            removals_only: false,
        },
        Step::Apply {
            c: 1,
            removals_only: false,
        },
        Step::Apply {
            c: 2,
            removals_only: false,
        },
        Step::Deliver { c: 0 },
        Step::Deliver { c: 1 },
        Step::Deliver { c: 2 },
        Step::Reconcile,
        Step::Lapse { c: 0 },
        Step::Reconcile,
        Step::Scale { replicas: 2 },
        Step::Reconcile,
        Step::Scale { replicas: 6 },
        Step::Reconcile,
        Step::NewLeader,
        Step::Reconcile,
        Step::Apply {
            c: 1,
            removals_only: false,
        },
        Step::Apply {
            c: 2,
            removals_only: false,
        },
        Step::Reconcile,
    ];
    run(3, false, vec![2, 2, 2], &steps).unwrap();
}

#[test]
fn a_lapsed_member_given_ordinals_back_under_reschedule_shares_none() {
    // Found by the property test: under Reschedule, b's and c's ordinals go elsewhere
    // when they lapse; the set scales, c returns, and a pass must not leave an ordinal
    // in two slices.
    let steps = [
        Step::Reconcile,
        Step::Lapse { c: 2 },
        Step::Reconcile,
        Step::Lapse { c: 1 },
        Step::Scale { replicas: 4 },
        Step::Return { c: 2 },
        Step::Reconcile,
    ];
    run(3, true, vec![3, 1, 1], &steps).unwrap();
}
