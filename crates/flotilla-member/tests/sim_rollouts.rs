//! Whole rollouts on the simulated member: the controller (prepare + commit) against
//! `Sim`, with faults.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_api::{InstanceSet, NodeGroup, Valid, validate};
use flotilla_instanceset::{Observed, Revision};
use flotilla_member::sim::{Sim, SimConfig};
use flotilla_member::{Backend, Controller, Pass};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn set(ordinals: &str, image: &str, extra: &str) -> Valid<InstanceSet> {
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata: {{name: redis}}
spec:
  ordinals: {ordinals}
  template: {{spec: {{containers: [{{name: redis, image: '{image}', resources: {{requests: {{cpu: '1', memory: 1Gi}}}}}}]}}}}
  volumeClaimTemplates: [{{metadata: {{name: data}}}}]
  roles:
  - {{name: primary, updatePriority: 2, exclusive: true}}
  - {{name: secondary, updatePriority: 1}}
{extra}"
    );
    let AnyObject::InstanceSet(s) = decode_all(&text).unwrap().remove(0).object else {
        panic!()
    };
    validate::instance_set(*s).unwrap_or_else(|e| panic!("{e}"))
}

fn sim(nodes: u32) -> Arc<Sim> {
    sim_with(nodes, false)
}

fn sim_with(nodes: u32, local_volumes: bool) -> Arc<Sim> {
    let free = [("cpu", "4"), ("memory", "16Gi"), ("pods", "110")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    Arc::new(Sim::new(&SimConfig {
        node_groups: vec![NodeGroup { count: nodes, free }],
        start_delay: Duration::from_secs(2),
        ready_delay: Duration::from_secs(3),
        local_volumes,
        request_latency: Duration::ZERO,
    }))
}

/// Probe, reconcile, advance one second; until converged or `rounds` run out. Calls
/// `each` after every pass.
async fn drive(
    c: &Controller<Sim>,
    s: &Valid<InstanceSet>,
    rounds: usize,
    mut each: impl FnMut(&Pass),
) -> Pass {
    let mut last = Pass::default();
    for _ in 0..rounds {
        c.probe_roles(s).await.unwrap();
        last = c.reconcile(s).await.unwrap();
        each(&last);
        if last.converged {
            return last;
        }
        c.backend().advance(Duration::from_secs(1));
    }
    last
}

async fn primaries(c: &Controller<Sim>, s: &InstanceSet) -> Vec<u32> {
    let o = c.backend().observe(s).await.unwrap();
    o.instances
        .iter()
        .filter(|i| i.role.as_deref() == Some("primary"))
        .map(|i| i.ordinal)
        .collect()
}

#[tokio::test]
async fn a_fresh_set_converges_with_one_primary_and_then_costs_no_writes() {
    let c = Controller::new(sim(5));
    let s = set(
        "{ranges: [{start: 0, end: 3}], discrete: [10]}",
        "redis:7.2",
        "",
    );
    let pass = drive(&c, &s, 30, |_| {}).await;
    assert!(pass.converged, "{pass:?}");
    assert_eq!(primaries(&c, &s).await.len(), 1);
    let status = c.backend().status(&s).unwrap();
    assert_eq!((status.replicas, status.ready_replicas), (5, 5));
    let ordinals: Vec<u32> = status.instances.iter().map(|i| i.ordinal).collect();
    assert_eq!(ordinals, [0, 1, 2, 3, 10]);
    // One instance per node (the set spreads first): every node has 3 cpu, 15Gi and
    // 109 pod slots left, so the capacity model is one group of five.
    let cap = c.backend().capacity().await.unwrap();
    assert_eq!(cap.node_groups.len(), 1, "{cap:?}");
    assert_eq!(cap.node_groups[0].count, 5);
    let free: Vec<(&str, &str)> = cap.node_groups[0]
        .free
        .iter()
        .map(|(k, v)| (k.as_str(), v.0.as_str()))
        .collect();
    assert_eq!(free, [("cpu", "3"), ("memory", "15Gi"), ("pods", "109")]);
    // Converged: further passes write nothing at all.
    let before = c.backend().writes();
    for _ in 0..3 {
        c.probe_roles(&s).await.unwrap();
        let pass = c.reconcile(&s).await.unwrap();
        assert_eq!(pass.writes, 0);
        assert!(pass.actions.is_empty());
    }
    assert_eq!(c.backend().writes(), before);
}

#[tokio::test]
async fn an_image_update_rolls_replicas_first_then_switches_over() {
    let c = Controller::new(sim(5));
    let old = set("{ranges: [{start: 0, end: 2}]}", "redis:7.2", "");
    assert!(drive(&c, &old, 30, |_| {}).await.converged);
    let first_primary = primaries(&c, &old).await[0];
    let new = set("{ranges: [{start: 0, end: 2}]}", "redis:7.4", "");
    let mut order = Vec::new();
    let mut most_unavailable = 0;
    let sim = Arc::clone(c.backend());
    let pass = drive(&c, &new, 60, |p| {
        for a in &p.actions {
            order.push(a.to_string());
        }
        let st = sim.status(&new).unwrap();
        most_unavailable = most_unavailable.max(st.replicas - st.ready_replicas);
    })
    .await;
    assert!(pass.converged, "{pass:?}");
    assert!(
        most_unavailable <= 1,
        "maxUnavailable 1 was exceeded: {most_unavailable}"
    );
    let updates: Vec<&String> = order
        .iter()
        .filter(|a| a.starts_with("update-in-place") || a.starts_with("switchover"))
        .collect();
    let switch = updates
        .iter()
        .position(|a| a.starts_with("switchover"))
        .expect("a switchover");
    let old_primary_update = updates
        .iter()
        .position(|a| **a == format!("update-in-place {first_primary}"))
        .unwrap();
    assert!(switch < old_primary_update, "{updates:?}");
    assert_eq!(
        updates
            .iter()
            .filter(|a| a.starts_with("update-in-place"))
            .count(),
        3,
        "{updates:?}"
    );
    assert_ne!(primaries(&c, &new).await, [first_primary]);
}

#[tokio::test]
async fn a_failed_switchover_stops_the_rollout_before_the_primary() {
    let c = Controller::new(sim(5));
    let old = set("{ranges: [{start: 0, end: 2}]}", "redis:7.2", "");
    assert!(drive(&c, &old, 30, |_| {}).await.converged);
    let primary = primaries(&c, &old).await[0];
    c.backend()
        .fail_next_switchover(&old, "replica lags behind");
    let new = set("{ranges: [{start: 0, end: 2}]}", "redis:7.4", "");
    let pass = drive(&c, &new, 40, |_| {}).await;
    assert!(!pass.converged);
    assert!(
        pass.blocked
            .as_deref()
            .unwrap_or_default()
            .contains("replica lags behind"),
        "{pass:?}"
    );
    let o = c.backend().observe(&new).await.unwrap();
    let p = o.instances.iter().find(|i| i.ordinal == primary).unwrap();
    assert_eq!(
        p.revision,
        Revision::of(&old.spec).revision,
        "the primary must not be updated"
    );
    let degraded = c
        .backend()
        .status(&new)
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "Blocked")
    );
}

