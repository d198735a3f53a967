//! One set far larger than a store value may be: 20,000 instances over 20 simulated
//! members (agents over real gRPC, in this process), on a real etcd, whose request limit
//! (1.5 MiB, 2 MiB with gRPC framing) a per-ordinal status of that size (2.8 MB) exceeds. The set must
//! converge and show its status, no record of the set may grow with its instances, and
//! `get` must answer within gRPC's message limit.

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::{Options, SimMember};
use flotilla_api::NodeGroup;
use flotilla_member::sim::SimConfig;
use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::{AddClusterRequest, ApplyRequest, GetRequest};
use flotilla_store::testing::EtcdServer;
use flotilla_store::{EtcdOptions, EtcdStore, Store};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use tokio::sync::watch;
use tonic::Request;
use tonic::transport::Channel;

const TOKEN: &str = "scale";
const MEMBERS: usize = 20;
const REPLICAS: u32 = 20_000;

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn sim() -> SimConfig {
    let free = [("cpu", "64"), ("memory", "256Gi"), ("pods", "250")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    SimConfig {
        node_groups: vec![NodeGroup { count: 10, free }],
        start_delay: Duration::ZERO,
        ready_delay: Duration::ZERO,
        local_volumes: false,
        request_latency: Duration::ZERO,
    }
}

fn set(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: {name}}}\n\
         spec:\n  replicas: {replicas}\n  template:\n    spec:\n      containers:\n      - name: redis\n\
         \x20       image: redis:7.2\n        resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_20000_instances_converges_on_etcd_and_no_set_record_grows_with_it() {
    let etcd = EtcdServer::start().await;
    let store: Arc<dyn Store> = Arc::new(
        EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
            .await
            .unwrap(),
    );
    let server = flotilla_server::start(
        store.clone(),
        flotilla_server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some(TOKEN.into()),
            cluster_ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            ..flotilla_server::Config::default()
        },
    )
    .await
    .unwrap();
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = FederationClient::new(channel);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = Vec::new();
    for i in 0..MEMBERS {
        let name = format!("m{i:03}");
        let token = api
            .add_cluster(authed(AddClusterRequest {
                name: name.clone(),
                labels: Default::default(),
            }))
            .await
            .unwrap()
            .into_inner()
            .token;
        let member = SimMember::new(&sim());
        let mut stop = stop_rx.clone();
        let options = Options::new(server.url(), name, token);
        agents.push(tokio::spawn(async move {
            let _ = flotilla_agent::run(options, member, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        }));
    }
    // Every member reported its capacity before the set is applied, so the set is
    // spread over all of them.
    loop {
        let list = api
            .list(authed(flotilla_proto::v1::ListRequest {
                kind: "clusters".into(),
                namespace: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let ready = list
            .items
            .iter()
            .filter(|o| o.json.contains("\"ready\":true"))
            .count();
        if ready == MEMBERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.apply(authed(ApplyRequest {
        document: set("big", REPLICAS),
        dry_run: false,
    }))
    .await
    .unwrap();

    // Ready everywhere, as `get` shows it. Bounded so that a set that never shows a
    // status fails the test instead of hanging it.
    let mut status = Value::Null;
    for _ in 0..1200 {
        let reply = api
            .get(authed(GetRequest {
                kind: "fis".into(),
                name: "big".into(),
                namespace: String::new(),
                ..Default::default()
            }))
            .await;
        let object = reply.expect("get answers within gRPC's message limit");
        let v: Value = serde_json::from_str(&object.into_inner().json).unwrap();
        status = v["status"].clone();
        if status["readyReplicas"].as_u64() == Some(u64::from(REPLICAS)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status["readyReplicas"].as_u64(),
        Some(u64::from(REPLICAS)),
        "the set never showed every instance ready; its status: {}",
        serde_json::to_string(&status["conditions"]).unwrap()
    );
    let available = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Available")
        .unwrap();
    assert_eq!(available["status"], "True", "{available}");

    // Its per-ordinal view comes in pages, each within gRPC's message limit, and the
    // pages together hold every ordinal once, ready, in ordinal order.
    let mut ordinals = Vec::new();
    let mut pages = 0;
    loop {
        let object = api
            .get(authed(GetRequest {
                kind: "fis".into(),
                name: "big".into(),
                instances_offset: ordinals.len() as u32,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(object.instances_total, REPLICAS);
        let v: Value = serde_json::from_str(&object.json).unwrap();
        let page = v["status"]["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if page.is_empty() {
            break;
        }
        pages += 1;
        for i in &page {
            assert_eq!(i["ready"], true, "{i}");
            assert!(i["cluster"].is_string(), "{i}");
            ordinals.push(i["ordinal"].as_u64().unwrap() as u32);
        }
    }
    assert_eq!(ordinals, (0..REPLICAS).collect::<Vec<_>>());
    assert_eq!(pages, REPLICAS.div_ceil(5_000));

    // No record of the set (its status and placement) grows with its instances.
    for prefix in ["/flotilla/status/sets/", "/flotilla/placements/"] {
        for kv in store.list(prefix).await.unwrap().items {
            assert!(
                kv.value.len() <= flotilla_server::records::RECORD_LIMIT,
                "{} holds {} bytes, more than the bound of {}",
                kv.key,
                kv.value.len(),
                flotilla_server::records::RECORD_LIMIT
            );
        }
    }

    stop_tx.send_replace(true);
    for a in agents {
        let _ = a.await;
    }
    server.stop().await;
}
