//! Fuzzed input through apply: 10,000 seeded mutations of valid FederatedInstanceSets
//! and Clusters (wrong types, huge numbers, deep nesting, unknown fields, invalid
//! quantities and selectors, nulls, keys JSON cannot hold, tags, duplicate keys, long
//! strings, missing fields).
//!
//! Every document is judged in process by the API's own decoding and validation (what
//! `apply` runs first), and every tenth, 1,000 in all, is also sent to a real server's
//! gRPC `apply` on the embedded store. Each must be accepted, or refused with problems
//! that each name a field (or, for a problem with a whole document, the document);
//! nothing panics (in process the test would fail; a panicking handler drops the
//! connection). Through gRPC a refusal is `InvalidArgument` with the same problems,
//! leaves the stored sets, clusters and tokens exactly as they were, and an accepted
//! document reads back. The generator is this file's own (it shares nothing with the decoder),
//! and its seed is fixed, so a failure names a document that reproduces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::decode::{self, AnyObject};
use flotilla_api::validate;
use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::{AddClusterRequest, ApplyRequest, GetRequest};
use flotilla_store::{EmbeddedOptions, EmbeddedStore, Store};
use serde_json::{Value as Json, json};
use tonic::transport::Channel;
use tonic::{Code, Request};

const ADMIN: &str = "admin-secret";
const DOCUMENTS: usize = 10_000;
/// Every this many documents also goes through the real server's gRPC `apply`: about
/// 7 ms each in a debug build, against 1 ms for decoding and validation alone.
const THROUGH_GRPC_EVERY: usize = 10;

/// A YAML tree as this generator writes it: unlike JSON's model it holds keys of any
/// kind, repeated keys, integers past 64 bits and tags.
#[derive(Clone, Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    /// Written as is (`1e400`, `99999999999999999999999`).
    Raw(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Tagged(String, Box<Node>),
}

