//! Several servers on one real etcd: exactly one leads (runs the federation
//! controller), the others follow and still serve the API; the lead passes on at once
//! when the leader resigns, after the lease's TTL when it dies, and at once to a
//! server restarted in place.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::{ApplyRequest, GetRequest};
use flotilla_server::leader::State;
use flotilla_store::testing::EtcdServer;
use flotilla_store::{EtcdOptions, EtcdStore, Store};
use serde_json::Value;
use tonic::Request;

const ADMIN: &str = "admin-secret";

async fn store(etcd: &EtcdServer) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
            .await
            .unwrap(),
    )
}

async fn server(etcd: &EtcdServer, listen: &str, ttl: Duration) -> flotilla_server::Running {
    // A dropped server's tasks end (and free its port) shortly after the drop.
    let mut tries = 0;
    loop {
        let started = flotilla_server::start(
            store(etcd).await,
            flotilla_server::Config {
                listen: listen.parse().unwrap(),
                http: "127.0.0.1:0".parse().unwrap(),
                admin_token: Some(ADMIN.into()),
                leader_ttl: ttl,
                ..flotilla_server::Config::default()
            },
        )
        .await;
        match started {
            Ok(s) => return s,
            Err(e) if tries < 50 => {
                tries += 1;
                eprintln!("starting a server on {listen}: {e:#}; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("starting a server on {listen}: {e:#}"),
        }
    }
}

/// Waits until exactly one of `servers` leads and all the others follow it; returns
/// the leader's index.
async fn elected(servers: &[&flotilla_server::Running]) -> usize {
    for _ in 0..200 {
        let states: Vec<State> = servers
            .iter()
            .map(|s| s.election.borrow().clone())
            .collect();
        let leaders: Vec<usize> = (0..states.len())
            .filter(|&i| states[i] == State::Leading)
            .collect();
        if let [one] = leaders[..] {
            let following = State::Following {
                leader: servers[one].identity.clone(),
            };
            if (0..states.len()).all(|i| i == one || states[i] == following) {
                return one;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no single leader elected");
}

async fn wait_following(s: &flotilla_server::Running, leader: &str) {
    let want = State::Following {
        leader: leader.to_string(),
    };
    let mut election = s.election.clone();
    tokio::time::timeout(Duration::from_secs(10), election.wait_for(|st| *st == want))
        .await
        .unwrap_or_else(|_| panic!("{} does not follow {leader}", s.identity))
        .unwrap();
}

async fn wait_leading(s: &flotilla_server::Running, within: Duration) {
    let mut election = s.election.clone();
    tokio::time::timeout(within, election.wait_for(|st| *st == State::Leading))
        .await
        .unwrap_or_else(|_| panic!("{} did not take the lead within {within:?}", s.identity))
        .unwrap();
}

/// `/readyz`'s status code, once it is 200 or after 10 s of asking (a new leader is
/// ready once its controller has listed the store).
async fn readyz(s: &flotilla_server::Running) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut code = 0;
    for _ in 0..100 {
        let mut conn = tokio::net::TcpStream::connect(s.http).await.unwrap();
        conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).await.unwrap();
        code = out[9..12].parse().unwrap();
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    code
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_leads_and_the_lead_passes_on() {
    let etcd = EtcdServer::start().await;
    // Leases far longer than the test: only a resignation explains a quick handover.
    let ttl = Duration::from_secs(60);
    let a = server(&etcd, "127.0.0.1:0", ttl).await;
    wait_leading(&a, Duration::from_secs(10)).await;
    let b = server(&etcd, "127.0.0.1:0", ttl).await;
    let c = server(&etcd, "127.0.0.1:0", ttl).await;
    assert_eq!(elected(&[&a, &b, &c]).await, 0);
    assert_eq!(*a.election.borrow(), State::Leading);

    // A follower serves the API; the leader's controller does the rest.
    let mut api = FederationClient::connect(b.url()).await.unwrap();
    let doc = "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {name: s}\n\
               spec: {replicas: 2, template: {spec: {containers: [{name: c, image: i}]}}}\n";
    api.apply(authed(ApplyRequest {
        document: doc.into(),
        dry_run: false,
    }))
    .await
    .unwrap();
    let mut observed = false;
    for _ in 0..100 {
        let o = api
            .get(authed(GetRequest {
                kind: "fis".into(),
                name: "s".into(),
                namespace: String::new(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let v: Value = serde_json::from_str(&o.json).unwrap();
        if v["status"]["observedGeneration"] == 1 {
            observed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(observed, "the leader's controller wrote the set's status");
    for s in [&a, &b, &c] {
        assert_eq!(readyz(s).await, 200, "{} is ready", s.identity);
    }

    // Resigning hands over at once (`elected` gives up long before the lease ends).
    a.stop().await;
    let leader = elected(&[&b, &c]).await;
    assert_eq!(readyz([&b, &c][leader]).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_dies_is_replaced_once_its_lease_lapses() {
    let etcd = EtcdServer::start().await;
    let ttl = Duration::from_secs(2);
    let first = server(&etcd, "127.0.0.1:0", ttl).await;
    wait_leading(&first, Duration::from_secs(10)).await;
    let second = server(&etcd, "127.0.0.1:0", ttl).await;
    wait_following(&second, &first.identity).await;
    drop(first); // no resignation: the key stays until its lease lapses
    wait_leading(&second, Duration::from_secs(15)).await;
    assert_eq!(readyz(&second).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_in_place_takes_its_own_lead_back_at_once() {
    let etcd = EtcdServer::start().await;
    // A lease far longer than the test: only the takeover can explain a quick lead.
    let ttl = Duration::from_secs(60);
    let first = server(&etcd, "127.0.0.1:0", ttl).await;
    wait_leading(&first, Duration::from_secs(10)).await;
    let addr = first.grpc.to_string();
    drop(first); // no resignation: its key and lease stay in etcd
    let again = server(&etcd, &addr, ttl).await;
    wait_leading(&again, Duration::from_secs(10)).await;
    // Any other identity still follows it.
    let other = server(&etcd, "127.0.0.1:0", ttl).await;
    wait_following(&other, &again.identity).await;
}
