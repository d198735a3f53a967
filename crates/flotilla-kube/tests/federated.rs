//! `flotilla_kube::federated` (the federated agent's requests) against a **mock** API
//! server (`tower_test`), not a real one: the exact requests each call makes, answered
//! as an API server would. Every request must be granted by `rbac::REQUIRED_PERMISSIONS`
//! (the `FederatedAgent` rows, and `Standalone`'s list); `tests/mock_api.rs` checks that
//! every row is used.

use std::time::Duration;

use flotilla_api::InstanceSet;
use flotilla_kube::federated::{FEDERATED_LABEL, GENERATION_ANNOTATION, Mirrored};
use flotilla_kube::{FederatedSets, rbac};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const LIST: &str = "/apis/flotilla.io/v1alpha1/instancesets";
const OBJECT: &str = "/apis/flotilla.io/v1alpha1/namespaces/cache/instancesets/redis";

fn sets() -> (FederatedSets, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        FederatedSets::new(kube::Client::new(service, "default")),
        handle,
    )
}

/// The next request, which the permission table must grant.
async fn next(
    handle: &mut Handle,
) -> (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, send) = handle.next_request().await.expect("a request");
    let uri = request.uri();
    let (group, resource, verb) =
        rbac::request_attributes(request.method().as_str(), uri.path(), uri.query())
            .unwrap_or_else(|| panic!("{} {uri} is not a resource request", request.method()));
    assert!(
        rbac::granted(&group, &resource, &verb),
        "{} {uri} needs {verb} on {resource}, which rbac::REQUIRED_PERMISSIONS does not grant",
        request.method()
    );
    (request, send)
}

fn slice(generation: i64) -> InstanceSet {
    serde_json::from_value(json!({
        "apiVersion": "flotilla.io/v1alpha1",
        "kind": "InstanceSet",
        "metadata": {"name": "redis", "namespace": "cache", "generation": generation,
                     "uid": "federation-uid", "resourceVersion": "99",
                     "labels": {"app": "redis"}, "annotations": {"note": "kept"}},
        "spec": {
            "ordinals": {"ranges": [{"start": 0, "end": 2}]},
            "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}},
        },
        "status": {"replicas": 1},
    }))
    .unwrap()
}

fn reply(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn not_found(message: &str) -> Response<Body> {
    reply(
        StatusCode::NOT_FOUND,
        json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": message, "reason": "NotFound", "code": 404, "metadata": {},
        }),
    )
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

fn mirrored(observed_generation: i64) -> Mirrored {
    Mirrored {
        namespace: "cache".into(),
        name: "redis".into(),
        generation: Some(4),
        status: Some(flotilla_api::InstanceSetStatus {
            observed_generation: Some(observed_generation),
            replicas: 3,
            ready_replicas: 2,
            ..Default::default()
        }),
    }
}

async fn within_5s<T>(server: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("every expected request came")
        .expect("the scenario's assertions held")
}

#[tokio::test]
async fn list_asks_for_the_federated_label_in_all_namespaces() {
    let (sets, mut handle) = sets();
    let server = tokio::spawn(async move {
        let (request, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), LIST);
        let query = request.uri().query().unwrap_or_default();
        assert!(
            query.contains("labelSelector=flotilla.io%2Ffederated%3Dtrue"),
            "{query}"
        );
        // An object that does not decode is still listed (so it can be deleted),
        // without a status.
        let broken = json!({
            "metadata": {"name": "broken", "namespace": "cache", "generation": 1},
            "spec": {"ordinals": {"ranges": "nope"}, "template": {}},
        });
        send.send_response(reply(
            StatusCode::OK,
            json!({
                "apiVersion": "flotilla.io/v1alpha1", "kind": "InstanceSetList",
                "metadata": {}, "items": [stored(4), broken],
            }),
        ));
    });
    let listed = sets.list().await.unwrap();
    within_5s(server).await;
    assert_eq!(
        listed,
        vec![
            mirrored(4),
            Mirrored {
                namespace: "cache".into(),
                name: "broken".into(),
                generation: Some(1),
                status: None,
            }
        ]
    );
}

