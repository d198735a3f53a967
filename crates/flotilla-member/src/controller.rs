//! The InstanceSet controller: observe → prepare (pure) → commit (idempotent writes).
//!
//! ```text
//!   probe_roles ──▶ probe results (versioned by one counter) ─┐
//!   backend.observe ──▶ Observed ─────────────────────────────┴▶ prepare ──▶ Plan
//!   Plan.actions ──▶ backend.apply (each idempotent) ──▶ writes counted, failures kept
//!   Plan.status  ──▶ backend.write_status, only when it changed (Degraded=ApplyFailed
//!                    naming the failed actions when some failed; the pass then fails)
//! ```
//!
//! One refused action does not stop the others: every action is tried (but those on
//! an ordinal whose earlier action failed, which depend on it), the status is written
//! with a `Degraded` condition of reason `ApplyFailed` that names each failure, and the
//! pass returns the error so that its caller retries.
//!
//! [`Controller::pass`] does both with one observation: observe, probe the running
//! instances it found (when asked), then plan from that same observation with the new
//! results merged in. `probe_roles` then `reconcile` observe twice (on Kubernetes, four
//! list requests instead of two); they remain for callers that probe and reconcile on
//! different schedules.
//!
//! The controller keeps, per set, the newest probe result of every instance and the
//! outcome of the last switchover; everything else is read back from the backend on
//! every pass, so a crash between two writes costs nothing but a repeated pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_api::status::Condition;
use flotilla_api::{InstanceSet, InstanceSetStatus, Valid};
use flotilla_instanceset::{
    Action, Observed, Phase, ProbeResult, Revision, SwitchoverOutcome, prepare,
};
use tokio::sync::Mutex;

use crate::backend::{Applied, Backend};
use crate::engine::{self, EngineState};
use crate::{Error, Result};

/// What one reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Actions planned.
    pub actions: Vec<Action>,
    /// Requests that changed something (0 for a converged set).
    pub writes: usize,
    /// Why the rollout cannot go on, if it cannot.
    pub blocked: Option<String>,
    /// Every instance exists, is ready and runs the current revision, and nothing is
    /// planned.
    pub converged: bool,
}

#[derive(Debug, Default)]
struct SetState {
    /// The `metadata.uid` of the object this state is about.
    uid: Option<String>,
    probes: BTreeMap<u32, ProbeResult>,
    last_switchover: Option<SwitchoverOutcome>,
    last_status: Option<InstanceSetStatus>,
    /// The Redis engine's memory (`spec.redis` sets).
    engine: EngineState,
}

/// Reconciles InstanceSets against one backend.
#[derive(Debug)]
pub struct Controller<B> {
    backend: Arc<B>,
    sets: Mutex<BTreeMap<String, SetState>>,
    /// One counter for every probe result, so results order across instances.
    probe_version: AtomicU64,
}

