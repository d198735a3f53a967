//! The server over real sockets, on the embedded store: the user API's validation and
//! authentication, and the agent protocol (snapshot, changes, resume from a revision,
//! heartbeats, reports, a lapsed lease) driven by a scripted agent.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::agent_message::Message as In;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_proto::v1::change::Change as ChangeKind;
use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::server_message::Message as Out;
use flotilla_proto::v1::{
    AddClusterRequest, AgentMessage, ApplyRequest, DeleteRequest, GetRequest, Heartbeat, Hello,
    ListRequest, Report, ServerMessage,
};
use flotilla_store::{EmbeddedOptions, EmbeddedStore, Store};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

const ADMIN: &str = "admin-secret";

struct Harness {
    server: flotilla_server::Running,
    _dir: tempfile::TempDir,
}

async fn start(ttl: Duration) -> Harness {
    start_in(tempfile::tempdir().unwrap(), ttl).await
}

/// A server on the embedded store in `dir` (a restart when it holds one already).
async fn start_in(dir: tempfile::TempDir, ttl: Duration) -> Harness {
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("s.redb"), EmbeddedOptions::default())
            .await
            .unwrap(),
    );
    let server = flotilla_server::start(
        store,
        flotilla_server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some(ADMIN.into()),
            cluster_ttl: ttl,
            heartbeat: Duration::from_millis(200),
            ..flotilla_server::Config::default()
        },
    )
    .await
    .unwrap();
    Harness { server, _dir: dir }
}

