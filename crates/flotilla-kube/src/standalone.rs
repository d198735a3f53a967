//! The standalone agent: the member's InstanceSet controller for every InstanceSet in
//! one cluster, with no federation (`flotilla agent --standalone`).
//!
//! ```text
//!   watch InstanceSets ─┐
//!   watch Pods with a   ├─▶ kube-runtime Controller ──▶ reconcile(set):
//!   flotilla.io/set     │     (one set at a time,         flotilla_member::Controller::pass:
//!   label (owner → set) ┘      requeue on a period)       one observation, roles probed on it
//!                                                         when periodSeconds passed, then plan
//! ```
//!
//! kube-runtime's controller does the scheduling: a set is reconciled when it changes,
//! when one of its pods changes (through the pods' owner references), and again after
//! the requeue delay: the role probe period when the set has a role probe, a short
//! delay while it has not converged, and [`Options::resync`] otherwise. It never runs
//! two reconciles of the same set at once. Shutdown is graceful: no new reconcile
//! starts, and those in flight get [`Options::shutdown_grace`] to finish.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::status::{Condition, InstanceSetStatus};
use flotilla_api::{InstanceSet, InstanceSetSpec, validate};
use flotilla_member::{Backend as _, CommitOptions, Controller, MemberMetrics};
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::{Action as Requeue, Controller as Runtime};
use kube::runtime::watcher;

use crate::access::PodAccess;
use crate::backend::KubeBackend;
use crate::error::{Error, Result, chain};
use crate::locality::NodeLoss;
use crate::objects::{self, SET_LABEL};
use crate::resource;

/// How the standalone agent runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Reconcile a converged set at least this often.
    pub resync: Duration,
    /// Reconcile a set that has not converged again after this long (pod events
    /// usually come sooner).
    pub retry: Duration,
    /// After shutdown is asked for, reconciles in flight get this long to finish.
    pub shutdown_grace: Duration,
    /// When a node counts as lost, for instance rebuild (see [`crate::locality`]).
    pub node_loss: NodeLoss,
    /// How Redis ports are reached (default [`PodAccess::Auto`]: see [`crate::access`]).
    pub pod_access: PodAccess,
    /// How the commit phase sends its writes: in flight at once, QPS and burst.
    pub commit: CommitOptions,
    /// Notified after every pass that wrote something (a status among it), for a
    /// reader of the statuses (the federated agent) to read them back at once rather
    /// than at its next poll.
    pub wrote: Option<Arc<tokio::sync::Notify>>,
    /// Where the controller counts (shared with the agent's `/metrics`).
    pub metrics: Arc<MemberMetrics>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: None,
            resync: Duration::from_secs(60),
            retry: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            node_loss: NodeLoss::default(),
            pod_access: PodAccess::default(),
            commit: CommitOptions::default(),
            wrote: None,
            metrics: Arc::default(),
        }
    }
}

/// What every reconcile shares.
struct Context {
    controller: Controller<KubeBackend>,
    options: Options,
    /// When each set's roles were last probed, by `<namespace>/<name>`, with the
    /// `metadata.uid` of the object probed: a set deleted and created again under the
    /// same name is another object, due for a probe at once. (Without a finalizer its
    /// deletion may never be seen: the object just goes.)
    probed: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl Context {
    /// Whether `set`'s roles are due for a probe; marks them probed now if so.
    fn probe_due(&self, set: &InstanceSet, period: Duration) -> bool {
        let mut probed = self
            .probed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let uid = &set.metadata.uid;
        match probed.get(&objects::set_key(set)) {
            Some((of, last)) if of == uid && now.duration_since(*last) < period => false,
            _ => {
                probed.insert(objects::set_key(set), (uid.clone(), now));
                true
            }
        }
    }

    /// Forgets everything kept for the sets `live` says are gone.
    fn forget_unless(&self, live: impl Fn(&str) -> bool) {
        self.probed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, _| live(key));
        self.controller.forget_unless(live);
    }

    /// Forgets everything kept for a deleted set.
    async fn forget(&self, set: &InstanceSet) {
        self.probed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&objects::set_key(set));
        self.controller.forget(set);
    }
}

