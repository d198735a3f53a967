//! The Kubernetes backend against a **mock** API server, the way kube-rs tests itself
//! (`tower_test::mock::pair`, a `Scenario` per test, `kube::Client::new(mock, ns)`).
//!
//! No Kubernetes runs here. Each scenario states the exact requests a reconcile must
//! make, in order (method, path, query, content type, and the parts of the body that
//! matter) and answers them as an API server would. When a scenario ends it drops its
//! end of the mock, so any request it did not expect fails the pass, and so the test.
//! What a real API server does with these requests is checked only by the
//! `#[ignore = "needs cluster"]` tests in `cluster.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::ordinals::{OrdinalRange, Ordinals};
use flotilla_api::set::NodeLost;
use flotilla_api::{InstanceSet, InstanceSetSpec, Valid, validate};
use flotilla_instanceset::{Action, Observed, Revision, prepare};
use flotilla_kube::objects::{
    self, CLAIM_LABEL, IN_PLACE_UPDATE_ANNOTATION, ORDINAL_LABEL, REVISION_LABEL,
    ROLE_EPOCH_ANNOTATION, ROLE_LABEL, ROLE_VERSION_ANNOTATION, SET_LABEL, SHAPE_LABEL,
};
use flotilla_kube::{KubeBackend, PodAccess, rbac};
use flotilla_member::{Applied, Backend, CommitOptions, Controller, redis};
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodCondition, PodSpec,
    PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use serde_json::{Value, json};

const NS: &str = "cache";
const PODS: &str = "/api/v1/namespaces/cache/pods";
const PVCS: &str = "/api/v1/namespaces/cache/persistentvolumeclaims";
const STATUS: &str = "/apis/flotilla.io/v1alpha1/namespaces/cache/instancesets/redis/status";
const BY_SET: &str = "labelSelector=flotilla.io%2Fset%3Dredis";

// ---------------------------------------------------------------------------------------
// Test data: a chainable set builder and pods as the API server would return them.
// ---------------------------------------------------------------------------------------

/// An InstanceSet `cache/redis` with explicit ordinal ranges and discrete ordinals.
#[derive(Clone)]
struct Set(InstanceSet);

impl Set {
    /// Ordinals 0-1 and 5, image `redis:7.2`, one claim template `data`.
    fn test() -> Set {
        let mut set = InstanceSet::new(
            "redis",
            InstanceSetSpec {
                ordinals: Ordinals {
                    ranges: vec![OrdinalRange { start: 0, end: 1 }],
                    discrete: vec![5],
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(BTreeMap::from([("app".into(), "redis".into())])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "redis".into(),
                            image: Some("redis:7.2".into()),
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
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        ..PersistentVolumeClaimSpec::default()
                    }),
                    ..PersistentVolumeClaim::default()
                }],
                ..InstanceSetSpec::default()
            },
        );
        set.metadata.namespace = Some(NS.into());
        set.metadata.uid = Some("0000-set-uid".into());
        set.metadata.generation = Some(1);
        Set(set)
    }

    fn ordinals(mut self, ranges: &[(u32, u32)], discrete: &[u32]) -> Set {
        self.0.spec.ordinals = Ordinals {
            ranges: ranges
                .iter()
                .map(|&(start, end)| OrdinalRange { start, end })
                .collect(),
            discrete: discrete.to_vec(),
        };
        self
    }

    /// With `instanceRebuild.whenNodeLost: Rebuild`.
    fn rebuild(mut self) -> Set {
        self.0.spec.instance_rebuild.when_node_lost = NodeLost::Rebuild;
        self
    }

    /// A Redis set announcing DNS names (`spec.redis.announce: Hostname`).
    fn hostname(mut self) -> Set {
        self.0.spec.redis = Some(flotilla_api::redis::RedisSpec {
            announce: flotilla_api::redis::Announce::Hostname,
            shard_replicas: Some(3),
            ..Default::default()
        });
        self
    }

    fn image(mut self, image: &str) -> Set {
        self.0.spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        self
    }

    /// Running, ready pods of every ordinal in `ordinals`, made from this set's
    /// template.
    fn running_pods(&self, ordinals: &[u32]) -> Vec<Pod> {
        ordinals
            .iter()
            .map(|&o| ready(objects::pod(&self.0, o).unwrap(), o))
            .collect()
    }

    fn claims(&self, ordinals: &[u32]) -> Vec<PersistentVolumeClaim> {
        let template = &self.0.spec.volume_claim_templates[0];
        ordinals
            .iter()
            .map(|&o| objects::claim(&self.0, template, o).unwrap())
            .collect()
    }

    /// With the status a pass would compute for `observed`, as if already written.
    fn status_for(mut self, pods: &[Pod], claims: &[PersistentVolumeClaim]) -> Set {
        let mut observed = observed(pods, claims);
        for (i, p) in observed.instances.iter_mut().zip(pods) {
            i.endpoint = objects::endpoint(p, &self.0);
        }
        self.0.status = Some(prepare(&self.valid(), &observed).status);
        self
    }

    fn valid(&self) -> Valid<InstanceSet> {
        validate::instance_set(self.0.clone()).expect("the test set is valid")
    }
}

