//! Prepare: the desired slice and the observed instances in, the plan out.
//!
//! ```text
//!  roles      probe results ──▶ SetRole (newest version wins; one holder per exclusive role)
//!  missing    ordinal without instance ──▶ CreateVolume*, Create
//!  leaving    instance outside the slice ──▶ Switchover first if it holds an exclusive
//!             role, then Delete; its volumes per the retention policy
//!  stranded   on a lost node with node-local volumes ──▶ DeleteVolume*, Recreate
//!             (instanceRebuild.whenNodeLost: Rebuild; else wait and say so)
//!  failed     ──▶ Recreate
//!  outdated   lowest updatePriority first, highest ordinal first, within maxUnavailable
//!             and the partition ──▶ Switchover (exclusive holder) │ UpdateInPlace │ Recreate
//! ```
//!
//! Every action names an end state (this instance exists, has this role, runs this
//! revision), so applying one twice is harmless; a converged set plans no action.
//! A failed switchover blocks the rollout of that revision: the old primary is never
//! updated or removed after one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use flotilla_api::set::{MemberUpdateStrategy, NodeLost, Retention};
use flotilla_api::status::{Condition, InstanceSetStatus, InstanceStatus};
use flotilla_api::{InstanceSet, Role, Valid};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::observed::{Instance, Observed, Phase};
use crate::revision::Revision;

/// One idempotent step towards the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the volume `<claim>-<set>-<ordinal>`.
    CreateVolume { ordinal: u32, claim: String },
    /// Create the instance `<set>-<ordinal>` from the current template.
    Create { ordinal: u32 },
    /// Set (or, with `None`, remove) the role label, from probe result `version`.
    SetRole {
        ordinal: u32,
        role: Option<String>,
        version: u64,
    },
    /// Move an exclusive role from one instance to another.
    Switchover { role: String, from: u32, to: u32 },
    /// Patch images, labels and annotations to the current template.
    UpdateInPlace { ordinal: u32 },
    /// Delete the instance so that it is created again from the current template.
    Recreate { ordinal: u32, why: Why },
    /// Delete the instance for good (its ordinal left the slice).
    Delete { ordinal: u32 },
    /// Delete the volume `<claim>-<set>-<ordinal>` (retention policy `Delete`).
    DeleteVolume { ordinal: u32, claim: String },
}

/// Why an instance is recreated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// It failed.
    Failed,
    /// Its template changed in a way that cannot be applied in place.
    Outdated,
    /// Its node is gone and its node-local volumes were deleted: rebuild it elsewhere.
    NodeLost,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateVolume { ordinal, claim } => write!(f, "create-volume {claim}-{ordinal}"),
            Action::Create { ordinal } => write!(f, "create {ordinal}"),
            Action::SetRole {
                ordinal,
                role: Some(r),
                ..
            } => write!(f, "set-role {ordinal}={r}"),
            Action::SetRole {
                ordinal,
                role: None,
                ..
            } => write!(f, "clear-role {ordinal}"),
            Action::Switchover { role, from, to } => write!(f, "switchover {role} {from}->{to}"),
            Action::UpdateInPlace { ordinal } => write!(f, "update-in-place {ordinal}"),
            Action::Recreate {
                ordinal,
                why: Why::Failed,
            } => write!(f, "recreate-failed {ordinal}"),
            Action::Recreate {
                ordinal,
                why: Why::Outdated,
            } => write!(f, "recreate {ordinal}"),
            Action::Recreate {
                ordinal,
                why: Why::NodeLost,
            } => write!(f, "rebuild {ordinal}"),
            Action::Delete { ordinal } => write!(f, "delete {ordinal}"),
            Action::DeleteVolume { ordinal, claim } => write!(f, "delete-volume {claim}-{ordinal}"),
        }
    }
}

/// The plan for one set: what to do, and the status to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// In order; independent of each other within one plan.
    pub actions: Vec<Action>,
    /// The set's status as observed now.
    pub status: InstanceSetStatus,
    /// Why the rollout or scale-in cannot go on, when it cannot.
    pub blocked: Option<String>,
}

/// `<set>-<ordinal>`.
pub fn instance_name(set: &str, ordinal: u32) -> String {
    format!("{set}-{ordinal}")
}