/// Runs the controller for every InstanceSet until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    let kind = resource::instance_sets();
    let (sets, pods): (Api<DynamicObject>, Api<Pod>) = match &options.namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &kind),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all_with(client.clone(), &kind),
            Api::all(client.clone()),
        ),
    };
    let grace = options.shutdown_grace;
    let backend = KubeBackend::new(client)
        .with_node_loss(options.node_loss.clone())
        .with_pod_access(options.pod_access);
    tracing::info!(pod_access = ?backend.pod_access(), "reaching Redis ports");
    let context = Arc::new(Context {
        controller: Controller::with_commit(Arc::new(backend), options.commit)
            .with_metrics(Arc::clone(&options.metrics)),
        options,
        probed: Mutex::new(HashMap::new()),
    });
    let runtime = Runtime::new_with(sets, watcher::Config::default(), kind)
        .owns(pods, watcher::Config::default().labels(SET_LABEL));
    let store = runtime.store();
    let graceful = shutdown.shared();
    // A set deleted without a finalizer is never reconciled again: what was kept for
    // it goes when the reflector's cache no longer has it.
    let sweeper = {
        let (store, context) = (store.clone(), Arc::clone(&context));
        async move {
            let mut every = tokio::time::interval(context.options.resync);
            every.tick().await;
            loop {
                every.tick().await;
                // Not listed yet, or the reflector gone: its cache says nothing.
                if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
                    continue;
                }
                let live: std::collections::HashSet<String> =
                    store.state().iter().map(|o| object_key(o)).collect();
                context.forget_unless(|key| live.contains(key));
            }
        }
    };
    // kube-runtime's graceful shutdown waits for the first list of InstanceSets, which
    // never comes while the API server is unreachable; and a reconcile may hang on an
    // instance. So shutdown is forced: at once when nothing was ever listed (nothing
    // can be in flight), else after the grace period.
    let forced = {
        let graceful = graceful.clone();
        async move {
            graceful.await;
            if store.wait_until_ready().now_or_never().is_none() {
                return;
            }
            tokio::time::sleep(grace).await;
            tracing::warn!(
                ?grace,
                "reconciles did not finish within the grace period; stopping"
            );
        }
    };
    let controller = runtime
        .graceful_shutdown_on(graceful)
        .run(reconcile, error_policy, context)
        .take_until(forced)
        .for_each(|result| async move {
            match result {
                Ok((set, _)) => tracing::debug!(set = %set, "reconciled"),
                Err(e) => tracing::warn!(error = %chain(&e), "reconcile failed"),
            }
        });
    tokio::select! {
        () = controller => {}
        () = sweeper => {}
    }
    Ok(())
}

/// One pass over one set: decode, validate, probe roles when due, reconcile.
async fn reconcile(object: Arc<DynamicObject>, context: Arc<Context>) -> Result<Requeue> {
    if object.metadata.deletion_timestamp.is_some() {
        // Its pods go with it (owner references); nothing to do but forget it.
        context.forget(&carrier(&object)).await;
        return Ok(Requeue::await_change());
    }
    let set = match resource::decode(&object) {
        Ok(set) => set,
        // The pod template is opaque to the CRD's schema, so the API server accepts
        // objects that do not decode (`containerPort: "6379"`). Retrying cannot help:
        // say why in the status and wait for the object to change.
        Err(e) => {
            let why = e.chain();
            tracing::warn!(set = %object_key(&object), error = %why, "InstanceSet does not decode; not reconciling it");
            report_invalid(&context, &carrier(&object), &why).await?;
            return Ok(Requeue::await_change());
        }
    };
    let key = objects::set_key(&set);
    let period = set
        .spec
        .role_probe
        .as_ref()
        .map(|p| Duration::from_secs(u64::from(p.period_seconds.max(1))));
    let set = match validate::instance_set(set.clone()) {
        Ok(valid) => valid,
        Err(invalid) => {
            tracing::warn!(set = %key, %invalid, "invalid InstanceSet; not reconciling it");
            report_invalid(&context, &set, &invalid.to_string()).await?;
            return Ok(Requeue::await_change());
        }
    };
    // A failed probe keeps the instance's previous result; it never fails the pass.
    let probe = period.is_some_and(|period| context.probe_due(&set, period));
    let pass = context.controller.pass(&set, probe).await;
    // A pass that wrote (or failed, and so wrote its ApplyFailed status) is worth
    // reading back now.
    if pass.as_ref().map_or(true, |p| p.writes > 0)
        && let Some(wrote) = &context.options.wrote
    {
        wrote.notify_one();
    }
    let pass = pass.map_err(|source| Error::Reconcile {
        set: key.clone(),
        source,
    })?;
    if !pass.actions.is_empty() || pass.blocked.is_some() {
        tracing::info!(
            set = %key,
            actions = %pass.actions.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            writes = pass.writes,
            blocked = pass.blocked.as_deref().unwrap_or(""),
            "reconciled"
        );
    }
    let options = &context.options;
    let next = if pass.converged {
        options.resync
    } else {
        options.retry
    };
    Ok(Requeue::requeue(period.map_or(next, |p| p.min(next))))
}

