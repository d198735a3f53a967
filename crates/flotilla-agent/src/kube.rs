//! A Kubernetes member: every slice becomes an `InstanceSet` custom resource in the
//! member cluster, which the local controller (`flotilla_kube::standalone`, running in
//! the same process) reconciles into pods and volumes.
//!
//! ```text
//!   put / delete / replace ──▶ desired (in memory) + a wake-up
//!   sync task, on a wake-up or every `poll`:
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
//! Tested against a mock API server (`tower_test`) only, like `flotilla-kube`: nothing
//! here has run against a real Kubernetes API server yet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use flotilla_api::object::API_VERSION;
use flotilla_api::status::{Condition, InstanceSetStatus};
use flotilla_api::{CapacityModel, InstanceSet, InstanceSetSpec, Kind as _};
use flotilla_kube::{KubeBackend, resource, standalone};
use flotilla_member::Backend as _;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::member::{Held, Member, Statuses, set_key};
use crate::{Error, Result};

/// The label on every InstanceSet the agent writes: it came from the federation.
pub const FEDERATED_LABEL: &str = "flotilla.io/federated";
/// The annotation carrying the slice's generation in the federation.
pub const GENERATION_ANNOTATION: &str = "flotilla.io/federation-generation";
/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "flotilla-agent";

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

struct Inner {
    client: Client,
    backend: KubeBackend,
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
    /// The body sent.
    body: Value,
    /// The object's Kubernetes generation after it.
    generation: Option<i64>,
}

