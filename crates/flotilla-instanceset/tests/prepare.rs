//! Data-driven tests of the InstanceSet planner: one `check(set, observed, expect)` per
//! rule, actions written as `create 3; switchover primary 0->2`.

use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_api::{InstanceSet, Valid, validate};
use flotilla_instanceset::{
    Instance, Observed, Phase, Plan, ProbeResult, Revision, SwitchoverOutcome, Volume, prepare,
};

/// A Redis slice with a primary and secondaries, running `image`, on `ordinals`
/// (YAML), plus extra spec lines.
fn set(ordinals: &str, image: &str, extra: &str) -> Valid<InstanceSet> {
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata: {{name: redis, generation: 4}}
spec:
  ordinals: {ordinals}
  template: {{spec: {{containers: [{{name: redis, image: '{image}'}}]}}}}
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

fn rev(s: &Valid<InstanceSet>) -> Revision {
    Revision::of(&s.spec)
}

/// A running, ready instance of revision `r` labelled with `role` (version 1).
fn up(ordinal: u32, r: &Revision, role: &str) -> Instance {
    Instance {
        ordinal,
        revision: r.revision.clone(),
        shape: r.shape.clone(),
        phase: Phase::Running,
        ready: true,
        deleting: false,
        node: Some(format!("node-{ordinal}")),
        node_lost: false,
        role: Some(role.to_string()),
        role_version: 1,
        probe: Some(ProbeResult {
            role: Some(role.to_string()),
            version: 1,
        }),
        endpoint: None,
    }
}

/// Instances and their `data` volumes.
fn observed(instances: Vec<Instance>) -> Observed {
    let volumes = instances
        .iter()
        .map(|i| Volume {
            claim: "data".into(),
            ordinal: i.ordinal,
            deleting: false,
            node_local: false,
        })
        .collect();
    Observed {
        instances,
        volumes,
        last_switchover: None,
    }
}

fn show(p: &Plan) -> String {
    p.actions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[track_caller]
fn check(s: &Valid<InstanceSet>, o: &Observed, expect: &str) -> Plan {
    let plan = prepare(s, o);
    assert_eq!(show(&plan), expect, "blocked: {:?}", plan.blocked);
    assert_eq!(prepare(s, o), plan, "prepare is deterministic");
    plan
}

fn condition<'a>(p: &'a Plan, type_: &str) -> &'a flotilla_api::Condition {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap()
}

const ONE_TO_THREE: &str = "{ranges: [{start: 0, end: 2}]}";

fn healthy(r: &Revision) -> Vec<Instance> {
    vec![
        up(0, r, "primary"),
        up(1, r, "secondary"),
        up(2, r, "secondary"),
    ]
}

#[test]
fn a_new_slice_creates_volumes_and_instances_for_exactly_its_ordinals() {
    let s = set(
        "{ranges: [{start: 10, end: 11}], discrete: [500]}",
        "redis:7.2",
        "",
    );
    let p = check(
        &s,
        &Observed::default(),
        "create-volume data-10; create 10; create-volume data-11; create 11; create-volume data-500; create 500",
    );
    assert_eq!(condition(&p, "Available").status, "False");
    assert_eq!(
        p.status.update_revision.as_deref(),
        Some(rev(&s).revision.as_str())
    );
}

#[test]
fn a_converged_set_plans_nothing() {
    let s = set(ONE_TO_THREE, "redis:7.2", "");
    let p = check(&s, &observed(healthy(&rev(&s))), "");
    assert_eq!(condition(&p, "Available").status, "True");
    assert_eq!(condition(&p, "Progressing").status, "False");
    assert_eq!(condition(&p, "Degraded").status, "False");
    assert_eq!(
        (
            p.status.replicas,
            p.status.ready_replicas,
            p.status.updated_replicas
        ),
        (3, 3, 3)
    );
    assert_eq!(p.status.instances[0].role.as_deref(), Some("primary"));
}

#[test]
fn an_existing_volume_is_reused() {
    let s = set(ONE_TO_THREE, "redis:7.2", "");
    let r = rev(&s);
    let mut o = observed(vec![up(0, &r, "primary"), up(1, &r, "secondary")]);
    o.volumes.push(Volume {
        claim: "data".into(),
        ordinal: 2,
        deleting: false,
        node_local: false,
    });
    check(&s, &o, "create 2");
}