/// `<namespace>/<name>` of an API object.
fn object_key(object: &DynamicObject) -> String {
    format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or("default"),
        object.metadata.name.as_deref().unwrap_or_default()
    )
}

/// An InstanceSet with the object's metadata and (when it decodes) status but an empty
/// spec: what is needed to write the status of an object whose spec does not decode,
/// or to forget one. Keeping the status it has lets an unchanged report write nothing.
fn carrier(object: &DynamicObject) -> InstanceSet {
    let mut set = InstanceSet::new(
        object.metadata.name.as_deref().unwrap_or_default(),
        InstanceSetSpec::default(),
    );
    set.metadata = object.metadata.clone();
    set.status = object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    set
}

/// Says in the set's status why it is not reconciled.
async fn report_invalid(context: &Context, set: &InstanceSet, why: &str) -> Result<()> {
    let status = InstanceSetStatus {
        observed_generation: set.metadata.generation,
        conditions: vec![Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "Invalid".into(),
            message: why.to_string(),
            last_transition_time: None,
        }],
        ..set.status.clone().unwrap_or_default()
    };
    context
        .controller
        .backend()
        .write_status(set, &status)
        .await
        .map_err(|source| Error::Reconcile {
            set: objects::set_key(set),
            source,
        })?;
    Ok(())
}

fn error_policy(_: Arc<DynamicObject>, error: &Error, context: Arc<Context>) -> Requeue {
    tracing::warn!(error = %error.chain(), "reconcile failed; retrying");
    Requeue::requeue(context.options.retry)
}

#[cfg(test)]
mod tests {
    //! `reconcile` against a mock API server (`tower_test`), not a real one.

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn context() -> (Arc<Context>, Handle) {
        context_with(Options::default())
    }

