//! A Kubernetes member: every slice becomes an `InstanceSet` custom resource in the
//! member cluster, which the local controller (`flotilla_kube::standalone`, running in
//! the same process) reconciles into pods and volumes.
//!
//! ```text
//!   put / delete / replace ──▶ desired (in memory) + a wake-up
//!   sync task, on a wake-up (a put, or a pass of the local controller that wrote)
//!   or every `poll`:
//!     list InstanceSets labelled flotilla.io/federated=true (all namespaces)
//!     desired but missing or changed ──▶ server-side apply (field manager flotilla-agent)
//!     labelled but not desired (after the first Snapshot) ──▶ delete
//!       (pods go through their owner references; claims too when whenDeleted: Delete)
//!     each desired set's status, read back from its object ──▶ statuses (watch)
//!   local controller: flotilla_kube::standalone::run, for every InstanceSet
//! ```
//!
//! Level-triggered: a failed write is retried on the next pass, so a Snapshot or Change
//! is applied to the agent's desired state at once and reaches the API server when it
//! can. Until the first `replace` (the Snapshot of a fresh session) nothing is deleted:
//! the agent does not yet know what it should hold.
//!
//! A status's `observedGeneration` is translated: the local controller writes the
//! object's Kubernetes generation, the federation wants its own. The agent remembers
//! the Kubernetes generation each of its applies produced and reports the slice's
//! federation generation once the controller has observed it (none before).
//!
//! Every Kubernetes request goes through [`FederatedSets`] (`flotilla_kube::federated`):
//! this crate does not depend on kube. Those requests are tested exactly in
//! `flotilla-kube` against a mock API server (`tower_test`); this module's tests drive
//! [`KubeMember::sync`] over a fake cluster. Nothing here has run against a real
//! Kubernetes API server yet.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use flotilla_api::status::{Condition, InstanceSetStatus};
use flotilla_api::{CapacityModel, InstanceSet};
use flotilla_kube::federated::{self, Mirrored};
use flotilla_kube::{FederatedSets, standalone};
use serde_json::Value;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::member::{Held, Member, Statuses, set_key};
use crate::{Error, Result};

pub use flotilla_kube::federated::{FEDERATED_LABEL, FIELD_MANAGER, GENERATION_ANNOTATION};

/// How a [`KubeMember`] runs.
#[derive(Clone, Debug)]
pub struct KubeMemberOptions {
    /// Read statuses back (and retry failed writes) this often.
    pub poll: Duration,
    /// Apply every desired set again this often, even when unchanged (undoes edits
    /// made by hand to the objects).
    pub reapply: Duration,
    /// Recompute the capacity model at most this often (it lists every node and pod).
    pub capacity_refresh: Duration,
    /// The local controller's options.
    pub controller: standalone::Options,
}

impl Default for KubeMemberOptions {
    fn default() -> Self {
        KubeMemberOptions {
            poll: Duration::from_secs(2),
            reapply: Duration::from_secs(300),
            capacity_refresh: Duration::from_secs(30),
            controller: standalone::Options::default(),
        }
    }
}

/// A Kubernetes member cluster (see the module documentation).
#[derive(Debug)]
pub struct KubeMember {
    inner: Arc<Inner>,
    /// Stops the local controller; taken by [`KubeMember::shutdown`].
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The requests a [`KubeMember`] makes: [`FederatedSets`]'s, or a fake in tests.
trait Cluster: Send + Sync + 'static {
    fn list(&self) -> BoxFuture<'_, flotilla_kube::Result<Vec<Mirrored>>>;
    fn apply<'a>(&'a self, set: &'a InstanceSet) -> BoxFuture<'a, flotilla_kube::Result<Mirrored>>;
    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, flotilla_kube::Result<bool>>;
    fn capacity(&self) -> BoxFuture<'_, flotilla_member::Result<CapacityModel>>;
    fn kubernetes_version(&self) -> BoxFuture<'_, flotilla_kube::Result<String>>;
}