impl Node {
    fn from_json(v: &Json) -> Node {
        match v {
            Json::Null => Node::Null,
            Json::Bool(b) => Node::Bool(*b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Node::Int(i.into()),
                None => Node::Float(n.as_f64().unwrap()),
            },
            Json::String(s) => Node::Str(s.clone()),
            Json::Array(a) => Node::Seq(a.iter().map(Node::from_json).collect()),
            Json::Object(o) => Node::Map(
                o.iter()
                    .map(|(k, v)| (Node::Str(k.clone()), Node::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// YAML in flow style: JSON where the tree is JSON, YAML where it is not.
    fn write(&self, out: &mut String) {
        match self {
            Node::Null => out.push_str("null"),
            Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Node::Int(i) => out.push_str(&i.to_string()),
            Node::Float(f) if f.is_nan() => out.push_str(".nan"),
            Node::Float(f) if f.is_infinite() => {
                out.push_str(if *f > 0.0 { ".inf" } else { "-.inf" })
            }
            Node::Float(f) => out.push_str(&format!("{f:?}")),
            Node::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            Node::Raw(s) => out.push_str(s),
            Node::Seq(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Node::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write(out);
                    out.push_str(": ");
                    v.write(out);
                }
                out.push('}');
            }
            Node::Tagged(tag, v) => {
                out.push_str(tag);
                out.push(' ');
                v.write(out);
            }
        }
    }

    fn count(&self) -> usize {
        1 + match self {
            Node::Seq(items) => items.iter().map(Node::count).sum(),
            Node::Map(entries) => entries.iter().map(|(_, v)| v.count()).sum(),
            Node::Tagged(_, v) => v.count(),
            _ => 0,
        }
    }

    /// The `n`th node in depth-first order (0 is this one).
    fn nth(&mut self, mut n: usize) -> &mut Node {
        if n == 0 {
            return self;
        }
        n -= 1;
        let children: Vec<&mut Node> = match self {
            Node::Seq(items) => items.iter_mut().collect(),
            Node::Map(entries) => entries.iter_mut().map(|(_, v)| v).collect(),
            Node::Tagged(_, v) => vec![&mut **v],
            _ => unreachable!("counted past a leaf"),
        };
        for child in children {
            let c = child.count();
            if n < c {
                return child.nth(n);
            }
            n -= c;
        }
        unreachable!("counted past the tree")
    }
}

/// splitmix64: small, seeded, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn valid_documents() -> Vec<Json> {
    let plain = json!({
        "apiVersion": "flotilla.io/v1alpha1",
        "kind": "FederatedInstanceSet",
        "metadata": {"name": "cache", "namespace": "default", "labels": {"app": "cache"}},
        "spec": {
            "replicas": 6,
            "roles": [{"name": "leader", "exclusive": true}, {"name": "follower"}],
            "template": {"metadata": {"labels": {"app": "cache"}}, "spec": {"containers": [{
                "name": "main", "image": "example/cache:1",
                "ports": [{"containerPort": 7000, "name": "main"}],
                "env": [{"name": "MODE", "value": "fast"}],
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                              "limits": {"cpu": "1", "memory": "2Gi"}}
            }]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}}}}],
            "placement": {
                "clusterAffinity": {"labelSelector": {
                    "matchLabels": {"env": "prod"},
                    "matchExpressions": [{"key": "region", "operator": "In", "values": ["eu", "us"]}]
                }},
                "weights": {"static": {"eu-1": 2, "us-1": 1}},
                "perCluster": {"eu-1": {"min": 1, "max": 5}},
                "minClusters": 1,
                "maxClusters": 2,
                "spread": [{"byLabel": "region", "minGroups": 1}],
                "maxInstancesPerNode": 2,
                "maxSharePerCluster": 80,
                "tolerations": [{"key": "maintenance", "operator": "Exists", "effect": "NoSchedule"}]
            }
        }
    });
    let redis = json!({
        "apiVersion": "flotilla.io/v1alpha1",
        "kind": "FederatedInstanceSet",
        "metadata": {"name": "shard", "namespace": "team-a"},
        "spec": {
            "replicas": 3,
            "template": {"spec": {"containers": [{
                "name": "redis", "image": "redis:7.2",
                "resources": {"requests": {"cpu": "1", "memory": "4Gi"}}
            }]}},
            "redis": {
                "mode": "Replication",
                "sentinel": {"replicas": 3, "quorum": 2, "downAfterMilliseconds": 5000,
                             "failoverTimeoutMilliseconds": 60000},
                "minReplicasToWrite": 1,
                "config": {"maxmemory": "256mb", "maxmemory-policy": "allkeys-lru"}
            },
            "placement": {"weights": {"dynamic": "AvailableCapacity"}, "maxSharePerCluster": 50}
        }
    });
    let cluster = json!({
        "apiVersion": "flotilla.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "eu-1", "labels": {"region": "eu", "env": "prod"}},
        "spec": {"taints": [{"key": "maintenance", "value": "yes", "effect": "NoSchedule"}]}
    });
    vec![plain, redis, cluster]
}

const BAD_QUANTITIES: &[&str] = &[
    "",
    "1.2.3",
    "10Qi",
    "-5",
    "1e1000",
    "99999999999999999999999999999999Ei",
    "0.00000000001n",
    "NaN",
    "1 Gi",
    "+-1",
    "1Mi1",
    "ki",
];

fn scalar(rng: &mut Rng) -> Node {
    match rng.below(8) {
        0 => Node::Null,
        1 => Node::Bool(rng.below(2) == 0),
        2 => Node::Int(rng.next() as i64 as i128),
        3 => Node::Float(f64::from_bits(rng.next())),
        4 => Node::Str(
            rng.pick(&["", "x", "many", "-1", "3", "yes", "Gi"])
                .to_string(),
        ),
        5 => Node::Seq(vec![]),
        6 => Node::Map(vec![]),
        _ => Node::Str("z".repeat(rng.below(3) * 40_000)),
    }
}

