//! A member whose backend schedules its instances itself, driven in real time:
//! [`LocalMember`] runs a [`Controller`] over any [`LocalBackend`] (the simulated
//! member, [`crate::SimMember`]; local processes, [`crate::ProcessMember`]) with one
//! background task per member.
//!
//! ```text
//!   put / delete / replace ──▶ held (watch, updated at once) + a wake-up
//!                                   │
//!   ticker task: advance the backend's clock (a simulated one; real ones have none)
//!     by the wall-clock time elapsed, then every set due at once: one pass each
//!     (probing roles while it converges, or on its probe period), publish its status
//!     (watch) when it changed
//!     removed: delete every instance (and volumes when whenDeleted: Delete), forget it
//!       (a teardown that fails is tried again the next round, unless held again)
//!     after the first Snapshot: tear down what the backend still runs of sets no
//!     longer held (an earlier agent's, on a backend that outlives agents)
//!   sleep until the next set is due (at least one tick), or a wake-up
//! ```
//!
//! Idle members cost nothing but a timer: a converged set is reconciled again only on
//! its role-probe period or the resync period, and a set that has not converged is
//! retried every tick while its passes write, backing off to `max_retry` while they
//! do not (an instance that waits for a node, or for its start delay). So a hundred
//! agents in one process are cheap when nothing changes.
//!
//! The task holds only a weak reference to the member and ends when it is dropped.
//! Dropping a member stops nothing in its backend: what runs there keeps running.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use flotilla_api::set::Retention;
use flotilla_api::status::{Condition, InstanceSetStatus};
use flotilla_api::{CapacityModel, InstanceSet, Object, Valid, validate};
use flotilla_instanceset::Action;
use flotilla_member::{Backend, CommitOptions, Controller, MemberMetrics};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::member::{Held, Member, Statuses, set_key};
use crate::{Error, Result};

/// What a [`LocalMember`] needs of its backend beyond [`Backend`].
pub trait LocalBackend: Backend {
    /// Moves the backend's own clock by `by`, the wall-clock time since the last call
    /// (the simulated member's logical time); nothing for a backend in real time.
    fn advance(&self, by: Duration) {
        let _ = by;
    }

    /// The last status written for `set`.
    fn status(&self, set: &InstanceSet) -> Option<InstanceSetStatus>;

    /// For every set (by `namespace/name`) with an instance about to change on its own
    /// (start, or turn ready), how long until it does: the set's next pass is then,
    /// so that readiness is counted when it happens rather than at the next retry.
    fn next_changes(&self) -> BTreeMap<String, Duration> {
        BTreeMap::new()
    }