fn ready(mut pod: Pod, ordinal: u32) -> Pod {
    pod.metadata.uid = Some(format!("pod-uid-{ordinal}"));
    pod.spec.as_mut().unwrap().node_name = Some(format!("node-{ordinal}"));
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(format!("10.0.0.{ordinal}")),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

fn observed(pods: &[Pod], claims: &[PersistentVolumeClaim]) -> Observed {
    Observed {
        instances: pods
            .iter()
            .filter_map(|p| objects::instance(p, "test"))
            .collect(),
        volumes: claims.iter().filter_map(objects::volume).collect(),
        last_switchover: None,
    }
}

// ---------------------------------------------------------------------------------------
// The mock API server.
// ---------------------------------------------------------------------------------------

type ApiServerHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The API server's side of the mock: each handler expects one request and answers it.
struct ApiServerVerifier(ApiServerHandle);

/// What a test expects of the backend, request by request.
enum Scenario {
    /// Nothing exists: every ordinal gets its PVC then its pod, then the status is
    /// applied.
    CreateMissing { ordinals: Vec<u32> },
    /// Nothing exists and the API server refuses the pod of `refused` (403, as a
    /// PodSecurity or webhook refusal is): every other claim and pod is still created,
    /// and the status says which create failed and why.
    CreateOneRefused { ordinals: Vec<u32>, refused: u32 },
    /// Everything exists and is current, and the status says so: two lists, no write.
    Converged {
        pods: Vec<Pod>,
        claims: Vec<PersistentVolumeClaim>,
    },
    /// The image changed: the highest ordinal is read and patched in place, then the
    /// status is applied.
    InPlaceImage {
        pods: Vec<Pod>,
        claims: Vec<PersistentVolumeClaim>,
        ordinal: u32,
        image: String,
        revision: String,
    },
    /// An ordinal left the slice: its pod is deleted (its PVC is retained), then the
    /// status is applied.
    ScaleIn {
        pods: Vec<Pod>,
        claims: Vec<PersistentVolumeClaim>,
        deleted: u32,
    },
    /// Writes whose end state already holds: a create answered 409, a delete answered
    /// 404, and reads showing the pod already patched.
    AlreadyDone { current: Pod },
    /// A role label is patched with its probe version and epoch.
    SetRole { pod: Pod },
    /// Capacity: nodes and the pods that hold their resources.
    Capacity,
    /// A Redis switchover: the set's pods are listed (twice: the second attempt finds
    /// it done).
    Switchover { pods: Vec<Pod> },
    /// A Redis role probe: the pod is read for its IP.
    Probe { pod: Pod },
    /// Ordinal 0's pod is not ready and its node is gone; its claim is bound to a local
    /// PV on that node. The pass reads nodes and that one PV. Under `Rebuild` it
    /// deletes the claim, force-deletes the pod and applies the status; under `Wait`
    /// it only applies the status (which says why), and a second pass writes nothing.
    LostNode {
        pods: Vec<Pod>,
        claims: Vec<PersistentVolumeClaim>,
        rebuild: bool,
    },
}

impl ApiServerVerifier {
    /// Runs `scenario` to its end; await the handle (with a timeout) to know that every
    /// expected request came.
    fn run(self, scenario: Scenario) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            match scenario {
                Scenario::CreateMissing { ordinals } => {
                    let mut this = self.list(PODS, "PodList", Vec::<Pod>::new()).await;
                    this = this
                        .list(PVCS, "PersistentVolumeClaimList", Vec::<Pod>::new())
                        .await;
                    for o in ordinals {
                        this = this.create_claim(o).await.create_pod(o).await;
                    }
                    this.apply_status(|status| {
                        assert_eq!(status["replicas"], 0);
                        assert_eq!(status["conditions"][0]["reason"], "NotAllReady");
                    })
                    .await
                }
                Scenario::CreateOneRefused { ordinals, refused } => {
                    let mut this = self.list(PODS, "PodList", Vec::<Pod>::new()).await;
                    this = this
                        .list(PVCS, "PersistentVolumeClaimList", Vec::<Pod>::new())
                        .await;
                    for o in ordinals {
                        this = this.create_claim(o).await;
                        this = if o == refused {
                            this.refuse_create(
                                PODS,
                                "pods \"redis-1\" is forbidden: violates PodSecurity \"restricted:latest\"",
                            )
                            .await
                        } else {
                            this.create_pod(o).await
                        };
                    }
                    this.apply_status(move |status| {
                        let degraded = status["conditions"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|c| c["type"] == "Degraded")
                            .unwrap()
                            .clone();
                        assert_eq!(degraded["status"], "True", "{status}");
                        assert_eq!(degraded["reason"], "ApplyFailed", "{status}");
                        let message = degraded["message"].as_str().unwrap();
                        assert!(
                            message.contains(&format!("create {refused}"))
                                && message.contains("violates PodSecurity"),
                            "{message}"
                        );
                    })
                    .await
                }
                Scenario::Converged { pods, claims } => {
                    self.list(PODS, "PodList", pods)
                        .await
                        .list(PVCS, "PersistentVolumeClaimList", claims)
                        .await
                }
                Scenario::InPlaceImage {
                    pods,
                    claims,
                    ordinal,
                    image,
                    revision,
                } => {
                    let pod = pods
                        .iter()
                        .find(|p| p.metadata.name.as_deref() == Some(&*format!("redis-{ordinal}")))
                        .cloned()
                        .unwrap();
                    self.list(PODS, "PodList", pods)
                        .await
                        .list(PVCS, "PersistentVolumeClaimList", claims)
                        .await
                        .get(&format!("{PODS}/redis-{ordinal}"), json!(pod))
                        .await
                        .patch(
                            &format!("{PODS}/redis-{ordinal}"),
                            "application/strategic-merge-patch+json",
                            json!({
                                "metadata": {
                                    "labels": {REVISION_LABEL: revision},
                                    // What the patch waits for: the container had no
                                    // status yet in this scenario.
                                    "annotations": {IN_PLACE_UPDATE_ANNOTATION:
                                        serde_json::to_string(&objects::InPlaceUpdate {
                                            revision: revision.clone(),
                                            containers: BTreeMap::from([(
                                                "redis".to_string(),
                                                objects::ContainerBefore::default(),
                                            )]),
                                        })
                                        .unwrap(),
                                    },
                                },
                                "spec": {"containers": [{"name": "redis", "image": image}]},
                            }),
                        )
                        .await
                        .apply_status(|status| {
                            assert_eq!(status["updatedReplicas"], 0, "{status}");
                        })
                        .await
                }
                Scenario::ScaleIn {
                    pods,
                    claims,
                    deleted,
                } => {
                    let pod = pods
                        .iter()
                        .find(|p| p.metadata.name.as_deref() == Some(&*format!("redis-{deleted}")))
                        .cloned()
                        .unwrap();
                    self.list(PODS, "PodList", pods)
                        .await
                        .list(PVCS, "PersistentVolumeClaimList", claims)
                        .await
                        .delete(
                            &format!("{PODS}/redis-{deleted}"),
                            StatusCode::OK,
                            json!(pod),
                        )
                        .await
                        .apply_status(|status| {
                            assert_eq!(status["replicas"], 2, "{status}");
                        })
                        .await
                }
                Scenario::AlreadyDone { current } => {
                    self.conflict(PODS)
                        .await
                        .conflict(PVCS)
                        .await
                        .delete(
                            &format!("{PODS}/redis-9"),
                            StatusCode::NOT_FOUND,
                            status_body(404, "NotFound", "pods \"redis-9\" not found"),
                        )
                        .await
                        .delete(
                            &format!("{PVCS}/data-redis-9"),
                            StatusCode::NOT_FOUND,
                            status_body(404, "NotFound", "not found"),
                        )
                        .await
                        .get(&format!("{PODS}/redis-0"), json!(current))
                        .await
                        .get(&format!("{PODS}/redis-0"), json!(current))
                        .await
                }
                Scenario::SetRole { pod } => {
                    self.get(&format!("{PODS}/redis-1"), json!(pod))
                        .await
                        .patch(
                            &format!("{PODS}/redis-1"),
                            "application/merge-patch+json",
                            json!({"metadata": {
                                "labels": {ROLE_LABEL: "primary"},
                                "annotations": {
                                    ROLE_VERSION_ANNOTATION: "7",
                                    ROLE_EPOCH_ANNOTATION: "test",
                                },
                            }}),
                        )
                        .await
                }
                Scenario::Capacity => self.capacity().await,
                Scenario::Switchover { pods } => {
                    self.list(PODS, "PodList", pods.clone())
                        .await
                        .list(PODS, "PodList", pods)
                        .await
                }
                Scenario::Probe { pod } => self.get(&format!("{PODS}/redis-1"), json!(pod)).await,
                Scenario::LostNode {
                    pods,
                    claims,
                    rebuild,
                } => {
                    let this = self.lost_node_reads(&pods, &claims).await;
                    if rebuild {
                        this.delete_with(
                            &format!("{PVCS}/data-redis-0"),
                            json!(claims[0]),
                            |body| {
                                assert!(
                                    body.get("gracePeriodSeconds").is_none(),
                                    "a claim is deleted normally: {body}"
                                );
                            },
                        )
                        .await
                        .delete_with(&format!("{PODS}/redis-0"), json!(pods[0]), |body| {
                            assert_eq!(
                                body["gracePeriodSeconds"], 0,
                                "the pod is force-deleted: {body}"
                            );
                        })
                        .await
                        .apply_status(|status| {
                            assert_eq!(status["readyReplicas"], 2, "{status}");
                        })
                        .await
                    } else {
                        this.apply_status(|status| {
                            let degraded = status["conditions"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .find(|c| c["type"] == "Degraded")
                                .unwrap()
                                .clone();
                            assert_eq!(degraded["status"], "True", "{status}");
                            assert_eq!(degraded["reason"], "Blocked", "{status}");
                            let message = degraded["message"].as_str().unwrap();
                            assert!(
                                message.contains("instance 0 is stranded on lost node node-0"),
                                "{message}"
                            );
                        })
                        .await
                        // The second pass: the same reads, and nothing written.
                        .lost_node_reads(&pods, &claims)
                        .await
                    }
                }
            };
            // `self` is dropped here: any further request fails.
        })
    }

    async fn next(
        &mut self,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = self
            .0
            .next_request()
            .await
            .expect("the backend made the request");
        assert_granted(&request);
        (request, send)
    }

    async fn list(mut self, path: &str, kind: &str, items: Vec<impl serde::Serialize>) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), path);
        assert_eq!(request.uri().query(), Some(&*format!("&{BY_SET}")));
        send.send_response(ok(json!({
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"resourceVersion": "100"},
            "items": items,
        })));
        self
    }

    /// The reads of a pass whose ordinal 0 is on the vanished `node-0`: the set's pods
    /// and claims, every node (`node-0` is not among them), and the PV bound to
    /// `data-redis-0` only (the other pods are ready).
    async fn lost_node_reads(self, pods: &[Pod], claims: &[PersistentVolumeClaim]) -> Self {
        let mut this = self
            .list(PODS, "PodList", pods.to_vec())
            .await
            .list(PVCS, "PersistentVolumeClaimList", claims.to_vec())
            .await;
        let (request, send) = this.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().to_string(), "/api/v1/nodes?");
        let ready = json!([{"type": "Ready", "status": "True"}]);
        let node = |name: &str| {
            json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "spec": {},
                "status": {"conditions": ready},
            })
        };
        send.send_response(ok(json!({
            "apiVersion": "v1", "kind": "NodeList", "metadata": {},
            "items": [node("node-1"), node("node-5")],
        })));
        this.get("/api/v1/persistentvolumes/pv-0", local_pv("pv-0", "node-0"))
            .await
    }

    /// A DELETE of `path`, answered with `object`; `check` looks at the body sent.
    async fn delete_with(mut self, path: &str, object: Value, check: impl FnOnce(&Value)) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(request.uri().path(), path);
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        check(&body);
        send.send_response(ok(object));
        self
    }

    async fn get(mut self, path: &str, object: Value) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), path);
        send.send_response(ok(object));
        self
    }

    /// A POST of a PVC `data-redis-<ordinal>`, checked and echoed back.
    async fn create_claim(mut self, ordinal: u32) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().to_string(), format!("{PVCS}?"));
        let body = body(request).await;
        let meta = &body["metadata"];
        assert_eq!(meta["name"], format!("data-redis-{ordinal}"));
        assert_eq!(meta["namespace"], NS);
        assert_eq!(meta["labels"][SET_LABEL], "redis");
        assert_eq!(meta["labels"][ORDINAL_LABEL], ordinal.to_string());
        assert_eq!(meta["labels"][CLAIM_LABEL], "data");
        assert!(
            meta.get("ownerReferences").is_none(),
            "retained volumes are not owned by the set"
        );
        assert_eq!(body["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        send.send_response(created(body));
        self
    }

    /// A POST of the pod `redis-<ordinal>`, checked and echoed back.
    async fn create_pod(mut self, ordinal: u32) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().to_string(), format!("{PODS}?"));
        let body = body(request).await;
        let name = format!("redis-{ordinal}");
        let meta = &body["metadata"];
        assert_eq!(meta["name"], name);
        assert_eq!(meta["namespace"], NS);
        let revision = Revision::of(&Set::test().0.spec);
        assert_eq!(
            meta["labels"],
            json!({
                "app": "redis",
                SET_LABEL: "redis",
                ORDINAL_LABEL: ordinal.to_string(),
                REVISION_LABEL: revision.revision,
                SHAPE_LABEL: revision.shape,
            })
        );
        assert_eq!(
            meta["ownerReferences"],
            json!([{
                "apiVersion": "flotilla.io/v1alpha1",
                "kind": "InstanceSet",
                "name": "redis",
                "uid": "0000-set-uid",
                "controller": true,
                "blockOwnerDeletion": true,
            }])
        );
        let spec = &body["spec"];
        assert_eq!(spec["hostname"], name);
        assert_eq!(
            spec["volumes"],
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": format!("data-redis-{ordinal}")}}])
        );
        assert_eq!(spec["containers"][0]["image"], "redis:7.2");
        send.send_response(created(body));
        self
    }

    async fn patch(mut self, path: &str, content_type: &str, expected: Value) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), path);
        assert_eq!(request.uri().query(), Some("&fieldManager=flotilla"));
        assert_eq!(request.headers()["content-type"], content_type);
        let body = body(request).await;
        assert_eq!(body, expected);
        send.send_response(ok(json!({"metadata": {"name": "patched"}})));
        self
    }

    async fn delete(mut self, path: &str, code: StatusCode, answer: Value) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(request.uri().path(), path);
        send.send_response(respond(code, answer));
        self
    }

    /// A POST to `path` refused with 403 and `message`.
    async fn refuse_create(mut self, path: &str, message: &str) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), path);
        send.send_response(respond(
            StatusCode::FORBIDDEN,
            status_body(403, "Forbidden", message),
        ));
        self
    }

    async fn conflict(mut self, path: &str) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), path);
        send.send_response(respond(
            StatusCode::CONFLICT,
            status_body(409, "AlreadyExists", "already exists"),
        ));
        self
    }

    /// The server-side apply of the set's status; `check` looks at the status sent.
    async fn apply_status(mut self, check: impl FnOnce(&Value)) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(
            request.uri().to_string(),
            format!("{STATUS}?&force=true&fieldManager=flotilla")
        );
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let body = body(request).await;
        assert_eq!(body["apiVersion"], "flotilla.io/v1alpha1");
        assert_eq!(body["kind"], "InstanceSet");
        assert_eq!(body["status"]["observedGeneration"], 1);
        check(&body["status"]);
        let mut object = json!(Set::test().0);
        object["status"] = body["status"].clone();
        send.send_response(ok(object));
        self
    }

    async fn capacity(mut self) -> Self {
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().to_string(), "/api/v1/nodes?");
        let ready = json!([{"type": "Ready", "status": "True"}]);
        let node = |name: &str| {
            json!({
                "metadata": {"name": name},
                "spec": {},
                "status": {
                    "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                    "conditions": ready,
                },
            })
        };
        send.send_response(ok(json!({
            "apiVersion": "v1", "kind": "NodeList", "metadata": {},
            "items": [node("n1"), node("n2"), node("n3")],
        })));
        let (request, send) = self.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/api/v1/pods");
        assert_eq!(
            request.uri().query(),
            Some("&fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed")
        );
        send.send_response(ok(json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [{
                "metadata": {"name": "x", "namespace": "a"},
                "spec": {"nodeName": "n1", "containers": [{
                    "name": "c", "resources": {"requests": {"cpu": "1", "memory": "4Gi"}},
                }]},
                "status": {"phase": "Running"},
            }],
        })));
        self
    }
}