fn huge(rng: &mut Rng) -> Node {
    match rng.below(9) {
        0 => Node::Int(u64::MAX.into()),
        1 => Node::Int(i64::MIN.into()),
        2 => Node::Int(u32::MAX as i128 + 1),
        3 => Node::Int((1i128 << 53) + 1),
        4 => Node::Int(-1),
        5 => Node::Float(1e308),
        6 => Node::Raw("1e400".into()),
        7 => Node::Raw("-99999999999999999999999".into()),
        _ => Node::Raw("99999999999999999999999".into()),
    }
}

fn deep(rng: &mut Rng) -> Node {
    // Mostly within YAML's own reader limit (128), where the decoder's 64 applies.
    let depth = if rng.below(20) == 0 {
        130 + rng.below(100)
    } else {
        20 + rng.below(100)
    };
    let mut node = scalar(rng);
    for _ in 0..depth {
        node = if rng.below(2) == 0 {
            Node::Seq(vec![node])
        } else {
            Node::Map(vec![(Node::Str("a".into()), node)])
        };
    }
    node
}

fn bad_selector(rng: &mut Rng) -> Node {
    let expr = |key: &str, op: &str, values: Vec<&str>| {
        Node::from_json(&json!({"key": key, "operator": op, "values": values}))
    };
    let bad = match rng.below(7) {
        0 => expr("region", "Near", vec!["eu"]),
        1 => expr("region", "In", vec![]),
        2 => expr("region", "Exists", vec!["eu"]),
        3 => expr("bad key!", "In", vec!["eu"]),
        4 => expr("region", "NotIn", vec![&"v".repeat(70)]),
        5 => expr("", "DoesNotExist", vec![]),
        _ => expr("a/b/c", "In", vec!["x y"]),
    };
    Node::Map(vec![(
        Node::Str("matchExpressions".into()),
        Node::Seq(vec![bad]),
    )])
}

/// One mutation at a random place in `doc`.
fn mutate(doc: &mut Node, rng: &mut Rng) {
    let at = rng.below(doc.count());
    let node = doc.nth(at);
    match rng.below(13) {
        0 | 1 => *node = scalar(rng),
        2 => *node = huge(rng),
        3 => *node = deep(rng),
        4 => *node = Node::Null,
        5 => *node = Node::Str(rng.pick(BAD_QUANTITIES).to_string()),
        6 => *node = bad_selector(rng),
        7 => *node = Node::Tagged("!oops".into(), Box::new(node.clone())),
        8 => {
            *node = Node::Str(
                rng.pick(&["Bad_Name", "-a", "a.b", "", &"n".repeat(70)])
                    .to_string(),
            )
        }
        // Changes to a mapping, or to the document when the pick was not one.
        _ => {
            let node = if matches!(node, Node::Map(_)) {
                node
            } else {
                doc
            };
            let Node::Map(entries) = node else { return };
            match rng.below(5) {
                0 if !entries.is_empty() => {
                    let i = rng.below(entries.len());
                    entries.remove(i);
                }
                1 if !entries.is_empty() => {
                    let i = rng.below(entries.len());
                    let dup = entries[i].clone();
                    entries.push(dup);
                }
                2 => {
                    let key = match rng.below(5) {
                        0 => Node::Seq(vec![Node::Int(1)]),
                        1 => Node::Map(vec![(Node::Str("k".into()), Node::Int(1))]),
                        2 => Node::Null,
                        3 => Node::Int(7),
                        _ => Node::Bool(true),
                    };
                    entries.push((key, scalar(rng)));
                }
                _ => {
                    let key = format!("zzUnknown{}", rng.below(1000));
                    entries.push((Node::Str(key), scalar(rng)));
                }
            }
        }
    }
}

/// `spec.taints: …` or `document 2 (Cluster b): …`: a problem line names its place
/// when a path without spaces comes before the first `: `, or when it names its
/// document (every problem of a file of several does; a problem with a whole document
/// has no field). The in-process judge checks the same problems field by field.
fn names_its_place(line: &str) -> bool {
    line.starts_with("document ")
        || matches!(line.split_once(": "), Some((path, _)) if !path.is_empty() && !path.contains(char::is_whitespace))
}