impl<B: Backend> Controller<B> {
    /// A controller over `backend`.
    pub fn new(backend: Arc<B>) -> Controller<B> {
        Controller {
            backend,
            sets: Mutex::new(BTreeMap::new()),
            probe_version: AtomicU64::new(0),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Probes the role of every running instance of `set`. A failed probe keeps the
    /// previous result (the instance may be restarting).
    pub async fn probe_roles(&self, set: &InstanceSet) -> Result<()> {
        let observed = self.backend.observe(set).await?;
        self.probe_observed(set, &observed).await;
        Ok(())
    }

    /// One pass over `set` from a single observation: observe, probe the role of every
    /// running instance when `probe` is set (as [`Controller::probe_roles`] does), then
    /// plan and commit as [`Controller::reconcile`] does, from that same observation with
    /// the new probe results merged in. The observation is as old as the probes took:
    /// harmless, since every action names its end state.
    pub async fn pass(&self, set: &Valid<InstanceSet>, probe: bool) -> Result<Pass> {
        let observed = self.backend.observe(set).await?;
        if probe {
            self.probe_observed(set, &observed).await;
        }
        self.reconcile_observed(set, observed).await
    }

    /// Probes the running instances of `observed` and keeps the newer results.
    async fn probe_observed(&self, set: &InstanceSet, observed: &Observed) {
        let mut results = Vec::new();
        for inst in observed
            .instances
            .iter()
            .filter(|i| i.phase == Phase::Running && !i.deleting)
        {
            // The version is taken before asking, so an answer that arrives late never
            // outranks one asked for later.
            let version = self.probe_version.fetch_add(1, Ordering::SeqCst) + 1;
            if let Ok(role) = self.backend.probe_role(set, inst.ordinal).await {
                results.push((inst.ordinal, ProbeResult { role, version }));
            }
        }
        let mut sets = self.sets.lock().await;
        let state = state_of(&mut sets, set);
        for (ordinal, result) in results {
            let slot = state.probes.entry(ordinal).or_default();
            if result.version > slot.version {
                *slot = result;
            }
        }
    }

    /// One reconcile pass over `set`.
    pub async fn reconcile(&self, set: &Valid<InstanceSet>) -> Result<Pass> {
        let observed = self.backend.observe(set).await?;
        self.reconcile_observed(set, observed).await
    }

    /// Plans from `observed` (with the kept probe results and switchover merged in) and
    /// commits the plan.
    async fn reconcile_observed(
        &self,
        set: &Valid<InstanceSet>,
        mut observed: Observed,
    ) -> Result<Pass> {
        let desired = Revision::of(&set.spec);
        // A Redis set: what every running instance says, asked before any lock.
        let redis = match set.spec.redis {
            Some(_) => Some(engine::observe(&*self.backend, set, &observed).await),
            None => None,
        };
        let mut engine_state;
        {
            let mut sets = self.sets.lock().await;
            let state = state_of(&mut sets, set);
            for inst in &mut observed.instances {
                if let Some(p) = state.probes.get(&inst.ordinal)
                    && inst.probe.as_ref().is_none_or(|q| p.version > q.version)
                {
                    inst.probe = Some(p.clone());
                }
            }
            observed.last_switchover = state.last_switchover.clone();
            state.engine.settle(set);
            engine_state = state.engine.clone();
        }
        let primary = flotilla_redis::engine::primary(set, engine_state.switchover.as_ref());
        if let Some(seen) = &redis {
            // Redis says who is what; the label names one primary only.
            let roles = engine::roles(set, primary.as_ref(), seen);
            for inst in &mut observed.instances {
                if let Some(role) = roles.get(&inst.ordinal) {
                    let version = self.probe_version.fetch_add(1, Ordering::SeqCst) + 1;
                    inst.probe = Some(ProbeResult {
                        role: role.clone(),
                        version,
                    });
                }
            }
        }
        let mut plan = prepare(set, &observed);
        let mut writes = 0;
        let mut switchover = None;
        // A refused write (a webhook, a quota, PodSecurity) must not stall the rest of
        // the plan, nor keep the status from saying why: every action is tried, the
        // failures are collected and reported in the status, and the pass fails after.
        let mut failures: Vec<(String, Error)> = Vec::new();
        let mut failed_ordinals = BTreeSet::new();
        for action in &plan.actions {
            // An action on an ordinal whose earlier action failed depends on it (the
            // pod after its volume, a rebuild after its volume's deletion): skipped.
            if let Some(ordinal) = subject(action)
                && failed_ordinals.contains(&ordinal)
            {
                continue;
            }
            let applied = match (action, &redis) {
                (Action::Switchover { from, to, .. }, Some(seen)) => {
                    engine::switchover(&*self.backend, set, seen, *from, *to)
                        .await
                        .map(|(applied, done)| {
                            if done.is_some() {
                                engine_state.switchover = done;
                            }
                            applied
                        })
                }
                _ => self.backend.apply(set, action).await,
            };
            match applied {
                Ok(Applied::Wrote) => writes += 1,
                Ok(Applied::Unchanged) => {}
                Err(Error::Switchover(message)) => {
                    if let Action::Switchover { role, from, to } = action {
                        switchover = Some(SwitchoverOutcome {
                            role: role.clone(),
                            from: *from,
                            to: *to,
                            succeeded: false,
                            message,
                            revision: desired.revision.clone(),
                        });
                    }
                }
                Err(e) => {
                    failed_ordinals.extend(subject(action));
                    failures.push((action.to_string(), e));
                }
            }
            if let Action::Switchover { role, from, to } = action
                && switchover.is_none()
            {
                switchover = Some(SwitchoverOutcome {
                    role: role.clone(),
                    from: *from,
                    to: *to,
                    succeeded: true,
                    message: String::new(),
                    revision: desired.revision.clone(),
                });
            }
        }
        let mut wired = 0;
        if let Some(seen) = &redis {
            let primary = flotilla_redis::engine::primary(set, engine_state.switchover.as_ref());
            wired = engine::wire(
                &*self.backend,
                set,
                primary.as_ref(),
                seen,
                &mut engine_state,
            )
            .await;
            writes += wired;
            engine::report(&mut plan.status, seen);
        }
        if set.spec.sentinel_for.is_some() {
            // Running sentinels of this pass's observation; one created in this pass
            // is registered in a later one, once it runs.
            let (sent, seen) = engine::sentinels(&*self.backend, set, &observed).await;
            wired += sent;
            writes += sent;
            engine::report_sentinels(&mut plan.status, &seen);
        }
        if !failures.is_empty() {
            report_failures(&mut plan.status, &failures);
        }
        let mut sets = self.sets.lock().await;
        let state = state_of(&mut sets, set);
        if redis.is_some() {
            state.engine = engine_state;
        }
        // Until the next probe sees the new roles, planning the same switchover again
        // is harmless: a switchover names its end state (`to` holds the role).
        if let Some(outcome) = switchover {
            state.last_switchover = Some(outcome);
        }
        if state.last_status.as_ref() != Some(&plan.status) {
            match self.backend.write_status(set, &plan.status).await {
                Ok(applied) => {
                    if applied == Applied::Wrote {
                        writes += 1;
                    }
                    state.last_status = Some(plan.status.clone());
                }
                // The failed actions are the cause worth returning; the status write
                // is retried with them on the next pass.
                Err(e) if !failures.is_empty() => {
                    failures.push(("writing the status".to_string(), e));
                }
                Err(e) => return Err(e),
            }
        }
        if !failures.is_empty() {
            return Err(failed(failures));
        }
        let n = set.spec.ordinals.to_vec().len() as u32;
        let converged = plan.actions.is_empty()
            && wired == 0
            && plan.status.ready_replicas == n
            && plan.status.updated_replicas == n;
        Ok(Pass {
            actions: plan.actions,
            writes,
            blocked: plan.blocked,
            converged,
        })
    }

    /// Forgets a deleted set.
    pub async fn forget(&self, set: &InstanceSet) {
        self.sets.lock().await.remove(&key(set));
    }
}

fn key(set: &InstanceSet) -> String {
    format!("{}/{}", set.namespace().unwrap_or("default"), set.name())
}

/// The state kept for `set`. A set deleted and created again under the same name is
/// another object (another `metadata.uid`), and the deletion may never have been seen
/// (no finalizer: the object just goes); what was kept for the old one is dropped, or
/// a cached status would hide the new object's first status write.
fn state_of<'a>(sets: &'a mut BTreeMap<String, SetState>, set: &InstanceSet) -> &'a mut SetState {
    let state = sets.entry(key(set)).or_default();
    if state.uid != set.metadata.uid {
        *state = SetState {
            uid: set.metadata.uid.clone(),
            ..SetState::default()
        };
    }
    state
}