    /// The sets the backend has instances of, as `(namespace, name)`, including those
    /// an earlier agent left (a backend whose instances outlive the agent). None for a
    /// backend that starts empty with every agent.
    fn known_sets(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Drops what the backend keeps about `set` (its last status) once its teardown
    /// is done; nothing for a backend that keeps nothing.
    fn forget(&self, set: &InstanceSet) {
        let _ = set;
    }
}

/// How a [`LocalMember`] paces itself.
#[derive(Clone, Debug)]
pub struct LocalMemberOptions {
    /// The shortest sleep of the ticker: how often a converging set is reconciled.
    pub tick: Duration,
    /// The longest retry delay of a set that has not converged and whose passes write
    /// nothing.
    pub max_retry: Duration,
    /// Reconcile a converged set at least this often (catches injected faults).
    pub resync: Duration,
    /// The role-probe period of a set with roles but no `roleProbe`.
    pub default_probe_period: Duration,
    /// How the commit phase sends its writes: in flight at once, QPS and burst.
    pub commit: CommitOptions,
    /// Where the controller counts (shared with the agent's `/metrics`).
    pub metrics: Arc<MemberMetrics>,
}

impl Default for LocalMemberOptions {
    fn default() -> Self {
        LocalMemberOptions {
            tick: Duration::from_millis(50),
            max_retry: Duration::from_millis(500),
            resync: Duration::from_secs(10),
            default_probe_period: Duration::from_secs(10),
            commit: CommitOptions::default(),
            metrics: Arc::default(),
        }
    }
}

/// A member cluster over a [`LocalBackend`], in real time (see the module
/// documentation).
#[derive(Debug)]
pub struct LocalMember<B: LocalBackend> {
    inner: Arc<Inner<B>>,
}

#[derive(Debug)]
struct Inner<B: LocalBackend> {
    controller: Controller<B>,
    options: LocalMemberOptions,
    state: Mutex<State>,
    held: watch::Sender<Held>,
    statuses: watch::Sender<Statuses>,
    wake: Arc<Notify>,
}

/// What the ticker works on.
#[derive(Debug, Default)]
struct State {
    /// Held sets by key.
    sets: BTreeMap<String, Slot>,
    /// Sets to tear down, by key.
    removing: BTreeMap<String, InstanceSet>,
    /// Bumped on every put, so a pass never records its result over a newer slot.
    serial: u64,
    /// A Snapshot came and the backend's leftovers have not been looked for since.
    orphans_due: bool,
    /// Bumped by every `resync_now`, so a pass that ends after one does not push the
    /// set's next pass back.
    resyncs: u64,
}

/// One held set and when it is due.
#[derive(Debug)]
struct Slot {
    /// The set, valid; `None` when invalid (its status says why).
    valid: Option<Arc<Valid<InstanceSet>>>,
    /// Which put this is.
    serial: u64,
    /// Reconcile at (or after) this instant.
    due: Instant,
    /// Probe roles at (or after) this instant, when the set has roles.
    probe_due: Option<Instant>,
    /// Whether the last pass found it converged.
    converged: bool,
    /// Consecutive passes that wrote nothing without converging.
    stalls: u32,
}

impl<B: LocalBackend> LocalMember<B> {
    /// A member over `backend`. Must be called within a tokio runtime: it spawns the
    /// ticker.
    pub fn start(backend: Arc<B>, options: LocalMemberOptions) -> Arc<LocalMember<B>> {
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            controller: Controller::with_commit(backend, options.commit)
                .with_metrics(Arc::clone(&options.metrics)),
            options,
            state: Mutex::new(State::default()),
            held: watch::Sender::new(Held::new()),
            statuses: watch::Sender::new(Statuses::new()),
            wake: wake.clone(),
        });
        tokio::spawn(ticker(Arc::downgrade(&inner), wake));
        Arc::new(LocalMember { inner })
    }

    /// The slices held, by `namespace/name`, as received; updated as soon as a Snapshot
    /// or Change is applied (before any reconcile).
    pub fn held(&self) -> watch::Receiver<Held> {
        self.inner.held.subscribe()
    }

    /// The backend, for inspection and fault injection (call
    /// [`LocalMember::resync_now`] after injecting a fault to have it noticed at once).
    pub fn backend(&self) -> &Arc<B> {
        self.inner.controller.backend()
    }

    /// How many sets the controller keeps state for: the held ones, and removed ones
    /// until their teardown is done.
    pub fn sets_kept(&self) -> usize {
        self.inner.controller.sets_kept()
    }

    /// Makes every held set due for a reconcile (and a role probe) now.
    pub fn resync_now(&self) {
        let now = Instant::now();
        {
            let mut state = self.inner.lock();
            state.resyncs += 1;
            for slot in state.sets.values_mut() {
                slot.due = now;
                slot.converged = false;
            }
        }
        self.inner.wake.notify_one();
    }

    fn hold(&self, state: &mut State, set: InstanceSet) {
        let key = set_key(&set);
        state.removing.remove(&key);
        let same = self
            .inner
            .held
            .borrow()
            .get(&key)
            .is_some_and(|held| *held == set);
        if same && state.sets.contains_key(&key) {
            return;
        }
        state.serial += 1;
        let serial = state.serial;
        let valid = match validate::instance_set(set.clone()) {
            Ok(valid) => Some(Arc::new(valid)),
            Err(invalid) => {
                tracing::warn!(set = %key, %invalid, "invalid slice; not reconciling it");
                let status = invalid_status(&set, &invalid.to_string());
                self.inner.statuses.send_if_modified(|s| {
                    s.insert(key.clone(), status.clone()) != Some(status.clone())
                });
                None
            }
        };
        state.sets.insert(
            key.clone(),
            Slot {
                valid,
                serial,
                due: Instant::now(),
                probe_due: None,
                converged: false,
                stalls: 0,
            },
        );
        self.inner.held.send_modify(|held| {
            held.insert(key, set);
        });
    }

    fn unhold(&self, state: &mut State, key: &str) {
        if state.sets.remove(key).is_none() {
            return;
        }
        if let Some(set) = self.inner.held.borrow().get(key) {
            state.removing.insert(key.to_string(), set.clone());
        }
        self.inner.held.send_modify(|held| {
            held.remove(key);
        });
        self.inner
            .statuses
            .send_if_modified(|s| s.remove(key).is_some());
    }
}

impl<B: LocalBackend> Drop for LocalMember<B> {
    fn drop(&mut self) {
        // Wakes the ticker, which then finds the member gone and ends.
        self.inner.wake.notify_one();
    }
}

