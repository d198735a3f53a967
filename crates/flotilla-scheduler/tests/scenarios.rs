//! Data-driven scenarios for the division rules: one `check(set, clusters, previous,
//! expect)` per rule, with the placement written compactly as `a=0-7 b=8-11`.

use flotilla_api::decode::AnyObject;
use flotilla_api::decode::decode_all;
use flotilla_api::ordinals::display_list;
use flotilla_api::{Cluster, FederatedInstanceSet, Valid, validate};
use flotilla_scheduler::{Plan, plan};

/// A set of `replicas` instances each requesting 1 cpu and 1Gi, with `placement` given
/// as YAML flow mapping content, e.g. `weights: {static: {a: 2}}`.
fn set(replicas: u32, placement: &str) -> Valid<FederatedInstanceSet> {
    set_with(replicas, placement, "")
}

/// Like [`set`], with extra spec lines (e.g. `offlineOrdinals: [3]`).
fn set_with(replicas: u32, placement: &str, extra: &str) -> Valid<FederatedInstanceSet> {
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: s}}\nspec:\n  replicas: {replicas}\n  template: {{spec: {{containers: [{{name: c, image: i, resources: {{requests: {{cpu: '1', memory: 1Gi}}}}}}]}}}}\n  placement: {{{placement}}}\n{extra}"
    );
    let mut docs = decode_all(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let AnyObject::FederatedInstanceSet(s) = docs.remove(0).object else {
        panic!("not a set")
    };
    validate::federated_instance_set(*s).unwrap_or_else(|e| panic!("{e}"))
}

/// A ready cluster with `nodes` nodes of `cpu` free cores each (plenty of memory and
/// pods). `extra` is appended to its YAML (labels, taints, status tweaks via `ready`).
fn cluster(name: &str, nodes: u32, cpu: u32) -> String {
    cluster_with(name, nodes, cpu, "{}", "true", "[]")
}

fn cluster_with(
    name: &str,
    nodes: u32,
    cpu: u32,
    labels: &str,
    ready: &str,
    taints: &str,
) -> String {
    format!(
        "apiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {{name: {name}, labels: {labels}}}\nspec: {{taints: {taints}}}\nstatus:\n  ready: {ready}\n  capacity: {{nodeGroups: [{{count: {nodes}, free: {{cpu: '{cpu}', memory: 1Ti, pods: 110}}}}]}}\n"
    )
}

fn clusters(docs: &[String]) -> Vec<Valid<Cluster>> {
    let text = docs.join("---\n");
    let list = decode_all(&text)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|d| match d.object {
            AnyObject::Cluster(c) => *c,
            _ => panic!("not a cluster"),
        })
        .collect();
    validate::clusters(list).unwrap_or_else(|e| panic!("{e}"))
}

/// `a=0-7 b=8-11`, plus ` unschedulable=N` when some did not fit.
fn show(p: &Plan) -> String {
    let mut parts: Vec<String> = p
        .by_cluster()
        .into_iter()
        .map(|(c, o)| format!("{c}={}", display_list(o)))
        .collect();
    if p.unschedulable > 0 {
        parts.push(format!("unschedulable={}", p.unschedulable));
    }
    parts.join(" ")
}

#[track_caller]
fn check(
    set: &Valid<FederatedInstanceSet>,
    clusters: &[Valid<Cluster>],
    previous: Option<&Plan>,
    expect: &str,
) -> Plan {
    let p = plan(set, clusters, previous).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(show(&p), expect, "messages: {:#?}", p.messages);
    // Every answer is stable: planning again from it changes nothing.
    let again = plan(set, clusters, Some(&p)).unwrap();
    assert_eq!(
        show(&again),
        expect,
        "re-plan moved instances; messages: {:#?}",
        again.messages
    );
    p
}

fn has_message(p: &Plan, needle: &str) -> bool {
    p.messages.iter().any(|m| m.contains(needle))
}