#[tokio::test]
async fn killed_instances_and_failed_nodes_are_rebuilt() {
    let c = Controller::new(sim(6));
    let s = set("{ranges: [{start: 0, end: 2}]}", "redis:7.2", "");
    assert!(drive(&c, &s, 30, |_| {}).await.converged);
    c.backend().kill(&s, 1);
    assert!(drive(&c, &s, 30, |_| {}).await.converged);
    let node = c.backend().node_of(&s, 2).unwrap();
    c.backend().fail_node(&node);
    assert!(drive(&c, &s, 30, |_| {}).await.converged);
    assert_ne!(c.backend().node_of(&s, 2).unwrap(), node);
}

#[tokio::test]
async fn scale_in_hands_the_primary_over_before_removing_it() {
    let c = Controller::new(sim(5));
    let s = set("{ranges: [{start: 0, end: 3}]}", "redis:7.2", "");
    assert!(drive(&c, &s, 30, |_| {}).await.converged);
    let primary = primaries(&c, &s).await[0];
    let rest: Vec<String> = (0..4)
        .filter(|&o| o != primary)
        .map(|o| o.to_string())
        .collect();
    let smaller = set(
        &format!("{{discrete: [{}]}}", rest.join(", ")),
        "redis:7.2",
        "",
    );
    let mut saw = Vec::new();
    assert!(
        drive(&c, &smaller, 30, |p| saw
            .extend(p.actions.iter().map(ToString::to_string)))
        .await
        .converged
    );
    let switch = saw
        .iter()
        .position(|a| a.starts_with(&format!("switchover primary {primary}->")))
        .unwrap();
    let delete = saw
        .iter()
        .position(|a| *a == format!("delete {primary}"))
        .unwrap();
    assert!(switch < delete, "{saw:?}");
    assert_eq!(primaries(&c, &smaller).await.len(), 1);
}

#[tokio::test]
async fn one_instance_per_node_keeps_instances_apart() {
    let c = Controller::new(sim(3));
    let s = set(
        "{ranges: [{start: 0, end: 3}]}",
        "redis:7.2",
        "  maxInstancesPerNode: 1\n",
    );
    let pass = drive(&c, &s, 20, |_| {}).await;
    assert!(
        !pass.converged,
        "4 instances cannot fit 3 nodes at one per node"
    );
    let nodes: std::collections::BTreeSet<String> =
        (0..4).filter_map(|o| c.backend().node_of(&s, o)).collect();
    assert_eq!(nodes.len(), 3);
}