impl<B: LocalBackend> Member for LocalMember<B> {
    fn replace(&self, slices: Vec<InstanceSet>, undecoded: &[String]) {
        let mut state = self.inner.lock();
        state.orphans_due = true;
        let keep: std::collections::BTreeSet<String> = slices
            .iter()
            .map(set_key)
            .chain(undecoded.iter().cloned())
            .collect();
        let gone: Vec<String> = state
            .sets
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.unhold(&mut state, &key);
        }
        for set in slices {
            self.hold(&mut state, set);
        }
        drop(state);
        self.inner.wake.notify_one();
    }

    fn put(&self, slice: InstanceSet) {
        let mut state = self.inner.lock();
        self.hold(&mut state, slice);
        drop(state);
        self.inner.wake.notify_one();
    }

    fn delete(&self, namespace: &str, name: &str) {
        let mut state = self.inner.lock();
        self.unhold(&mut state, &crate::slice_key(namespace, name));
        drop(state);
        self.inner.wake.notify_one();
    }

    fn statuses(&self) -> watch::Receiver<Statuses> {
        self.inner.statuses.subscribe()
    }

    async fn capacity(&self) -> Result<CapacityModel> {
        self.backend().capacity().await.map_err(Error::Member)
    }

    async fn kubernetes_version(&self) -> Result<String> {
        Ok(String::new())
    }
}