impl Cluster for FederatedSets {
    fn list(&self) -> BoxFuture<'_, flotilla_kube::Result<Vec<Mirrored>>> {
        Box::pin(FederatedSets::list(self))
    }
    fn apply<'a>(&'a self, set: &'a InstanceSet) -> BoxFuture<'a, flotilla_kube::Result<Mirrored>> {
        Box::pin(FederatedSets::apply(self, set))
    }
    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, flotilla_kube::Result<bool>> {
        Box::pin(FederatedSets::delete(self, namespace, name))
    }
    fn capacity(&self) -> BoxFuture<'_, flotilla_member::Result<CapacityModel>> {
        Box::pin(FederatedSets::capacity(self))
    }
    fn kubernetes_version(&self) -> BoxFuture<'_, flotilla_kube::Result<String>> {
        Box::pin(FederatedSets::kubernetes_version(self))
    }
}

struct Inner {
    cluster: Box<dyn Cluster>,
    options: KubeMemberOptions,
    desired: Mutex<Desired>,
    held: watch::Sender<Held>,
    statuses: watch::Sender<Statuses>,
    wake: Arc<Notify>,
    capacity: tokio::sync::Mutex<Option<(Instant, CapacityModel)>>,
    version: tokio::sync::Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Desired {
    /// Whether a Snapshot told the agent everything it holds (deletes allowed).
    complete: bool,
    /// What this process last applied, by key.
    applied: BTreeMap<String, AppliedSet>,
    /// When every set is next applied again regardless.
    reapply_at: Option<Instant>,
}

/// One apply this process made.
#[derive(Debug, Clone)]
struct AppliedSet {
    /// The body sent ([`federated::body`]).
    body: Value,
    /// The object's Kubernetes generation after it.
    generation: Option<i64>,
}

impl KubeMember {
    /// A member over `sets` (`FederatedSets::new(flotilla_kube::client(..))`) with no
    /// background work: [`KubeMember::sync`] must be called to write anything.
    pub fn new(sets: FederatedSets, options: KubeMemberOptions) -> KubeMember {
        KubeMember::over(Box::new(sets), options)
    }

    /// A member over any [`Cluster`] (tests use a fake), no background work.
    fn over(cluster: Box<dyn Cluster>, options: KubeMemberOptions) -> KubeMember {
        KubeMember {
            inner: Arc::new(Inner {
                cluster,
                options,
                desired: Mutex::new(Desired::default()),
                held: watch::Sender::new(Held::new()),
                statuses: watch::Sender::new(Statuses::new()),
                wake: Arc::new(Notify::new()),
                capacity: tokio::sync::Mutex::new(None),
                version: tokio::sync::Mutex::new(None),
            }),
            stop: Mutex::new(None),
        }
    }

    /// A member that runs: the sync task and the local controller for every
    /// InstanceSet in the cluster. Must be called within a tokio runtime.
    pub fn start(sets: FederatedSets, options: KubeMemberOptions) -> Arc<KubeMember> {
        let member = KubeMember::new(sets.clone(), options.clone());
        tokio::spawn(syncer(
            Arc::downgrade(&member.inner),
            member.inner.wake.clone(),
        ));
        let (tx, rx) = oneshot::channel::<()>();
        // A status the local controller wrote is read back at once, not at the poll.
        let controller_options = standalone::Options {
            wrote: Some(member.inner.wake.clone()),
            ..options.controller
        };
        let controller = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            if let Err(e) = sets.run_standalone(controller_options, stop).await {
                tracing::error!(error = %e.chain(), "the local InstanceSet controller stopped");
            }
        });
        *member
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((tx, controller));
        Arc::new(member)
    }

    /// Stops the local controller gracefully (reconciles in flight finish) and waits
    /// for it. The sync task ends when the member is dropped.
    pub async fn shutdown(&self) {
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((tx, controller)) = stop {
            let _ = tx.send(());
            let _ = controller.await;
        }
    }

    /// The slices held, by `namespace/name`, as received.
    pub fn held(&self) -> watch::Receiver<Held> {
        self.inner.held.subscribe()
    }

    /// One pass: writes what changed, deletes what is no longer held, reads statuses
    /// back. Errors of single writes are logged and retried on the next pass; `Err` is
    /// only the list failing.
    pub async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }
}

impl Drop for KubeMember {
    fn drop(&mut self) {
        self.inner.wake.notify_one();
    }
}

