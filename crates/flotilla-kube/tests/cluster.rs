//! The standalone agent against a real Kubernetes API server: whatever `KUBECONFIG`
//! (or the in-cluster config) points at. Ignored by default: no API server can run on
//! the build machines.
//!
//! ```text
//! cargo test -p flotilla-kube --test cluster -- --ignored --test-threads=1
//! ```
//!
//! Each test installs the generated CRD (`deploy/crds/instancesets.flotilla.io.yaml`),
//! makes a namespace of its own, runs `flotilla_kube::standalone::run` for that
//! namespace in the background, and deletes the namespace at the end. Pods run
//! `registry.k8s.io/pause`, which is ready as soon as it runs.

use std::future::Future;
use std::time::{Duration, Instant};

use flotilla_kube::objects::{ORDINAL_LABEL, REVISION_LABEL, SET_LABEL};
use flotilla_kube::{resource, standalone};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const SET: &str = "redis";
const PAUSE: &str = "registry.k8s.io/pause:3.10";
const PAUSE_NEXT: &str = "registry.k8s.io/pause:3.9";

/// A namespace with the agent running in it; dropped at the end of a test.
struct Fixture {
    client: kube::Client,
    namespace: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: tokio::task::JoinHandle<flotilla_kube::Result<()>>,
}

impl Fixture {
    async fn start(name: &str) -> Fixture {
        let client = kube::Client::try_default()
            .await
            .expect("KUBECONFIG points at a cluster");
        install_crd(&client).await;
        let namespace = format!("flotilla-{name}-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = standalone::Options {
            namespace: Some(namespace.clone()),
            resync: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            ..standalone::Options::default()
        };
        let agent = tokio::spawn(standalone::run(client.clone(), options, async move {
            let _ = stopped.await;
        }));
        Fixture {
            client,
            namespace,
            stop: Some(stop),
            agent,
        }
    }