impl<B: LocalBackend> Inner<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One round: tear down removed sets, reconcile the due ones. Returns when the next
    /// set is due, if any is held, or when a failed teardown is tried again.
    async fn round(&self, now: Instant) -> Option<Instant> {
        let removing = {
            let mut state = self.lock();
            let mut removing = std::mem::take(&mut state.removing);
            if std::mem::take(&mut state.orphans_due) {
                for (ns, name) in self.backend().known_sets() {
                    let key = crate::slice_key(&ns, &name);
                    if !state.sets.contains_key(&key) && !removing.contains_key(&key) {
                        tracing::info!(set = %key, "not held: tearing down what an earlier agent left");
                        removing.insert(key, orphan(&ns, &name));
                    }
                }
            }
            removing
        };
        let mut retry = false;
        for (key, set) in removing {
            if let Err(e) = self.tear_down(&set).await {
                tracing::warn!(set = %key, error = %e, "tearing down a removed slice failed; retrying");
                // Unless it is held again meanwhile (its passes take over), or removed
                // again (queued already, with the newer slice).
                let mut state = self.lock();
                if !state.sets.contains_key(&key) && !state.removing.contains_key(&key) {
                    state.removing.insert(key, set);
                    retry = true;
                }
            }
        }
        let due: Vec<(String, Arc<Valid<InstanceSet>>, u64, bool)> = {
            let state = self.lock();
            state
                .sets
                .iter()
                .filter(|(_, s)| s.due <= now)
                .filter_map(|(k, s)| {
                    let probe = !s.valid.as_ref()?.spec.roles.is_empty()
                        && (!s.converged || s.probe_due.is_none_or(|p| p <= now));
                    Some((k.clone(), s.valid.clone()?, s.serial, probe))
                })
                .collect()
        };
        // Every due set at once (the controller holds no lock across a request, and its
        // commit phase bounds the writes in flight across all of them), each pass's
        // result taken as it ends: a slow set (a switchover) holds up no other's status.
        let resyncs = self.lock().resyncs;
        let mut passes: futures::stream::FuturesUnordered<_> = due
            .into_iter()
            .map(|(key, set, serial, probe)| async move {
                let pass = self.controller.pass(&set, probe).await;
                let status = self.backend().status(&set);
                (key, set, serial, probe, pass, status)
            })
            .collect();
        while let Some((key, set, serial, probe, pass, status)) =
            futures::StreamExt::next(&mut passes).await
        {
            let now = Instant::now().max(now);
            let mut state = self.lock();
            let resynced = state.resyncs != resyncs;
            let Some(slot) = state.sets.get_mut(&key).filter(|s| s.serial == serial) else {
                continue; // replaced or removed meanwhile: its own pass comes
            };
            let wrote = match pass {
                Ok(pass) => {
                    if !pass.actions.is_empty() || pass.blocked.is_some() {
                        tracing::debug!(
                            set = %key,
                            actions = pass.actions.len(),
                            writes = pass.writes,
                            blocked = pass.blocked.as_deref().unwrap_or(""),
                            "reconciled"
                        );
                    }
                    slot.converged = pass.converged;
                    pass.writes > 0
                }
                Err(e) => {
                    tracing::warn!(set = %key, error = %e, "reconcile failed");
                    slot.converged = false;
                    false
                }
            };
            if probe {
                slot.probe_due = Some(now + probe_period(&set, &self.options));
            }
            slot.stalls = if wrote || slot.converged {
                0
            } else {
                slot.stalls.saturating_add(1)
            };
            slot.due = now
                + if slot.converged {
                    self.options.resync
                } else {
                    self.options
                        .tick
                        .saturating_mul(1u32 << slot.stalls.min(16))
                        .min(self.options.max_retry)
                };
            if resynced {
                // A resync asked for while the pass ran: it is due again at once.
                slot.due = now;
                slot.converged = false;
            }
            // Published under the state lock, so a delete that comes meanwhile cannot
            // be followed by this (stale) status.
            if let Some(status) = status {
                self.statuses.send_if_modified(|s| {
                    if s.get(&key) == Some(&status) {
                        false
                    } else {
                        s.insert(key.clone(), status);
                        true
                    }
                });
            }
            drop(state);
        }
        // Readiness is seen when it happens: a set with an instance about to start or
        // turn ready is due then, whatever its retry backoff says.
        let changes = self.backend().next_changes();
        let mut state = self.lock();
        for (key, after) in changes {
            if let Some(slot) = state.sets.get_mut(&key) {
                slot.due = slot.due.min(now + after);
            }
        }
        state
            .sets
            .values()
            .filter(|s| s.valid.is_some())
            .map(|s| match (s.converged, s.probe_due) {
                (true, Some(p)) => s.due.min(p),
                _ => s.due,
            })
            .chain(retry.then(|| now + self.options.max_retry))
            .min()
    }

    /// Deletes every instance of a removed set at once (as Kubernetes' garbage
    /// collector does for a deleted InstanceSet: no switchover, no rollout order),
    /// its volumes too when `whenDeleted: Delete`, and forgets it.
    async fn tear_down(&self, set: &InstanceSet) -> Result<()> {
        let backend = self.backend();
        let observed = backend.observe(set).await.map_err(Error::Member)?;
        // All at once: a process member waits for each to stop.
        let deletes: Vec<Action> = observed
            .instances
            .iter()
            .map(|inst| Action::Delete {
                ordinal: inst.ordinal,
            })
            .collect();
        // Within the commit phase's bound and rate, as every write of the member.
        let controller = &self.controller;
        for done in
            futures::future::join_all(deletes.iter().map(|d| controller.apply(set, d))).await
        {
            done.map_err(Error::Member)?;
        }
        if set
            .spec
            .persistent_volume_claim_retention_policy
            .when_deleted
            == Retention::Delete
        {
            for v in &observed.volumes {
                let delete = Action::DeleteVolume {
                    ordinal: v.ordinal,
                    claim: v.claim.clone(),
                };
                controller
                    .apply(set, &delete)
                    .await
                    .map_err(Error::Member)?;
            }
        }
        self.controller.forget(set);
        self.backend().forget(set);
        tracing::debug!(set = %set_key(set), instances = observed.instances.len(), "removed slice torn down");
        Ok(())
    }

    fn backend(&self) -> &Arc<B> {
        self.controller.backend()
    }
}

/// The stand-in for a set the backend still runs but nobody holds: its name only, so
/// its instances go and its volumes stay (the default `whenDeleted: Retain`).
fn orphan(namespace: &str, name: &str) -> InstanceSet {
    let mut set: InstanceSet = Object::new(name, Default::default());
    set.metadata.namespace = Some(namespace.to_string());
    set
}

/// How often a set's roles are probed once it converged.
fn probe_period(set: &InstanceSet, options: &LocalMemberOptions) -> Duration {
    set.spec
        .role_probe
        .as_ref()
        .map_or(options.default_probe_period, |p| {
            Duration::from_secs(u64::from(p.period_seconds.max(1)))
        })
}

/// The status of a slice that fails validation.
fn invalid_status(set: &InstanceSet, why: &str) -> InstanceSetStatus {
    InstanceSetStatus {
        observed_generation: set.metadata.generation,
        conditions: vec![Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "Invalid".into(),
            message: why.to_string(),
            last_transition_time: None,
        }],
        ..InstanceSetStatus::default()
    }
}