#[test]
fn equal_weights_split_evenly_lowest_names_take_the_remainder() {
    let cs = clusters(&[
        cluster("a", 10, 8),
        cluster("b", 10, 8),
        cluster("c", 10, 8),
    ]);
    check(&set(10, ""), &cs, None, "a=0-3 b=4-6 c=7-9");
    check(&set(0, ""), &cs, None, "");
}

#[test]
fn static_weights_divide_by_weight() {
    let cs = clusters(&[
        cluster("a", 10, 8),
        cluster("b", 10, 8),
        cluster("c", 10, 8),
    ]);
    check(
        &set(12, "weights: {static: {a: 2, b: 1}}"),
        &cs,
        None,
        "a=0-7 b=8-11",
    );
}

#[test]
fn unweighted_clusters_take_only_the_overflow() {
    let cs = clusters(&[cluster("a", 2, 2), cluster("b", 1, 2), cluster("c", 10, 8)]);
    let p = check(
        &set(10, "weights: {static: {a: 2, b: 1}}"),
        &cs,
        None,
        "a=0-3 b=4-5 c=6-9",
    );
    assert_eq!(p.placement[0].capacity, 4);
}

#[test]
fn dynamic_weights_follow_capacity() {
    let cs = clusters(&[
        cluster("a", 10, 1),
        cluster("b", 10, 2),
        cluster("c", 10, 3),
    ]);
    let p = check(
        &set(12, "weights: {dynamic: AvailableCapacity}"),
        &cs,
        None,
        "a=0-1 b=2-5 c=6-11",
    );
    let caps: Vec<u32> = p.placement.iter().map(|c| c.capacity).collect();
    assert_eq!(caps, [10, 20, 30]);
}

#[test]
fn per_cluster_bounds_hold() {
    let cs = clusters(&[
        cluster("a", 10, 8),
        cluster("b", 10, 8),
        cluster("c", 10, 8),
    ]);
    check(
        &set(12, "perCluster: {a: {max: 2}, c: {min: 6}}"),
        &cs,
        None,
        "a=0-1 b=2-5 c=6-11",
    );
    check(
        &set(3, "weights: {static: {a: 1}}, perCluster: {b: {min: 2}}"),
        &cs,
        None,
        "a=0 b=1-2",
    );
}

#[test]
fn max_share_caps_every_cluster() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    // 50% of 5 is 2.5, rounded down: 4 fit, 1 does not.
    let p = check(
        &set(5, "maxSharePerCluster: 50"),
        &cs,
        None,
        "a=0-1 b=2-3 unschedulable=1",
    );
    assert!(
        has_message(&p, "1 of 5 instances could not be placed"),
        "{:?}",
        p.messages
    );
}

#[test]
fn min_clusters_gives_one_to_the_best_unweighted_cluster() {
    let cs = clusters(&[
        cluster("a", 10, 8),
        cluster("b", 10, 4),
        cluster("c", 10, 8),
    ]);
    check(
        &set(6, "weights: {static: {a: 1}}, minClusters: 2"),
        &cs,
        None,
        "a=0-4 c=5",
    );
}

#[test]
fn max_clusters_prefers_weight_then_room_then_name() {
    let cs = clusters(&[
        cluster("a", 10, 1),
        cluster("b", 10, 4),
        cluster("c", 10, 4),
    ]);
    check(&set(8, "maxClusters: 2"), &cs, None, "b=0-3 c=4-7");
    check(
        &set(8, "maxClusters: 2, weights: {static: {a: 5, b: 1, c: 1}}"),
        &cs,
        None,
        "a=0-6 b=7",
    );
}

#[test]
fn spread_reaches_the_minimum_number_of_groups() {
    let r = |name: &str, region: &str, cpu: u32| {
        cluster_with(
            name,
            10,
            cpu,
            &format!("{{region: {region}}}"),
            "true",
            "[]",
        )
    };
    let cs = clusters(&[r("a", "r1", 8), r("b", "r1", 8), r("c", "r2", 1)]);
    check(
        &set(
            6,
            "maxClusters: 2, spread: [{byLabel: region, minGroups: 2}]",
        ),
        &cs,
        None,
        "a=0-2 c=3-5",
    );
    check(
        &set(6, "spread: [{byLabel: region, maxGroups: 1}]"),
        &cs,
        None,
        "a=0-2 b=3-5",
    );
}