impl Member for KubeMember {
    fn replace(&self, slices: Vec<InstanceSet>, undecoded: &[String]) {
        let mut held: Held = slices.into_iter().map(|s| (set_key(&s), s)).collect();
        for key in undecoded {
            if let Some(old) = self.inner.held.borrow().get(key) {
                held.insert(key.clone(), old.clone());
            }
        }
        self.inner.lock().complete = true;
        self.inner.held.send_replace(held);
        self.inner.wake.notify_one();
    }

    fn put(&self, slice: InstanceSet) {
        self.inner.held.send_modify(|held| {
            held.insert(set_key(&slice), slice);
        });
        self.inner.wake.notify_one();
    }

    fn delete(&self, namespace: &str, name: &str) {
        let key = crate::slice_key(namespace, name);
        self.inner
            .held
            .send_if_modified(|held| held.remove(&key).is_some());
        self.inner
            .statuses
            .send_if_modified(|s| s.remove(&key).is_some());
        self.inner.wake.notify_one();
    }

    fn statuses(&self) -> watch::Receiver<Statuses> {
        self.inner.statuses.subscribe()
    }

    async fn capacity(&self) -> Result<CapacityModel> {
        let mut cached = self.inner.capacity.lock().await;
        if let Some((at, model)) = &*cached
            && at.elapsed() < self.inner.options.capacity_refresh
        {
            return Ok(model.clone());
        }
        let model = self.inner.cluster.capacity().await.map_err(Error::Member)?;
        *cached = Some((Instant::now(), model.clone()));
        Ok(model)
    }

    async fn kubernetes_version(&self) -> Result<String> {
        let mut cached = self.inner.version.lock().await;
        if let Some(v) = &*cached {
            return Ok(v.clone());
        }
        let version = self
            .inner
            .cluster
            .kubernetes_version()
            .await
            .map_err(Error::Kube)?;
        *cached = Some(version.clone());
        Ok(version)
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeMember")
            .field("options", &self.options)
            .field("held", &self.held.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Desired> {
        self.desired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn sync(&self) -> Result<()> {
        let listed = self.cluster.list().await.map_err(Error::Kube)?;
        let mut actual: BTreeMap<String, Mirrored> = BTreeMap::new();
        for object in listed {
            actual.insert(crate::slice_key(&object.namespace, &object.name), object);
        }
        let held = self.held.borrow().clone();
        let (complete, mut applied) = {
            let mut desired = self.lock();
            let now = Instant::now();
            if desired.reapply_at.is_none_or(|at| at <= now) {
                desired.applied.clear();
                desired.reapply_at = Some(now + self.options.reapply);
            }
            (desired.complete, desired.applied.clone())
        };
        let mut statuses = Statuses::new();
        for (key, set) in &held {
            let body = federated::body(set);
            let fresh = applied.get(key).is_some_and(|a| a.body == body);
            let object = match actual.get(key) {
                Some(object) if fresh => Some(object.clone()),
                _ => match self.cluster.apply(set).await {
                    Ok(object) => {
                        applied.insert(
                            key.clone(),
                            AppliedSet {
                                body,
                                generation: object.generation,
                            },
                        );
                        Some(object)
                    }
                    Err(e) => {
                        tracing::warn!(set = %key, error = %e.chain(), "writing a slice failed; retrying");
                        applied.remove(key);
                        statuses.insert(key.clone(), failed_status(&e.chain()));
                        None
                    }
                },
            };
            if let Some(status) =
                object.and_then(|o| status_of(o, set, applied.get(key).and_then(|a| a.generation)))
            {
                statuses.insert(key.clone(), status);
            }
        }
        for (key, object) in &actual {
            if held.contains_key(key) || !complete {
                continue;
            }
            match self.cluster.delete(&object.namespace, &object.name).await {
                Ok(true) => tracing::info!(set = %key, "deleted a slice no longer held"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(set = %key, error = %e.chain(), "deleting a slice failed; retrying")
                }
            }
            applied.remove(key);
        }
        applied.retain(|key, _| held.contains_key(key));
        self.lock().applied = applied;
        // Only slices still held: a delete may have come during this pass.
        let held_now = self.held.borrow().clone();
        statuses.retain(|key, _| held_now.contains_key(key));
        self.statuses.send_if_modified(|s| {
            if *s == statuses {
                false
            } else {
                *s = statuses;
                true
            }
        });
        Ok(())
    }
}

/// The slice's status as the local controller wrote it into `object`, with the
/// federation's generation once the controller observed this process's last apply.
fn status_of(
    object: Mirrored,
    slice: &InstanceSet,
    applied_generation: Option<i64>,
) -> Option<InstanceSetStatus> {
    let mut status = object.status?;
    let observed = status.observed_generation;
    status.observed_generation = match (observed, applied_generation) {
        (Some(o), Some(a)) if o >= a => slice.metadata.generation,
        _ => None,
    };
    Some(status)
}

/// The status of a slice that could not be written.
fn failed_status(why: &str) -> InstanceSetStatus {
    InstanceSetStatus {
        conditions: vec![Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "ApplyFailed".into(),
            message: format!("the agent could not write this slice into the member cluster: {why}"),
            last_transition_time: None,
        }],
        ..InstanceSetStatus::default()
    }
}

/// The shortest time between two syncs: wake-ups that come faster (the local
/// controller's passes during a rollout) are taken together, each sync listing every
/// federated InstanceSet once.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(200);

/// The sync task: a pass on every wake-up and every `poll`, until the member is dropped.
async fn syncer(member: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let poll = {
            let Some(inner) = member.upgrade() else {
                return;
            };
            if let Err(e) = inner.sync().await {
                tracing::warn!(error = %e.chain(), "syncing slices failed; retrying");
            }
            inner.options.poll
        };
        let earliest = tokio::time::sleep(MIN_SYNC_INTERVAL.min(poll));
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = wake.notified() => earliest.await,
        }
    }
}