/// The member's background task: advances the backend's clock by the wall-clock time
/// elapsed and runs a round, then sleeps until the next set is due (at least one tick)
/// or something is put or deleted.
async fn ticker<B: LocalBackend>(member: Weak<Inner<B>>, wake: Arc<Notify>) {
    let mut last = Instant::now();
    loop {
        let next = {
            let Some(inner) = member.upgrade() else {
                return;
            };
            let now = Instant::now();
            inner.backend().advance(now - last);
            last = now;
            let next = inner.round(now).await;
            let earliest = Instant::now() + inner.options.tick;
            next.map(|n| n.max(earliest))
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The member's bookkeeping of removed sets, over the simulated member in tokio's
    //! paused time, behind a backend that can refuse deletions.

    use std::sync::atomic::{AtomicBool, Ordering};

    use flotilla_instanceset::Observed;
    use flotilla_member::Applied;
    use flotilla_member::sim::{Sim, SimConfig};

    use super::*;

    /// The simulated member, refusing every deletion while `refuse` is set.
    #[derive(Debug)]
    struct Flaky {
        sim: Sim,
        refuse: AtomicBool,
    }

    impl Backend for Flaky {
        async fn observe(&self, set: &InstanceSet) -> flotilla_member::Result<Observed> {
            self.sim.observe(set).await
        }

        async fn apply(
            &self,
            set: &InstanceSet,
            action: &Action,
        ) -> flotilla_member::Result<Applied> {
            if matches!(action, Action::Delete { .. }) && self.refuse.load(Ordering::SeqCst) {
                return Err(flotilla_member::Error::Backend("deletion refused".into()));
            }
            self.sim.apply(set, action).await
        }

        async fn write_status(
            &self,
            set: &InstanceSet,
            status: &InstanceSetStatus,
        ) -> flotilla_member::Result<Applied> {
            self.sim.write_status(set, status).await
        }

        async fn probe_role(
            &self,
            set: &InstanceSet,
            ordinal: u32,
        ) -> flotilla_member::Result<Option<String>> {
            self.sim.probe_role(set, ordinal).await
        }

        async fn capacity(&self) -> flotilla_member::Result<CapacityModel> {
            self.sim.capacity().await
        }
    }

    impl LocalBackend for Flaky {
        fn advance(&self, by: Duration) {
            self.sim.advance(by);
        }

        fn status(&self, set: &InstanceSet) -> Option<InstanceSetStatus> {
            self.sim.status(set)
        }

        fn next_changes(&self) -> BTreeMap<String, Duration> {
            self.sim.next_changes()
        }

        fn forget(&self, set: &InstanceSet) {
            self.sim.forget(set);
        }
    }

    /// Waits (in virtual time) until `done` holds.
    async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
        for _ in 0..1000 {
            if done().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} did not happen");
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_set_is_torn_down_and_forgotten_and_a_failed_teardown_is_retried() {
        let config = SimConfig::from_text(
            "nodeGroups: [{count: 1, free: {cpu: '4', memory: 16Gi, pods: 110}}]\nstartDelayMs: 100\nreadyDelayMs: 100\n",
        )
        .unwrap();
        let backend = Arc::new(Flaky {
            sim: Sim::new(&config),
            refuse: AtomicBool::new(false),
        });
        let member = LocalMember::start(Arc::clone(&backend), LocalMemberOptions::default());
        let set: InstanceSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "InstanceSet",
            "metadata": {"name": "cache", "namespace": "default", "generation": 1, "uid": "u1"},
            "spec": {
                "ordinals": {"ranges": [{"start": 0, "end": 1}]},
                "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7",
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}},
            },
        }))
        .unwrap();
        let key = crate::slice_key("default", "cache");
        member.put(set.clone());
        let mut statuses = member.statuses();
        statuses
            .wait_for(|s| s.get(&key).is_some_and(|s| s.ready_replicas == 2))
            .await
            .unwrap();
        assert_eq!(member.sets_kept(), 1);

        // Removed while the backend refuses deletions: the instances stay, and so does
        // what the controller keeps for the set, until a teardown succeeds.
        backend.refuse.store(true, Ordering::SeqCst);
        member.delete("default", "cache");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(backend.sim.observe(&set).await.unwrap().instances.len(), 2);
        assert_eq!(member.sets_kept(), 1);

        backend.refuse.store(false, Ordering::SeqCst);
        until("the teardown", async || {
            backend
                .sim
                .observe(&set)
                .await
                .unwrap()
                .instances
                .is_empty()
        })
        .await;
        until("the set forgotten", async || member.sets_kept() == 0).await;
        assert!(!member.statuses().borrow().contains_key(&key));
        assert_eq!(backend.sim.status(&set), None);
        assert_eq!(backend.sim.sets_kept(), 0, "nothing of the set is left");
    }
}