#[test]
fn spread_that_cannot_be_met_places_nothing_and_says_why() {
    let r = |name: &str| cluster_with(name, 10, 8, "{region: r1}", "true", "[]");
    let cs = clusters(&[r("a"), r("b"), cluster("c", 10, 8)]);
    let p = check(
        &set(4, "spread: [{byLabel: region, minGroups: 2}]"),
        &cs,
        None,
        "unschedulable=4",
    );
    assert!(
        has_message(
            &p,
            "placement.spread[0] needs instances in 2 distinct region values"
        ),
        "{:?}",
        p.messages
    );
    assert!(
        has_message(&p, "cluster c: no label region"),
        "{:?}",
        p.messages
    );
}

#[test]
fn capacity_shortfall_names_the_cluster() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 3, 1)]);
    let p = check(
        &set(10, "weights: {static: {b: 1}}"),
        &cs,
        None,
        "a=0-6 b=7-9",
    );
    assert!(
        has_message(&p, "cluster b: room for 3, 10 asked"),
        "{:?}",
        p.messages
    );
    let p = check(&set(100, ""), &cs, None, "a=0-79 b=80-82 unschedulable=17");
    assert!(
        has_message(&p, "17 of 100 instances could not be placed"),
        "{:?}",
        p.messages
    );
}

#[test]
fn max_instances_per_node_caps_room() {
    let cs = clusters(&[cluster("a", 3, 8), cluster("b", 10, 8)]);
    let p = check(&set(8, "maxInstancesPerNode: 1"), &cs, None, "a=0-2 b=3-7");
    assert_eq!(p.placement[0].capacity, 3);
}

#[test]
fn a_missing_resource_is_reported() {
    let text = "apiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nstatus: {ready: true, capacity: {nodeGroups: [{count: 4, free: {cpu: '8', pods: 10}}]}}\n".to_string();
    let cs = clusters(&[text, cluster("b", 2, 2)]);
    let p = check(&set(3, ""), &cs, None, "b=0-2");
    assert!(
        has_message(
            &p,
            "cluster a: no room for one instance: short of memory (one instance needs 1Gi)"
        ),
        "{:?}",
        p.messages
    );
}

#[test]
fn ineligible_clusters_get_nothing_new() {
    let cs = clusters(&[
        cluster_with("a", 10, 8, "{}", "false", "[]"),
        cluster_with("b", 10, 8, "{env: dev}", "true", "[]"),
        cluster_with(
            "c",
            10,
            8,
            "{env: prod}",
            "true",
            "[{key: dedicated, value: db, effect: NoSchedule}]",
        ),
        cluster_with("d", 10, 8, "{env: prod}", "true", "[]"),
    ]);
    let p = check(
        &set(
            4,
            "clusterAffinity: {labelSelector: {matchLabels: {env: prod}}}",
        ),
        &cs,
        None,
        "d=0-3",
    );
    let caps: Vec<u32> = p.placement.iter().map(|c| c.capacity).collect();
    // Room is reported whether or not a cluster may use it; the messages say why not.
    assert_eq!(caps, [80, 80, 80, 80]);
    assert!(has_message(&p, "cluster a: not ready"));
    assert!(has_message(
        &p,
        "cluster c: taint dedicated=db:NoSchedule is not tolerated"
    ));
    let tolerant = "tolerations: [{key: dedicated, operator: Exists}]";
    check(&set(4, tolerant), &cs, None, "b=0-1 c=2 d=3");
}

#[test]
fn cluster_names_restrict_and_unknown_names_are_pointed_out() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let p = check(
        &set(4, "clusterAffinity: {clusterNames: [b, x]}"),
        &cs,
        None,
        "b=0-3",
    );
    assert!(has_message(
        &p,
        "placement.clusterAffinity.clusterNames names cluster x, which is not registered"
    ));
}