#[cfg(test)]
mod tests {
    //! [`KubeMember::sync`] over a fake cluster that records the calls a pass makes and
    //! answers them as `FederatedSets` would. The exact Kubernetes requests behind
    //! those calls are tested in `flotilla-kube` (`tests/federated.rs`).

    use std::collections::VecDeque;

    use serde_json::json;

    use super::*;

    /// One call a pass made.
    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        List,
        Apply(Value),
        Delete(String, String),
    }

    /// What the fake answers, in order, and what it was asked.
    #[derive(Default)]
    struct Script {
        lists: VecDeque<Vec<Mirrored>>,
        applies: VecDeque<flotilla_kube::Result<Mirrored>>,
        calls: Vec<Call>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Script>>);

    impl Fake {
        fn script(&self) -> std::sync::MutexGuard<'_, Script> {
            self.0.lock().unwrap()
        }
    }

    impl Cluster for Fake {
        fn list(&self) -> BoxFuture<'_, flotilla_kube::Result<Vec<Mirrored>>> {
            let mut s = self.script();
            s.calls.push(Call::List);
            let items = s.lists.pop_front().expect("an expected list");
            Box::pin(async move { Ok(items) })
        }
        fn apply<'a>(
            &'a self,
            set: &'a InstanceSet,
        ) -> BoxFuture<'a, flotilla_kube::Result<Mirrored>> {
            let mut s = self.script();
            s.calls.push(Call::Apply(federated::body(set)));
            let answer = s.applies.pop_front().expect("an expected apply");
            Box::pin(async move { answer })
        }
        fn delete<'a>(
            &'a self,
            namespace: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, flotilla_kube::Result<bool>> {
            self.script()
                .calls
                .push(Call::Delete(namespace.into(), name.into()));
            Box::pin(async { Ok(true) })
        }
        fn capacity(&self) -> BoxFuture<'_, flotilla_member::Result<CapacityModel>> {
            Box::pin(async { Err(flotilla_member::Error::Backend("no capacity here".into())) })
        }
        fn kubernetes_version(&self) -> BoxFuture<'_, flotilla_kube::Result<String>> {
            Box::pin(async { Ok("v1.33.1".into()) })
        }
    }

    fn member() -> (KubeMember, Fake) {
        let fake = Fake::default();
        (
            KubeMember::over(Box::new(fake.clone()), KubeMemberOptions::default()),
            fake,
        )
    }

    fn slice(generation: i64) -> InstanceSet {
        serde_json::from_value(json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "InstanceSet",
            "metadata": {"name": "redis", "namespace": "cache", "generation": generation,
                         "uid": "federation-uid", "labels": {"app": "redis"}},
            "spec": {
                "ordinals": {"ranges": [{"start": 0, "end": 2}]},
                "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}},
            },
        }))
        .unwrap()
    }

    /// An InstanceSet as the API server holds it, at Kubernetes generation 4, with a
    /// status the local controller wrote.
    fn stored(observed_generation: i64) -> Mirrored {
        Mirrored {
            namespace: "cache".into(),
            name: "redis".into(),
            generation: Some(4),
            status: Some(InstanceSetStatus {
                observed_generation: Some(observed_generation),
                replicas: 3,
                ready_replicas: 2,
                ..InstanceSetStatus::default()
            }),
        }
    }

    #[tokio::test]
    async fn a_held_slice_is_applied_and_its_status_read_back() {
        let (member, fake) = member();
        member.replace(vec![slice(7)], &[]);
        {
            let mut s = fake.script();
            s.lists.push_back(vec![]);
            // The controller has not seen generation 4 yet.
            s.applies.push_back(Ok(stored(3)));
            // Second pass: unchanged, so a list only; the controller caught up.
            s.lists.push_back(vec![stored(4)]);
        }
        member.sync().await.unwrap();
        let status = member.statuses().borrow()["cache/redis"].clone();
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(status.observed_generation, None);
        member.sync().await.unwrap();
        let status = member.statuses().borrow()["cache/redis"].clone();
        assert_eq!(
            status.observed_generation,
            Some(7),
            "the federation's generation"
        );
        assert_eq!(
            fake.script().calls,
            vec![
                Call::List,
                Call::Apply(federated::body(&slice(7))),
                Call::List
            ]
        );
    }

    #[tokio::test]
    async fn a_changed_slice_is_applied_again() {
        let (member, fake) = member();
        member.replace(vec![slice(7)], &[]);
        {
            let mut s = fake.script();
            s.lists.push_back(vec![]);
            s.applies.push_back(Ok(stored(4)));
            s.lists.push_back(vec![stored(4)]);
            s.applies.push_back(Ok(stored(4)));
        }
        member.sync().await.unwrap();
        member.put(slice(8));
        member.sync().await.unwrap();
        assert_eq!(
            fake.script().calls,
            vec![
                Call::List,
                Call::Apply(federated::body(&slice(7))),
                Call::List,
                Call::Apply(federated::body(&slice(8))),
            ]
        );
    }

    #[tokio::test]
    async fn a_slice_no_longer_held_is_deleted_but_only_after_a_snapshot() {
        let (member, fake) = member();
        {
            let mut s = fake.script();
            // Before any snapshot: the object is left alone.
            s.lists.push_back(vec![stored(4)]);
            // After an empty snapshot: deleted.
            s.lists.push_back(vec![stored(4)]);
        }
        member.sync().await.unwrap();
        member.replace(vec![], &[]);
        member.sync().await.unwrap();
        assert_eq!(
            fake.script().calls,
            vec![
                Call::List,
                Call::List,
                Call::Delete("cache".into(), "redis".into())
            ]
        );
        assert!(member.statuses().borrow().is_empty());
    }

    #[tokio::test]
    async fn a_refused_write_is_reported_as_degraded() {
        let (member, fake) = member();
        member.put(slice(1));
        {
            let mut s = fake.script();
            s.lists.push_back(vec![]);
            s.applies.push_back(Err(flotilla_kube::Error::Unsupported(
                "namespaces \"cache\" not found".into(),
            )));
        }
        member.sync().await.unwrap();
        let status = member.statuses().borrow()["cache/redis"].clone();
        assert_eq!(status.conditions[0].reason, "ApplyFailed");
        assert!(
            status.conditions[0]
                .message
                .contains("namespaces \"cache\" not found"),
            "{}",
            status.conditions[0].message
        );
    }

    #[tokio::test]
    async fn the_version_is_read_once() {
        let (member, _fake) = member();
        assert_eq!(member.kubernetes_version().await.unwrap(), "v1.33.1");
        assert_eq!(member.kubernetes_version().await.unwrap(), "v1.33.1");
    }
}
