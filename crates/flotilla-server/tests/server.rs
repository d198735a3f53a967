//! The server over real sockets, on the embedded store: the user API's validation and
//! authentication, and the agent protocol (snapshot, changes, resume from a revision,
//! heartbeats, reports, a lapsed lease) driven by a scripted agent; scoped tokens (every
//! RPC × scope), agent token rotation, and the audit trail.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::agent_message::Message as In;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_proto::v1::change::Change as ChangeKind;
use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::server_message::Message as Out;
use flotilla_proto::v1::{
    AddClusterRequest, AgentMessage, ApplyRequest, CreateTokenRequest, DeleteRequest, GetRequest,
    Heartbeat, Hello, ListAuditRequest, ListRequest, ListTokensRequest, PlanRequest, Report,
    RevokeTokenRequest, RotateClusterTokenRequest, ServerMessage, WatchRequest,
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
    start_with(dir, ttl, flotilla_server::Config::default().audit_retention).await
}

async fn start_with(dir: tempfile::TempDir, ttl: Duration, audit_retention: Duration) -> Harness {
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
            audit_retention,
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
                ..Default::default()
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
                ..Default::default()
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

    // Refused: another cluster's name (a known token in the wrong place), a wrong token.
    assert_eq!(
        connect(&h, "b", &token, 0).await.err().unwrap().code(),
        Code::PermissionDenied
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

/// A set document named `name` in namespace `ns`.
fn set_in(ns: &str, name: &str) -> String {
    set(2).replace(
        "metadata: {name: cache}",
        &format!("metadata: {{name: {name}, namespace: {ns}}}"),
    )
}

async fn create_token(
    api: &mut FederationClient<Channel>,
    name: &str,
    scope: &str,
    namespaces: &[&str],
) -> String {
    api.create_token(authed(
        ADMIN,
        CreateTokenRequest {
            name: name.into(),
            scope: scope.into(),
            namespaces: namespaces.iter().map(ToString::to_string).collect(),
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .token
}

async fn add_cluster(api: &mut FederationClient<Channel>, name: &str) -> String {
    api.add_cluster(authed(
        ADMIN,
        AddClusterRequest {
            name: name.into(),
            labels: Default::default(),
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .token
}

fn apply_req(document: String) -> ApplyRequest {
    ApplyRequest {
        document,
        dry_run: false,
    }
}

/// One user API call of the table below.
#[derive(Clone, Copy, Debug)]
enum Call {
    ApplySet(&'static str),
    ApplyCluster,
    Get(&'static str, &'static str),
    List(&'static str, &'static str),
    Watch(&'static str, &'static str),
    Plan(&'static str),
    DeleteSet(&'static str, &'static str),
    DeleteCluster(&'static str),
    AddCluster(&'static str),
    CreateToken(&'static str),
    ListTokens,
    RevokeToken(&'static str),
    Rotate(&'static str),
    ListAudit,
}

/// The call made with `token`: its status code, and the message when refused.
async fn call(api: &mut FederationClient<Channel>, token: &str, c: Call) -> (Code, String) {
    let r: Result<(), tonic::Status> = match c {
        Call::ApplySet(ns) => api
            .apply(authed(token, apply_req(set_in(ns, "cache"))))
            .await
            .map(drop),
        Call::ApplyCluster => api
            .apply(authed(
                token,
                apply_req(
                    "apiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: c1, labels: {region: eu}}\n"
                        .into(),
                ),
            ))
            .await
            .map(drop),
        Call::Get(kind, ns) => api
            .get(authed(
                token,
                GetRequest {
                    kind: kind.into(),
                    name: match kind {
                        "clusters" => "c1",
                        "instancesets" => "c1/team-a/cache",
                        _ => "cache",
                    }
                    .into(),
                    namespace: ns.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Call::List(kind, ns) => api
            .list(authed(
                token,
                ListRequest {
                    kind: kind.into(),
                    namespace: ns.into(),
                },
            ))
            .await
            .map(drop),
        Call::Watch(kind, ns) => api
            .watch(authed(
                token,
                WatchRequest {
                    kind: kind.into(),
                    name: String::new(),
                    namespace: ns.into(),
                },
            ))
            .await
            .map(drop),
        Call::Plan(ns) => api
            .plan(authed(
                token,
                PlanRequest {
                    document: set_in(ns, "cache"),
                },
            ))
            .await
            .map(drop),
        Call::DeleteSet(ns, name) => api
            .delete(authed(
                token,
                DeleteRequest {
                    kind: "fis".into(),
                    name: name.into(),
                    namespace: ns.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Call::DeleteCluster(name) => api
            .delete(authed(
                token,
                DeleteRequest {
                    kind: "clusters".into(),
                    name: name.into(),
                    namespace: String::new(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        Call::AddCluster(name) => api
            .add_cluster(authed(
                token,
                AddClusterRequest {
                    name: name.into(),
                    labels: Default::default(),
                },
            ))
            .await
            .map(drop),
        Call::CreateToken(name) => api
            .create_token(authed(
                token,
                CreateTokenRequest {
                    name: name.into(),
                    scope: "view".into(),
                    namespaces: vec!["team-a".into()],
                },
            ))
            .await
            .map(drop),
        Call::ListTokens => api
            .list_tokens(authed(token, ListTokensRequest {}))
            .await
            .map(drop),
        Call::RevokeToken(name) => api
            .revoke_token(authed(token, RevokeTokenRequest { name: name.into() }))
            .await
            .map(drop),
        Call::Rotate(cluster) => api
            .rotate_cluster_token(authed(
                token,
                RotateClusterTokenRequest {
                    cluster: cluster.into(),
                    grace_seconds: 3600,
                },
            ))
            .await
            .map(drop),
        Call::ListAudit => api
            .list_audit(authed(token, ListAuditRequest::default()))
            .await
            .map(drop),
    };
    match r {
        Ok(()) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

#[tokio::test]
async fn every_rpc_is_allowed_or_refused_by_the_tokens_scope_with_a_reason() {
    use Call::*;
    const OK: Code = Code::Ok;
    const NO: Code = Code::PermissionDenied;
    const WHO: Code = Code::Unauthenticated;
    let h = start(Duration::from_secs(10)).await;
    let mut api = FederationClient::new(channel(&h).await);
    let edit = create_token(&mut api, "edit-a", "edit", &["team-a"]).await;
    let view = create_token(&mut api, "view-a", "view", &["team-a"]).await;
    let revoked = create_token(&mut api, "gone", "admin", &[]).await;
    create_token(&mut api, "spare", "view", &["team-a"]).await;
    api.revoke_token(authed(
        ADMIN,
        RevokeTokenRequest {
            name: "gone".into(),
        },
    ))
    .await
    .unwrap();
    let agent = add_cluster(&mut api, "c1").await;
    add_cluster(&mut api, "c2").await;
    for ns in ["team-a", "other"] {
        api.apply(authed(ADMIN, apply_req(set_in(ns, "cache"))))
            .await
            .unwrap();
        api.apply(authed(ADMIN, apply_req(set_in(ns, "doomed"))))
            .await
            .unwrap();
    }

    // The admin column is last in each row, so its writes never change what the
    // other tokens are judged on.
    let tokens = [&edit, &view, &agent, &revoked, &ADMIN.to_string()];
    let table: &[(Call, [Code; 5])] = &[
        // call                            edit-a view-a agent revoked admin
        (ApplySet("team-a"), [OK, NO, NO, WHO, OK]),
        (ApplySet("other"), [NO, NO, NO, WHO, OK]),
        (ApplyCluster, [NO, NO, NO, WHO, OK]),
        (Get("fis", "team-a"), [OK, OK, NO, WHO, OK]),
        (Get("fis", "other"), [NO, NO, NO, WHO, OK]),
        (
            Get("instancesets", "team-a"),
            [Code::NotFound, Code::NotFound, NO, WHO, Code::NotFound],
        ),
        (Get("clusters", ""), [OK, OK, NO, WHO, OK]),
        (List("fis", ""), [OK, OK, NO, WHO, OK]),
        (List("fis", "team-a"), [OK, OK, NO, WHO, OK]),
        (List("fis", "other"), [NO, NO, NO, WHO, OK]),
        (List("instancesets", "other"), [NO, NO, NO, WHO, OK]),
        (List("clusters", ""), [OK, OK, NO, WHO, OK]),
        (Watch("fis", ""), [OK, OK, NO, WHO, OK]),
        (Watch("fis", "other"), [NO, NO, NO, WHO, OK]),
        (Watch("clusters", ""), [OK, OK, NO, WHO, OK]),
        (Plan("team-a"), [OK, OK, NO, WHO, OK]),
        (Plan("other"), [NO, NO, NO, WHO, OK]),
        (AddCluster("c3"), [NO, NO, NO, WHO, OK]),
        (CreateToken("t2"), [NO, NO, NO, WHO, OK]),
        (ListTokens, [NO, NO, NO, WHO, OK]),
        (RevokeToken("spare"), [NO, NO, NO, WHO, OK]),
        (Rotate("c1"), [NO, NO, NO, WHO, OK]),
        (ListAudit, [NO, NO, NO, WHO, OK]),
        (
            DeleteSet("team-a", "doomed"),
            [OK, NO, NO, WHO, Code::NotFound],
        ),
        (DeleteSet("other", "doomed"), [NO, NO, NO, WHO, OK]),
        (DeleteCluster("c2"), [NO, NO, NO, WHO, OK]),
    ];
    let names = ["edit-a", "view-a", "agent", "revoked", "admin"];
    let mut wrong = Vec::new();
    for (c, expect) in table {
        for ((token, want), name) in tokens.iter().zip(expect).zip(names) {
            let (got, message) = call(&mut api, token, *c).await;
            if got != *want {
                wrong.push(format!(
                    "{c:?} as {name}: {got:?} ({message}), expected {want:?}"
                ));
            }
            if got == NO && name != "agent" {
                assert!(
                    message.starts_with(&format!("token \"{name}\"")) && message.contains(": "),
                    "{c:?} as {name}: the refusal names the token and why: {message}"
                );
            }
            if got == NO && name == "agent" {
                assert!(
                    message.contains("agent token of cluster \"c1\""),
                    "{message}"
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The refusal names the token, its scope, what was refused and why.
    let (_, message) = call(&mut api, &view, ApplySet("other")).await;
    assert_eq!(
        message,
        "token \"view-a\" (view, namespaces team-a) may not apply federatedinstancesets in \
         namespace other: a view token may only read (get, list, watch, plan)"
    );
    let (_, message) = call(&mut api, &edit, ApplySet("other")).await;
    assert!(
        message.ends_with("in namespace other: the token is not for that namespace"),
        "{message}"
    );

    // Every namespace, asked by a namespaced token: only its own.
    let listed = api
        .list(authed(
            &view,
            ListRequest {
                kind: "fis".into(),
                namespace: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .items;
    let namespaces: Vec<String> = listed
        .iter()
        .map(|o| {
            serde_json::from_str::<Value>(&o.json).unwrap()["metadata"]["namespace"].to_string()
        })
        .collect();
    assert_eq!(namespaces, ["\"team-a\""], "{namespaces:?}");
    let mut events = api
        .watch(authed(
            &view,
            WatchRequest {
                kind: "fis".into(),
                name: String::new(),
                namespace: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    // Store order puts `other` first: an unfiltered watch would send it first.
    let first = events.message().await.unwrap().unwrap();
    let first: Value = serde_json::from_str(&first.object.unwrap().json).unwrap();
    assert_eq!(first["metadata"]["namespace"], "team-a");

    // A multi-document apply with one refused document stores nothing.
    let both = format!(
        "{}---\n{}",
        set_in("team-a", "pair"),
        set_in("other", "pair")
    );
    let e = api.apply(authed(&edit, apply_req(both))).await.unwrap_err();
    assert_eq!(e.code(), NO);
    let e = api
        .get(authed(
            ADMIN,
            GetRequest {
                kind: "fis".into(),
                name: "pair".into(),
                namespace: "team-a".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "nothing half-applied");

    // Bad token requests name the field; a duplicate name is refused, nothing stored.
    let bad = api
        .create_token(authed(
            ADMIN,
            CreateTokenRequest {
                name: "ci".into(),
                scope: "view".into(),
                namespaces: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("namespaces:"), "{}", bad.message());
    let dup = api
        .create_token(authed(
            ADMIN,
            CreateTokenRequest {
                name: "edit-a".into(),
                scope: "view".into(),
                namespaces: vec!["team-a".into()],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    assert!(dup.message().starts_with("name:"), "{}", dup.message());
    let (code, _) = call(&mut api, &edit, Get("fis", "team-a")).await;
    assert_eq!(code, OK, "the duplicate did not replace the token");
    let listed = api
        .list_tokens(authed(ADMIN, ListTokensRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let listed: Vec<(String, String)> = listed
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                format!("{} {}", t.scope, t.namespaces.join(",")),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("edit-a".to_string(), "edit team-a".to_string()),
            ("t2".into(), "view team-a".into()),
            ("view-a".into(), "view team-a".into()),
        ]
    );

    // Agent sessions: only the cluster's own token opens one.
    let c3 = add_cluster(&mut api, "c4").await;
    for (token, cluster, want, says) in [
        (
            &c3,
            "c1",
            NO,
            "agent token of cluster \"c4\" may not open a session for cluster \"c1\"",
        ),
        (
            &view,
            "c1",
            NO,
            "token \"view-a\" (view, namespaces team-a) is a user token",
        ),
        (
            &ADMIN.to_string(),
            "c1",
            NO,
            "token \"admin\" (admin) is a user token",
        ),
        (&revoked, "c1", WHO, "refused"),
        (
            &c3,
            "nope",
            NO,
            "may not open a session for cluster \"nope\"",
        ),
    ] {
        let e = connect(&h, cluster, token, 0).await.err().unwrap();
        assert_eq!(e.code(), want, "{}", e.message());
        assert!(e.message().contains(says), "{}", e.message());
    }
    let mut agent = connect(&h, "c4", &c3, 0).await.unwrap();
    assert!(matches!(agent.next().await, Out::Welcome(_)));
    h.server.stop().await;
}

#[tokio::test]
async fn a_rotated_agent_token_works_through_its_grace_and_is_refused_after() {
    let h = start(Duration::from_secs(10)).await;
    let mut api = FederationClient::new(channel(&h).await);
    let old = add_cluster(&mut api, "r").await;
    let mut old_session = connect(&h, "r", &old, 0).await.unwrap();
    assert!(matches!(old_session.next().await, Out::Welcome(_)));

    let rotated = api
        .rotate_cluster_token(authed(
            ADMIN,
            RotateClusterTokenRequest {
                cluster: "r".into(),
                grace_seconds: 3,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.token, old);
    assert!(
        rotated
            .previous_valid_until
            .parse::<jiff::Timestamp>()
            .is_ok()
    );
    // During the grace both work. (A new session replaces the cluster's previous one.)
    let mut new_session = connect(&h, "r", &rotated.token, 0).await.unwrap();
    assert!(matches!(new_session.next().await, Out::Welcome(_)));
    drop(old_session);
    let mut old_session = connect(&h, "r", &old, 0).await.unwrap();
    assert!(matches!(old_session.next().await, Out::Welcome(_)));

    // After it, the session on the old token ends at a heartbeat, and the old token is
    // refused.
    let mut refused = None;
    for _ in 0..100 {
        let _ = old_session
            .tx
            .send(AgentMessage {
                message: Some(In::Heartbeat(Heartbeat::default())),
            })
            .await;
        match tokio::time::timeout(Duration::from_millis(200), old_session.rx.message()).await {
            Ok(Err(status)) => {
                refused = Some(status.code());
                break;
            }
            Ok(Ok(None)) => break,
            _ => {}
        }
    }
    assert_eq!(refused, Some(Code::Unauthenticated));
    let e = connect(&h, "r", &old, 0).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    assert!(e.message().contains("rotate-token"), "{}", e.message());
    let mut again = connect(&h, "r", &rotated.token, 0).await.unwrap();
    assert!(matches!(again.next().await, Out::Welcome(_)));

    // A grace of 0: the previous token stops at once; a bad grace names its field.
    let next = api
        .rotate_cluster_token(authed(
            ADMIN,
            RotateClusterTokenRequest {
                cluster: "r".into(),
                grace_seconds: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let e = connect(&h, "r", &rotated.token, 0).await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(connect(&h, "r", &next.token, 0).await.is_ok());
    let e = api
        .rotate_cluster_token(authed(
            ADMIN,
            RotateClusterTokenRequest {
                cluster: "r".into(),
                grace_seconds: -1,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("grace_seconds:"), "{}", e.message());
    h.server.stop().await;
}

async fn audit_records(api: &mut FederationClient<Channel>, object: &str) -> Vec<Value> {
    api.list_audit(authed(
        ADMIN,
        ListAuditRequest {
            since_seconds: 3600,
            object: object.into(),
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .records
    .iter()
    .map(|r| serde_json::from_str(r).unwrap())
    .collect()
}

#[tokio::test]
async fn every_write_leaves_an_audit_record_without_secrets_or_documents() {
    let h = start(Duration::from_secs(10)).await;
    let mut api = FederationClient::new(channel(&h).await);
    let edit = create_token(&mut api, "ci", "edit", &["team-a"]).await;
    let doc = set_in("team-a", "cache");
    api.apply(authed(&edit, apply_req(doc.clone())))
        .await
        .unwrap();
    api.apply(authed(&edit, apply_req(doc.clone())))
        .await
        .unwrap();
    api.apply(authed(
        &edit,
        ApplyRequest {
            document: doc.replace("replicas: 2", "replicas: 3"),
            dry_run: true,
        },
    ))
    .await
    .unwrap();
    api.delete(authed(
        &edit,
        DeleteRequest {
            kind: "fis".into(),
            name: "cache".into(),
            namespace: "team-a".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let refused = api
        .apply(authed(&edit, apply_req(set_in("team-b", "cache"))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // An invalid document whose error quotes a value: the record names the field only.
    let invalid = set_in("team-a", "leaky").replace("replicas: 2", "replicas: hunter2-secret");
    let e = api
        .apply(authed(&edit, apply_req(invalid)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("hunter2-secret"), "{}", e.message());
    let leaky = audit_records(&mut api, "").await;
    let failed = leaky
        .iter()
        .find(|r| r["result"].as_str().unwrap().starts_with("InvalidArgument"))
        .expect("the invalid apply is recorded");
    assert_eq!(
        failed["result"], "InvalidArgument: invalid spec.replicas",
        "{failed}"
    );
    // An agent's token on a write: refused and recorded.
    let agent = add_cluster(&mut api, "c1").await;
    let e = api
        .apply(authed(&agent, apply_req(set_in("team-a", "cache"))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let by_agent: Vec<Value> = audit_records(&mut api, "")
        .await
        .into_iter()
        .filter(|r| r["token"] == "(an agent token)")
        .collect();
    assert_eq!(by_agent.len(), 1, "{by_agent:?}");
    assert!(
        by_agent[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("PermissionDenied: the agent token of cluster \"c1\""),
        "{}",
        by_agent[0]
    );

    let records = audit_records(&mut api, "fis/cache").await;
    let row = |r: &Value| {
        format!(
            "{} {} {}/{} {} {} {}->{}",
            r["token"].as_str().unwrap(),
            r["verb"].as_str().unwrap(),
            r["namespace"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap(),
            r["result"].as_str().unwrap().split(':').next().unwrap(),
            r["change"].as_str().unwrap_or("-"),
            r["generationBefore"],
            r["generationAfter"],
        )
    };
    let rows: Vec<String> = records.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            "ci apply team-a/cache ok created null->1",
            "ci apply team-a/cache ok unchanged 1->1",
            "ci delete team-a/cache ok deleted 1->null",
            "ci apply team-b/cache PermissionDenied - null->null",
        ],
        "the dry run is not recorded"
    );
    for r in &records {
        assert_eq!(r["kind"], "federatedinstancesets");
        assert!(
            r["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
        assert!(
            r["time"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok(),
            "{r}"
        );
    }
    assert!(
        records[3]["result"]
            .as_str()
            .unwrap()
            .contains("may not apply federatedinstancesets in namespace team-b"),
        "{}",
        records[3]
    );
    let created = audit_records(&mut api, "token/ci").await;
    assert_eq!(created.len(), 1);
    assert_eq!(
        (created[0]["verb"].as_str(), created[0]["token"].as_str()),
        (Some("create"), Some("admin"))
    );

    // Nothing secret or bulky in the trail or its log line: the whole trail, as text.
    let all = audit_records(&mut api, "").await;
    let text = serde_json::to_string(&all).unwrap();
    for secret in [
        edit.as_str(),
        agent.as_str(),
        ADMIN,
        "redis:7",
        "containers",
        "digest",
        "hunter2",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} in the audit trail: {text}"
        );
    }
    // 4 of fis/cache, the token's creation, the invalid apply, the cluster's
    // registration and the agent token's refused apply.
    assert_eq!(all.len(), 8, "{text}");

    // Only admin reads it.
    let e = api
        .list_audit(authed(&edit, ListAuditRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    h.server.stop().await;
}

#[tokio::test]
async fn audit_records_past_the_retention_are_pruned() {
    let h = start_with(
        tempfile::tempdir().unwrap(),
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await;
    let mut api = FederationClient::new(channel(&h).await);
    add_cluster(&mut api, "a").await;
    assert_eq!(audit_records(&mut api, "clusters/a").await.len(), 1);
    eventually("the record pruned", || {
        let mut api = api.clone();
        async move { audit_records(&mut api, "clusters/a").await.is_empty() }
    })
    .await;
    h.server.stop().await;
}

#[tokio::test]
async fn a_watch_ends_when_its_token_is_revoked() {
    let h = start(Duration::from_secs(10)).await;
    let mut api = FederationClient::new(channel(&h).await);
    let view = create_token(&mut api, "watcher", "view", &["team-a"]).await;
    let mut events = api
        .watch(authed(
            &view,
            WatchRequest {
                kind: "fis".into(),
                ..WatchRequest::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    api.revoke_token(authed(
        ADMIN,
        RevokeTokenRequest {
            name: "watcher".into(),
        },
    ))
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch ends once its token is revoked")
    .expect("with a status, not a silent close");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        ended.message().starts_with("the watch ended: "),
        "{ended:?}"
    );
    h.server.stop().await;
}

/// Sixteen concurrent `cluster add eu-1`: exactly one stores the cluster and its token
/// (one transaction), its token is the one that works, every other add fails with
/// AlreadyExists saying what to do, and no half-written record is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cluster_adds_have_one_winner_whose_token_works() {
    let h = start(Duration::from_secs(5)).await;
    let channel = channel(&h).await;
    let adds: Vec<_> = (0..16)
        .map(|_| {
            let mut api = FederationClient::new(channel.clone());
            tokio::spawn(async move {
                api.add_cluster(authed(
                    ADMIN,
                    AddClusterRequest {
                        name: "eu-1".into(),
                        labels: Default::default(),
                    },
                ))
                .await
                .map(|r| r.into_inner().token)
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for add in adds {
        match add.await.unwrap() {
            Ok(token) => tokens.push(token),
            Err(status) => {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                assert!(
                    status.message().contains("cluster \"eu-1\" already exists")
                        && status.message().contains("flotilla delete cluster eu-1"),
                    "{}",
                    status.message()
                );
            }
        }
    }
    assert_eq!(tokens.len(), 1, "exactly one add wins: {tokens:?}");
    let mut agent = connect(&h, "eu-1", &tokens[0], 0).await.unwrap();
    assert!(matches!(agent.next().await, Out::Welcome(_)));
    let mut api = FederationClient::new(channel.clone());
    let clusters = api
        .list(authed(
            ADMIN,
            ListRequest {
                kind: "clusters".into(),
                namespace: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clusters.items.len(), 1, "one cluster record");
    h.server.stop().await;
}
