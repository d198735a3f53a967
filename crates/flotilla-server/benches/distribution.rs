//! Distribution latency with many members: from `apply` returning to every member's
//! agent holding its slice, over real gRPC on loopback, agents on simulated members in
//! this process. Karmada publishes 612–706 ms P50 and < 1.3 s P99 for distributing one
//! resource to 100 clusters; we aim for at least ten times faster.
//!
//! `cargo bench -p flotilla-server --bench distribution` measures 100 members on the
//! embedded store and on etcd (when an `etcd` binary is found, as the store tests find
//! it); run as a test (`cargo test --all-targets`) it does a small quick pass so it
//! cannot rot. Baselines in the same run: the apply call alone, and one raw store put
//! seen by a watch (the floor any distribution through the store pays).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_agent::{Options, SimMember};
use flotilla_api::NodeGroup;
use flotilla_member::sim::SimConfig;
use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::{AddClusterRequest, ApplyRequest, GetRequest};
use flotilla_store::testing::EtcdServer;
use flotilla_store::{Condition, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Store};
use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio::sync::watch;
use tonic::Request;
use tonic::transport::Channel;

const TOKEN: &str = "bench";

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn sim() -> SimConfig {
    let free = [("cpu", "32"), ("memory", "128Gi"), ("pods", "110")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    SimConfig {
        node_groups: vec![NodeGroup { count: 10, free }],
        start_delay: Duration::from_millis(100),
        ready_delay: Duration::from_millis(100),
        local_volumes: false,
        request_latency: Duration::ZERO,
    }
}

fn set(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: {name}}}\n\
         spec:\n  replicas: {replicas}\n  template:\n    spec:\n      containers:\n      - name: redis\n\
         \x20       image: redis:7.2\n        resources: {{requests: {{cpu: 500m, memory: 1Gi}}}}\n"
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Distribution latencies for `rounds` sets over `members` agents: back to back (the
/// next apply while the members still converge the last set), or `settled` (each apply
/// once the last set is ready everywhere).
async fn run(store: Arc<dyn Store>, label: &str, members: usize, rounds: usize, settled: bool) {
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
    let mut held = Vec::new();
    for i in 0..members {
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
        held.push(member.held());
        let mut stop = stop_rx.clone();
        let options = Options::new(server.url(), name, token);
        tokio::spawn(async move {
            let _ = flotilla_agent::run(options, member, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        });
    }
    // Every member ready (connected, capacity reported) before measuring.
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
        if ready == members {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut total = Vec::new();
    let mut apply_only = Vec::new();
    for round in 0..rounds {
        let name = format!("set-{round}");
        let key = format!("default/{name}");
        // Two instances per member: every member gets a slice.
        let doc = set(&name, 2 * members as u32);
        let mut waits = Vec::new();
        for rx in &held {
            let mut rx = rx.clone();
            let key = key.clone();
            waits.push(tokio::spawn(async move {
                let _ = rx.wait_for(|h| h.contains_key(&key)).await;
                Instant::now()
            }));
        }
        let started = Instant::now();
        api.apply(authed(ApplyRequest {
            document: doc,
            dry_run: false,
        }))
        .await
        .unwrap();
        let returned = Instant::now();
        let mut last = returned;
        for w in waits {
            last = last.max(w.await.unwrap());
        }
        apply_only.push(returned - started);
        total.push(last.saturating_duration_since(returned));
        if settled {
            loop {
                let o = api
                    .get(authed(GetRequest {
                        kind: "fis".into(),
                        name: name.clone(),
                        namespace: String::new(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                let v: serde_json::Value = serde_json::from_str(&o.json).unwrap();
                if v["status"]["readyReplicas"].as_u64() == Some(2 * members as u64) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // Baseline: one raw put seen by a watch on the same store.
    let mut raw = Vec::new();
    for i in 0..rounds.max(20) {
        let key = format!("/bench/raw/{i}");
        let listing = store.list("/bench/raw/").await.unwrap();
        let mut w = store
            .watch("/bench/raw/", listing.revision + 1)
            .await
            .unwrap();
        let t = Instant::now();
        store
            .put(&key, Bytes::from_static(b"x"), Condition::Any, None)
            .await
            .unwrap();
        let _ = w.next().await;
        raw.push(t.elapsed());
    }
    for v in [&mut total, &mut apply_only, &mut raw] {
        v.sort();
    }
    let (p50, p99) = (percentile(&total, 0.5), percentile(&total, 0.99));
    let raw50 = percentile(&raw, 0.5);
    let mode = if settled { "settled" } else { "back to back" };
    println!(
        "{label} ({mode}): {members} members, {rounds} sets: apply returned → every member holds its slice: \
         P50 {} P99 {} (max {}); apply call P50 {}; raw store put→watch P50 {} \
         (distribution = {:.1}× the raw put); vs Karmada P50 612 ms: {:.0}× faster",
        ms(p50),
        ms(p99),
        ms(*total.last().unwrap()),
        ms(percentile(&apply_only, 0.5)),
        ms(raw50),
        p50.as_secs_f64() / raw50.as_secs_f64().max(1e-9),
        0.612 / p50.as_secs_f64().max(1e-9),
    );
    stop_tx.send_replace(true);
    server.stop().await;
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (members, rounds) = if full { (100, 30) } else { (5, 3) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A fresh store for every run: registered clusters and sets do not carry over.
        for settled in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let embedded: Arc<dyn Store> = Arc::new(
                EmbeddedStore::open(dir.path().join("bench.redb"), EmbeddedOptions::default())
                    .await
                    .unwrap(),
            );
            run(embedded, "embedded", members, rounds, settled).await;
        }
        if full || std::env::var_os("FLOTILLA_BENCH_ETCD").is_some() {
            for settled in [true, false] {
                let etcd = EtcdServer::start().await;
                let store: Arc<dyn Store> = Arc::new(
                    EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
                        .await
                        .unwrap(),
                );
                run(store, "etcd", members, rounds, settled).await;
            }
        }
    });
}
