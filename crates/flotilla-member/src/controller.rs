//! The InstanceSet controller: observe → prepare (pure) → commit (idempotent writes).
//!
//! ```text
//!   probe_roles ──▶ probe results (versioned by one counter) ─┐
//!   backend.observe ──▶ Observed ─────────────────────────────┴▶ prepare ──▶ Plan
//!   Plan.actions ──▶ backend.apply (each idempotent) ──▶ writes counted
//!   Plan.status  ──▶ backend.write_status, only when it changed
//! ```
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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_api::{InstanceSet, InstanceSetStatus, Valid};
use flotilla_instanceset::{
    Action, Observed, Phase, ProbeResult, Revision, SwitchoverOutcome, prepare,
};
use tokio::sync::Mutex;

use crate::backend::{Applied, Backend};
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
    probes: BTreeMap<u32, ProbeResult>,
    last_switchover: Option<SwitchoverOutcome>,
    last_status: Option<InstanceSetStatus>,
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
        let state = sets.entry(key(set)).or_default();
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
        let desired = Revision::of(&set.spec.template);
        {
            let sets = self.sets.lock().await;
            if let Some(state) = sets.get(&key(set)) {
                for inst in &mut observed.instances {
                    if let Some(p) = state.probes.get(&inst.ordinal)
                        && inst.probe.as_ref().is_none_or(|q| p.version > q.version)
                    {
                        inst.probe = Some(p.clone());
                    }
                }
                observed.last_switchover = state.last_switchover.clone();
            }
        }
        let plan = prepare(set, &observed);
        let mut writes = 0;
        let mut switchover = None;
        for action in &plan.actions {
            match self.backend.apply(set, action).await {
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
                Err(e) => return Err(e),
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
        let mut sets = self.sets.lock().await;
        let state = sets.entry(key(set)).or_default();
        // Until the next probe sees the new roles, planning the same switchover again
        // is harmless: a switchover names its end state (`to` holds the role).
        if let Some(outcome) = switchover {
            state.last_switchover = Some(outcome);
        }
        if state.last_status.as_ref() != Some(&plan.status) {
            if self.backend.write_status(set, &plan.status).await? == Applied::Wrote {
                writes += 1;
            }
            state.last_status = Some(plan.status.clone());
        }
        let n = set.spec.ordinals.to_vec().len() as u32;
        let converged = plan.actions.is_empty()
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