#[test]
fn ordinals_come_from_the_space_skipping_offline_ones() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let s = set_with(
        5,
        "",
        "  ordinals: {ranges: [{start: 10, end: 13}], discrete: [500, 7]}\n  offlineOrdinals: [11]\n",
    );
    check(&s, &cs, None, "a=7, 10, 12 b=13, 500");
    let s = set_with(5, "", "  offlineOrdinals: [0, 3]\n");
    check(&s, &cs, None, "a=1-2, 4 b=5-6");
}

#[test]
fn scale_up_keeps_every_instance_and_adds_the_lowest_free_ordinals() {
    let cs = clusters(&[
        cluster("a", 10, 8),
        cluster("b", 10, 8),
        cluster("c", 10, 8),
    ]);
    let p = check(&set(6, ""), &cs, None, "a=0-1 b=2-3 c=4-5");
    check(&set(10, ""), &cs, Some(&p), "a=0-1, 6-7 b=2-3, 8 c=4-5, 9");
}

#[test]
fn scale_down_removes_highest_ordinals_from_clusters_above_target() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let p = check(
        &set(9, "weights: {static: {a: 2, b: 1}}"),
        &cs,
        None,
        "a=0-5 b=6-8",
    );
    check(
        &set(6, "weights: {static: {a: 2, b: 1}}"),
        &cs,
        Some(&p),
        "a=0-3 b=6-7",
    );
    // Freed ordinals are reused first on the next scale-up.
    let down = plan(&set(6, "weights: {static: {a: 2, b: 1}}"), &cs, Some(&p)).unwrap();
    check(
        &set(7, "weights: {static: {a: 2, b: 1}}"),
        &cs,
        Some(&down),
        "a=0-4 b=6-7",
    );
}

#[test]
fn not_ready_clusters_keep_their_instances_unless_failover_says_move() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let p = check(&set(6, ""), &cs, None, "a=0-2 b=3-5");
    let lost = clusters(&[
        cluster("a", 10, 8),
        cluster_with("b", 10, 8, "{}", "false", "[]"),
    ]);
    let kept = check(&set(6, ""), &lost, Some(&p), "a=0-2 b=3-5");
    assert!(
        has_message(
            &kept,
            "cluster b: not ready; its 3 instances (ordinals 3-5) stay (failover policy Keep"
        ),
        "{:?}",
        kept.messages
    );
    assert!(
        !has_message(&kept, "it gets no new instances"),
        "explained twice: {:?}",
        kept.messages
    );
    // Scale-up while b is lost: new instances go to a only.
    check(&set(8, ""), &lost, Some(&p), "a=0-2, 6-7 b=3-5");
    // Scale-down while b is lost takes from b first: it is furthest above its target of 0.
    check(&set(4, ""), &lost, Some(&p), "a=0-2 b=3");
    check(
        &set(6, "failover: {policy: Reschedule}"),
        &lost,
        Some(&p),
        "a=0-5",
    );
}

#[test]
fn no_execute_taints_move_instances_whatever_the_policy() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let p = check(&set(4, ""), &cs, None, "a=0-1 b=2-3");
    let drained = clusters(&[
        cluster("a", 10, 8),
        cluster_with(
            "b",
            10,
            8,
            "{}",
            "true",
            "[{key: drain, effect: NoExecute}]",
        ),
    ]);
    check(&set(4, ""), &drained, Some(&p), "a=0-3");
}

#[test]
fn unregistered_clusters_lose_their_instances_to_the_rest() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let p = check(&set(4, ""), &cs, None, "a=0-1 b=2-3");
    let only_a = clusters(&[cluster("a", 10, 8)]);
    let q = check(&set(4, ""), &only_a, Some(&p), "a=0-3");
    assert!(has_message(
        &q,
        "cluster b is not registered; its 2 instances (ordinals 2-3) are placed again"
    ));
}