/// Fails the test unless the agent's permission table grants `request`
/// (`flotilla_kube::rbac`): every request any scenario makes goes through here.
fn assert_granted(request: &Request<Body>) {
    let uri = request.uri();
    let (group, resource, verb) =
        rbac::request_attributes(request.method().as_str(), uri.path(), uri.query())
            .unwrap_or_else(|| panic!("{} {uri} is not a resource request", request.method()));
    assert!(
        rbac::granted(&group, &resource, &verb),
        "{} {uri} needs {verb} on {resource} (group {group:?}), which rbac::REQUIRED_PERMISSIONS does not grant",
        request.method()
    );
}

/// A local PersistentVolume on the node whose hostname label is `host`.
fn local_pv(name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "local": {"path": "/mnt/disks/ssd0"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]},
            ]}]}},
        },
    })
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(body: Value) -> Response<Body> {
    respond(StatusCode::OK, body)
}

fn created(body: Value) -> Response<Body> {
    respond(StatusCode::CREATED, body)
}

async fn body(request: Request<Body>) -> Value {
    let bytes = request.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).expect("the request body is JSON")
}

/// A backend on a fresh mock API server, and the server's side.
fn testcontext() -> (KubeBackend, ApiServerVerifier) {
    let (mock_service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(mock_service, "default");
    (
        KubeBackend::with_epoch(client, "test"),
        ApiServerVerifier(handle),
    )
}

/// A controller that sends one write at a time, so that a scenario can expect its
/// requests in plan order; the concurrent commit has tests of its own (ordering under
/// concurrency) below.
fn sequential(backend: Arc<KubeBackend>) -> Controller<KubeBackend> {
    Controller::with_commit(backend, CommitOptions::SEQUENTIAL)
}

async fn timeout_after_1s(handle: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("the scenario got every request it expected in time")
        .expect("the scenario's assertions held");
}

// ---------------------------------------------------------------------------------------
// A fake Redis: answers ROLE and REPLICAOF like Redis, and records what it was sent.
// ---------------------------------------------------------------------------------------

/// One fake Redis instance on `ip:port`.
#[derive(Clone)]
struct FakeRedis {
    role: Arc<std::sync::Mutex<String>>,
    commands: Arc<std::sync::Mutex<Vec<String>>>,
    /// A log shared with other fakes (`<ip> <command>`), when given.
    shared: Option<Arc<std::sync::Mutex<Vec<String>>>>,
    ip: String,
}

impl FakeRedis {
    async fn start(ip: &str, port: u16, role: &str) -> FakeRedis {
        FakeRedis::start_logged(ip, port, role, None).await
    }

    async fn start_logged(
        ip: &str,
        port: u16,
        role: &str,
        shared: Option<Arc<std::sync::Mutex<Vec<String>>>>,
    ) -> FakeRedis {
        let listener = tokio::net::TcpListener::bind((ip, port))
            .await
            .expect("binding a loopback address");
        let fake = FakeRedis {
            role: Arc::new(std::sync::Mutex::new(role.into())),
            commands: Arc::default(),
            shared,
            ip: ip.to_string(),
        };
        let this = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move { this.serve(stream).await });
            }
        });
        fake
    }

    async fn serve(&self, stream: tokio::net::TcpStream) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        let n: usize = line.trim_start_matches('*').trim().parse().unwrap();
        let mut args = Vec::new();
        for _ in 0..n {
            line.clear();
            stream.read_line(&mut line).await.unwrap(); // $len
            line.clear();
            stream.read_line(&mut line).await.unwrap();
            args.push(line.trim_end().to_string());
        }
        let command = args.join(" ");
        self.commands.lock().unwrap().push(command.clone());
        if let Some(shared) = &self.shared {
            shared
                .lock()
                .unwrap()
                .push(format!("{} {command}", self.ip));
        }
        let reply = if command == "ROLE" {
            let role = self.role.lock().unwrap().clone();
            format!("*1\r\n${}\r\n{role}\r\n", role.len())
        } else if command == "REPLICAOF NO ONE" {
            *self.role.lock().unwrap() = "master".into();
            "+OK\r\n".to_string()
        } else {
            *self.role.lock().unwrap() = "slave".into();
            "+OK\r\n".to_string()
        };
        stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
    }

    fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