#[test]
fn image_changes_roll_in_place_replicas_first_highest_ordinal_first() {
    let old = set(ONE_TO_THREE, "redis:7.2", "");
    let new = set(ONE_TO_THREE, "redis:7.4", "");
    let (r0, r1) = (rev(&old), rev(&new));
    let mut inst = healthy(&r0);
    check(&new, &observed(inst.clone()), "update-in-place 2");
    // 2 is updating (not ready): nothing else may go.
    inst[2].revision = r1.revision.clone();
    inst[2].ready = false;
    check(&new, &observed(inst.clone()), "");
    inst[2].ready = true;
    check(&new, &observed(inst.clone()), "update-in-place 1");
    inst[1].revision = r1.revision.clone();
    // Only the primary is left: switch over to an up-to-date replica first.
    let p = check(&new, &observed(inst.clone()), "switchover primary 0->1");
    assert!(
        p.blocked
            .unwrap()
            .contains("switching primary over from 0 to 1")
    );
    // The switchover happened and roles were probed again.
    inst[0].probe = Some(ProbeResult {
        role: Some("secondary".into()),
        version: 2,
    });
    inst[1].probe = Some(ProbeResult {
        role: Some("primary".into()),
        version: 2,
    });
    check(
        &new,
        &observed(inst.clone()),
        "set-role 0=secondary; set-role 1=primary; update-in-place 0",
    );
}

#[test]
fn other_template_changes_recreate() {
    let old = set(ONE_TO_THREE, "redis:7.2", "");
    let new = set(ONE_TO_THREE, "redis:7.2", "").into_inner();
    let mut new = new;
    new.spec.template.spec.as_mut().unwrap().containers[0].args =
        Some(vec!["--maxmemory".into(), "1gb".into()]);
    let new = validate::instance_set(new).unwrap();
    check(&new, &observed(healthy(&rev(&old))), "recreate 2");
}

#[test]
fn max_unavailable_and_parallel_update_several_at_once() {
    let old = set("{ranges: [{start: 0, end: 4}]}", "redis:7.2", "");
    let new = set(
        "{ranges: [{start: 0, end: 4}]}",
        "redis:7.4",
        "  updateStrategy: {maxUnavailable: 2, memberUpdateStrategy: Parallel}\n",
    );
    let r = rev(&old);
    let mut inst = vec![up(0, &r, "primary")];
    inst.extend((1..5).map(|o| up(o, &r, "secondary")));
    check(
        &new,
        &observed(inst.clone()),
        "update-in-place 4; update-in-place 3",
    );
    let pct = set(
        "{ranges: [{start: 0, end: 4}]}",
        "redis:7.4",
        "  updateStrategy: {maxUnavailable: '60%', memberUpdateStrategy: BestEffortParallel}\n",
    );
    check(
        &pct,
        &observed(inst),
        "update-in-place 4; update-in-place 3; update-in-place 2",
    );
}

#[test]
fn the_partition_holds_lower_ordinals_back() {
    let old = set(ONE_TO_THREE, "redis:7.2", "");
    let new = set(
        ONE_TO_THREE,
        "redis:7.4",
        "  updateStrategy: {partition: 2}\n",
    );
    let r1 = rev(&new);
    let mut inst = healthy(&rev(&old));
    check(&new, &observed(inst.clone()), "update-in-place 2");
    inst[2].revision = r1.revision.clone();
    let p = check(&new, &observed(inst), "");
    assert_eq!(p.status.updated_replicas, 1);
}

#[test]
fn a_failed_switchover_blocks_the_primary_update() {
    let old = set(ONE_TO_THREE, "redis:7.2", "");
    let new = set(ONE_TO_THREE, "redis:7.4", "");
    let r1 = rev(&new);
    let mut inst = healthy(&rev(&old));
    inst[1].revision = r1.revision.clone();
    inst[2].revision = r1.revision.clone();
    let mut o = observed(inst);
    o.last_switchover = Some(SwitchoverOutcome {
        role: "primary".into(),
        from: 0,
        to: 2,
        succeeded: false,
        message: "replica 2 lags by 40MB".into(),
        revision: r1.revision.clone(),
    });
    let p = check(&new, &o, "");
    let why = p.blocked.clone().unwrap();
    assert!(
        why.contains("switchover of primary from 0 to 2 failed (replica 2 lags by 40MB)"),
        "{why}"
    );
    assert_eq!(condition(&p, "Degraded").status, "True");
    assert_eq!(condition(&p, "Degraded").reason, "Blocked");
    // A newer template allows another attempt.
    let newer = set(ONE_TO_THREE, "redis:7.4.1", "");
    check(&newer, &o, "update-in-place 2");
}