/// `<claim>-<set>-<ordinal>`.
pub fn volume_name(claim: &str, set: &str, ordinal: u32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

/// Plans the next steps for `set` given what is `observed`.
pub fn prepare(set: &Valid<InstanceSet>, observed: &Observed) -> Plan {
    let spec = &set.spec;
    let desired = Revision::of(spec);
    let slice: BTreeSet<u32> = spec.ordinals.to_vec().into_iter().collect();
    let instances: BTreeMap<u32, &Instance> =
        observed.instances.iter().map(|i| (i.ordinal, i)).collect();
    let roles: BTreeMap<&str, &Role> = spec.roles.iter().map(|r| (r.name.as_str(), r)).collect();
    let claims: Vec<&str> = spec
        .volume_claim_templates
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let mut actions = Vec::new();
    let mut blocked = None;

    // Roles: the label follows the newest probe result; one holder per exclusive role.
    let role_of = effective_roles(&instances, &roles);
    for (&ordinal, inst) in &instances {
        if inst.deleting {
            continue;
        }
        let (want, version) = &role_of[&ordinal];
        if *want != inst.role && *version > inst.role_version {
            actions.push(Action::SetRole {
                ordinal,
                role: want.clone(),
                version: *version,
            });
        }
    }
    let holds_exclusive = |o: u32| -> Option<String> {
        role_of
            .get(&o)
            .and_then(|(r, _)| r.as_deref())
            .filter(|r| roles.get(r).is_some_and(|r| r.exclusive))
            .map(str::to_string)
    };
    let is_current = |i: &Instance| i.revision == desired.revision;
    // A ready, up-to-date instance of the slice to hand an exclusive role to.
    let successor = |from: u32| -> Option<u32> {
        slice
            .iter()
            .filter(|&&o| o != from)
            .filter_map(|o| instances.get(o))
            .filter(|i| i.ready && !i.deleting && i.phase == Phase::Running && is_current(i))
            .filter(|i| holds_exclusive(i.ordinal).is_none())
            .map(|i| i.ordinal)
            .next()
    };
    let failed_switchover = |from: u32| {
        observed
            .last_switchover
            .as_ref()
            .filter(|s| s.from == from && !s.succeeded && s.revision == desired.revision)
    };
    let mut switchover_planned = false;
    // Plans a switchover away from `from`, or says why it cannot happen yet.
    let mut hand_over = |from: u32,
                         role: &str,
                         doing: &str,
                         actions: &mut Vec<Action>|
     -> Option<String> {
        if let Some(s) = failed_switchover(from) {
            return Some(format!(
                "switchover of {role} from {from} to {} failed ({}); {doing} {from} is blocked until it is resolved or the template changes",
                s.to, s.message
            ));
        }
        if switchover_planned {
            return Some(format!("waiting for a switchover before {doing} {from}"));
        }
        match successor(from) {
            Some(to) => {
                actions.push(Action::Switchover {
                    role: role.to_string(),
                    from,
                    to,
                });
                switchover_planned = true;
                Some(format!(
                    "switching {role} over from {from} to {to} before {doing} it"
                ))
            }
            None => Some(format!(
                "no ready, up-to-date instance can take over {role} from {from}; {doing} it waits"
            )),
        }
    };

    // Missing instances. One whose volume is still going away (a rebuild deleted it)
    // waits: created now, it would mount a claim that vanishes and is never made again.
    for &ordinal in &slice {
        if instances.contains_key(&ordinal) {
            continue;
        }
        let going = observed
            .volumes
            .iter()
            .find(|v| v.ordinal == ordinal && v.deleting && claims.contains(&v.claim.as_str()));
        if let Some(v) = going {
            blocked.get_or_insert_with(|| {
                format!(
                    "instance {ordinal} waits for its volume {}-{ordinal} to finish deleting",
                    v.claim
                )
            });
            continue;
        }
        for claim in &claims {
            let exists = observed
                .volumes
                .iter()
                .any(|v| v.ordinal == ordinal && v.claim == *claim);
            if !exists {
                actions.push(Action::CreateVolume {
                    ordinal,
                    claim: claim.to_string(),
                });
            }
        }
        actions.push(Action::Create { ordinal });
    }

    // Instances whose ordinal left the slice, and their volumes.
    for (&ordinal, inst) in &instances {
        if slice.contains(&ordinal) || inst.deleting {
            continue;
        }
        match holds_exclusive(ordinal) {
            Some(role) => {
                let why = hand_over(ordinal, &role, "removing", &mut actions);
                blocked = blocked.or(why);
            }
            None => actions.push(Action::Delete { ordinal }),
        }
    }
    if spec.persistent_volume_claim_retention_policy.when_scaled == Retention::Delete {
        for v in &observed.volumes {
            if !slice.contains(&v.ordinal) && !v.deleting && !instances.contains_key(&v.ordinal) {
                actions.push(Action::DeleteVolume {
                    ordinal: v.ordinal,
                    claim: v.claim.clone(),
                });
            }
        }
    }

    // Instances stranded on a lost node with node-local volumes cannot start anywhere
    // else until those volumes go: rebuild them if the set allows it, else wait.
    let local_volumes = |o: u32| -> Vec<&str> {
        observed
            .volumes
            .iter()
            .filter(|v| v.ordinal == o && v.node_local && !v.deleting)
            .map(|v| v.claim.as_str())
            .collect()
    };
    let mut stranded = BTreeSet::new();
    for &ordinal in &slice {
        let Some(inst) = instances
            .get(&ordinal)
            .filter(|i| i.node_lost && !i.deleting)
        else {
            continue;
        };
        let claims = local_volumes(ordinal);
        if claims.is_empty() {
            continue;
        }
        stranded.insert(ordinal);
        let node = inst.node.as_deref().unwrap_or("?");
        if spec.instance_rebuild.when_node_lost == NodeLost::Wait {
            blocked = blocked.or(Some(format!(
                "instance {ordinal} is stranded on lost node {node} with node-local volumes; it waits for the node (set instanceRebuild.whenNodeLost: Rebuild to rebuild it elsewhere from its peers)"
            )));
            continue;
        }
        if let Some(role) = holds_exclusive(ordinal) {
            blocked = blocked.or(hand_over(ordinal, &role, "rebuilding", &mut actions));
            continue;
        }
        for claim in claims {
            actions.push(Action::DeleteVolume {
                ordinal,
                claim: claim.to_string(),
            });
        }
        actions.push(Action::Recreate {
            ordinal,
            why: Why::NodeLost,
        });
    }

    // Failed instances come back first: they are unavailable already.
    for &ordinal in &slice {
        if let Some(inst) = instances.get(&ordinal)
            && inst.phase == Phase::Failed
            && !inst.deleting
            && !stranded.contains(&ordinal)
        {
            actions.push(Action::Recreate {
                ordinal,
                why: Why::Failed,
            });
        }
    }

    // Rolling update.
    let unavailable = slice
        .iter()
        .filter(|o| {
            instances
                .get(o)
                .is_none_or(|i| !i.ready || i.deleting || i.phase != Phase::Running)
        })
        .count();
    let mut budget = max_unavailable(&spec.update_strategy.max_unavailable, slice.len())
        .saturating_sub(unavailable);
    let priority = |o: u32| -> i64 {
        role_of
            .get(&o)
            .and_then(|(r, _)| r.as_deref())
            .and_then(|r| roles.get(r))
            .map_or(i64::MIN, |r| i64::from(r.update_priority))
    };
    let mut outdated: Vec<&Instance> = slice
        .iter()
        .filter(|&&o| o >= spec.update_strategy.partition)
        .filter_map(|o| instances.get(o).copied())
        .filter(|i| !is_current(i) && !i.deleting && i.phase != Phase::Failed)
        .collect();
    outdated.sort_by(|a, b| {
        priority(a.ordinal)
            .cmp(&priority(b.ordinal))
            .then(b.ordinal.cmp(&a.ordinal))
    });
    match spec.update_strategy.member_update_strategy {
        MemberUpdateStrategy::Serial => budget = budget.min(1),
        MemberUpdateStrategy::BestEffortParallel => {
            // Only the lowest priority level still behind; the next waits for it.
            if let Some(first) = outdated.first().map(|i| priority(i.ordinal)) {
                outdated.retain(|i| priority(i.ordinal) == first);
            }
        }
        MemberUpdateStrategy::Parallel => {}
    }
    for inst in outdated {
        if budget == 0 {
            break;
        }
        if let Some(role) = holds_exclusive(inst.ordinal) {
            blocked = blocked.or(hand_over(inst.ordinal, &role, "updating", &mut actions));
            break;
        }
        actions.push(if inst.shape == desired.shape {
            Action::UpdateInPlace {
                ordinal: inst.ordinal,
            }
        } else {
            Action::Recreate {
                ordinal: inst.ordinal,
                why: Why::Outdated,
            }
        });
        budget -= 1;
    }

    let status = status(
        set,
        &desired,
        &slice,
        &instances,
        &role_of,
        &actions,
        blocked.as_deref(),
    );
    Plan {
        actions,
        status,
        blocked,
    }
}

/// Each instance's role as it should be labelled, with the probe version it comes from:
/// the newest probe result, except that an exclusive role goes to its newest claimant
/// only (ties: lowest ordinal). A probe naming an undeclared role counts as no role.
/// Probe versions come from one counter per agent, so they order results across
/// instances.
fn effective_roles(
    instances: &BTreeMap<u32, &Instance>,
    roles: &BTreeMap<&str, &Role>,
) -> BTreeMap<u32, (Option<String>, u64)> {
    let mut out: BTreeMap<u32, (Option<String>, u64)> = instances
        .iter()
        .map(|(&o, i)| {
            let fresh = i.probe.as_ref().filter(|p| p.version > i.role_version);
            let (role, version) = match fresh {
                Some(p) => (
                    p.role.clone().filter(|r| roles.contains_key(r.as_str())),
                    p.version,
                ),
                None => (i.role.clone(), i.role_version),
            };
            (o, (role, version))
        })
        .collect();
    for role in roles.values().filter(|r| r.exclusive) {
        let winner = out
            .iter()
            .filter(|(o, (r, _))| r.as_deref() == Some(&role.name) && !instances[o].deleting)
            .max_by(|a, b| a.1.1.cmp(&b.1.1).then(b.0.cmp(a.0)))
            .map(|(&o, &(_, v))| (o, v));
        let Some((winner, newest)) = winner else {
            continue;
        };
        // The winner's result is the newest evidence about this role, so it also
        // outranks every other claimant's label.
        for (o, (r, v)) in out.iter_mut() {
            if r.as_deref() == Some(&role.name) && *o != winner {
                *r = None;
                *v = (*v).max(newest);
            }
        }
    }
    out
}

/// `maxUnavailable` as a count for a slice of `n` instances: a percentage rounds down
/// but never below one.
fn max_unavailable(v: &IntOrString, n: usize) -> usize {
    match v {
        IntOrString::Int(i) => usize::try_from(*i).unwrap_or(1).max(1),
        IntOrString::String(s) => {
            let pct: usize = s.trim_end_matches('%').parse().unwrap_or(100);
            (n * pct / 100).max(1)
        }
    }
}

fn status(
    set: &InstanceSet,
    desired: &Revision,
    slice: &BTreeSet<u32>,
    instances: &BTreeMap<u32, &Instance>,
    role_of: &BTreeMap<u32, (Option<String>, u64)>,
    actions: &[Action],
    blocked: Option<&str>,
) -> InstanceSetStatus {
    let present: Vec<&Instance> = slice
        .iter()
        .filter_map(|o| instances.get(o).copied())
        .collect();
    let ready = present.iter().filter(|i| i.ready && !i.deleting).count() as u32;
    let updated = present
        .iter()
        .filter(|i| i.revision == desired.revision)
        .count() as u32;
    let failed: Vec<u32> = present
        .iter()
        .filter(|i| i.phase == Phase::Failed)
        .map(|i| i.ordinal)
        .collect();
    let n = slice.len() as u32;
    let condition = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: None,
    };
    let mut conditions = vec![if ready == n {
        condition(
            "Available",
            true,
            "AllReady",
            format!("all {n} instances are ready"),
        )
    } else {
        condition(
            "Available",
            false,
            "NotAllReady",
            format!("{ready} of {n} instances are ready"),
        )
    }];
    conditions.push(if actions.is_empty() && updated == n {
        condition(
            "Progressing",
            false,
            "Converged",
            format!("all {n} instances run revision {}", desired.revision),
        )
    } else {
        condition(
            "Progressing",
            true,
            "Reconciling",
            format!(
                "{updated} of {n} instances run revision {}; {} actions planned",
                desired.revision,
                actions.len()
            ),
        )
    });
    conditions.push(match (blocked, failed.is_empty()) {
        (Some(why), _) => condition("Degraded", true, "Blocked", why.to_string()),
        (None, false) => condition(
            "Degraded",
            true,
            "InstancesFailed",
            format!(
                "instances {} failed and are being recreated",
                flotilla_api::ordinals::display_list(&failed)
            ),
        ),
        (None, true) => condition("Degraded", false, "Healthy", String::new()),
    });
    InstanceSetStatus {
        observed_generation: set.metadata.generation,
        replicas: present.len() as u32,
        ready_replicas: ready,
        updated_replicas: updated,
        update_revision: Some(desired.revision.clone()),
        instances: present
            .iter()
            .map(|i| InstanceStatus {
                ordinal: i.ordinal,
                cluster: None,
                phase: Some(i.phase.as_str().to_string()),
                role: role_of.get(&i.ordinal).and_then(|(r, _)| r.clone()),
                ready: i.ready,
                node: i.node.clone(),
                revision: Some(i.revision.clone()),
                endpoint: i.endpoint.clone(),
                redis: None,
            })
            .collect(),
        // Reported so that the federation moves an ordinal only once it is gone here.
        leaving: instances
            .keys()
            .filter(|o| !slice.contains(o))
            .copied()
            .collect(),
        conditions,
    }
}