    fn sets(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &resource::instance_sets(),
        )
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply_set(&self, spec: Value) -> DynamicObject {
        let body = json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "InstanceSet",
            "metadata": {"name": SET, "namespace": self.namespace},
            "spec": spec,
        });
        self.sets()
            .patch(
                SET,
                &PatchParams::apply("flotilla-test").force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("applying the InstanceSet")
    }

    async fn set_pods(&self) -> Vec<Pod> {
        let mut pods = self
            .pods()
            .list(&ListParams::default().labels(&format!("{SET_LABEL}={SET}")))
            .await
            .expect("listing pods")
            .items;
        pods.sort_by_key(|p| p.metadata.name.clone());
        pods
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let agent = std::mem::replace(&mut self.agent, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(30), agent)
            .await
            .expect("the agent stops on shutdown")
            .expect("the agent task did not panic")
            .expect("the agent ran without error");
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

async fn install_crd(client: &kube::Client) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crds/instancesets.flotilla.io.yaml"
    );
    let text = std::fs::read_to_string(path).expect("the generated CRD (cargo xtask crdgen)");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("the CRD parses");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "instancesets.flotilla.io",
        &PatchParams::apply("flotilla-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("installing the InstanceSet CRD");
    eventually("the CRD is established", || async {
        let crd = crds.get("instancesets.flotilla.io").await.ok()?;
        let established = crd
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

/// Polls `check` every second until it gives a value, for at most three minutes.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn image(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.containers.first()?.image.clone()
}

fn spec(ranges: Value, discrete: Value, image: &str) -> Value {
    json!({
        "ordinals": {"ranges": ranges, "discrete": discrete},
        "template": {
            "metadata": {"labels": {"app": "flotilla-test"}},
            "spec": {"containers": [{"name": "main", "image": image}]},
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs cluster"]
async fn standalone_agent_creates_updates_and_scales_in_a_set() {
    let fx = Fixture::start("rollout").await;
    let created = fx
        .apply_set(spec(json!([{"start": 0, "end": 1}]), json!([5]), PAUSE))
        .await;
    let uid = created.metadata.uid.clone().unwrap();

    // Pods exactly for ordinals 0, 1 and 5, ready, named, labelled and owned.
    let pods = eventually("three pods are ready", || async {
        let pods = fx.set_pods().await;
        (pods.len() == 3 && pods.iter().all(ready)).then_some(pods)
    })
    .await;
    assert_eq!(names(&pods), ["redis-0", "redis-1", "redis-5"]);
    for (pod, ordinal) in pods.iter().zip(["0", "1", "5"]) {
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SET_LABEL], SET);
        assert_eq!(labels[ORDINAL_LABEL], ordinal);
        assert_eq!(labels["app"], "flotilla-test");
        assert!(labels.contains_key(REVISION_LABEL));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("InstanceSet", SET, uid.as_str())
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            pod.spec.as_ref().unwrap().hostname,
            pod.metadata.name.clone()
        );
    }

    // The status says so.
    let status = eventually("the status shows three ready instances", || async {
        let set = fx.sets().get(SET).await.ok()?;
        let status = set.data.get("status")?.clone();
        (status["readyReplicas"] == 3 && status["updatedReplicas"] == 3).then_some(status)
    })
    .await;
    assert_eq!(status["replicas"], 3);
    assert_eq!(
        status["observedGeneration"],
        created.metadata.generation.unwrap()
    );
    let ordinals: Vec<u64> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ordinal"].as_u64().unwrap())
        .collect();
    assert_eq!(ordinals, [0, 1, 5]);
    assert!(
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True")
    );

    // A new image is applied in place: same pods (same uids), new image.
    let uids: Vec<_> = pods.iter().map(|p| p.metadata.uid.clone()).collect();
    fx.apply_set(spec(
        json!([{"start": 0, "end": 1}]),
        json!([5]),
        PAUSE_NEXT,
    ))
    .await;
    let pods = eventually("every pod runs the new image, ready", || async {
        let pods = fx.set_pods().await;
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| image(p).as_deref() == Some(PAUSE_NEXT) && ready(p)))
        .then_some(pods)
    })
    .await;
    assert_eq!(
        pods.iter()
            .map(|p| p.metadata.uid.clone())
            .collect::<Vec<_>>(),
        uids,
        "an image change is an in-place update"
    );

    // Scale in: ordinal 5 leaves the slice and its pod goes.
    fx.apply_set(spec(json!([{"start": 0, "end": 1}]), json!([]), PAUSE_NEXT))
        .await;
    let pods = eventually("only redis-0 and redis-1 remain", || async {
        let pods = fx.set_pods().await;
        (pods.len() == 2).then_some(pods)
    })
    .await;
    assert_eq!(names(&pods), ["redis-0", "redis-1"]);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs cluster"]
async fn volume_claims_are_created_per_ordinal_and_mounted() {
    let fx = Fixture::start("volumes").await;
    let mut with_claims = spec(json!([{"start": 3, "end": 4}]), json!([10]), PAUSE);
    with_claims["volumeClaimTemplates"] = json!([{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
    }]);
    fx.apply_set(with_claims).await;
    let claims = eventually("three claims exist", || async {
        let mut claims = fx
            .claims()
            .list(&ListParams::default().labels(&format!("{SET_LABEL}={SET}")))
            .await
            .ok()?
            .items;
        claims.sort_by_key(|c| c.metadata.name.clone());
        (claims.len() == 3).then_some(claims)
    })
    .await;
    assert_eq!(
        claims
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["data-redis-10", "data-redis-3", "data-redis-4"]
    );
    let pods = eventually("three pods exist", || async {
        let pods = fx.set_pods().await;
        (pods.len() == 3).then_some(pods)
    })
    .await;
    assert_eq!(names(&pods), ["redis-10", "redis-3", "redis-4"]);
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap();
        let volume = pod
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .expect("the claim is mounted as volume `data`");
        assert_eq!(
            volume.persistent_volume_claim.as_ref().unwrap().claim_name,
            format!("data-{name}")
        );
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs cluster"]
async fn exec_probed_roles_become_labels_and_status() {
    let fx = Fixture::start("roles").await;
    fx.apply_set(json!({
        "ordinals": {"ranges": [{"start": 0, "end": 2}]},
        "template": {"spec": {"containers": [{
            "name": "main",
            "image": "busybox:1.36",
            "command": ["sh", "-c", "sleep 100000"],
        }]}},
        "roles": [
            {"name": "primary", "exclusive": true, "updatePriority": 2},
            {"name": "secondary", "updatePriority": 1},
        ],
        "roleProbe": {
            "exec": {"command": ["sh", "-c",
                "if [ \"$(hostname)\" = redis-0 ]; then echo primary; else echo secondary; fi"]},
            "periodSeconds": 2,
            "timeoutSeconds": 5,
        },
    }))
    .await;
    let pods = eventually("every pod carries its probed role", || async {
        let pods = fx.set_pods().await;
        let labelled = pods.iter().all(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(flotilla_kube::objects::ROLE_LABEL))
        });
        (pods.len() == 3 && labelled).then_some(pods)
    })
    .await;
    let roles: Vec<String> = pods
        .iter()
        .map(|p| p.metadata.labels.as_ref().unwrap()[flotilla_kube::objects::ROLE_LABEL].clone())
        .collect();
    assert_eq!(roles, ["primary", "secondary", "secondary"]);
    let status = eventually("the status reports the roles", || async {
        let set = fx.sets().get(SET).await.ok()?;
        let status = set.data.get("status")?.clone();
        (status["instances"][0]["role"] == "primary").then_some(status)
    })
    .await;
    assert_eq!(status["instances"][1]["role"], "secondary");
    fx.stop().await;
}