#[test]
fn no_up_to_date_replica_means_the_primary_waits() {
    let old = set("{discrete: [0]}", "redis:7.2", "");
    let new = set("{discrete: [0]}", "redis:7.4", "");
    let p = check(&new, &observed(vec![up(0, &rev(&old), "primary")]), "");
    assert!(
        p.blocked
            .unwrap()
            .contains("no ready, up-to-date instance can take over primary from 0")
    );
}

#[test]
fn scale_in_deletes_replicas_and_switches_a_leaving_primary_over_first() {
    let s = set("{ranges: [{start: 1, end: 2}]}", "redis:7.2", "");
    let r = rev(&s);
    let mut inst = healthy(&r);
    inst.push(up(3, &r, "secondary"));
    check(
        &s,
        &observed(inst.clone()),
        "switchover primary 0->1; delete 3",
    );
    let s = set("{ranges: [{start: 0, end: 1}]}", "redis:7.2", "");
    let p = check(&s, &observed(inst), "delete 2; delete 3");
    // Until they are gone, the status says they still exist outside the slice (the
    // federation waits for that before placing them elsewhere); its counts are the
    // slice's.
    assert_eq!(p.status.leaving, [2, 3]);
    assert_eq!(p.status.replicas, 2);
    assert_eq!(
        p.status
            .instances
            .iter()
            .map(|i| i.ordinal)
            .collect::<Vec<_>>(),
        [0, 1]
    );
    let p = check(&s, &observed(healthy(&r)[..2].to_vec()), "");
    assert!(p.status.leaving.is_empty());
}

#[test]
fn volumes_of_removed_ordinals_follow_the_retention_policy() {
    let keep = set("{discrete: [0]}", "redis:7.2", "");
    let r = rev(&keep);
    let mut o = observed(vec![up(0, &r, "primary")]);
    o.volumes.push(Volume {
        claim: "data".into(),
        ordinal: 1,
        deleting: false,
        node_local: false,
    });
    check(&keep, &o, "");
    let delete = set(
        "{discrete: [0]}",
        "redis:7.2",
        "  persistentVolumeClaimRetentionPolicy: {whenScaled: Delete}\n",
    );
    check(&delete, &o, "delete-volume data-1");
}

#[test]
fn stale_role_results_never_overwrite_newer_labels() {
    let s = set(ONE_TO_THREE, "redis:7.2", "");
    let mut inst = healthy(&rev(&s));
    inst[1].role_version = 5;
    inst[1].probe = Some(ProbeResult {
        role: Some("primary".into()),
        version: 4,
    });
    check(&s, &observed(inst.clone()), "");
    inst[2].probe = Some(ProbeResult {
        role: None,
        version: 6,
    });
    check(&s, &observed(inst), "clear-role 2");
}

#[test]
fn one_exclusive_holder_the_newest_claim_wins() {
    let s = set(ONE_TO_THREE, "redis:7.2", "");
    let mut inst = healthy(&rev(&s));
    // After a failover 2 reports primary (version 7) while 0's label is older.
    inst[2].probe = Some(ProbeResult {
        role: Some("primary".into()),
        version: 7,
    });
    let p = check(&s, &observed(inst), "clear-role 0; set-role 2=primary");
    let primaries: Vec<u32> = p
        .status
        .instances
        .iter()
        .filter(|i| i.role.as_deref() == Some("primary"))
        .map(|i| i.ordinal)
        .collect();
    assert_eq!(primaries, [2]);
}

#[test]
fn failed_instances_are_recreated_and_reported() {
    let s = set(ONE_TO_THREE, "redis:7.2", "");
    let mut inst = healthy(&rev(&s));
    inst[1].phase = Phase::Failed;
    inst[1].ready = false;
    let p = check(&s, &observed(inst), "recreate-failed 1");
    assert_eq!(condition(&p, "Degraded").reason, "InstancesFailed");
}

#[test]
fn an_unavailable_instance_uses_up_the_budget() {
    let old = set(ONE_TO_THREE, "redis:7.2", "");
    let new = set(ONE_TO_THREE, "redis:7.4", "");
    let mut inst = healthy(&rev(&old));
    inst[0].ready = false;
    check(&new, &observed(inst), "");
}