/// YAML's reader stops at 128 levels before there is a tree to name a field in; its
/// refusal names the line and column instead.
fn too_deep_to_read(line: &str) -> bool {
    line.contains("not valid YAML: nested more than 128 levels, too deep to read at line")
}

/// What the API's own decoding and validation make of `text`: `Ok(warnings)` or the
/// problems, each checked to name its field.
fn judge(text: &str) -> Result<Vec<String>, Vec<String>> {
    let mut problems = Vec::new();
    let docs = match decode::decode_each(text) {
        Ok(d) => d,
        Err(e) => {
            problems = e.0;
            Vec::new()
        }
    };
    let mut warnings = Vec::new();
    for doc in docs {
        let d = match doc.decoded {
            Ok(d) => d,
            Err(e) => {
                problems.extend(e.0);
                continue;
            }
        };
        for w in &d.warnings {
            assert!(!w.path.is_empty(), "a warning without a field: {w}\n{text}");
        }
        warnings.extend(d.warnings.iter().map(ToString::to_string));
        let r = match d.object {
            AnyObject::FederatedInstanceSet(o) => validate::federated_instance_set(*o).map(drop),
            AnyObject::Cluster(o) => validate::cluster(*o).map(drop),
            AnyObject::InstanceSet(_) => Ok(()),
        };
        if let Err(e) = r {
            problems.extend(e.0);
        }
    }
    for p in &problems {
        // Only a problem with a whole document (not YAML, not a mapping, tagged) has no
        // field; it names the document.
        let whole = [
            "not valid YAML",
            "a document must be a mapping",
            "YAML tags",
        ];
        assert!(
            !p.path.is_empty()
                || (p.document.is_some() && whole.iter().any(|w| p.reason.starts_with(w))),
            "a problem that names neither a field nor its document: {p}\n{}",
            excerpt(text)
        );
    }
    if problems.is_empty() {
        Ok(warnings)
    } else {
        Err(problems.iter().map(ToString::to_string).collect())
    }
}

fn excerpt(text: &str) -> String {
    if text.len() > 2000 {
        format!("{}… ({} bytes)", &text[..2000], text.len())
    } else {
        text.to_string()
    }
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    r
}