/// A port free on 127.0.0.1, to bind on other loopback addresses too.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A set whose pods answer Redis on 127.0.0.<ordinal + 1>:`port`.
fn redis_set(port: u16) -> (Set, Vec<Pod>) {
    let mut set = Set::test();
    set.0.spec.roles = serde_json::from_value(json!([
        {"name": "primary", "exclusive": true, "updatePriority": 2},
        {"name": "secondary", "updatePriority": 1},
    ]))
    .unwrap();
    set.0.spec.role_probe = Some(
        serde_json::from_value(json!({
            "redis": {"port": port, "roleMap": {"master": "primary", "slave": "secondary"}},
        }))
        .unwrap(),
    );
    let mut pods = set.running_pods(&[0, 1, 5]);
    for (pod, ordinal) in pods.iter_mut().zip([0, 1, 5]) {
        pod.status.as_mut().unwrap().pod_ip = Some(format!("127.0.0.{}", ordinal + 1));
    }
    (set, pods)
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_new_set_creates_a_claim_and_a_pod_for_every_ordinal() {
    let (backend, server) = testcontext();
    let server = server.run(Scenario::CreateMissing {
        ordinals: vec![0, 1, 5],
    });
    let controller = sequential(Arc::new(backend));
    let pass = controller.reconcile(&Set::test().valid()).await.unwrap();
    timeout_after_1s(server).await;
    assert_eq!(
        pass.actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "create-volume data-0",
            "create 0",
            "create-volume data-1",
            "create 1",
            "create-volume data-5",
            "create 5",
        ]
    );
    assert_eq!(pass.writes, 7, "six creates and the status");
}

#[tokio::test]
async fn a_refused_pod_create_leaves_the_rest_of_the_plan_applied_and_says_why() {
    let (backend, server) = testcontext();
    let server = server.run(Scenario::CreateOneRefused {
        ordinals: vec![0, 1, 5],
        refused: 1,
    });
    let controller = sequential(Arc::new(backend));
    let e = controller
        .reconcile(&Set::test().valid())
        .await
        .unwrap_err();
    timeout_after_1s(server).await;
    let e = e.to_string();
    assert!(
        e.contains("creating Pod cache/redis-1") && e.contains("violates PodSecurity"),
        "the pass fails, so that it is retried: {e}"
    );
}

const SERVICES: &str = "/api/v1/namespaces/cache/services";

/// The next request is a POST of a pod; returns its body after answering 201.
async fn pod_created(server: &mut ApiServerVerifier) -> Value {
    let (request, send) = server.next().await;
    assert_eq!(request.method(), Method::POST);
    assert_eq!(request.uri().path(), PODS);
    let body = body(request).await;
    send.send_response(created(body.clone()));
    body
}

#[tokio::test]
async fn a_hostname_announcing_set_gets_its_headless_service_once_before_its_first_pod() {
    let (backend, mut server) = testcontext();
    let set = Set::test().hostname();
    let handle = tokio::spawn(async move {
        let (request, send) = server.next().await;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), SERVICES);
        let svc = body(request).await;
        assert_eq!(svc["metadata"]["name"], "redis");
        assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], "0000-set-uid");
        assert_eq!(
            svc["spec"],
            json!({
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": {SET_LABEL: "redis"},
                "ports": [{"name": "redis", "port": 6379, "targetPort": 6379}],
            })
        );
        send.send_response(created(svc));
        for ordinal in [0, 1] {
            let pod = pod_created(&mut server).await;
            assert_eq!(pod["spec"]["hostname"], format!("redis-{ordinal}"));
            assert_eq!(pod["spec"]["subdomain"], "redis");
            let args: Vec<String> =
                serde_json::from_value(pod["spec"]["containers"][0]["args"].clone()).unwrap();
            let args = args.join(" ");
            let own = format!("redis-{ordinal}.redis.cache.svc");
            assert!(
                args.contains(&format!("--replica-announce-ip {own}")),
                "{args}"
            );
        }
        // `server` is dropped: a second Service request would fail the test.
    });
    for ordinal in [0, 1] {
        backend
            .apply(&set.0, &Action::Create { ordinal })
            .await
            .unwrap();
    }
    timeout_after_1s(handle).await;
}

#[tokio::test]
async fn a_service_of_that_name_made_by_someone_else_is_not_taken_over() {
    for (owner, works) in [("0000-set-uid", true), ("someone-else", false)] {
        let (backend, mut server) = testcontext();
        let set = Set::test().hostname();
        let handle = tokio::spawn(async move {
            server = server.conflict(SERVICES).await;
            server = server
                .get(
                    &format!("{SERVICES}/redis"),
                    json!({
                        "apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "redis", "namespace": NS, "ownerReferences": [{
                            "apiVersion": "flotilla.io/v1alpha1", "kind": "InstanceSet",
                            "name": "redis", "uid": owner,
                        }]},
                        "spec": {"clusterIP": "10.96.0.9"},
                    }),
                )
                .await;
            if works {
                pod_created(&mut server).await;
            }
        });
        let applied = backend.apply(&set.0, &Action::Create { ordinal: 0 }).await;
        timeout_after_1s(handle).await;
        match applied {
            Ok(_) => assert!(works, "a foreign Service must stop the create"),
            Err(e) => {
                assert!(!works, "{e}");
                let e = e.to_string();
                assert!(
                    e.contains("service cache/redis exists and is not this set's")
                        && e.contains("spec.redis.announce: Hostname"),
                    "{e}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_converged_set_costs_two_lists_and_no_write() {
    let (backend, server) = testcontext();
    let set = Set::test();
    let pods = set.running_pods(&[0, 1, 5]);
    let claims = set.claims(&[0, 1, 5]);
    let set = set.status_for(&pods, &claims);
    let server = server.run(Scenario::Converged { pods, claims });
    let controller = sequential(Arc::new(backend));
    let pass = controller.reconcile(&set.valid()).await.unwrap();
    timeout_after_1s(server).await;
    assert!(pass.actions.is_empty(), "{:?}", pass.actions);
    assert_eq!(pass.writes, 0);
    assert!(pass.converged);
}

#[tokio::test]
async fn a_new_image_is_patched_in_place_highest_ordinal_first() {
    let (backend, server) = testcontext();
    let old = Set::test();
    let pods = old.running_pods(&[0, 1, 5]);
    let claims = old.claims(&[0, 1, 5]);
    let new = old.image("redis:7.4");
    let revision = Revision::of(&new.0.spec).revision;
    let server = server.run(Scenario::InPlaceImage {
        pods,
        claims,
        ordinal: 5,
        image: "redis:7.4".into(),
        revision,
    });
    let controller = sequential(Arc::new(backend));
    let pass = controller.reconcile(&new.valid()).await.unwrap();
    timeout_after_1s(server).await;
    assert_eq!(pass.actions, [Action::UpdateInPlace { ordinal: 5 }]);
    assert_eq!(pass.writes, 2, "the patch and the status");
}

/// `pod` as the API server returns it once `patch` (an in-place patch) landed and
/// before the kubelet acted on it: Ready still True, the container as it was.
fn patched_in_place(mut pod: Pod, patch: &Value) -> Pod {
    for (k, v) in patch["metadata"]["labels"].as_object().unwrap() {
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert(k.clone(), v.as_str().unwrap().into());
    }
    for (k, v) in patch["metadata"]["annotations"].as_object().unwrap() {
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(k.clone(), v.as_str().unwrap().into());
    }
    let image = patch["spec"]["containers"][0]["image"].as_str().unwrap();
    pod.spec.as_mut().unwrap().containers[0].image = Some(image.into());
    pod
}

fn container_status(mut pod: Pod, image_id: &str, restarts: i32) -> Pod {
    pod.status.as_mut().unwrap().container_statuses =
        Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
            name: "redis".into(),
            image: "redis".into(),
            image_id: image_id.into(),
            restart_count: restarts,
            ready: true,
            ..Default::default()
        }]);
    pod
}

/// The rollout waits for the kubelet: a pod patched in place whose container has not
/// restarted yet is not ready, so (maxUnavailable 1) the next pass patches nothing;
/// once it restarted, the next pod is patched.
#[tokio::test]
async fn an_in_place_update_waits_for_the_container_to_restart() {
    let old = Set::test();
    let pods: Vec<Pod> = old
        .running_pods(&[0, 1, 5])
        .into_iter()
        .map(|p| container_status(p, "sha256:old", 0))
        .collect();
    let claims = old.claims(&[0, 1, 5]);
    let new = old.image("redis:7.4");
    let patch = objects::in_place_patch(&new.0, 5, &pods[2]).expect("ordinal 5 is outdated");
    let mut waiting = pods.clone();
    waiting[2] = patched_in_place(pods[2].clone(), &patch);

    let (client, seen, server) = fake_api(answer_from(waiting.clone(), claims.clone()));
    let controller = sequential(Arc::new(KubeBackend::with_epoch(client, "test")));
    let pass = controller.reconcile(&new.valid()).await.unwrap();
    drop(controller);
    finished(server).await;
    assert!(pass.actions.is_empty(), "{:?}", pass.actions);
    assert!(!pass.converged);
    let requests = seen.lock().unwrap().clone();
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with(&format!("PATCH {PODS}"))),
        "{requests:?}"
    );

    // The kubelet restarted it on the new image: ordinal 1 is next.
    let mut restarted = waiting;
    restarted[2] = container_status(restarted[2].clone(), "sha256:new", 1);
    let (client, _seen, server) = fake_api(answer_from(restarted, claims));
    let controller = sequential(Arc::new(KubeBackend::with_epoch(client, "test")));
    let pass = controller.reconcile(&new.valid()).await.unwrap();
    drop(controller);
    finished(server).await;
    assert_eq!(pass.actions, [Action::UpdateInPlace { ordinal: 1 }]);
}