#[tokio::test]
async fn an_instance_stranded_with_local_volumes_waits_unless_rebuild_is_allowed() {
    let rebuild_policy = |policy: &str| {
        set(
            "{ranges: [{start: 0, end: 2}]}",
            "redis:7.2",
            &format!("  instanceRebuild: {{whenNodeLost: {policy}}}\n"),
        )
    };
    for (policy, rebuilt) in [("Wait", false), ("Rebuild", true)] {
        let c = Controller::new(sim_with(4, true));
        let s = rebuild_policy(policy);
        assert!(drive(&c, &s, 30, |_| {}).await.converged);
        let primary = primaries(&c, &s).await[0];
        let victim = (0..3).find(|&o| o != primary).unwrap();
        let node = c.backend().node_of(&s, victim).unwrap();
        c.backend().fail_node(&node);
        let mut saw = Vec::new();
        let pass = drive(&c, &s, 30, |p| {
            saw.extend(p.actions.iter().map(ToString::to_string))
        })
        .await;
        assert_eq!(pass.converged, rebuilt, "{policy}: {pass:?}");
        if rebuilt {
            assert!(
                saw.contains(&format!("delete-volume data-{victim}")),
                "{saw:?}"
            );
            assert!(saw.contains(&format!("rebuild {victim}")), "{saw:?}");
            assert_ne!(c.backend().node_of(&s, victim).unwrap(), node);
        } else {
            assert!(saw.is_empty(), "{saw:?}");
            let why = pass.blocked.unwrap();
            assert!(
                why.contains(&format!(
                    "instance {victim} is stranded on lost node {node}"
                )),
                "{why}"
            );
        }
    }
}

/// A backend that counts how often it is observed.
struct Counting {
    sim: Arc<Sim>,
    observes: std::sync::atomic::AtomicUsize,
}

impl Backend for Counting {
    async fn observe(&self, set: &InstanceSet) -> flotilla_member::Result<Observed> {
        self.observes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.sim.observe(set).await
    }
    async fn apply(
        &self,
        set: &InstanceSet,
        action: &flotilla_instanceset::Action,
    ) -> flotilla_member::Result<flotilla_member::Applied> {
        self.sim.apply(set, action).await
    }
    async fn write_status(
        &self,
        set: &InstanceSet,
        status: &flotilla_api::InstanceSetStatus,
    ) -> flotilla_member::Result<flotilla_member::Applied> {
        self.sim.write_status(set, status).await
    }
    async fn probe_role(
        &self,
        set: &InstanceSet,
        ordinal: u32,
    ) -> flotilla_member::Result<Option<String>> {
        self.sim.probe_role(set, ordinal).await
    }
    async fn capacity(&self) -> flotilla_member::Result<flotilla_api::CapacityModel> {
        self.sim.capacity().await
    }
}

#[tokio::test]
async fn a_probing_pass_observes_once_and_plans_from_its_own_probes() {
    let sim = sim(5);
    let backend = Arc::new(Counting {
        sim: Arc::clone(&sim),
        observes: Default::default(),
    });
    let c = Controller::new(Arc::clone(&backend));
    let s = set("{ranges: [{start: 0, end: 2}]}", "redis:7.2", "");
    let mut passes = 0;
    let mut labelled_in_the_probing_pass = false;
    loop {
        passes += 1;
        assert!(passes <= 30, "did not converge");
        let before = backend.observes.load(std::sync::atomic::Ordering::SeqCst);
        let pass = c.pass(&s, true).await.unwrap();
        let after = backend.observes.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            after - before,
            1,
            "one observation per pass, probes included"
        );
        // The first pass whose probes find a running primary labels it in that pass:
        // the results are merged into the pass's own observation.
        if pass.actions.iter().any(|a| {
            let a = a.to_string();
            a.starts_with("set-role") && a.ends_with("=primary")
        }) {
            labelled_in_the_probing_pass = true;
        }
        if pass.converged {
            break;
        }
        sim.advance(Duration::from_secs(1));
    }
    assert!(labelled_in_the_probing_pass);
    let o = sim.observe(&s).await.unwrap();
    let primaries = o
        .instances
        .iter()
        .filter(|i| i.role.as_deref() == Some("primary"))
        .count();
    assert_eq!(primaries, 1);
    // Without probing, a pass is a plain reconcile: one observation too.
    let before = backend.observes.load(std::sync::atomic::Ordering::SeqCst);
    let pass = c.pass(&s, false).await.unwrap();
    assert_eq!(pass.writes, 0);
    assert_eq!(
        backend.observes.load(std::sync::atomic::Ordering::SeqCst) - before,
        1
    );
}