/// The ordinal an action is about, for skipping what depends on a failed action;
/// `None` for a switchover, which the planner orders and blocks on by itself.
fn subject(action: &Action) -> Option<u32> {
    match action {
        Action::CreateVolume { ordinal, .. }
        | Action::Create { ordinal }
        | Action::SetRole { ordinal, .. }
        | Action::UpdateInPlace { ordinal }
        | Action::Recreate { ordinal, .. }
        | Action::Delete { ordinal }
        | Action::DeleteVolume { ordinal, .. } => Some(*ordinal),
        Action::Switchover { .. } => None,
    }
}

/// Says in `status` which actions failed and why: `Degraded=True`, reason
/// `ApplyFailed`, replacing the planner's Degraded condition (whose message, when it
/// was degraded too, is kept after the failures).
fn report_failures(status: &mut InstanceSetStatus, failures: &[(String, Error)]) {
    let mut message = failures
        .iter()
        .map(|(action, e)| format!("{action}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    message.insert_str(0, "applying the plan failed: ");
    let planned = status.conditions.iter().position(|c| c.type_ == "Degraded");
    if let Some(c) = planned.map(|i| status.conditions.remove(i))
        && c.status == "True"
        && !c.message.is_empty()
    {
        message.push_str(&format!(" (also {}: {})", c.reason, c.message));
    }
    status.conditions.push(Condition {
        type_: "Degraded".to_string(),
        status: "True".to_string(),
        reason: "ApplyFailed".to_string(),
        message,
        last_transition_time: None,
    });
}

/// The error a pass with failed actions returns: the failure itself when there was one,
/// else every failure, named by its action.
fn failed(mut failures: Vec<(String, Error)>) -> Error {
    if failures.len() == 1
        && let Some((_, e)) = failures.pop()
    {
        return e;
    }
    Error::Backend(
        failures
            .iter()
            .map(|(action, e)| format!("{action}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[cfg(test)]
mod tests {
    //! The commit phase against a small fake backend that refuses chosen actions.

    use std::sync::Mutex as StdMutex;

    use flotilla_api::CapacityModel;
    use flotilla_api::InstanceSetSpec;
    use flotilla_api::ordinals::{OrdinalRange, Ordinals};
    use flotilla_api::validate;
    use k8s_openapi::api::core::v1::{Container, PersistentVolumeClaim, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// Nothing exists; actions are recorded, and those named in `refuse` fail.
    #[derive(Default)]
    struct Fake {
        refuse: Vec<String>,
        applied: StdMutex<Vec<String>>,
        statuses: StdMutex<Vec<InstanceSetStatus>>,
    }

    impl Backend for Fake {
        async fn observe(&self, _: &InstanceSet) -> Result<Observed> {
            Ok(Observed::default())
        }

        async fn apply(&self, _: &InstanceSet, action: &Action) -> Result<Applied> {
            let name = action.to_string();
            self.applied.lock().unwrap().push(name.clone());
            if self.refuse.contains(&name) {
                return Err(Error::Backend(format!(
                    "{name} refused: admission webhook \"policy\" denied the request"
                )));
            }
            Ok(Applied::Wrote)
        }

        async fn write_status(
            &self,
            _: &InstanceSet,
            status: &InstanceSetStatus,
        ) -> Result<Applied> {
            self.statuses.lock().unwrap().push(status.clone());
            Ok(Applied::Wrote)
        }

        async fn probe_role(&self, _: &InstanceSet, _: u32) -> Result<Option<String>> {
            Ok(None)
        }

        async fn capacity(&self) -> Result<CapacityModel> {
            Ok(CapacityModel::default())
        }
    }

    fn set(uid: &str) -> Valid<InstanceSet> {
        let mut set = InstanceSet::new(
            "redis",
            InstanceSetSpec {
                ordinals: Ordinals {
                    ranges: vec![OrdinalRange { start: 0, end: 2 }],
                    discrete: vec![],
                },
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "redis".into(),
                            image: Some("redis:7".into()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                volume_claim_templates: vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..ObjectMeta::default()
                    },
                    ..PersistentVolumeClaim::default()
                }],
                ..InstanceSetSpec::default()
            },
        );
        set.metadata.uid = Some(uid.into());
        validate::instance_set(set).expect("a valid set")
    }

    #[tokio::test]
    async fn a_refused_action_fails_the_pass_after_the_others_and_the_status() {
        let backend = Arc::new(Fake {
            refuse: vec!["create-volume data-1".into()],
            ..Fake::default()
        });
        let controller = Controller::new(Arc::clone(&backend));
        let e = controller.reconcile(&set("u1")).await.unwrap_err();
        assert!(e.to_string().contains("denied the request"), "{e}");
        assert_eq!(
            *backend.applied.lock().unwrap(),
            [
                "create-volume data-0",
                "create 0",
                "create-volume data-1",
                // create 1 needs its volume: skipped.
                "create-volume data-2",
                "create 2",
            ],
            "every action but the one that depends on the failure"
        );
        let statuses = backend.statuses.lock().unwrap().clone();
        assert_eq!(
            statuses.len(),
            1,
            "the status is written despite the failure"
        );
        let degraded = statuses[0]
            .conditions
            .iter()
            .filter(|c| c.type_ == "Degraded")
            .collect::<Vec<_>>();
        assert_eq!(degraded.len(), 1, "one Degraded condition: {degraded:?}");
        assert_eq!(degraded[0].status, "True");
        assert_eq!(degraded[0].reason, "ApplyFailed");
        assert!(
            degraded[0].message.contains("create-volume data-1")
                && degraded[0].message.contains("admission webhook"),
            "{}",
            degraded[0].message
        );

        // The same failure again: the same status, so no second status write.
        controller.reconcile(&set("u1")).await.unwrap_err();
        assert_eq!(backend.statuses.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_set_created_again_under_its_name_starts_afresh() {
        let backend = Arc::new(Fake::default());
        let controller = Controller::new(Arc::clone(&backend));
        controller.reconcile(&set("u1")).await.unwrap();
        controller.reconcile(&set("u1")).await.unwrap();
        assert_eq!(
            backend.statuses.lock().unwrap().len(),
            1,
            "the same object, the same status: written once"
        );
        // Deleted (never seen deleting) and created again: another uid, its own status.
        controller.reconcile(&set("u2")).await.unwrap();
        assert_eq!(backend.statuses.lock().unwrap().len(), 2);
    }
}