#[tokio::test]
async fn an_ordinal_leaving_the_slice_deletes_its_pod_and_keeps_its_claim() {
    let (backend, server) = testcontext();
    let set = Set::test().ordinals(&[(0, 1)], &[5]);
    let pods = set.running_pods(&[0, 1, 5]);
    let claims = set.claims(&[0, 1, 5]);
    let set = set.ordinals(&[(0, 1)], &[]);
    let server = server.run(Scenario::ScaleIn {
        pods,
        claims,
        deleted: 5,
    });
    let controller = sequential(Arc::new(backend));
    let pass = controller.reconcile(&set.valid()).await.unwrap();
    timeout_after_1s(server).await;
    assert_eq!(pass.actions, [Action::Delete { ordinal: 5 }]);
    assert_eq!(pass.writes, 2);
}

#[tokio::test]
async fn writes_whose_end_state_holds_are_unchanged() {
    let (backend, server) = testcontext();
    let set = Set::test();
    let mut current = set.running_pods(&[0]).remove(0);
    current
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(ROLE_LABEL.into(), "primary".into());
    current.metadata.annotations = Some(BTreeMap::from([
        (ROLE_VERSION_ANNOTATION.to_string(), "3".to_string()),
        (ROLE_EPOCH_ANNOTATION.to_string(), "test".to_string()),
    ]));
    let server = server.run(Scenario::AlreadyDone { current });
    let actions = [
        Action::Create { ordinal: 0 },
        Action::CreateVolume {
            ordinal: 0,
            claim: "data".into(),
        },
        Action::Delete { ordinal: 9 },
        Action::DeleteVolume {
            ordinal: 9,
            claim: "data".into(),
        },
        Action::UpdateInPlace { ordinal: 0 },
        Action::SetRole {
            ordinal: 0,
            role: Some("primary".into()),
            version: 3,
        },
    ];
    for action in &actions {
        assert_eq!(
            backend.apply(&set.0, action).await.unwrap(),
            Applied::Unchanged,
            "{action}"
        );
    }
    // The status equals the one the set carries: no request at all.
    let status = set.0.status.clone().unwrap_or_default();
    let mut with_status = set.0.clone();
    with_status.status = Some(status.clone());
    assert_eq!(
        backend.write_status(&with_status, &status).await.unwrap(),
        Applied::Unchanged
    );
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn a_role_is_a_label_with_its_probe_version_and_epoch() {
    let (backend, server) = testcontext();
    let set = Set::test();
    let pod = set.running_pods(&[1]).remove(0);
    let server = server.run(Scenario::SetRole { pod });
    let action = Action::SetRole {
        ordinal: 1,
        role: Some("primary".into()),
        version: 7,
    };
    assert_eq!(
        backend.apply(&set.0, &action).await.unwrap(),
        Applied::Wrote
    );
    timeout_after_1s(server).await;
}

#[tokio::test]
async fn capacity_is_allocatable_minus_requests_grouped() {
    let (backend, server) = testcontext();
    let server = server.run(Scenario::Capacity);
    let model = backend.capacity().await.unwrap();
    timeout_after_1s(server).await;
    let groups: Vec<(u32, BTreeMap<String, String>)> = model
        .node_groups
        .iter()
        .map(|g| {
            (
                g.count,
                g.free
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
            )
        })
        .collect();
    let free = |cpu: &str, memory: &str, pods: &str| {
        BTreeMap::from([
            ("cpu".to_string(), cpu.to_string()),
            ("memory".to_string(), memory.to_string()),
            ("pods".to_string(), pods.to_string()),
        ])
    };
    assert_eq!(
        groups,
        [(1, free("3", "12Gi", "109")), (2, free("4", "16Gi", "110"))]
    );
}

#[tokio::test]
async fn a_request_the_scenario_did_not_expect_fails_the_pass() {
    let (backend, server) = testcontext();
    // The server expects nothing: the first list already fails.
    drop(server);
    let controller = sequential(Arc::new(backend));
    let e = controller
        .reconcile(&Set::test().valid())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("listing pods"), "{e}");
}

// The fake Redis instances listen on 127.0.0.2 and 127.0.0.6: Linux routes all of
// 127.0.0.0/8 to the loopback interface; other systems may not.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_switchover_promotes_the_new_primary_and_repoints_the_others_by_pod_ip() {
    let port = free_port();
    let (set, pods) = redis_set(port);
    let old = FakeRedis::start("127.0.0.1", port, "master").await;
    let new = FakeRedis::start("127.0.0.2", port, "slave").await;
    let other = FakeRedis::start("127.0.0.6", port, "slave").await;
    let (backend, server) = testcontext();
    let server = server.run(Scenario::Switchover { pods });
    let switchover = Action::Switchover {
        role: "primary".into(),
        from: 0,
        to: 1,
    };
    assert_eq!(
        backend.apply(&set.0, &switchover).await.unwrap(),
        Applied::Wrote
    );
    assert_eq!(
        backend.apply(&set.0, &switchover).await.unwrap(),
        Applied::Unchanged,
        "the new primary says master and the old one does not: done already"
    );
    timeout_after_1s(server).await;
    let repoint = format!("REPLICAOF 127.0.0.2 {port}");
    assert_eq!(new.commands(), ["ROLE", "REPLICAOF NO ONE", "ROLE"]);
    assert_eq!(old.commands(), [repoint.as_str(), "ROLE"]);
    assert_eq!(other.commands(), [repoint.as_str()]);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_role_probe_asks_the_pod_ip_and_maps_the_answer() {
    let port = free_port();
    let (set, pods) = redis_set(port);
    let redis = FakeRedis::start("127.0.0.2", port, "master").await;
    let (backend, server) = testcontext();
    let server = server.run(Scenario::Probe {
        pod: pods[1].clone(),
    });
    assert_eq!(
        backend.probe_role(&set.0, 1).await.unwrap().as_deref(),
        Some("primary")
    );
    timeout_after_1s(server).await;
    assert_eq!(redis.commands(), ["ROLE"]);
}

/// Port-forwarded Redis (the agent outside the cluster). The websocket stream of a
/// successful port-forward cannot be mocked here (tower-test answers plain HTTP, no
/// upgrade); this checks the requests, and that a refusal fails the probe naming the
/// pod. RESP over the stream is tested in flotilla-member (`redis`, over in-memory
/// streams); the two together only against a real cluster.
#[tokio::test]
async fn a_port_forwarded_probe_asks_the_portforward_subresource_of_the_pod() {
    let (set, pods) = redis_set(6390);
    let (backend, mut server) = testcontext();
    let backend = backend.with_pod_access(PodAccess::PortForward);
    assert_eq!(backend.pod_access(), PodAccess::PortForward);
    let server = tokio::spawn(async move {
        let (request, send) = server.next().await;
        assert_eq!(request.uri().path(), format!("{PODS}/redis-1"));
        send.send_response(ok(json!(pods[1])));
        let (request, send) = server.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), format!("{PODS}/redis-1/portforward"));
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(query.contains("ports=6390"), "{query}");
        send.send_response(respond(
            StatusCode::FORBIDDEN,
            status_body(403, "Forbidden", "pods/portforward is forbidden"),
        ));
    });
    let e = backend.probe_role(&set.0, 1).await.unwrap_err();
    timeout_after_1s(server).await;
    let e = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(e.contains("redis-1"), "{e}");
    assert!(e.contains("port-forward to pod redis-1 port 6390"), "{e}");
}

