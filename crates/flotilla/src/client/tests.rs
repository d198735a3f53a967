//! The client's commands against a fake `Federation` server on a real loopback socket,
//! plus the pure pieces (kinds, labels, status codes).
//!
//! The fake answers from a fixed list of objects and a scripted watch, and records
//! every call's `authorization` header, so a test can check what was sent.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use clap::Parser as _;
use flotilla_proto::v1::federation_server::{Federation, FederationServer};
use flotilla_proto::v1::{
    AddClusterResponse, Applied, ApplyResponse, DeleteResponse, ListResponse, Object, PlanResponse,
};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response};

use super::admin::{audit_to, rotate_token_to, token_create_to, token_list_to, token_revoke_to};
use super::*;
use crate::cli::{Cli, Command};

const TOKEN: &str = "secret";

/// A scripted federation server.
#[derive(Clone, Default)]
struct Fake {
    /// `(plural kind, object)` pairs the server holds.
    objects: Vec<(&'static str, Value)>,
    /// What Watch sends, for any request.
    events: Vec<(EventType, Value)>,
    /// Whether the watch ends after `events` (else it stays open).
    watch_ends: bool,
    /// Every call as `method authorization`.
    calls: Arc<Mutex<Vec<String>>>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

impl Fake {
    fn check<T>(&self, method: &str, request: &Request<T>) -> Result<(), Status> {
        let auth = request
            .metadata()
            .get(flotilla_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_string();
        let ok = auth == format!("Bearer {TOKEN}");
        self.calls.lock().unwrap().push(format!("{method} {auth}"));
        if ok {
            Ok(())
        } else {
            Err(Status::unauthenticated("unknown token"))
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|(k, o)| {
                *k == kind
                    && (o["metadata"]["name"] == name
                        || format!(
                            "{}/{}",
                            o["metadata"]["labels"][render::CLUSTER_LABEL]
                                .as_str()
                                .unwrap_or_default(),
                            o["metadata"]["name"].as_str().unwrap_or_default()
                        ) == name)
            })
            .map(|(_, o)| o)
    }
}

fn object(value: &Value) -> Object {
    Object {
        json: value.to_string(),
        instances_total: 0,
    }
}

#[tonic::async_trait]
impl Federation for Fake {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.check("apply", &request)?;
        let request = request.into_inner();
        if request.document.contains("replicas: -1") {
            return Err(Status::invalid_argument(
                "spec.replicas: must be 0 or more\nspec.placement.perCluster.a.min: 9 is greater than max 8",
            ));
        }
        Ok(Response::new(ApplyResponse {
            applied: vec![Applied {
                kind: "FederatedInstanceSet".into(),
                namespace: "default".into(),
                name: "redis-shard".into(),
                result: "created".into(),
                generation: 2,
                revision: 7,
            }],
            warnings: vec!["spec.colour: unknown field".into()],
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Object>, Status> {
        self.check("get", &request)?;
        let r = request.into_inner();
        match self.find(&r.kind, &r.name) {
            Some(o) => Ok(Response::new(object(o))),
            None => Err(Status::not_found(format!(
                "{} {:?} not found",
                r.kind, r.name
            ))),
        }
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.check("list", &request)?;
        let kind = request.into_inner().kind;
        let items = self
            .objects
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, o)| object(o))
            .collect();
        Ok(Response::new(ListResponse { items, revision: 7 }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.check("delete", &request)?;
        let r = request.into_inner();
        Ok(Response::new(DeleteResponse {
            deleted: self.find(&r.kind, &r.name).is_some(),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        self.check("watch", &request)?;
        let events: Vec<Result<WatchEvent, Status>> = self
            .events
            .iter()
            .map(|(t, o)| {
                Ok(WatchEvent {
                    r#type: *t as i32,
                    object: Some(object(o)),
                })
            })
            .collect();
        let stream = tokio_stream::iter(events);
        if self.watch_ends {
            Ok(Response::new(Box::pin(stream)))
        } else {
            Ok(Response::new(Box::pin(
                stream.chain(tokio_stream::pending()),
            )))
        }
    }

    async fn plan(&self, request: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        self.check("plan", &request)?;
        Ok(Response::new(PlanResponse {
            json: sample_plan().to_string(),
            warnings: vec!["spec.colour: unknown field".into()],
        }))
    }

    async fn add_cluster(
        &self,
        request: Request<AddClusterRequest>,
    ) -> Result<Response<AddClusterResponse>, Status> {
        self.check("add_cluster", &request)?;
        let r = request.into_inner();
        let labels: BTreeMap<_, _> = r.labels.into_iter().collect();
        let cluster = json!({"apiVersion": "flotilla.io/v1alpha1", "kind": "Cluster",
                             "metadata": {"name": r.name, "labels": labels}});
        Ok(Response::new(AddClusterResponse {
            cluster: Some(object(&cluster)),
            token: format!("agent-token-for-{}", labels.len()),
        }))
    }
    async fn create_token(
        &self,
        _: Request<flotilla_proto::v1::CreateTokenRequest>,
    ) -> Result<Response<flotilla_proto::v1::CreateTokenResponse>, Status> {
        Err(Status::unimplemented(
            "not faked: see real_server_tokens_and_audit",
        ))
    }

    async fn list_tokens(
        &self,
        _: Request<flotilla_proto::v1::ListTokensRequest>,
    ) -> Result<Response<flotilla_proto::v1::ListTokensResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn revoke_token(
        &self,
        _: Request<flotilla_proto::v1::RevokeTokenRequest>,
    ) -> Result<Response<flotilla_proto::v1::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn rotate_cluster_token(
        &self,
        _: Request<flotilla_proto::v1::RotateClusterTokenRequest>,
    ) -> Result<Response<flotilla_proto::v1::RotateClusterTokenResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_audit(
        &self,
        _: Request<flotilla_proto::v1::ListAuditRequest>,
    ) -> Result<Response<flotilla_proto::v1::ListAuditResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

/// Serves `fake` on 127.0.0.1:0; returns its URL.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FederationServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// Parses a command line as the binary does, pointed at `server` with the right token.
fn cli(server: &str, args: &[&str]) -> Command {
    let mut argv = vec!["flotilla"];
    argv.extend_from_slice(args);
    argv.extend(["--server", server, "--token", TOKEN]);
    Cli::try_parse_from(argv).expect("parses").command
}

/// Runs `$command(&args)` into buffers: `(result, stdout, stderr)`.
macro_rules! capture {
    ($command:ident($args:expr)) => {{
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = $command(
            $args,
            Io {
                out: &mut out,
                err: &mut err,
            },
        )
        .await;
        (
            result,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }};
}

fn set(name: &str, status: Value) -> Value {
    json!({
        "apiVersion": "flotilla.io/v1alpha1", "kind": "FederatedInstanceSet",
        "metadata": {"name": name, "namespace": "default", "generation": 2, "resourceVersion": "5"},
        "spec": {"replicas": 6, "template": {}},
        "status": status,
    })
}

fn status(ready: [u32; 2], progressing: bool) -> Value {
    json!({
        "observedGeneration": 2, "replicas": 6, "readyReplicas": ready[0] + ready[1],
        "clusters": [
            {"cluster": "a", "ordinals": [0, 1, 2], "readyReplicas": ready[0]},
            {"cluster": "b", "ordinals": [3, 4, 5], "readyReplicas": ready[1]}
        ],
        "conditions": [{"type": "Progressing", "status": if progressing { "True" } else { "False" }}]
    })
}

fn slice(cluster: &str, set: &str, ordinals: Value) -> Value {
    json!({
        "apiVersion": "flotilla.io/v1alpha1", "kind": "InstanceSet",
        "metadata": {"name": set, "namespace": "default", "labels": {"flotilla.io/cluster": cluster}},
        "spec": {"ordinals": ordinals},
        "status": {"readyReplicas": 1},
    })
}

fn sample_plan() -> Value {
    json!({"placement": [{"cluster": "a", "capacity": 40, "ordinals": [0, 1, 2]},
                         {"cluster": "b", "capacity": 2, "ordinals": [3, 4]}],
           "unschedulable": 1,
           "messages": ["cluster b: room for 2, 3 asked"]})
}

fn fleet() -> Fake {
    Fake {
        objects: vec![
            (
                "federatedinstancesets",
                set("redis-shard", status([2, 2], true)),
            ),
            ("federatedinstancesets", set("cache", Value::Null)),
            (
                "instancesets",
                slice(
                    "a",
                    "redis-shard",
                    json!({"ranges": [{"start": 0, "end": 2}]}),
                ),
            ),
            (
                "instancesets",
                slice(
                    "b",
                    "redis-shard",
                    json!({"ranges": [{"start": 3, "end": 5}]}),
                ),
            ),
            (
                "instancesets",
                slice("a", "cache", json!({"discrete": [0]})),
            ),
        ],
        ..Fake::default()
    }
}

fn scratch_file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flotilla-client-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("set.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn kinds_resolve_to_their_plural() {
    for (typed, kind) in [
        ("fis", Kind::FederatedInstanceSets),
        ("federatedinstanceset", Kind::FederatedInstanceSets),
        ("FederatedInstanceSet", Kind::FederatedInstanceSets),
        (
            "federatedinstancesets.flotilla.io",
            Kind::FederatedInstanceSets,
        ),
        ("cluster", Kind::Clusters),
        ("Clusters", Kind::Clusters),
        ("is", Kind::InstanceSets),
        ("instanceset", Kind::InstanceSets),
        ("InstanceSet", Kind::InstanceSets),
    ] {
        assert_eq!(Kind::resolve(typed).unwrap(), kind, "{typed}");
    }
    assert_eq!(Kind::InstanceSets.plural(), "instancesets");
    let err = Kind::resolve("pods").unwrap_err();
    assert_eq!(err.code(), 2);
    assert!(
        err.to_string()
            .contains("federatedinstancesets (fis), clusters")
    );
}

#[test]
fn labels_parse_and_bad_ones_are_usage_errors() {
    let labels = parse_labels(&["region=eu".into(), "zone=eu-1a".into(), "empty=".into()]).unwrap();
    assert_eq!(labels["region"], "eu");
    assert_eq!(labels["zone"], "eu-1a");
    assert_eq!(labels["empty"], "");
    for bad in [&["region"][..], &["=eu"], &["a=1", "a=2"], &["my key=v"]] {
        let bad: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(parse_labels(&bad).unwrap_err().code(), 2, "{bad:?}");
    }
}

#[test]
fn statuses_map_to_exit_codes_and_messages() {
    let file = Path::new("set.yaml");
    let invalid = status_error(
        &Status::invalid_argument("spec.replicas: bad\nspec.roles[0].name: empty\n"),
        "http://s",
        Some(file),
    );
    assert_eq!(invalid.code(), 2);
    assert_eq!(
        invalid.to_string(),
        "error: set.yaml is invalid:\n  spec.replicas: bad\n  spec.roles[0].name: empty"
    );
    let cases = [
        (Code::NotFound, "federatedinstancesets \"x\" not found"),
        (Code::AlreadyExists, "clusters \"a\" already exists"),
        (Code::Aborted, "run the command again"),
        (Code::Unauthenticated, "the server refused the token"),
        (Code::PermissionDenied, "permission denied: "),
        (
            Code::Unavailable,
            "the federation server at http://s is unavailable",
        ),
        (Code::Internal, "the server failed"),
    ];
    for (code, needle) in cases {
        let message = if code == Code::NotFound {
            "federatedinstancesets \"x\" not found"
        } else {
            "clusters \"a\" already exists"
        };
        let e = status_error(&Status::new(code, message), "http://s", None);
        assert_eq!(e.code(), 1, "{code:?}");
        assert!(e.to_string().contains(needle), "{code:?}: {e}");
    }
}

#[tokio::test]
async fn get_json_prints_the_objects_and_sends_the_token() {
    let fake = fleet();
    let url = serve(fake.clone()).await;
    let Command::Get(args) = cli(&url, &["get", "fis", "-o", "json"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(get_to(&args));
    result.unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["items"][0], set("redis-shard", status([2, 2], true)));
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(fake.calls(), ["list Bearer secret"]);

    let Command::Get(args) = cli(
        &url,
        &["get", "federatedinstanceset", "redis-shard", "-o", "yaml"],
    ) else {
        unreachable!()
    };
    let (result, out, _) = capture!(get_to(&args));
    result.unwrap();
    let one: Value = serde_yaml::from_str(out.trim_start_matches("---\n")).unwrap();
    assert_eq!(one["metadata"]["name"], "redis-shard");
    assert_eq!(one["status"]["readyReplicas"], 4);
}

#[tokio::test]
async fn get_table_and_slices_of_one_set_in_every_cluster() {
    let url = serve(fleet()).await;
    let Command::Get(args) = cli(&url, &["get", "fis"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(get_to(&args));
    result.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0]
            .starts_with("NAMESPACE   NAME          REPLICAS   READY   UNSCHEDULABLE   CLUSTERS")
    );
    assert!(
        lines[1]
            .contains("redis-shard   6          4/6     0               a:3,b:3    Progressing")
    );
    assert!(lines[2].contains("cache         6          0/6"));

    let Command::Get(args) = cli(&url, &["get", "is", "redis-shard"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(get_to(&args));
    result.unwrap();
    assert_eq!(
        out,
        "NAME          CLUSTER   ORDINALS   READY   AGE\n\
         redis-shard   a         0-2        1/3     -\n\
         redis-shard   b         3-5        1/3     -\n"
    );

    let Command::Get(args) = cli(&url, &["get", "instancesets", "nothing"]) else {
        unreachable!()
    };
    let (result, _, _) = capture!(get_to(&args));
    let e = result.unwrap_err();
    assert_eq!(e.code(), 1);
    assert_eq!(e.to_string(), "error: instancesets \"nothing\" not found");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused() {
    let fake = fleet();
    let url = serve(fake.clone()).await;
    let Command::Get(mut args) = cli(&url, &["get", "fis"]) else {
        unreachable!()
    };
    args.client.token = Some("wrong".into());
    let (result, _, _) = capture!(get_to(&args));
    let e = result.unwrap_err();
    assert_eq!(e.code(), 1);
    assert!(
        e.to_string().contains("the server refused the token"),
        "{e}"
    );

    args.client.token = None;
    let (result, _, _) = capture!(get_to(&args));
    let e = result.unwrap_err();
    assert_eq!(e.code(), 2);
    assert!(e.to_string().contains("--token") && e.to_string().contains("FLOTILLA_TOKEN"));
    assert_eq!(
        fake.calls(),
        ["list Bearer wrong"],
        "no call without a token"
    );
}

#[tokio::test]
async fn invalid_apply_exits_2_with_every_field_error() {
    let url = serve(fleet()).await;
    let file = scratch_file(
        "invalid",
        "kind: FederatedInstanceSet\nspec:\n  replicas: -1\n",
    );
    let path = file.to_str().unwrap();
    let Command::Apply(args) = cli(&url, &["apply", "-f", path]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(apply_to(&args));
    let e = result.unwrap_err();
    assert_eq!(e.code(), 2);
    assert_eq!(
        e.to_string(),
        format!(
            "error: {path} is invalid:\n  spec.replicas: must be 0 or more\n  spec.placement.perCluster.a.min: 9 is greater than max 8"
        )
    );
    assert_eq!(out, "");
}

#[tokio::test]
async fn apply_prints_what_changed_and_warnings() {
    let url = serve(fleet()).await;
    let file = scratch_file("apply", "kind: FederatedInstanceSet\n");
    let Command::Apply(args) = cli(&url, &["apply", "-f", file.to_str().unwrap(), "--dry-run"])
    else {
        unreachable!()
    };
    let (result, out, err) = capture!(apply_to(&args));
    result.unwrap();
    assert_eq!(
        out,
        "federatedinstanceset.flotilla.io/redis-shard created (dry run)\n"
    );
    assert_eq!(
        err,
        format!("warning: {}: spec.colour: unknown field\n", file.display())
    );
}

#[tokio::test]
async fn apply_wait_shows_progress_until_ready() {
    let fake = Fake {
        events: vec![
            (EventType::Added, set("redis-shard", status([2, 2], true))),
            (
                EventType::Modified,
                set("redis-shard", status([2, 2], true)),
            ),
            (
                EventType::Modified,
                set("redis-shard", status([3, 2], true)),
            ),
            (
                EventType::Modified,
                set("redis-shard", status([3, 3], false)),
            ),
        ],
        ..fleet()
    };
    let url = serve(fake).await;
    let file = scratch_file("wait", "kind: FederatedInstanceSet\n");
    let Command::Apply(args) = cli(&url, &["apply", "-f", file.to_str().unwrap(), "--wait"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(apply_to(&args));
    result.unwrap();
    assert_eq!(
        out,
        "federatedinstanceset.flotilla.io/redis-shard created\n\
         redis-shard: 4/6 ready (a: 2/3, b: 2/3)\n\
         redis-shard: 5/6 ready (a: 3/3, b: 2/3)\n\
         redis-shard: 6/6 ready (a: 3/3, b: 3/3)\n\
         redis-shard: all 6 instances ready\n"
    );
}

#[tokio::test]
async fn apply_wait_gives_up_saying_what_is_not_ready() {
    let mut stuck = status([2, 1], true);
    stuck["unschedulable"] = json!(1);
    stuck["conditions"] = json!([{"type": "Scheduled", "status": "False",
        "message": "cluster b has room for 2 of the 3 instances asked"}]);
    let fake = Fake {
        events: vec![(EventType::Added, set("redis-shard", stuck))],
        ..fleet()
    };
    let url = serve(fake).await;
    let file = scratch_file("timeout", "kind: FederatedInstanceSet\n");
    let Command::Apply(args) = cli(
        &url,
        &[
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout-seconds",
            "0",
        ],
    ) else {
        unreachable!()
    };
    let (result, _, _) = capture!(apply_to(&args));
    let e = result.unwrap_err();
    assert_eq!(e.code(), 1);
    let text = e.to_string();
    assert!(text.starts_with("error: timed out after 0s"), "{text}");
    assert!(text.contains("redis-shard"), "{text}");

    // The same evaluation once the event is in: the message says why.
    let v = SetView::of(&set(
        "redis-shard",
        json!({"unschedulable": 1, "conditions": [
        {"type": "Scheduled", "status": "False", "message": "cluster b has room for 2 of the 3 instances asked"}]}),
    ));
    assert!(
        v.not_ready_report()
            .contains("1 unschedulable: cluster b has room for 2")
    );
}

#[tokio::test]
async fn cluster_add_prints_the_token_last() {
    let fake = fleet();
    let url = serve(fake.clone()).await;
    let Command::Cluster(crate::cli::ClusterCommand::Add(args)) = cli(
        &url,
        &[
            "cluster",
            "add",
            "eu-1",
            "--label",
            "region=eu",
            "--label",
            "zone=eu-1a",
        ],
    ) else {
        unreachable!()
    };
    let (result, out, _) = capture!(cluster_add_to(&args));
    result.unwrap();
    assert!(
        out.starts_with("cluster.flotilla.io/eu-1 created\n"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("agent-token-for-2"));

    let Command::Cluster(crate::cli::ClusterCommand::Add(args)) =
        cli(&url, &["cluster", "add", "eu-2", "--label", "region"])
    else {
        unreachable!()
    };
    let (result, _, _) = capture!(cluster_add_to(&args));
    assert_eq!(result.unwrap_err().code(), 2);
    assert_eq!(fake.calls(), ["add_cluster Bearer secret"]);
}

#[tokio::test]
async fn delete_says_deleted_or_not_found() {
    let url = serve(fleet()).await;
    let Command::Delete(args) = cli(&url, &["delete", "fis", "cache"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(delete_to(&args));
    result.unwrap();
    assert_eq!(out, "federatedinstanceset.flotilla.io/cache deleted\n");

    let Command::Delete(args) = cli(&url, &["delete", "fis", "gone"]) else {
        unreachable!()
    };
    let (result, _, _) = capture!(delete_to(&args));
    let e = result.unwrap_err();
    assert_eq!(
        (e.code(), e.to_string()),
        (1, "error: federatedinstancesets \"gone\" not found".into())
    );
}

#[tokio::test]
async fn describe_shows_placement_and_instances() {
    let url = serve(fleet()).await;
    let Command::Describe(args) = cli(&url, &["describe", "fis", "redis-shard"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(describe_to(&args));
    result.unwrap();
    assert!(
        out.starts_with("Name:         redis-shard\nNamespace:    default\n"),
        "{out}"
    );
    assert!(out.contains("Placement:\n  CLUSTER   INSTANCES   ORDINALS   READY\n  a         3           0-2        2/3\n"), "{out}");

    let Command::Describe(args) = cli(&url, &["describe", "is", "a/cache"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(describe_to(&args));
    result.unwrap();
    assert!(
        out.contains("Cluster:      a\nOrdinals:     0 (1)\n"),
        "{out}"
    );
}

#[tokio::test]
async fn watch_prints_changes_under_the_first_table() {
    let fake = Fake {
        events: vec![
            // The current objects again (skipped), then a change and a deletion.
            (EventType::Added, set("redis-shard", status([2, 2], true))),
            (EventType::Added, set("cache", Value::Null)),
            (EventType::Modified, {
                let mut s = set("redis-shard", status([3, 3], false));
                s["metadata"]["resourceVersion"] = json!("6");
                s
            }),
            (EventType::Deleted, set("cache", Value::Null)),
        ],
        watch_ends: true,
        ..fleet()
    };
    let url = serve(fake).await;
    let Command::Get(args) = cli(&url, &["get", "fis", "-n", "default", "-w"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(get_to(&args));
    result.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[3].starts_with("redis-shard   6          6/6     0               a:3,b:3    Ready"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("cache ") && lines[4].ends_with("(deleted)"),
        "{out}"
    );
}

#[tokio::test]
async fn live_plan_prints_what_the_offline_plan_prints() {
    let url = serve(fleet()).await;
    let file = scratch_file("plan", "kind: FederatedInstanceSet\n");
    let path = file.to_str().unwrap();
    let expected: flotilla_scheduler::Plan = serde_json::from_value(sample_plan()).unwrap();
    for output in [Output::Table, Output::Json, Output::Yaml] {
        let format = match output {
            Output::Table => "table",
            Output::Wide => "wide",
            Output::Json => "json",
            Output::Yaml => "yaml",
        };
        let Command::Plan(args) = cli(&url, &["plan", "-f", path, "-o", format]) else {
            unreachable!()
        };
        let (result, out, err) = capture!(plan_to(&args));
        result.unwrap();
        assert_eq!(out, crate::plan::render(&expected, output).unwrap());
        assert_eq!(
            err,
            format!("warning: {path}: spec.colour: unknown field\n")
        );
    }
    let Command::Plan(args) = cli(&url, &["plan", "-f", path, "--previous", path]) else {
        unreachable!()
    };
    let (result, _, _) = capture!(plan_to(&args));
    assert_eq!(result.unwrap_err().code(), 2);
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let Command::Clusters(args) = cli(&url, &["clusters"]) else {
        unreachable!()
    };
    let (result, _, _) = capture!(clusters_to(&args));
    let e = result.unwrap_err();
    assert_eq!(e.code(), 1);
    let text = e.to_string();
    assert!(
        text.contains(&format!("cannot reach the federation server at {url}")),
        "{text}"
    );
    assert!(text.contains("flotilla dev"), "{text}");
}

/// The commands against the real federation server on the embedded store (no agents,
/// so no cluster is ready and nothing runs: this checks the wire contract).
#[tokio::test]
async fn against_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = flotilla_store::EmbeddedStore::open(
        dir.path().join("store"),
        flotilla_store::EmbeddedOptions::default(),
    )
    .await
    .unwrap();
    let store: Arc<dyn flotilla_store::Store> = Arc::new(store);
    let server = flotilla_server::start(
        store,
        flotilla_server::Config {
            listen: ([127, 0, 0, 1], 0).into(),
            http: ([127, 0, 0, 1], 0).into(),
            admin_token: Some(TOKEN.into()),
            ..flotilla_server::Config::default()
        },
    )
    .await
    .unwrap();
    let url = server.url();
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/redis-shard.yaml");
    let example = example.to_str().unwrap();

    for name in ["a", "b"] {
        let Command::Cluster(crate::cli::ClusterCommand::Add(args)) =
            cli(&url, &["cluster", "add", name, "--label", "region=eu"])
        else {
            unreachable!()
        };
        let (result, out, _) = capture!(cluster_add_to(&args));
        result.unwrap();
        assert!(
            out.starts_with(&format!("cluster.flotilla.io/{name} created\n")),
            "{out}"
        );
        assert!(!out.lines().last().unwrap().trim().is_empty());
    }

    let Command::Apply(args) = cli(&url, &["apply", "-f", example]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(apply_to(&args));
    result.unwrap();
    assert_eq!(out, "federatedinstanceset.flotilla.io/redis-a created\n");

    let Command::Get(args) = cli(&url, &["get", "fis", "-o", "json"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(get_to(&args));
    result.unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "redis-a");

    let Command::Get(args) = cli(&url, &["get", "fis"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(get_to(&args));
    result.unwrap();
    // The example has sentinels: their companion set is listed too.
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0][..3], ["default", "redis-a", "12"], "{out}");
    assert_eq!(rows[1][..3], ["default", "redis-a-sentinel", "3"], "{out}");

    let Command::Clusters(args) = cli(&url, &["clusters"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(clusters_to(&args));
    result.unwrap();
    assert!(
        out.starts_with("NAME   READY   LABELS      INSTANCES"),
        "{out}"
    );
    assert!(out.contains("\na      False   region=eu"), "{out}");

    let Command::Describe(args) = cli(&url, &["describe", "fis", "redis-a"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(describe_to(&args));
    result.unwrap();
    assert!(out.starts_with("Name:         redis-a\n"), "{out}");
    assert!(out.contains("\nConditions:\n"), "{out}");

    let Command::Plan(args) = cli(&url, &["plan", "-f", example, "-o", "json"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(plan_to(&args));
    result.unwrap();
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["placement"].as_array().unwrap().len(), 2, "{out}");

    let bad = scratch_file(
        "real-invalid",
        &std::fs::read_to_string(example)
            .unwrap()
            .replace("replicas: 12", "replicas: -3"),
    );
    let Command::Apply(args) = cli(&url, &["apply", "-f", bad.to_str().unwrap()]) else {
        unreachable!()
    };
    let (result, _, _) = capture!(apply_to(&args));
    let e = result.unwrap_err();
    assert_eq!(e.code(), 2, "{e}");
    assert!(e.to_string().contains("spec.replicas"), "{e}");

    let Command::Delete(args) = cli(&url, &["delete", "fis", "redis-a"]) else {
        unreachable!()
    };
    let (result, out, _) = capture!(delete_to(&args));
    result.unwrap();
    assert_eq!(out, "federatedinstanceset.flotilla.io/redis-a deleted\n");
    let (result, _, _) = capture!(delete_to(&args));
    assert_eq!(result.unwrap_err().code(), 1);

    let Command::Get(mut args) = cli(&url, &["get", "clusters"]) else {
        unreachable!()
    };
    args.client.token = Some("wrong".into());
    let (result, _, _) = capture!(get_to(&args));
    let e = result.unwrap_err();
    assert!(e.to_string().contains("refused the token"), "{e}");
    server.stop().await;
}

/// The admin's commands against a real server on the embedded store: a token created,
/// used within and outside its scope, listed, revoked; a rotation; the audit table.
#[tokio::test]
async fn real_server_tokens_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn flotilla_store::Store> = Arc::new(
        flotilla_store::EmbeddedStore::open(
            dir.path().join("s.redb"),
            flotilla_store::EmbeddedOptions::default(),
        )
        .await
        .unwrap(),
    );
    let server = flotilla_server::start(
        store,
        flotilla_server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some(TOKEN.into()),
            ..flotilla_server::Config::default()
        },
    )
    .await
    .unwrap();
    let url = server.url();
    let as_token = |token: &str, args: &[&str]| {
        let mut argv = vec!["flotilla"];
        argv.extend_from_slice(args);
        argv.extend(["--server", &url, "--token", token]);
        Cli::try_parse_from(argv).expect("parses").command
    };

    let Command::Token(crate::cli::TokenCommand::Create(args)) = cli(
        &url,
        &[
            "token",
            "create",
            "ci",
            "--scope",
            "view",
            "--namespace",
            "team-a",
        ],
    ) else {
        unreachable!()
    };
    let (r, out, _) = capture!(token_create_to(&args));
    r.unwrap();
    assert!(
        out.starts_with("token.flotilla.io/ci created (view, namespaces team-a)\n"),
        "{out}"
    );
    let ci = out.lines().last().unwrap().to_string();
    assert!(ci.starts_with("flt_"), "{out}");

    // Within its scope it reads; outside it is refused with the reason (exit 1).
    let Command::Get(args) = as_token(&ci, &["get", "fis", "-n", "team-a"]) else {
        unreachable!()
    };
    let (r, _, _) = capture!(get_to(&args));
    r.unwrap();
    let file = dir.path().join("set.yaml");
    std::fs::write(
        &file,
        "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {name: cache, namespace: team-a}\n\
         spec:\n  replicas: 1\n  template: {spec: {containers: [{name: c, image: redis:7}]}}\n",
    )
    .unwrap();
    let Command::Apply(args) = as_token(&ci, &["apply", "-f", file.to_str().unwrap()]) else {
        unreachable!()
    };
    let (r, _, _) = capture!(apply_to(&args));
    let e = r.unwrap_err();
    assert_eq!(e.code(), 1);
    assert_eq!(
        e.to_string(),
        "error: permission denied: token \"ci\" (view, namespaces team-a) may not apply \
         federatedinstancesets in namespace team-a: a view token may only read (get, list, watch, plan)"
    );
    let Command::Token(crate::cli::TokenCommand::List(args)) = as_token(&ci, &["token", "list"])
    else {
        unreachable!()
    };
    let (r, _, _) = capture!(token_list_to(&args));
    assert!(
        r.unwrap_err()
            .to_string()
            .contains("only an admin token may")
    );

    let Command::Token(crate::cli::TokenCommand::List(args)) = cli(&url, &["token", "list"]) else {
        unreachable!()
    };
    let (r, out, _) = capture!(token_list_to(&args));
    r.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "SCOPE", "NAMESPACES", "AGE"]
    );
    assert_eq!(
        lines[1].split_whitespace().take(3).collect::<Vec<_>>(),
        ["ci", "view", "team-a"]
    );
    assert!(!out.contains(&ci), "the token is never listed");

    // Rotation prints the new agent token last.
    let Command::Cluster(crate::cli::ClusterCommand::Add(args)) =
        cli(&url, &["cluster", "add", "eu-1"])
    else {
        unreachable!()
    };
    let (r, _, _) = capture!(cluster_add_to(&args));
    r.unwrap();
    let Command::Cluster(crate::cli::ClusterCommand::RotateToken(args)) =
        cli(&url, &["cluster", "rotate-token", "eu-1", "--grace", "1m"])
    else {
        unreachable!()
    };
    let (r, out, _) = capture!(rotate_token_to(&args));
    r.unwrap();
    assert!(
        out.starts_with("cluster.flotilla.io/eu-1 token rotated; the previous token works until "),
        "{out}"
    );
    assert!(out.lines().last().unwrap().starts_with("flt_"), "{out}");

    let Command::Token(crate::cli::TokenCommand::Revoke(args)) =
        cli(&url, &["token", "revoke", "ci"])
    else {
        unreachable!()
    };
    let (r, out, _) = capture!(token_revoke_to(&args));
    r.unwrap();
    assert_eq!(out, "token.flotilla.io/ci revoked\n");
    let Command::Get(args) = as_token(&ci, &["get", "fis", "-n", "team-a"]) else {
        unreachable!()
    };
    let (r, _, _) = capture!(get_to(&args));
    assert!(
        r.unwrap_err()
            .to_string()
            .contains("the server refused the token")
    );

    // The audit trail: every write above, oldest first; filtered by object.
    let Command::Audit(args) = cli(&url, &["audit", "--since", "1h"]) else {
        unreachable!()
    };
    let (r, out, _) = capture!(audit_to(&args));
    r.unwrap();
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "TIME",
            "TOKEN",
            "SOURCE",
            "VERB",
            "OBJECT",
            "GENERATION",
            "RESULT"
        ]
    );
    let summary: Vec<String> = rows[1..]
        .iter()
        .map(|r| format!("{} {} {} {}", r[1], r[3], r[4], r[6]))
        .collect();
    assert_eq!(
        summary,
        [
            "admin create tokens/ci ok",
            "ci apply federatedinstancesets/team-a/cache PermissionDenied:",
            "admin add clusters/eu-1 ok",
            "admin rotate-token clusters/eu-1 ok",
            "admin revoke tokens/ci ok",
        ],
        "{out}"
    );
    let Command::Audit(args) = cli(&url, &["audit", "--object", "cluster/eu-1", "-o", "json"])
    else {
        unreachable!()
    };
    let (r, out, _) = capture!(audit_to(&args));
    r.unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    let verbs: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verb"].as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["add", "rotate-token"]);
    server.stop().await;
}