    fn context_with(options: Options) -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let context = Context {
            controller: Controller::new(Arc::new(KubeBackend::with_epoch(client, "t"))),
            options,
            probed: Mutex::new(HashMap::new()),
        };
        (Arc::new(context), handle)
    }

    fn object(ordinals: Value) -> Arc<DynamicObject> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "flotilla.io/v1alpha1",
                "kind": "InstanceSet",
                "metadata": {"name": "redis", "namespace": "cache", "uid": "u", "generation": 2},
                "spec": {
                    "ordinals": ordinals,
                    "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}},
                    "roleProbe": {"redis": {"port": 6379}, "periodSeconds": 7},
                },
            }))
            .unwrap(),
        )
    }

    fn reply(body: Value) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// Answers one list of the set's pods or PVCs with no items.
    async fn empty_list(handle: &mut Handle, path: &str) {
        let (request, send) = handle.next_request().await.expect("a list");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), path);
        send.send_response(reply(
            json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
        ));
    }

    /// Answers the status apply, returning the status sent.
    async fn status_apply(handle: &mut Handle) -> Value {
        let (request, send) = handle.next_request().await.expect("a status apply");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().path(),
            "/apis/flotilla.io/v1alpha1/namespaces/cache/instancesets/redis/status"
        );
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        send.send_response(reply(json!({
            "apiVersion": "flotilla.io/v1alpha1", "kind": "InstanceSet",
            "metadata": {"name": "redis", "namespace": "cache"},
        })));
        body["status"].clone()
    }

    const PODS: &str = "/api/v1/namespaces/cache/pods";
    const PVCS: &str = "/api/v1/namespaces/cache/persistentvolumeclaims";

    #[tokio::test]
    async fn an_invalid_set_is_reported_in_its_status_and_waits_for_a_change() {
        let (context, mut handle) = context();
        let server = tokio::spawn(async move {
            let status = status_apply(&mut handle).await;
            assert_eq!(status["observedGeneration"], 2);
            let condition = &status["conditions"][0];
            assert_eq!(condition["type"], "Degraded");
            assert_eq!(condition["reason"], "Invalid");
            let message = condition["message"].as_str().unwrap();
            assert!(message.contains("spec.ordinals.ranges[0]"), "{message}");
        });
        let requeue = reconcile(object(json!({"ranges": [{"start": 5, "end": 2}]})), context)
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(requeue, Requeue::await_change());
    }

    #[tokio::test]
    async fn roles_are_probed_once_per_period_and_the_set_requeued_at_it() {
        let wrote = Arc::new(tokio::sync::Notify::new());
        let (context, mut handle) = context_with(Options {
            wrote: Some(Arc::clone(&wrote)),
            ..Options::default()
        });
        let server = tokio::spawn(async move {
            // First pass: one observation (probes included), the status.
            for path in [PODS, PVCS] {
                empty_list(&mut handle, path).await;
            }
            status_apply(&mut handle).await;
            // Second pass, right after: no probe due, status unchanged: two lists only.
            for path in [PODS, PVCS] {
                empty_list(&mut handle, path).await;
            }
        });
        let set = object(json!({}));
        let first = reconcile(set.clone(), context.clone()).await.unwrap();
        assert!(
            wrote.notified().now_or_never().is_some(),
            "a pass that wrote the status says so"
        );
        let second = reconcile(set, context).await.unwrap();
        assert!(
            wrote.notified().now_or_never().is_none(),
            "a pass that wrote nothing does not"
        );
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("every expected request came")
            .unwrap();
        assert_eq!(first, Requeue::requeue(Duration::from_secs(7)));
        assert_eq!(second, Requeue::requeue(Duration::from_secs(7)));
    }

    /// A set whose template the CRD's schema lets through (it is opaque there) but
    /// that does not decode: a port given as a string.
    fn undecodable() -> Value {
        json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "InstanceSet",
            "metadata": {"name": "redis", "namespace": "cache", "uid": "u", "generation": 3},
            "spec": {
                "ordinals": {"ranges": [{"start": 0, "end": 1}]},
                "template": {"spec": {"containers": [
                    {"name": "redis", "image": "redis:7", "ports": [{"containerPort": "6379"}]},
                ]}},
            },
        })
    }

    #[tokio::test]
    async fn a_set_that_does_not_decode_is_reported_in_its_status_and_waits_for_a_change() {
        let (context, mut handle) = context();
        let server = tokio::spawn(async move {
            let status = status_apply(&mut handle).await;
            // `handle` is dropped here: the second reconcile must make no request.
            status
        });
        let object = undecodable();
        let requeue = reconcile(
            Arc::new(serde_json::from_value(object.clone()).unwrap()),
            context.clone(),
        )
        .await
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("the status was written")
            .unwrap();
        assert_eq!(requeue, Requeue::await_change(), "no retry loop");
        assert_eq!(status["observedGeneration"], 3, "{status}");
        let condition = &status["conditions"][0];
        assert_eq!(condition["type"], "Degraded");
        assert_eq!(condition["status"], "True");
        assert_eq!(condition["reason"], "Invalid");
        let message = condition["message"].as_str().unwrap();
        assert!(
            message.contains("spec.template.spec.containers[0].ports[0].containerPort")
                && message.contains("invalid type"),
            "{message}"
        );
        // Its pods change, say: the same object, now carrying that status, is
        // reconciled again and nothing is written.
        let mut reported = object;
        reported["status"] = status;
        let requeue = reconcile(Arc::new(serde_json::from_value(reported).unwrap()), context)
            .await
            .unwrap();
        assert_eq!(requeue, Requeue::await_change());
    }

    #[tokio::test]
    async fn a_set_created_again_under_its_name_is_probed_and_reported_afresh() {
        let (context, mut handle) = context();
        let server = tokio::spawn(async move {
            // The first object: lists, its status.
            for path in [PODS, PVCS] {
                empty_list(&mut handle, path).await;
            }
            status_apply(&mut handle).await;
            // Deleted without a deletion ever seen, created again: another uid, whose
            // status is still to be written.
            for path in [PODS, PVCS] {
                empty_list(&mut handle, path).await;
            }
            status_apply(&mut handle).await;
        });
        let first = object(json!({}));
        reconcile(first.clone(), context.clone()).await.unwrap();
        let mut again = (*first).clone();
        again.metadata.uid = Some("u2".into());
        reconcile(Arc::new(again.clone()), context.clone())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("every expected request came")
            .unwrap();
        // The probe period starts again for the new object.
        let period = Duration::from_secs(60);
        let old = resource::decode(&first).unwrap();
        let new = resource::decode(&again).unwrap();
        assert!(!context.probe_due(&new, period), "just probed");
        assert!(
            context.probe_due(&old, period),
            "another object than the last probed"
        );
    }

    #[tokio::test]
    async fn shutdown_is_prompt_when_the_api_server_never_answered() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        drop(handle); // every request fails: no InstanceSet is ever listed
        let client = kube::Client::new(service, "default");
        let stopped = tokio::time::timeout(
            Duration::from_secs(5),
            run(client, Options::default(), std::future::ready(())),
        )
        .await;
        assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    }
}