/// Through port-forward, an address a sentinel announced is reached through the pod that
/// has that IP (found by a field-selected list: the agent has not looked at the
/// sentinel set yet) on the address's port.
#[tokio::test]
async fn a_port_forwarded_sentinel_address_is_reached_through_the_pod_that_has_it() {
    let (set, _) = redis_set(6390);
    let (backend, mut server) = testcontext();
    let backend = backend.with_pod_access(PodAccess::PortForward);
    let server = tokio::spawn(async move {
        let (request, send) = server.next().await;
        assert_eq!(request.uri().path(), PODS);
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(
            query.contains("fieldSelector=status.podIP%3D10.0.0.7"),
            "{query}"
        );
        send.send_response(list_of(
            "PodList",
            json!([{"metadata": {"name": "redis-sentinel-1", "namespace": "cache"},
                    "status": {"podIP": "10.0.0.7"}}]),
        ));
        let (request, send) = server.next().await;
        assert_eq!(
            request.uri().path(),
            format!("{PODS}/redis-sentinel-1/portforward")
        );
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(query.contains("ports=26379"), "{query}");
        send.send_response(respond(
            StatusCode::FORBIDDEN,
            status_body(403, "Forbidden", "pods/portforward is forbidden"),
        ));
    });
    let e = backend
        .redis_at(
            &set.0,
            "10.0.0.7:26379",
            &["SENTINEL", "FAILOVER", "redis"],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    timeout_after_1s(server).await;
    let e = format!(
        "{e}: {}",
        std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        e.contains("port-forward to pod redis-sentinel-1 port 26379"),
        "{e}"
    );
}

/// A `<pod>.<service>.<ns>.svc` name of the set's namespace is that pod: no lookup.
#[tokio::test]
async fn a_port_forwarded_pod_dns_name_is_forwarded_to_that_pod() {
    let (set, _) = redis_set(6390);
    let (backend, mut server) = testcontext();
    let backend = backend.with_pod_access(PodAccess::PortForward);
    let server = tokio::spawn(async move {
        let (request, send) = server.next().await;
        assert_eq!(
            request.uri().path(),
            format!("{PODS}/redis-sentinel-0/portforward")
        );
        send.send_response(respond(
            StatusCode::FORBIDDEN,
            status_body(403, "Forbidden", "pods/portforward is forbidden"),
        ));
    });
    let e = backend
        .redis_at(
            &set.0,
            "redis-sentinel-0.redis-sentinel.cache.svc:26379",
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "redis"],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    timeout_after_1s(server).await;
    assert!(format!("{e:?}").contains("redis-sentinel-0"), "{e:?}");
}

/// An address no pod of the namespace has (a sentinel in another member) is dialled
/// directly, even through port-forward; with direct access nothing is asked of the API.
#[tokio::test]
async fn an_address_of_no_pod_here_is_dialled_directly() {
    let port = free_port();
    let fake = FakeRedis::start("127.0.0.9", port, "sentinel").await;
    let endpoint = format!("127.0.0.9:{port}");
    let (set, _) = redis_set(6390);
    let (backend, mut server) = testcontext();
    let forwarding = backend.clone().with_pod_access(PodAccess::PortForward);
    let lookups = tokio::spawn(async move {
        let (request, send) = server.next().await;
        assert_eq!(request.uri().path(), PODS);
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(
            query.contains("fieldSelector=status.podIP%3D127.0.0.9"),
            "{query}"
        );
        send.send_response(list_of("PodList", json!([])));
        // The miss is remembered, and direct access asks nothing: no further request.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), server.next())
                .await
                .is_err(),
            "a second lookup or direct access asked the API server"
        );
    });
    let reply = forwarding
        .redis_at(
            &set.0,
            &endpoint,
            &["SENTINEL", "FAILOVER", "redis"],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert_eq!(reply, redis::Reply::Simple("OK".into()));
    // Polled again (as during a switchover): no second lookup.
    forwarding
        .redis_at(&set.0, &endpoint, &["PING"], Duration::from_secs(1))
        .await
        .unwrap();
    let direct = backend.with_pod_access(PodAccess::Direct);
    direct
        .redis_at(
            &set.0,
            &endpoint,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "redis"],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    timeout_after_1s(lookups).await;
    assert_eq!(
        fake.commands(),
        [
            "SENTINEL FAILOVER redis",
            "PING",
            "SENTINEL GET-MASTER-ADDR-BY-NAME redis"
        ]
    );
}

/// A switchover through port-forward asks the new primary first (its role, then
/// `REPLICAOF NO ONE`), each over a port-forward of its own; when that is refused, no
/// other pod is touched and the switchover fails.
#[tokio::test]
async fn a_port_forwarded_switchover_that_is_refused_stops_at_the_new_primary() {
    let (set, pods) = redis_set(6390);
    let (backend, mut server) = testcontext();
    let backend = backend.with_pod_access(PodAccess::PortForward);
    let server = tokio::spawn(async move {
        let (request, send) = server.next().await;
        assert_eq!(request.uri().path(), PODS);
        send.send_response(list_of("PodList", json!(pods)));
        for _ in 0..2 {
            let (request, send) = server.next().await;
            assert_eq!(request.uri().path(), format!("{PODS}/redis-1/portforward"));
            send.send_response(respond(
                StatusCode::FORBIDDEN,
                status_body(403, "Forbidden", "pods/portforward is forbidden"),
            ));
        }
        // Dropping the server here: any further request fails the switchover anyway,
        // and `timeout_after_1s` has already seen the two above.
    });
    let switchover = Action::Switchover {
        role: "primary".into(),
        from: 0,
        to: 1,
    };
    let e = backend.apply(&set.0, &switchover).await.unwrap_err();
    timeout_after_1s(server).await;
    let e = e.to_string();
    assert!(e.contains("redis-1"), "{e}");
    assert!(e.contains("port-forward"), "{e}");
    assert!(!e.contains("redis-0") && !e.contains("redis-5"), "{e}");
}

/// The websocket stream of a successful exec cannot be mocked here; this checks the
/// request and that a refusal fails the probe, naming the pod. A running exec probe is
/// only exercised by the cluster tests.
#[tokio::test]
async fn an_exec_probe_asks_the_exec_subresource_of_the_first_container() {
    let (backend, mut server) = testcontext();
    let server = tokio::spawn(async move {
        let (request, send) = server.next().await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), format!("{PODS}/redis-0/exec"));
        let query = request.uri().query().unwrap_or_default().to_string();
        for part in [
            "command=cat",
            "command=%2Frole",
            "container=redis",
            "stdout=true",
        ] {
            assert!(query.contains(part), "{query} has {part}");
        }
        assert!(!query.contains("stderr=true"), "{query}");
        send.send_response(respond(
            StatusCode::FORBIDDEN,
            status_body(403, "Forbidden", "pods/exec is forbidden"),
        ));
    });
    let mut set = Set::test();
    set.0.spec.role_probe =
        Some(serde_json::from_value(json!({"exec": {"command": ["cat", "/role"]}})).unwrap());
    let e = backend.probe_role(&set.0, 0).await.unwrap_err();
    timeout_after_1s(server).await;
    let e = e.to_string();
    assert!(e.contains("cache/redis-0"), "{e}");
    assert!(e.contains("exec in pod cache/redis-0"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Lost nodes and node-local volumes.
// ---------------------------------------------------------------------------------------

/// Pods of ordinals 0, 1 and 5, of which 0 is not ready (its node, `node-0`, is gone),
/// and their claims, bound to `pv-<ordinal>`.
fn stranded(set: &Set) -> (Vec<Pod>, Vec<PersistentVolumeClaim>) {
    let mut pods = set.running_pods(&[0, 1, 5]);
    pods[0]
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .status = "False".into();
    let mut claims = set.claims(&[0, 1, 5]);
    for (claim, o) in claims.iter_mut().zip([0, 1, 5]) {
        claim.spec.as_mut().unwrap().volume_name = Some(format!("pv-{o}"));
    }
    (pods, claims)
}

#[tokio::test]
async fn a_pod_on_a_vanished_node_with_a_local_volume_is_rebuilt_when_the_set_allows_it() {
    let (backend, server) = testcontext();
    let set = Set::test().rebuild();
    let (pods, claims) = stranded(&set);
    let server = server.run(Scenario::LostNode {
        pods,
        claims,
        rebuild: true,
    });
    let controller = sequential(Arc::new(backend));
    let pass = controller.reconcile(&set.valid()).await.unwrap();
    timeout_after_1s(server).await;
    assert_eq!(
        pass.actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["delete-volume data-0", "rebuild 0"]
    );
    assert_eq!(pass.writes, 3, "the claim, the pod and the status");
}

#[tokio::test]
async fn a_pod_on_a_vanished_node_waits_by_default_and_the_status_says_why() {
    let (backend, server) = testcontext();
    let set = Set::test();
    let (pods, claims) = stranded(&set);
    let server = server.run(Scenario::LostNode {
        pods,
        claims,
        rebuild: false,
    });
    let controller = sequential(Arc::new(backend));
    let first = controller.reconcile(&set.valid()).await.unwrap();
    let second = controller.reconcile(&set.valid()).await.unwrap();
    timeout_after_1s(server).await;
    assert!(first.actions.is_empty(), "{:?}", first.actions);
    assert_eq!(first.writes, 1, "the status only");
    assert!(
        first
            .blocked
            .as_deref()
            .is_some_and(|b| b.contains("stranded on lost node node-0")),
        "{first:?}"
    );
    assert!(second.actions.is_empty());
    assert_eq!(second.writes, 0, "waiting costs reads only");
}

// ---------------------------------------------------------------------------------------
// A permissive mock API server for tests that count requests rather than script them.
// ---------------------------------------------------------------------------------------

/// A client on a mock API server that answers every request with `answer(method, path,
/// query)` and records it as `METHOD path?query`; every request must be granted by the
/// agent's permission table. The records come back once every client is dropped.
fn fake_api(
    answer: impl Fn(&Method, &str, &str) -> Response<Body> + Send + 'static,
) -> (
    kube::Client,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    fake_api_logged(answer, Arc::default())
}

/// [`fake_api`] recording into `seen` (shared with other fakes).
fn fake_api_logged(
    answer: impl Fn(&Method, &str, &str) -> Response<Body> + Send + 'static,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) -> (
    kube::Client,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let record = Arc::clone(&seen);
    let server = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            // `/version` is a non-resource URL every authenticated user may read
            // (`system:public-info-viewer`), not in the permission table.
            if request.uri().path() != "/version" {
                assert_granted(&request);
            }
            let (method, path) = (request.method().clone(), request.uri().path().to_string());
            let query = request.uri().query().unwrap_or_default().to_string();
            record
                .lock()
                .unwrap()
                .push(format!("{method} {path}?{query}"));
            send.send_response(answer(&method, &path, &query));
        }
    });
    (kube::Client::new(service, "default"), seen, server)
}