#[tokio::test]
async fn apply_is_a_forced_server_side_apply_of_name_labels_annotations_and_spec() {
    let (sets, mut handle) = sets();
    let server = tokio::spawn(async move {
        let (request, send) = next(&mut handle).await;
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
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["apiVersion"], "flotilla.io/v1alpha1");
        assert_eq!(body["kind"], "InstanceSet");
        assert_eq!(body["metadata"]["name"], "redis");
        assert_eq!(body["metadata"]["namespace"], "cache");
        assert_eq!(body["metadata"]["labels"][FEDERATED_LABEL], "true");
        assert_eq!(body["metadata"]["labels"]["app"], "redis");
        assert_eq!(body["metadata"]["annotations"][GENERATION_ANNOTATION], "7");
        assert_eq!(body["metadata"]["annotations"]["note"], "kept");
        assert!(body["metadata"].get("uid").is_none(), "{body}");
        assert!(body["metadata"].get("resourceVersion").is_none(), "{body}");
        assert!(body.get("status").is_none(), "{body}");
        assert_eq!(body["spec"]["ordinals"]["ranges"][0]["end"], 2);
        send.send_response(reply(StatusCode::OK, stored(3)));
    });
    let applied = sets.apply(&slice(7)).await.unwrap();
    within_5s(server).await;
    assert_eq!(
        applied,
        mirrored(3),
        "the object as stored, Kubernetes generation"
    );
}

#[tokio::test]
async fn a_refused_apply_names_the_set_and_the_api_servers_message() {
    let (sets, mut handle) = sets();
    let server = tokio::spawn(async move {
        let (_, send) = next(&mut handle).await;
        send.send_response(not_found("namespaces \"cache\" not found"));
    });
    let e = sets.apply(&slice(1)).await.unwrap_err();
    within_5s(server).await;
    let chain = e.chain();
    assert!(
        chain.starts_with("applying InstanceSet cache/redis"),
        "{chain}"
    );
    assert!(chain.contains("namespaces \"cache\" not found"), "{chain}");
}

#[tokio::test]
async fn delete_is_a_background_delete_and_a_missing_object_is_fine() {
    let (sets, mut handle) = sets();
    let server = tokio::spawn(async move {
        let (request, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::DELETE);
        assert_eq!(request.uri().path(), OBJECT);
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["propagationPolicy"], "Background", "{body}");
        send.send_response(reply(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
        ));
        let (request, send) = next(&mut handle).await;
        assert_eq!(request.method(), Method::DELETE);
        send.send_response(not_found("instancesets \"redis\" not found"));
        let (_, send) = next(&mut handle).await;
        send.send_response(reply(
            StatusCode::FORBIDDEN,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                   "message": "no", "reason": "Forbidden", "code": 403, "metadata": {}}),
        ));
    });
    assert!(sets.delete("cache", "redis").await.unwrap(), "deleted");
    assert!(
        !sets.delete("cache", "redis").await.unwrap(),
        "already gone"
    );
    let e = sets.delete("cache", "redis").await.unwrap_err();
    within_5s(server).await;
    assert!(
        e.chain().starts_with("deleting InstanceSet cache/redis"),
        "{}",
        e.chain()
    );
}

#[tokio::test]
async fn the_version_is_the_api_servers_git_version() {
    let (sets, mut handle) = sets();
    let server = tokio::spawn(async move {
        // A non-resource URL every authenticated user may read
        // (system:public-info-viewer), so not in the permission table.
        let (request, send) = handle.next_request().await.expect("a request");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/version");
        send.send_response(reply(
            StatusCode::OK,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1",
                   "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
                   "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ));
    });
    assert_eq!(sets.kubernetes_version().await.unwrap(), "v1.33.1");
    within_5s(server).await;
}