#[test]
fn lowered_limits_move_the_excess() {
    let cs = clusters(&[
        cluster("a", 10, 8),
        cluster("b", 10, 8),
        cluster("c", 10, 8),
    ]);
    let p = check(&set(6, ""), &cs, None, "a=0-1 b=2-3 c=4-5");
    let q = check(
        &set(6, "perCluster: {a: {max: 1}}"),
        &cs,
        Some(&p),
        "a=0 b=1-3 c=4-5",
    );
    assert!(
        has_message(
            &q,
            "cluster a: 1 instances exceed placement.perCluster.a.max 1; ordinals 1 leave it"
        ),
        "{:?}",
        q.messages
    );
    check(
        &set(6, "maxClusters: 2"),
        &cs,
        Some(&p),
        "a=0-1, 4 b=2-3, 5",
    );
}

#[test]
fn shrunk_capacity_never_evicts_running_instances() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let p = check(&set(8, ""), &cs, None, "a=0-3 b=4-7");
    let small = clusters(&[cluster("a", 1, 1), cluster("b", 10, 8)]);
    check(&set(8, ""), &small, Some(&p), "a=0-3 b=4-7");
    check(&set(10, ""), &small, Some(&p), "a=0-3 b=4-9");
}

#[test]
fn a_contradictory_previous_placement_is_refused() {
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let prev: Plan = serde_json::from_str(
        r#"{"placement": [{"cluster": "a", "ordinals": [0, 1]}, {"cluster": "b", "ordinals": [1]}], "unschedulable": 0, "messages": []}"#,
    )
    .unwrap();
    let err = plan(&set(2, ""), &cs, Some(&prev)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "placement[1].ordinals[0]: 1 is also placed in cluster a"
    );
}

#[test]
fn raised_minimums_are_reported_and_met_by_the_next_scale_up() {
    let cs = clusters(&[
        cluster("a", 10, 8),
        cluster("b", 10, 8),
        cluster("c", 10, 8),
    ]);
    let p = check(&set(4, "weights: {static: {a: 1}}"), &cs, None, "a=0-3");
    let q = check(
        &set(4, "weights: {static: {a: 1}}, minClusters: 2"),
        &cs,
        Some(&p),
        "a=0-3",
    );
    assert!(
        has_message(
            &q,
            "placement.minClusters is 2, but instances run in 1 clusters"
        ),
        "{:?}",
        q.messages
    );
    check(
        &set(5, "weights: {static: {a: 1}}, minClusters: 2"),
        &cs,
        Some(&p),
        "a=0-3 b=4",
    );
}

#[test]
fn ordinals_still_running_elsewhere_are_not_given_out_again() {
    use flotilla_scheduler::Inventory;
    use std::collections::BTreeSet;
    let cs = clusters(&[cluster("a", 10, 8), cluster("b", 10, 8)]);
    let p = check(&set(3, "weights: {static: {a: 1}}"), &cs, None, "a=0-2");
    let moved = set(
        3,
        "weights: {static: {a: 1, b: 1}}, perCluster: {a: {max: 0}}",
    );
    // Without busy ordinals the move reuses 0-2 (each waits for its old member).
    check(&moved, &cs, Some(&p), "b=0-2");
    // With a's instances still running, b gets new ordinals; they stay once a's go.
    let busy: BTreeSet<u32> = [0, 1, 2].into();
    let inventory = Inventory::new(&cs);
    let q = inventory.plan_avoiding(&moved, Some(&p), &busy).unwrap();
    assert_eq!(show(&q), "b=3-5");
    let r = inventory
        .plan_avoiding(&moved, Some(&q), &BTreeSet::new())
        .unwrap();
    assert_eq!(show(&r), "b=3-5");
    // Busy ordinals a cluster keeps stay with it.
    let grown = set(4, "weights: {static: {a: 1}}");
    let s = inventory.plan_avoiding(&grown, Some(&p), &busy).unwrap();
    assert_eq!(show(&s), "a=0-3");
}