#[test]
fn best_effort_parallel_finishes_a_priority_level_before_the_next() {
    let old = set("{ranges: [{start: 0, end: 3}]}", "redis:7.2", "");
    let new = set(
        "{ranges: [{start: 0, end: 3}]}",
        "redis:7.4",
        "  updateStrategy: {maxUnavailable: 3, memberUpdateStrategy: BestEffortParallel}\n",
    );
    let r = rev(&old);
    let inst = vec![
        up(0, &r, "secondary"),
        up(1, &r, "primary"),
        up(2, &r, "secondary"),
        up(3, &r, "secondary"),
    ];
    // Three secondaries at once, but not the primary although the budget would allow it.
    check(
        &new,
        &observed(inst),
        "update-in-place 3; update-in-place 2; update-in-place 0",
    );
}

/// Instances 0 (primary) and 1 on a lost node, volumes node-local.
fn stranded(r: &Revision, lost: &[u32]) -> Observed {
    let mut o = observed(healthy(r));
    for i in o.instances.iter_mut().filter(|i| lost.contains(&i.ordinal)) {
        i.node_lost = true;
        i.phase = Phase::Failed;
        i.ready = false;
    }
    for v in &mut o.volumes {
        v.node_local = true;
    }
    o
}

#[test]
fn a_stranded_instance_waits_by_default_and_says_why() {
    let s = set(ONE_TO_THREE, "redis:7.2", "");
    let p = check(&s, &stranded(&rev(&s), &[1]), "");
    let why = p.blocked.unwrap();
    assert!(
        why.contains("instance 1 is stranded on lost node node-1"),
        "{why}"
    );
    assert!(
        why.contains("instanceRebuild.whenNodeLost: Rebuild"),
        "{why}"
    );
}

#[test]
fn rebuild_deletes_local_volumes_and_the_instance_primary_after_a_switchover() {
    let s = set(
        ONE_TO_THREE,
        "redis:7.2",
        "  instanceRebuild: {whenNodeLost: Rebuild}\n",
    );
    check(
        &s,
        &stranded(&rev(&s), &[1]),
        "delete-volume data-1; rebuild 1",
    );
    // The primary hands its role over first (a replica is ready and up to date).
    check(&s, &stranded(&rev(&s), &[0]), "switchover primary 0->1");
    // Without node-local volumes a lost instance is just a failed one.
    let mut o = stranded(&rev(&s), &[1]);
    for v in &mut o.volumes {
        v.node_local = false;
    }
    check(&s, &o, "recreate-failed 1");
}

#[test]
fn a_rebuilt_instance_waits_until_its_old_volume_is_gone_then_gets_a_new_one() {
    let s = set(
        ONE_TO_THREE,
        "redis:7.2",
        "  instanceRebuild: {whenNodeLost: Rebuild}\n",
    );
    // The rebuild deleted instance 1 and its volume; the claim is still terminating.
    let mut o = stranded(&rev(&s), &[]);
    o.instances.retain(|i| i.ordinal != 1);
    for v in o.volumes.iter_mut().filter(|v| v.ordinal == 1) {
        v.deleting = true;
    }
    let p = check(&s, &o, "");
    let why = p.blocked.unwrap();
    assert!(
        why.contains("instance 1 waits for its volume data-1"),
        "{why}"
    );
    // Gone: a new volume and the instance.
    o.volumes.retain(|v| v.ordinal != 1);
    check(&s, &o, "create-volume data-1; create 1");
}

#[test]
fn a_slice_of_more_ordinals_than_a_set_may_have_is_refused_before_planning() {
    let text = "apiVersion: flotilla.io/v1alpha1\nkind: InstanceSet\nmetadata: {name: r}\n\
                spec:\n  ordinals: {ranges: [{start: 0, end: 2147483647}], discrete: [7]}\n  \
                template: {spec: {containers: [{name: c, image: i}]}}\n";
    let AnyObject::InstanceSet(s) = decode_all(text).unwrap().remove(0).object else {
        panic!()
    };
    let err = validate::instance_set(*s).unwrap_err().to_string();
    assert!(
        err.contains("spec.ordinals: 2147483649 ordinals, more than the limit of 1000000"),
        "{err}"
    );
    // At the limit is fine.
    set("{ranges: [{start: 10, end: 1000009}]}", "redis:7.2", "");
}