async fn channel(h: &Harness) -> Channel {
    Channel::from_shared(h.server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

const SET: &str = r#"
apiVersion: flotilla.io/v1alpha1
kind: FederatedInstanceSet
metadata: {name: cache}
spec:
  replicas: REPLICAS
  template:
    spec:
      containers:
      - name: redis
        image: redis:7
        resources: {requests: {cpu: 500m, memory: 1Gi}}
"#;

fn set(replicas: u32) -> String {
    SET.replace("REPLICAS", &replicas.to_string())
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn get_json(api: &mut FederationClient<Channel>, kind: &str, name: &str) -> Value {
    let o = api
        .get(authed(
            ADMIN,
            GetRequest {
                kind: kind.into(),
                name: name.into(),
                namespace: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&o.json).unwrap()
}

#[tokio::test]
async fn the_user_api_refuses_bad_tokens_and_invalid_documents_and_stores_nothing() {
    let h = start(Duration::from_secs(10)).await;
    let mut api = FederationClient::new(channel(&h).await);
    let list = |token: &'static str| {
        authed(
            token,
            ListRequest {
                kind: "fis".into(),
                namespace: String::new(),
            },
        )
    };
    assert_eq!(
        api.list(Request::new(ListRequest::default()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        api.list(list("wrong")).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Bad documents among good ones: every error of every document (one that does not
    // decode does not hide another's validation errors), nothing stored.
    let text = format!(
        "{}---\napiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: Bad_Name}}\nspec: {{replicas: -1}}\n\
         ---\napiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: c}}\n\
         spec: {{replicas: 2, template: {{spec: {{containers: []}}}}}}\n",
        set(3)
    );
    let err = api
        .apply(authed(
            ADMIN,
            ApplyRequest {
                document: text,
                dry_run: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("spec.replicas"), "{}", err.message());
    assert!(err.message().contains("document 2"), "{}", err.message());
    assert!(
        err.message()
            .contains("document 3 (FederatedInstanceSet c): spec.template.spec.containers"),
        "{}",
        err.message()
    );
    assert!(
        api.list(list(ADMIN))
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );

    // An input without a document is refused, not an empty success.
    let err = api
        .apply(authed(
            ADMIN,
            ApplyRequest {
                document: "# nothing here\n---\n".into(),
                dry_run: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no objects"), "{}", err.message());

    // InstanceSets are not for users to write; a Cluster must be registered first.
    let err = api
        .apply(authed(
            ADMIN,
            ApplyRequest {
                document:
                    "apiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: nowhere}\n"
                        .into(),
                dry_run: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("flotilla cluster add nowhere"),
        "{}",
        err.message()
    );

    // created, unchanged, configured; generation moves with the spec only.
    let apply = |doc: String| {
        authed(
            ADMIN,
            ApplyRequest {
                document: doc,
                dry_run: false,
            },
        )
    };
    let r = api.apply(apply(set(3))).await.unwrap().into_inner();
    assert_eq!(
        (r.applied[0].result.as_str(), r.applied[0].generation),
        ("created", 1)
    );
    let r = api.apply(apply(set(3))).await.unwrap().into_inner();
    assert_eq!(r.applied[0].result, "unchanged");
    let r = api
        .apply(authed(
            ADMIN,
            ApplyRequest {
                document: set(4),
                dry_run: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.applied[0].result, "configured");
    assert_eq!(
        get_json(&mut api, "fis", "cache").await["spec"]["replicas"],
        3,
        "dry run stores nothing"
    );
    let r = api.apply(apply(set(4))).await.unwrap().into_inner();
    assert_eq!(
        (r.applied[0].result.as_str(), r.applied[0].generation),
        ("configured", 2)
    );

    let del = |name: &str| {
        authed(
            ADMIN,
            DeleteRequest {
                kind: "federatedinstancesets".into(),
                name: name.into(),
                namespace: String::new(),
            },
        )
    };
    assert!(api.delete(del("cache")).await.unwrap().into_inner().deleted);
    assert_eq!(
        api.delete(del("cache")).await.unwrap_err().code(),
        Code::NotFound
    );

    let added = api
        .add_cluster(authed(
            ADMIN,
            AddClusterRequest {
                name: "eu-1".into(),
                labels: [("region".into(), "eu".into())].into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(added.token.starts_with("flt_"));
    let again = api
        .add_cluster(authed(
            ADMIN,
            AddClusterRequest {
                name: "eu-1".into(),
                labels: Default::default(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let bad = api
        .add_cluster(authed(
            ADMIN,
            AddClusterRequest {
                name: "EU 1".into(),
                labels: Default::default(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("metadata.name"), "{}", bad.message());
    h.server.stop().await;
}

/// A scripted agent: its outgoing messages, and the server's stream.
struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<ServerMessage>,
}

async fn connect(
    h: &Harness,
    cluster: &str,
    token: &str,
    resume: i64,
) -> Result<Agent, tonic::Status> {
    let mut client = AgentServiceClient::new(channel(h).await);
    let (tx, out) = mpsc::channel(16);
    tx.send(AgentMessage {
        message: Some(In::Hello(Hello {
            cluster: cluster.into(),
            resume_revision: resume,
            agent_version: "test".into(),
        })),
    })
    .await
    .unwrap();
    let rx = client
        .session(authed(token, ReceiverStream::new(out)))
        .await?
        .into_inner();
    Ok(Agent { tx, rx })
}

impl Agent {
    async fn next(&mut self) -> Out {
        tokio::time::timeout(Duration::from_secs(20), self.rx.message())
            .await
            .expect("a message from the server")
            .unwrap()
            .unwrap()
            .message
            .unwrap()
    }

    async fn heartbeat(&self) {
        let capacity =
            r#"{"nodeGroups":[{"count":4,"free":{"cpu":"8","memory":"32Gi","pods":"110"}}]}"#;
        self.tx
            .send(AgentMessage {
                message: Some(In::Heartbeat(Heartbeat {
                    capacity_json: capacity.into(),
                    kubernetes_version: String::new(),
                })),
            })
            .await
            .unwrap();
    }
}

fn ordinals_of(json: &str) -> Value {
    let v: Value = serde_json::from_str(json).unwrap();
    v["spec"]["ordinals"].clone()
}

#[tokio::test]
async fn agents_get_snapshots_then_changes_resume_from_their_revision_and_go_unknown_without_heartbeats()
 {
    let h = start(Duration::from_secs(2)).await;
    let mut api = FederationClient::new(channel(&h).await);
    let token = api
        .add_cluster(authed(
            ADMIN,
            AddClusterRequest {
                name: "a".into(),
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    api.add_cluster(authed(
        ADMIN,
        AddClusterRequest {
            name: "b".into(),
            labels: Default::default(),
        },
    ))
    .await
    .unwrap();

    // Refused: another cluster's name, a wrong token, no token.
    assert_eq!(
        connect(&h, "b", &token, 0).await.err().unwrap().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        connect(&h, "a", "flt_wrong", 0).await.err().unwrap().code(),
        Code::Unauthenticated
    );

    let mut agent = connect(&h, "a", &token, 0).await.unwrap();
    let Out::Welcome(w) = agent.next().await else {
        panic!("welcome first")
    };
    assert!(!w.resumed);
    let Out::Snapshot(s) = agent.next().await else {
        panic!("then a snapshot")
    };
    assert!(s.slices.is_empty());
    agent.heartbeat().await;
    eventually("cluster a ready", || {
        let mut api = api.clone();
        async move { get_json(&mut api, "clusters", "a").await["status"]["ready"] == true }
    })
    .await;

    // Only a is ready: the whole set goes there.
    api.apply(authed(
        ADMIN,
        ApplyRequest {
            document: set(3),
            dry_run: false,
        },
    ))
    .await
    .unwrap();
    let Out::Change(c) = agent.next().await else {
        panic!("a change")
    };
    let Some(ChangeKind::Put(slice)) = c.change else {
        panic!("a put")
    };
    assert_eq!(slice.name, "cache");
    assert_eq!(
        ordinals_of(&slice.json)["ranges"][0],
        serde_json::json!({"start": 0, "end": 2})
    );
    let revision = c.revision;

    // The stream breaks; meanwhile the set scales; the agent resumes after `revision`.
    drop(agent);
    api.apply(authed(
        ADMIN,
        ApplyRequest {
            document: set(5),
            dry_run: false,
        },
    ))
    .await
    .unwrap();
    let mut agent = connect(&h, "a", &token, revision).await.unwrap();
    let Out::Welcome(w) = agent.next().await else {
        panic!("welcome first")
    };
    assert!(
        w.resumed,
        "the revision is still in the history: no snapshot"
    );
    let json = loop {
        let Out::Change(c) = agent.next().await else {
            panic!("changes only")
        };
        assert!(c.revision > revision);
        if let Some(ChangeKind::Put(s)) = c.change
            && ordinals_of(&s.json)["ranges"][0]["end"] == 4
        {
            break s.json;
        }
    };
    agent.heartbeat().await;

    // The agent reports every instance ready: the set is Available.
    let slice: Value = serde_json::from_str(&json).unwrap();
    let status = serde_json::json!({
        "observedGeneration": slice["metadata"]["generation"],
        "replicas": 5, "readyReplicas": 5, "updatedReplicas": 5,
        "instances": (0..5).map(|o| serde_json::json!({"ordinal": o, "ready": true, "phase": "Running"})).collect::<Vec<_>>(),
    });
    agent
        .tx
        .send(AgentMessage {
            message: Some(In::Report(Report {
                namespace: "default".into(),
                name: "cache".into(),
                status_json: status.to_string(),
            })),
        })
        .await
        .unwrap();
    eventually("the set available", || {
        let mut api = api.clone();
        async move {
            let s = get_json(&mut api, "fis", "cache").await;
            s["status"]["readyReplicas"] == 5
                && s["status"]["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["type"] == "Available" && c["status"] == "True")
        }
    })
    .await;

    // No more heartbeats: after the lease, a is Unknown, the set Degraded, and its
    // instances stay where they are.
    eventually("cluster a unknown", || {
        let mut api = api.clone();
        async move {
            let c = get_json(&mut api, "clusters", "a").await;
            c["status"]["ready"] == false && c["status"]["conditions"][0]["status"] == "Unknown"
        }
    })
    .await;
    eventually("the set degraded", || {
        let mut api = api.clone();
        async move {
            let s = get_json(&mut api, "fis", "cache").await;
            s["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Degraded" && c["reason"] == "ClusterUnavailable")
                && s["status"]["clusters"][0]["cluster"] == "a"
                && s["status"]["clusters"][0]["ordinals"]
                    .as_array()
                    .unwrap()
                    .len()
                    == 5
        }
    })
    .await;
    h.server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_gives_agents_one_ttl_to_reconnect_before_it_moves_anything() {
    let ttl = Duration::from_secs(2);
    let h = start(ttl).await;
    let mut api = FederationClient::new(channel(&h).await);
    let token = api
        .add_cluster(authed(
            ADMIN,
            AddClusterRequest {
                name: "a".into(),
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut agent = connect(&h, "a", &token, 0).await.unwrap();
    assert!(matches!(agent.next().await, Out::Welcome(_)));
    assert!(matches!(agent.next().await, Out::Snapshot(_)));
    agent.heartbeat().await;
    eventually("cluster a ready", || {
        let mut api = api.clone();
        async move { get_json(&mut api, "clusters", "a").await["status"]["ready"] == true }
    })
    .await;
    // Failover Reschedule: a cluster found lost would have its instances taken away.
    let doc = set(2).replace(
        "  template:",
        "  placement: {failover: {policy: Reschedule}}\n  template:",
    );
    api.apply(authed(
        ADMIN,
        ApplyRequest {
            document: doc,
            dry_run: false,
        },
    ))
    .await
    .unwrap();
    let Out::Change(c) = agent.next().await else {
        panic!("a change")
    };
    let revision = c.revision;

    // The server is down for longer than the TTL: the cluster's lease lapses.
    drop(agent);
    h.server.stop().await;
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let h = start_in(h._dir, ttl).await;
    let mut api = FederationClient::new(channel(&h).await);
    assert_eq!(
        get_json(&mut api, "clusters", "a").await["status"]["ready"],
        true,
        "not lost at once: its agent has not had the chance to reconnect"
    );
    // The agent comes back within the TTL and resumes: nothing was moved meanwhile, so
    // there is nothing to resume with, and the cluster stays ready past the grace.
    let mut agent = connect(&h, "a", &token, revision).await.unwrap();
    let Out::Welcome(w) = agent.next().await else {
        panic!("welcome first")
    };
    assert!(w.resumed);
    let deadline = tokio::time::Instant::now() + ttl * 2;
    while tokio::time::Instant::now() < deadline {
        agent.heartbeat().await;
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), agent.rx.message()).await {
            panic!("the slice was rewritten after the restart: {m:?}");
        }
    }
    assert_eq!(
        get_json(&mut api, "clusters", "a").await["status"]["ready"],
        true
    );
    h.server.stop().await;
}