fn list_of(kind: &str, items: Value) -> Response<Body> {
    ok(
        json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        status_body(404, "NotFound", "not found"),
    )
}

/// Answers the reads and writes of a Redis set's passes from `pods` and `claims`.
fn answer_from(
    pods: Vec<Pod>,
    claims: Vec<PersistentVolumeClaim>,
) -> impl Fn(&Method, &str, &str) -> Response<Body> + Send + 'static {
    move |method, path, _query| match (method.as_str(), path) {
        ("GET", PODS) => list_of("PodList", json!(pods)),
        ("GET", PVCS) => list_of("PersistentVolumeClaimList", json!(claims)),
        ("GET", p) if p.starts_with(PODS) => pods
            .iter()
            .find(|pod| p.ends_with(&format!("/{}", pod.metadata.name.as_deref().unwrap())))
            .map_or_else(not_found, |pod| ok(json!(pod))),
        ("PATCH", STATUS) => ok(json!(Set::test().0)),
        ("PATCH", _) => ok(json!({"metadata": {"name": "patched"}})),
        _ => not_found(),
    }
}

fn lists(requests: &[String]) -> usize {
    requests
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains(BY_SET))
        .count()
}

async fn finished(server: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the client was dropped")
        .expect("every request was granted");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_probing_pass_lists_pods_and_claims_once() {
    let port = free_port();
    let (set, pods) = redis_set(port);
    let claims = set.claims(&[0, 1, 5]);
    let _redis = [
        FakeRedis::start("127.0.0.1", port, "master").await,
        FakeRedis::start("127.0.0.2", port, "slave").await,
        FakeRedis::start("127.0.0.6", port, "slave").await,
    ];
    // Controller::pass: one observation, the probes, the plan.
    let (client, seen, server) = fake_api(answer_from(pods.clone(), claims.clone()));
    let controller = sequential(Arc::new(KubeBackend::with_epoch(client, "test")));
    let pass = controller.pass(&set.valid(), true).await.unwrap();
    drop(controller);
    finished(server).await;
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        pass.actions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "set-role 0=primary",
            "set-role 1=secondary",
            "set-role 5=secondary"
        ]
    );
    let list = |path: &str| format!("GET {path}?&{BY_SET}");
    let get = |o: u32| format!("GET {PODS}/redis-{o}?");
    let patch = |o: u32| format!("PATCH {PODS}/redis-{o}?&fieldManager=flotilla");
    assert_eq!(
        requests,
        [
            list(PODS),
            list(PVCS),
            // The probes read each pod for its IP.
            get(0),
            get(1),
            get(5),
            // The role labels.
            get(0),
            patch(0),
            get(1),
            patch(1),
            get(5),
            patch(5),
            format!("PATCH {STATUS}?&force=true&fieldManager=flotilla"),
        ]
    );
    assert_eq!(lists(&requests), 2);

    // probe_roles then reconcile: the same pass observes twice.
    let (client, seen, server) = fake_api(answer_from(pods, claims));
    let controller = sequential(Arc::new(KubeBackend::with_epoch(client, "test")));
    controller.probe_roles(&set.0).await.unwrap();
    controller.reconcile(&set.valid()).await.unwrap();
    drop(controller);
    finished(server).await;
    assert_eq!(lists(&seen.lock().unwrap()), 4);
}