/// The stored user objects a refused apply must leave alone: sets (but not the
/// sentinel sets the controller writes for accepted Redis sets), clusters and tokens,
/// with their revisions.
async fn user_objects(store: &dyn Store) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for prefix in [
        "/flotilla/sets/",
        "/flotilla/clusters/",
        "/flotilla/tokens/",
    ] {
        for kv in store.list(prefix).await.unwrap().items {
            let v: Json = serde_json::from_slice(&kv.value).unwrap_or(Json::Null);
            if v.pointer("/spec/sentinelFor").is_none() {
                out.push((kv.key.clone(), kv.mod_revision));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mutated_documents_are_each_accepted_or_refused_with_a_field() {
    // On tmpfs where there is one: the test judges input, not durability, and an fsync
    // per audit record would be most of its time.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("s.redb"), EmbeddedOptions::default())
            .await
            .unwrap(),
    );
    let server = flotilla_server::start(
        store.clone(),
        flotilla_server::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            admin_token: Some(ADMIN.into()),
            cluster_ttl: Duration::from_secs(30),
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
    let mut api = FederationClient::new(channel).max_decoding_message_size(64 << 20);
    for name in ["eu-1", "us-1"] {
        api.add_cluster(authed(AddClusterRequest {
            name: name.into(),
            labels: Default::default(),
        }))
        .await
        .unwrap();
    }

    let bases: Vec<Node> = valid_documents().iter().map(Node::from_json).collect();
    // The unmutated documents are valid: the mutations are what is judged.
    for base in &bases {
        let mut text = String::new();
        base.write(&mut text);
        judge(&text).unwrap_or_else(|e| panic!("a base document is refused: {e:?}"));
    }

    let mut rng = Rng(0x5eed_f1a7_111a);
    let (mut accepted, mut refused, mut sent, mut too_deep) = (0usize, 0usize, 0usize, 0usize);
    let started = Instant::now();
    for i in 0..DOCUMENTS {
        let mut doc = rng.pick(&bases).clone();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut doc, &mut rng);
        }
        let mut text = String::new();
        doc.write(&mut text);
        let judged = judge(&text);
        if i % THROUGH_GRPC_EVERY != 0 {
            match judged {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
            continue;
        }
        sent += 1;

        let before = user_objects(&*store).await;
        let r = api
            .apply(authed(ApplyRequest {
                document: text.clone(),
                dry_run: false,
            }))
            .await;
        match r {
            Ok(resp) => {
                accepted += 1;
                let resp = resp.into_inner();
                assert!(
                    judged.is_ok(),
                    "document {i}: applied, but decoding and validation refuse it: {judged:?}\n{}",
                    excerpt(&text)
                );
                for w in &resp.warnings {
                    assert!(names_its_place(w), "document {i}: warning {w:?}");
                }
                for a in resp.applied {
                    let got = api
                        .get(authed(GetRequest {
                            kind: a.kind.clone(),
                            name: a.name.clone(),
                            namespace: a.namespace.clone(),
                            ..Default::default()
                        }))
                        .await
                        .unwrap_or_else(|e| {
                            panic!("document {i}: applied {a:?} does not read back: {e}")
                        })
                        .into_inner();
                    let v: Json = serde_json::from_str(&got.json).unwrap();
                    assert_eq!(
                        v.pointer("/metadata/name").and_then(Json::as_str),
                        Some(a.name.as_str())
                    );
                }
            }
            Err(status) => {
                refused += 1;
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "document {i}: {status}\n{}",
                    excerpt(&text)
                );
                let lines: Vec<&str> = status.message().lines().collect();
                assert!(!lines.is_empty(), "document {i}: refused without a reason");
                for line in &lines {
                    if too_deep_to_read(line) {
                        too_deep += 1;
                        continue;
                    }
                    // A document of nothing but `null` is no object at all.
                    let empty = line.starts_with("no objects:")
                        && matches!(decode::decode_each(&text), Ok(d) if d.is_empty());
                    assert!(
                        empty || names_its_place(line),
                        "document {i}: a refusal that names no field: {line:?}\n{}",
                        excerpt(&text)
                    );
                }
                // What decoding and validation refuse is refused with their words;
                // apply may refuse more (an unregistered cluster, a Redis parameter
                // no rollout can change), never less.
                // A long list is cut, saying how many more there are.
                if let Err(problems) = &judged {
                    let (shown, more) = match lines.last().and_then(|l| l.strip_prefix("… and "))
                    {
                        Some(more) => (&lines[..lines.len() - 1], Some(more)),
                        None => (&lines[..], None),
                    };
                    assert_eq!(
                        shown,
                        &problems[..shown.len().min(problems.len())],
                        "document {i}\n{}",
                        excerpt(&text)
                    );
                    let left = problems.len() - shown.len();
                    match more {
                        Some(more) => assert!(more.starts_with(&format!("{left} more problem"))),
                        None => assert_eq!(left, 0, "document {i}: problems left out silently"),
                    }
                }
                assert_eq!(
                    user_objects(&*store).await,
                    before,
                    "document {i}: a refused apply changed the store\n{}",
                    excerpt(&text)
                );
            }
        }
    }
    eprintln!(
        "{DOCUMENTS} documents in {:.1} s: {accepted} accepted, {refused} refused; {sent} through gRPC apply ({too_deep} too deep for YAML's reader)",
        started.elapsed().as_secs_f64()
    );
    // The mix exercises both outcomes.
    assert!(accepted > DOCUMENTS / 20, "{accepted} accepted");
    assert!(refused > DOCUMENTS / 2, "{refused} refused");
    server.stop().await;
}
