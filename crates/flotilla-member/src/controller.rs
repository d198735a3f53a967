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
//! One refused action does not stop the others: every action is tried (but those that
//! depend on a failed one, transitively: see [`crate::commit`]), the status is written
//! with a `Degraded` condition of reason `ApplyFailed` that names each failure and the
//! actions skipped for it, and the pass returns the error so that its caller retries.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_api::status::Condition;
use flotilla_api::{InstanceSet, InstanceSetStatus, Valid};
use flotilla_instanceset::{
    Action, Observed, Phase, ProbeResult, Revision, SwitchoverOutcome, prepare,
};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::backend::{Applied, Backend};
use crate::commit::{self, CommitOptions, CommitStats, Limits, Outcome};
use crate::engine::{self, EngineState};
use crate::metrics::MemberMetrics;
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
    /// The newest probe result of each instance that exists (an instance gone takes
    /// its result with it, so this holds at most one per instance).
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
    /// Per-set state by `<namespace>/<name>`, locked only between requests, so sets
    /// reconcile in parallel.
    sets: Mutex<BTreeMap<String, SetState>>,
    /// The commit phase's bound and rate, shared by every set.
    limits: Limits,
    metrics: Arc<MemberMetrics>,
    /// One counter for every probe result, so results order across instances.
    probe_version: AtomicU64,
}

impl<B: Backend> Controller<B> {
    /// A controller over `backend`, committing with [`CommitOptions::default`].
    pub fn new(backend: Arc<B>) -> Controller<B> {
        Controller::with_commit(backend, CommitOptions::default())
    }

    /// A controller over `backend` whose commit phase sends writes as `commit` says.
    pub fn with_commit(backend: Arc<B>, commit: CommitOptions) -> Controller<B> {
        let metrics = Arc::new(MemberMetrics::default());
        Controller {
            backend,
            sets: Mutex::new(BTreeMap::new()),
            limits: Limits::new(commit, Arc::clone(&metrics)),
            metrics,
            probe_version: AtomicU64::new(0),
        }
    }

    /// The same controller, counting into `metrics` (shared with the registry that
    /// serves them).
    pub fn with_metrics(self, metrics: Arc<MemberMetrics>) -> Controller<B> {
        Controller {
            limits: Limits::new(self.limits.options(), Arc::clone(&metrics)),
            metrics,
            ..self
        }
    }

    /// Applies one action outside a plan (a removed set's teardown), within the commit
    /// phase's bound and rate.
    pub async fn apply(&self, set: &InstanceSet, action: &Action) -> Result<Applied> {
        self.limits.send(self.backend.apply(set, action)).await
    }

    /// What this controller counts.
    pub fn metrics(&self) -> &Arc<MemberMetrics> {
        &self.metrics
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
        let pass = async {
            let observed = self.backend.observe(set).await?;
            if probe {
                self.probe_observed(set, &observed).await;
            }
            self.reconcile_observed(set, observed).await
        };
        self.counted(pass.await)
    }

    /// Counts a pass's result.
    fn counted(&self, pass: Result<Pass>) -> Result<Pass> {
        self.metrics.pass(match &pass {
            Ok(p) if p.converged => "converged",
            Ok(_) => "converging",
            Err(_) => "failed",
        });
        pass
    }