/// Drives every code path of the backend, the standalone agent and the federated
/// agent's requests (`FederatedSets`) once against a permissive mock and checks that
/// the requests need exactly the rows of `rbac::REQUIRED_PERMISSIONS`: none missing
/// (every request is granted, see `fake_api`), none unused.
#[tokio::test]
async fn every_permission_the_agent_holds_is_used() {
    let set = Set::test().rebuild();
    let (pods, claims) = stranded(&set);
    let (client, seen, server) = {
        let pods = pods.clone();
        fake_api(move |method, path, query| {
            let watch = query.contains("watch=true");
            match (method.as_str(), path) {
                (_, _) if watch => ok(json!(null)).map(|_| Body::empty()),
                ("GET", PODS) => list_of("PodList", json!(pods)),
                ("GET", PVCS) => list_of("PersistentVolumeClaimList", json!(claims)),
                ("GET", "/api/v1/nodes") => list_of("NodeList", json!([])),
                ("GET", "/api/v1/pods") => list_of("PodList", json!([])),
                ("GET", "/apis/flotilla.io/v1alpha1/instancesets") => {
                    list_of("InstanceSetList", json!([]))
                }
                ("GET", "/version") => ok(json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "",
                    "gitTreeState": "clean", "buildDate": "", "goVersion": "go1.24",
                    "compiler": "gc", "platform": "linux/amd64",
                })),
                ("GET", "/api/v1/persistentvolumes/pv-0") => ok(local_pv("pv-0", "node-0")),
                ("GET", "/api/v1/namespaces/cache/services/redis") => {
                    ok(json!(objects::headless_service(&Set::test().0).unwrap()))
                }
                ("GET", p) if p.ends_with("/portforward") => respond(
                    StatusCode::FORBIDDEN,
                    status_body(403, "Forbidden", "no port-forward here"),
                ),
                ("GET", p) if p.ends_with("/exec") => respond(
                    StatusCode::FORBIDDEN,
                    status_body(403, "Forbidden", "no exec here"),
                ),
                ("GET", p) if p.starts_with(PODS) => ok(json!(pods[0])),
                ("POST", _) => respond(
                    StatusCode::CONFLICT,
                    status_body(409, "AlreadyExists", "already exists"),
                ),
                ("PATCH", STATUS) => ok(json!(Set::test().0)),
                ("PATCH" | "DELETE", _) => ok(json!({"metadata": {"name": "x"}})),
                _ => not_found(),
            }
        })
    };
    let backend = KubeBackend::with_epoch(client.clone(), "test");
    // observe: pods, claims, nodes (a pod is not ready), the PV of its claim.
    let observed = backend.observe(&set.0).await.unwrap();
    assert!(observed.instances.iter().any(|i| i.node_lost));
    let newer = set.clone().image("redis:7.4");
    let hostname = set.clone().hostname();
    for (s, action) in [
        (
            &set,
            Action::CreateVolume {
                ordinal: 0,
                claim: "data".into(),
            },
        ),
        (&set, Action::Create { ordinal: 0 }),
        // POST services (409 here), then GET it: the set owns it.
        (&hostname, Action::Create { ordinal: 0 }),
        (&newer, Action::UpdateInPlace { ordinal: 0 }),
        (
            &set,
            Action::SetRole {
                ordinal: 0,
                role: Some("primary".into()),
                version: 1,
            },
        ),
        (
            &set,
            Action::Recreate {
                ordinal: 0,
                why: flotilla_instanceset::Why::NodeLost,
            },
        ),
        (&set, Action::Delete { ordinal: 9 }),
        (
            &set,
            Action::DeleteVolume {
                ordinal: 9,
                claim: "data".into(),
            },
        ),
    ] {
        backend.apply(&s.0, &action).await.unwrap();
    }
    let status = flotilla_api::InstanceSetStatus {
        replicas: 3,
        ..Default::default()
    };
    backend.write_status(&set.0, &status).await.unwrap();
    let mut exec = set.clone();
    exec.0.spec.role_probe =
        Some(serde_json::from_value(json!({"exec": {"command": ["cat", "/role"]}})).unwrap());
    backend.probe_role(&exec.0, 0).await.unwrap_err();
    // A Redis probe through the API server (the agent outside the cluster).
    let mut forwarded = set.clone();
    forwarded.0.spec.role_probe =
        Some(serde_json::from_value(json!({"redis": {"port": 6379}})).unwrap());
    backend
        .clone()
        .with_pod_access(PodAccess::PortForward)
        .probe_role(&forwarded.0, 0)
        .await
        .unwrap_err();
    backend.capacity().await.unwrap();
    // The federated agent: list, apply, delete, version, capacity.
    let federated = flotilla_kube::FederatedSets::new(client.clone());
    federated.list().await.unwrap();
    federated.apply(&set.0).await.unwrap();
    federated.delete(NS, "redis").await.unwrap();
    federated.kubernetes_version().await.unwrap();
    federated.capacity().await.unwrap();
    drop(federated);
    // The standalone agent's watches, until both have started.
    let watching = {
        let seen = Arc::clone(&seen);
        async move {
            loop {
                let both = {
                    let seen = seen.lock().unwrap();
                    let watches = |path: &str| {
                        seen.iter().any(|r| {
                            r.starts_with(&format!("GET {path}?")) && r.contains("watch=true")
                        })
                    };
                    watches("/apis/flotilla.io/v1alpha1/instancesets") && watches("/api/v1/pods")
                };
                if both {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let options = flotilla_kube::standalone::Options {
        shutdown_grace: Duration::from_millis(100),
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        flotilla_kube::standalone::run(client, options, watching),
    )
    .await
    .expect("the standalone agent watched and stopped")
    .unwrap();
    drop(backend);
    finished(server).await;
    let used: std::collections::BTreeSet<(String, String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|line| !line.starts_with("GET /version?"))
        .map(|line| {
            let (method, rest) = line.split_once(' ').unwrap();
            let (path, query) = rest.split_once('?').unwrap();
            rbac::request_attributes(method, path, Some(query))
        })
        .collect::<Option<_>>()
        .expect("every request but /version is a resource request");
    let row = |p: &rbac::Permission| (p.api_group.into(), p.resource.into(), p.verb.into());
    let held: std::collections::BTreeSet<(String, String, String)> =
        rbac::REQUIRED_PERMISSIONS.iter().map(row).collect();
    // Rows the API server checks on top of another request (rbac::Checked::Implied): no
    // request shows them, so each is counted used once the request it rides on was made.
    let implied: std::collections::BTreeSet<(String, String, String)> = rbac::REQUIRED_PERMISSIONS
        .iter()
        .filter(|p| matches!(p.checked, rbac::Checked::Implied(_)))
        .map(row)
        .collect();
    assert!(
        used.is_disjoint(&implied),
        "a row marked implied is requested outright: {:?}",
        used.intersection(&implied).collect::<Vec<_>>()
    );
    let made = |prefix: &str| seen.lock().unwrap().iter().any(|r| r.starts_with(prefix));
    let mut used = used;
    for (group, resource, verb) in &implied {
        let rides_on = match (group.as_str(), resource.as_str(), verb.as_str()) {
            // pods/exec: the request is a GET (authorized as get); API servers with
            // AuthorizePodWebsocketUpgradeCreatePermission also check create on it.
            ("", "pods/exec", "create") => made(&format!("GET {PODS}/redis-0/exec?")),
            // pods/portforward: likewise a GET upgraded to a websocket.
            ("", "pods/portforward", "create") => made(&format!("GET {PODS}/redis-0/portforward?")),
            // A server-side apply (a PATCH, authorized as patch) of an object that does
            // not exist yet creates it, and the API server then also checks create: the
            // federated apply above needs it for a new slice.
            ("flotilla.io", "instancesets", "create") => {
                made("PATCH /apis/flotilla.io/v1alpha1/namespaces/cache/instancesets/redis?")
            }
            // OwnerReferencesPermissionEnforcement: creating a pod whose owner
            // reference sets blockOwnerDeletion needs update on the owner's finalizers.
            ("flotilla.io", "instancesets/finalizers", "update") => {
                let blocks = objects::pod(&set.0, 0)
                    .unwrap()
                    .metadata
                    .owner_references
                    .unwrap()
                    .iter()
                    .any(|o| o.block_owner_deletion == Some(true));
                blocks && made(&format!("POST {PODS}?"))
            }
            other => panic!("no request known to imply {other:?}"),
        };
        assert!(
            rides_on,
            "the request that implies {resource} {verb} was made"
        );
        used.insert((group.clone(), resource.clone(), verb.clone()));
    }
    assert_eq!(used, held);
}

// ---------------------------------------------------------------------------------------
// The concurrent commit against the mock API server: what may go together goes
// together, and what depends on another request waits for its answer.
// ---------------------------------------------------------------------------------------

/// A mock API server that answers every request in a task of its own, a claim's POST
/// after `claim_delay`, and logs `arrive …` and `answer …` events in the order they
/// happen.
fn concurrent_api(
    claim_delay: Duration,
) -> (
    kube::Client,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&log);
    let server = tokio::spawn(async move {
        let mut answering = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            assert_granted(&request);
            let record = Arc::clone(&record);
            answering.push(tokio::spawn(async move {
                let method = request.method().clone();
                let path = request.uri().path().to_string();
                let body = if method == Method::GET {
                    Value::Null
                } else {
                    body(request).await
                };
                let what = match body["metadata"]["name"].as_str() {
                    Some(name) => format!("{method} {path} {name}"),
                    None => format!("{method} {path}"),
                };
                record.lock().unwrap().push(format!("arrive {what}"));
                let response = match (method.as_str(), path.as_str()) {
                    ("GET", PODS) => list_of("PodList", json!([])),
                    ("GET", PVCS) => list_of("PersistentVolumeClaimList", json!([])),
                    ("POST", PVCS) => {
                        tokio::time::sleep(claim_delay).await;
                        created(body)
                    }
                    ("POST", PODS) => created(body),
                    ("PATCH", STATUS) => ok(json!(Set::test().0)),
                    _ => not_found(),
                };
                record.lock().unwrap().push(format!("answer {what}"));
                send.send_response(response);
            }));
        }
        for task in answering {
            task.await.expect("every request was granted");
        }
    });
    (kube::Client::new(service, "default"), log, server)
}

// In paused time: the claims' delay is virtual, so the order of events is exact.
#[tokio::test(start_paused = true)]
async fn concurrently_the_claims_go_together_and_no_pod_is_created_before_its_claim() {
    let (client, log, server) = concurrent_api(Duration::from_millis(50));
    let controller = Controller::new(Arc::new(KubeBackend::with_epoch(client, "test")));
    let pass = controller.reconcile(&Set::test().valid()).await.unwrap();
    assert_eq!(pass.writes, 7, "six creates and the status");
    drop(controller);
    finished(server).await;
    let log = log.lock().unwrap().clone();
    let at = |event: &str| {
        log.iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event:?} in {log:#?}"))
    };
    for o in [0, 1, 5] {
        let claim = format!("POST {PVCS} data-redis-{o}");
        let pod = format!("POST {PODS} redis-{o}");
        assert!(
            at(&format!("answer {claim}")) < at(&format!("arrive {pod}")),
            "pod {o} is created only once its claim is: {log:#?}"
        );
        // Every claim was asked for before the first one was answered: together.
        assert!(
            at(&format!("arrive {claim}")) < at(&format!("answer POST {PVCS} data-redis-0")),
            "{log:#?}"
        );
    }
    let status = at(&format!("arrive PATCH {STATUS}"));
    assert!(
        log.iter()
            .enumerate()
            .filter(|(_, e)| e.starts_with("answer POST"))
            .all(|(i, _)| i < status),
        "the status is written once, after every create: {log:#?}"
    );
}

/// Under the concurrent commit, the primary's instance is touched by nothing but the
/// switchover once it starts: its role label before, the switchover's own commands,
/// and no update of it in the same pass (the next pass updates it).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn concurrently_an_exclusive_holder_is_touched_only_before_and_by_its_switchover() {
    let port = free_port();
    let (set, mut pods) = redis_set(port);
    // The primary runs an older revision: it must hand over before its update.
    pods[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(REVISION_LABEL.into(), "old".into());
    let claims = set.claims(&[0, 1, 5]);
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _redis = [
        FakeRedis::start_logged("127.0.0.1", port, "master", Some(Arc::clone(&log))).await,
        FakeRedis::start_logged("127.0.0.2", port, "slave", Some(Arc::clone(&log))).await,
        FakeRedis::start_logged("127.0.0.6", port, "slave", Some(Arc::clone(&log))).await,
    ];
    let (client, _, server) = fake_api_logged(answer_from(pods.clone(), claims), Arc::clone(&log));
    let controller = Controller::new(Arc::new(KubeBackend::with_epoch(client, "test")));
    let pass = controller.pass(&set.valid(), true).await.unwrap();
    drop(controller);
    finished(server).await;
    let actions: Vec<String> = pass.actions.iter().map(ToString::to_string).collect();
    assert!(
        actions.contains(&"switchover primary 0->1".to_string())
            && !actions
                .iter()
                .any(|a| a.ends_with(" 0") && !a.starts_with("set-role")),
        "a switchover, and no update of the old primary in the same pass: {actions:?}"
    );
    let log = log.lock().unwrap().clone();
    let at = |event: &str| {
        log.iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event:?} in {log:#?}"))
    };
    let promoted = at("127.0.0.2 REPLICAOF NO ONE");
    let label = |o: u32| {
        log.iter()
            .rposition(|e| e.starts_with(&format!("PATCH {PODS}/redis-{o}?")))
            .unwrap_or_else(|| panic!("no label patch of {o} in {log:#?}"))
    };
    assert!(label(0) < promoted && label(1) < promoted, "{log:#?}");
    assert!(
        log[promoted..]
            .iter()
            .all(|e| !e.starts_with(&format!("PATCH {PODS}/redis-0")) && !e.starts_with("DELETE")),
        "nothing but the switchover touches the old primary once it starts: {log:#?}"
    );
}