impl KubeMember {
    /// A member over `client` with no background work: [`KubeMember::sync`] must be
    /// called to write anything (tests drive it this way).
    pub fn new(client: Client, options: KubeMemberOptions) -> KubeMember {
        KubeMember {
            inner: Arc::new(Inner {
                backend: KubeBackend::new(client.clone()),
                client,
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
    pub fn start(client: Client, options: KubeMemberOptions) -> Arc<KubeMember> {
        let member = KubeMember::new(client.clone(), options.clone());
        tokio::spawn(syncer(
            Arc::downgrade(&member.inner),
            member.inner.wake.clone(),
        ));
        let (tx, rx) = oneshot::channel::<()>();
        let controller = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            if let Err(e) = standalone::run(client, options.controller, stop).await {
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
    fn replace(&self, slices: Vec<InstanceSet>) {
        let held: Held = slices.into_iter().map(|s| (set_key(&s), s)).collect();
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
        let model = self.inner.backend.capacity().await.map_err(Error::Member)?;
        *cached = Some((Instant::now(), model.clone()));
        Ok(model)
    }

    async fn kubernetes_version(&self) -> Result<String> {
        let mut cached = self.inner.version.lock().await;
        if let Some(v) = &*cached {
            return Ok(v.clone());
        }
        let info = self
            .inner
            .client
            .apiserver_version()
            .await
            .map_err(|source| Error::Kube {
                what: "reading the API server's version".into(),
                source,
            })?;
        *cached = Some(info.git_version.clone());
        Ok(info.git_version)
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
        let kind = resource::instance_sets();
        let all: Api<DynamicObject> = Api::all_with(self.client.clone(), &kind);
        let selector = format!("{FEDERATED_LABEL}=true");
        let listed = all
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| Error::Kube {
                what: "listing federated InstanceSets".into(),
                source,
            })?;
        let mut actual: BTreeMap<String, DynamicObject> = BTreeMap::new();
        for object in listed.items {
            let key = crate::slice_key(
                object.metadata.namespace.as_deref().unwrap_or("default"),
                object.metadata.name.as_deref().unwrap_or_default(),
            );
            actual.insert(key, object);
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
            let body = body(set);
            let fresh = applied.get(key).is_some_and(|a| a.body == body);
            let object = match actual.get(key) {
                Some(object) if fresh => Some(object.clone()),
                _ => match self.apply(set, &body).await {
                    Ok(object) => {
                        applied.insert(
                            key.clone(),
                            AppliedSet {
                                body,
                                generation: object.metadata.generation,
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
                object.and_then(|o| status_of(&o, set, applied.get(key).and_then(|a| a.generation)))
            {
                statuses.insert(key.clone(), status);
            }
        }
        for (key, object) in &actual {
            if held.contains_key(key) || !complete {
                continue;
            }
            let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
            let name = object.metadata.name.as_deref().unwrap_or_default();
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), namespace, &kind);
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => tracing::info!(set = %key, "deleted a slice no longer held"),
                Err(::kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(set = %key, error = %e, "deleting a slice failed; retrying")
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

    async fn apply(&self, set: &InstanceSet, body: &Value) -> Result<DynamicObject> {
        let namespace = set.namespace().unwrap_or("default");
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource::instance_sets());
        api.patch(
            set.name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| Error::Kube {
            what: format!("applying InstanceSet {}", set_key(set)),
            source,
        })
    }
}

/// The object the agent applies for a slice: its name, labels (plus
/// [`FEDERATED_LABEL`]), annotations (plus the federation generation) and spec; never
/// the federation's uid, resource version or status.
fn body(set: &InstanceSet) -> Value {
    let mut labels = set.metadata.labels.clone().unwrap_or_default();
    labels.insert(FEDERATED_LABEL.into(), "true".into());
    let mut annotations = set.metadata.annotations.clone().unwrap_or_default();
    if let Some(g) = set.metadata.generation {
        annotations.insert(GENERATION_ANNOTATION.into(), g.to_string());
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": InstanceSetSpec::KIND,
        "metadata": {
            "name": set.name(),
            "namespace": set.namespace().unwrap_or("default"),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": set.spec,
    })
}

/// The slice's status as the local controller wrote it into `object`, with the
/// federation's generation once the controller observed this process's last apply.
fn status_of(
    object: &DynamicObject,
    slice: &InstanceSet,
    applied_generation: Option<i64>,
) -> Option<InstanceSetStatus> {
    let mut status = resource::decode(object).ok()?.status?;
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
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! [`KubeMember::sync`] against a mock API server (`tower_test`), not a real one:
    //! the exact requests a pass makes, answered as an API server would.

    use ::kube::client::Body;
    use http::{Method, Request, Response};

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn member() -> (KubeMember, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        (
            KubeMember::new(client, KubeMemberOptions::default()),
            handle,
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

    fn reply(body: Value) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    const LIST: &str = "/apis/flotilla.io/v1alpha1/instancesets";
    const OBJECT: &str = "/apis/flotilla.io/v1alpha1/namespaces/cache/instancesets/redis";

    /// Answers the list of federated InstanceSets with `items`.
    async fn list(handle: &mut Handle, items: Vec<Value>) {
        let (request, send) = handle.next_request().await.expect("a list");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), LIST);
        assert!(
            request
                .uri()
                .query()
                .unwrap_or_default()
                .contains("labelSelector=flotilla.io%2Ffederated%3Dtrue"),
            "{}",
            request.uri()
        );
        send.send_response(reply(json!({
            "apiVersion": "flotilla.io/v1alpha1", "kind": "InstanceSetList",
            "metadata": {}, "items": items,
        })));
    }

    /// An InstanceSet as the API server holds it, at Kubernetes generation 4, with a
    /// status the local controller wrote.
    fn stored(observed_generation: i64) -> Value {
        json!({
            "apiVersion": "flotilla.io/v1alpha1", "kind": "InstanceSet",
            "metadata": {"name": "redis", "namespace": "cache", "uid": "member-uid",
                         "generation": 4, "labels": {FEDERATED_LABEL: "true"}},
            "spec": {"ordinals": {"ranges": [{"start": 0, "end": 2}]},
                     "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}}},
            "status": {"observedGeneration": observed_generation, "replicas": 3, "readyReplicas": 2},
        })
    }

    #[tokio::test]
    async fn a_held_slice_is_applied_and_its_status_read_back() {
        let (member, mut handle) = member();
        member.replace(vec![slice(7)]);
        let server = tokio::spawn(async move {
            list(&mut handle, vec![]).await;
            let (request, send) = handle.next_request().await.expect("an apply");
            assert_eq!(request.method(), Method::PATCH);
            assert_eq!(request.uri().path(), OBJECT);
            let query = request.uri().query().unwrap_or_default().to_string();
            assert!(query.contains("fieldManager=flotilla-agent"), "{query}");
            assert!(query.contains("force=true"), "{query}");
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body: Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            assert_eq!(body["metadata"]["labels"][FEDERATED_LABEL], "true");
            assert_eq!(body["metadata"]["labels"]["app"], "redis");
            assert_eq!(body["metadata"]["annotations"][GENERATION_ANNOTATION], "7");
            assert!(body["metadata"].get("uid").is_none(), "{body}");
            assert!(body.get("status").is_none(), "{body}");
            assert_eq!(body["spec"]["ordinals"]["ranges"][0]["end"], 2);
            // The controller has not seen generation 4 yet.
            send.send_response(reply(stored(3)));
            // Second pass: unchanged, so a list only; the controller caught up.
            list(&mut handle, vec![stored(4)]).await;
        });
        member.sync().await.unwrap();
        let status = member.statuses().borrow()["cache/redis"].clone();
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(status.observed_generation, None);
        member.sync().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("every expected request came")
            .unwrap();
        let status = member.statuses().borrow()["cache/redis"].clone();
        assert_eq!(
            status.observed_generation,
            Some(7),
            "the federation's generation"
        );
    }

    #[tokio::test]
    async fn a_slice_no_longer_held_is_deleted_but_only_after_a_snapshot() {
        let (member, mut handle) = member();
        let server = tokio::spawn(async move {
            // Before any snapshot: the object is left alone.
            list(&mut handle, vec![stored(4)]).await;
            // After an empty snapshot: deleted.
            list(&mut handle, vec![stored(4)]).await;
            let (request, send) = handle.next_request().await.expect("a delete");
            assert_eq!(request.method(), Method::DELETE);
            assert_eq!(request.uri().path(), OBJECT);
            send.send_response(reply(json!({
                "apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {},
            })));
        });
        member.sync().await.unwrap();
        member.replace(vec![]);
        member.sync().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("every expected request came")
            .unwrap();
        assert!(member.statuses().borrow().is_empty());
    }

    #[tokio::test]
    async fn a_refused_write_is_reported_as_degraded() {
        let (member, mut handle) = member();
        member.put(slice(1));
        let server = tokio::spawn(async move {
            list(&mut handle, vec![]).await;
            let (_, send) = handle.next_request().await.expect("an apply");
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(Body::from(
                        serde_json::to_vec(&json!({
                            "apiVersion": "v1", "kind": "Status", "status": "Failure",
                            "message": "namespaces \"cache\" not found", "reason": "NotFound", "code": 404,
                            "metadata": {},
                        }))
                        .unwrap(),
                    ))
                    .unwrap(),
            );
        });
        member.sync().await.unwrap();
        server.await.unwrap();
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
}