    /// Probes the running instances of `observed` and keeps the newer results.
    async fn probe_observed(&self, set: &InstanceSet, observed: &Observed) {
        let mut running: Vec<u32> = observed
            .instances
            .iter()
            .filter(|i| i.phase == Phase::Running && !i.deleting)
            .map(|i| i.ordinal)
            .collect();
        running.reverse();
        // Reads, not limited by the write rate; as many at once as writes may be.
        let bound = self.limits.options().max_concurrent;
        let mut asking = FuturesUnordered::new();
        let mut results = Vec::new();
        loop {
            while asking.len() < bound
                && let Some(ordinal) = running.pop()
            {
                // The version is taken before asking, so an answer that arrives late
                // never outranks one asked for later.
                let version = self.probe_version.fetch_add(1, Ordering::SeqCst) + 1;
                asking.push(async move {
                    let started = std::time::Instant::now();
                    let role = self.backend.probe_role(set, ordinal).await;
                    self.metrics
                        .probe_seconds
                        .observe(started.elapsed().as_secs_f64());
                    (ordinal, version, role)
                });
            }
            let Some((ordinal, version, role)) = asking.next().await else {
                break;
            };
            if let Ok(role) = role {
                results.push((ordinal, ProbeResult { role, version }));
            }
        }
        let mut sets = self.lock();
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
        let pass = async {
            let observed = self.backend.observe(set).await?;
            self.reconcile_observed(set, observed).await
        };
        self.counted(pass.await)
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
            let mut sets = self.lock();
            let state = state_of(&mut sets, set);
            // An instance that no longer exists has no role; a new one of its ordinal is
            // probed afresh.
            if !state.probes.is_empty() {
                let existing: BTreeSet<u32> =
                    observed.instances.iter().map(|i| i.ordinal).collect();
                state.probes.retain(|o, _| existing.contains(o));
            }
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
        // the plan, nor keep the status from saying why: every action is tried (but
        // those that depend on a failed one: the pod after its volume, a rebuild after
        // its volume's deletion), the failures are collected and reported in the
        // status, and the pass fails after.
        let mut failures: Vec<(String, Error)> = Vec::new();
        let backend = &*self.backend;
        let redis_seen = redis.as_ref();
        let limits = &self.limits;
        let bound = limits.options().max_concurrent;
        let outcomes = commit::commit(bound, &plan.actions, |action| async move {
            match (action, redis_seen) {
                // Redis commands, for as long as Redis takes: no write permit held.
                (Action::Switchover { from, to, .. }, Some(seen)) => {
                    engine::switchover(backend, set, seen, *from, *to).await
                }
                _ => limits
                    .send(backend.apply(set, action))
                    .await
                    .map(|a| (a, None)),
            }
        })
        .await;
        let mut skipped = Vec::new();
        for (action, outcome) in plan.actions.iter().zip(outcomes) {
            let applied = match outcome {
                Outcome::Skipped => {
                    self.metrics.action(action, "skipped");
                    skipped.push(action.to_string());
                    continue;
                }
                Outcome::Done(result) => result,
            };
            self.metrics.action(
                action,
                match &applied {
                    Ok((Applied::Wrote, _)) => "wrote",
                    Ok((Applied::Unchanged, _)) => "unchanged",
                    Err(_) => "failed",
                },
            );
            let ok = applied.is_ok();
            match applied {
                Ok((applied, done)) => {
                    if done.is_some() {
                        engine_state.switchover = done;
                    }
                    if applied == Applied::Wrote {
                        writes += 1;
                    }
                }
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
                Err(e) => failures.push((action.to_string(), e)),
            }
            // A switchover that could not start yet (the successor not caught up) is
            // neither: the next pass plans it again.
            if let Action::Switchover { role, from, to } = action
                && switchover.is_none()
                && ok
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
            report_failures(&mut plan.status, &failures, &skipped);
        }
        let unchanged = {
            let mut sets = self.lock();
            let state = state_of(&mut sets, set);
            if redis.is_some() {
                state.engine = engine_state;
            }
            // Until the next probe sees the new roles, planning the same switchover
            // again is harmless: a switchover names its end state (`to` holds the role).
            if let Some(outcome) = switchover {
                state.last_switchover = Some(outcome);
            }
            state.last_status.as_ref() == Some(&plan.status)
        };
        if !unchanged {
            // Once, after every action, and with no lock held.
            match self
                .limits
                .send(self.backend.write_status(set, &plan.status))
                .await
            {
                Ok(applied) => {
                    if applied == Applied::Wrote {
                        writes += 1;
                    }
                    state_of(&mut self.lock(), set).last_status = Some(plan.status.clone());
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
    pub fn forget(&self, set: &InstanceSet) {
        self.lock().remove(&key(set));
    }

    /// Forgets every set whose `<namespace>/<name>` `live` says is gone (a sweep
    /// against a reflector's cache, where deletions are not seen one by one).
    pub fn forget_unless(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|key, _| live(key));
    }

    /// How many sets the controller keeps state for.
    pub fn sets_kept(&self) -> usize {
        self.lock().len()
    }

    /// How the commit phase sends its writes.
    pub fn commit_options(&self) -> CommitOptions {
        self.limits.options()
    }

    /// What the commit phase has sent so far.
    pub fn commit_stats(&self) -> CommitStats {
        self.limits.stats()
    }

    /// The per-set state, locked for a moment: never held across a request.
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SetState>> {
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// Says in `status` which actions failed and why: `Degraded=True`, reason
/// `ApplyFailed`, replacing the planner's Degraded condition (whose message, when it
/// was degraded too, is kept after the failures).
fn report_failures(
    status: &mut InstanceSetStatus,
    failures: &[(String, Error)],
    skipped: &[String],
) {
    let mut message = failures
        .iter()
        .map(|(action, e)| format!("{action}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    message.insert_str(0, "applying the plan failed: ");
    if !skipped.is_empty() {
        message.push_str(&format!(
            " (skipped, as they depend on it: {})",
            skipped.join(", ")
        ));
    }
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
        /// Status writes wait here for each other, when set.
        barrier: Option<tokio::sync::Barrier>,
        applied: StdMutex<Vec<String>>,
        statuses: StdMutex<Vec<InstanceSetStatus>>,
        /// What `observe` finds (nothing unless set).
        observed: StdMutex<Observed>,
    }

    impl Backend for Fake {
        async fn observe(&self, _: &InstanceSet) -> Result<Observed> {
            Ok(self.observed.lock().unwrap().clone())
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
            if let Some(barrier) = &self.barrier {
                barrier.wait().await;
            }
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
        let mut applied = backend.applied.lock().unwrap().clone();
        // Concurrently: every volume first (nothing to wait for), then the pods.
        assert_eq!(
            applied[..3],
            [
                "create-volume data-0",
                "create-volume data-1",
                "create-volume data-2"
            ]
        );
        applied.sort();
        assert_eq!(
            applied,
            [
                "create 0",
                // create 1 needs its volume: skipped.
                "create 2",
                "create-volume data-0",
                "create-volume data-1",
                "create-volume data-2",
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
                && degraded[0].message.contains("admission webhook")
                && degraded[0]
                    .message
                    .contains("skipped, as they depend on it: create 1"),
            "{}",
            degraded[0].message
        );

        let count = |kind: &str, outcome: &str| {
            controller
                .metrics()
                .actions
                .get_or_create(&vec![("kind", kind.into()), ("outcome", outcome.into())])
                .get()
        };
        assert_eq!(count("create-volume", "failed"), 1);
        assert_eq!(count("create-volume", "wrote"), 2);
        assert_eq!(count("create", "skipped"), 1);
        assert_eq!(count("create", "wrote"), 2);
        let failed = vec![("result", "failed".to_string())];
        assert_eq!(controller.metrics().passes.get_or_create(&failed).get(), 1);
        assert_eq!(
            controller.metrics().writes.get(),
            6,
            "five actions and the status"
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

    #[tokio::test]
    async fn probe_results_go_with_their_instances() {
        let backend = Arc::new(Fake::default());
        let running = |ordinals: &[u32]| Observed {
            instances: ordinals
                .iter()
                .map(|&ordinal| flotilla_instanceset::Instance {
                    ordinal,
                    phase: Phase::Running,
                    ..flotilla_instanceset::Instance::default()
                })
                .collect(),
            ..Observed::default()
        };
        let probed = |controller: &Controller<Fake>| -> Vec<u32> {
            controller.lock()["default/redis"]
                .probes
                .keys()
                .copied()
                .collect()
        };
        *backend.observed.lock().unwrap() = running(&[0, 1, 2, 7]);
        let controller = Controller::new(Arc::clone(&backend));
        let set = set("u1");
        let _ = controller.pass(&set, true).await;
        assert_eq!(probed(&controller), [0, 1, 2, 7]);
        // 1 and 7 are gone (scaled down, moved to another member): so are their results.
        *backend.observed.lock().unwrap() = running(&[0, 2]);
        let _ = controller.pass(&set, true).await;
        assert_eq!(probed(&controller), [0, 2]);
        let _ = controller.pass(&set, false).await;
        assert_eq!(probed(&controller), [0, 2]);
        controller.forget(&set);
        assert_eq!(controller.sets_kept(), 0);
    }

    #[tokio::test]
    async fn two_sets_reconcile_at_once_with_no_lock_held_across_a_request() {
        // Each status write waits for the other set's: a lock held across a request
        // would keep the second pass from ever reaching its own.
        let backend = Arc::new(Fake {
            barrier: Some(tokio::sync::Barrier::new(2)),
            ..Fake::default()
        });
        let controller = Controller::new(Arc::clone(&backend));
        let a = set("u1");
        let mut other = (*set("u2")).clone();
        other.metadata.name = Some("other".into());
        let b = validate::instance_set(other).unwrap();
        let both = async { tokio::join!(controller.reconcile(&a), controller.reconcile(&b)) };
        let (ra, rb) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
            .await
            .expect("both passes finish together");
        ra.unwrap();
        rb.unwrap();
        assert_eq!(backend.statuses.lock().unwrap().len(), 2);
        assert_eq!(controller.sets_kept(), 2);
        controller.forget_unless(|key| key == "default/redis");
        assert_eq!(controller.sets_kept(), 1, "the other set's state is gone");
    }
}