/// A Redis slice of three instances on the simulated member (its emulated Redis), with
/// the primary the federation names (`0` at `endpoint`, when given).
fn redis_set(image: &str, primary: Option<&str>) -> Valid<InstanceSet> {
    let annotations = primary
        .map(|e| format!("\n  annotations: {{flotilla.io/redis-primary: '0={e}'}}"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata:
  name: cache{annotations}
spec:
  ordinals: {{ranges: [{{start: 0, end: 2}}]}}
  template: {{spec: {{containers: [{{name: redis, image: '{image}', ports: [{{name: redis, containerPort: 6379}}], resources: {{requests: {{cpu: '1', memory: 1Gi}}}}}}]}}}}
  roles:
  - {{name: primary, updatePriority: 2, exclusive: true}}
  - {{name: secondary, updatePriority: 1}}
  roleProbe: {{redis: {{port: 6379, roleMap: {{master: primary, slave: secondary}}}}}}
  redis: {{shardReplicas: 3, config: {{maxmemory: 100mb}}}}
"
    );
    let AnyObject::InstanceSet(s) = decode_all(&text).unwrap().remove(0).object else {
        panic!()
    };
    validate::instance_set(*s).unwrap_or_else(|e| panic!("{e}"))
}

/// `(ordinal, redis role, its master, link up, role label)`.
type RedisView = (u32, String, Option<String>, bool, Option<String>);

/// Every instance in the last status, as [`RedisView`].
fn redis_view(sim: &Sim, s: &InstanceSet) -> Vec<RedisView> {
    let status = sim.status(s).expect("a status was written");
    status
        .instances
        .iter()
        .map(|i| {
            let r = i.redis.clone().unwrap_or_default();
            (i.ordinal, r.role, r.master, r.link_up, i.role.clone())
        })
        .collect()
}

#[tokio::test]
async fn a_simulated_redis_shard_is_wired_to_the_named_primary_and_rolls_through_a_failover() {
    let sim = sim(3);
    let c = Controller::new(Arc::clone(&sim));
    // No primary named yet (a new shard): every instance runs alone, as a master.
    let fresh = redis_set("redis:7.2", None);
    drive(&c, &fresh, 30, |_| ()).await;
    let view = redis_view(&sim, &fresh);
    assert_eq!(view.len(), 3);
    assert!(view.iter().all(|v| v.1 == "master"), "{view:?}");
    let status = sim.status(&fresh).unwrap();
    let endpoint = status.instances[0].endpoint.clone().expect("an endpoint");
    assert!(endpoint.starts_with("cache-0.") && endpoint.ends_with(":6379"));
    let config = &status.instances[0].redis.as_ref().unwrap().config;
    assert_eq!(config.get("maxmemory").map(String::as_str), Some("100mb"));

    // The federation names 0: the others become its replicas, linked; one primary label.
    let named = redis_set("redis:7.2", Some(&endpoint));
    let pass = drive(&c, &named, 30, |_| ()).await;
    assert!(pass.converged);
    let view = redis_view(&sim, &named);
    for (o, role, master, up, label) in &view {
        if *o == 0 {
            assert_eq!(
                (role.as_str(), label.as_deref()),
                ("master", Some("primary"))
            );
        } else {
            assert_eq!(role, "slave", "{view:?}");
            assert_eq!(master.as_deref(), Some(endpoint.as_str()), "{view:?}");
            assert!(*up, "{view:?}");
            assert_eq!(label.as_deref(), Some("secondary"));
        }
    }

    // An image change rolls the replicas, then hands the primary over with FAILOVER TO
    // (the primary last): exactly one master afterwards, every instance current.
    let newer = redis_set("redis:7.4", Some(&endpoint));
    let mut switched = false;
    let pass = drive(&c, &newer, 60, |p| {
        switched |= p
            .actions
            .iter()
            .any(|a| a.to_string().starts_with("switchover"));
    })
    .await;
    assert!(pass.converged, "{:?}", pass.actions);
    assert!(switched, "the primary was switched over before its update");
    let view = redis_view(&sim, &newer);
    let masters: Vec<u32> = view
        .iter()
        .filter(|v| v.1 == "master")
        .map(|v| v.0)
        .collect();
    assert_eq!(masters.len(), 1, "{view:?}");
    let status = sim.status(&newer).unwrap();
    let revision = Revision::of(&newer.spec).revision;
    assert!(
        status
            .instances
            .iter()
            .all(|i| i.revision.as_deref() == Some(revision.as_str()))
    );
}
