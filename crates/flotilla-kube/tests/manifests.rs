//! `deploy/agent/`, `deploy/server/` and `deploy/proxy/` as Kubernetes would read them, and the agent's
//! ClusterRole against the permission table the code is checked against.
//!
//! ```text
//!   every YAML document ──serde (k8s-openapi type of its kind)──▶ round trip equal?
//!                         (a misspelt or misplaced field fails: serde drops it)
//!   ClusterRole flotilla-agent ══ flotilla_kube::rbac::REQUIRED_PERMISSIONS
//!   (which tests/mock_api.rs checks every mock request against, both ways)
//! ```
//!
//! What this does not prove: that a real API server accepts the documents (admission,
//! defaults, CRDs present) or that a real cluster authorizes exactly what the mock saw;
//! only `kubectl apply` against a cluster shows that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flotilla_kube::rbac::REQUIRED_PERMISSIONS;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, Namespace, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NAMESPACE: &str = "flotilla-system";

/// One parsed document and where it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// The document as `T`, failing on a type error (with its field path) and on any
    /// field `T` does not have (the round trip would lose it).
    fn typed<T: DeserializeOwned + Serialize>(&self) -> T {
        let typed: T = serde_path_to_error::deserialize(&self.value)
            .unwrap_or_else(|e| panic!("{} {} in {}: {e}", self.kind(), self.name(), self.file));
        // Everything written must survive the round trip (serializing may add type
        // fields to embedded objects, such as a claim template's `kind`).
        let back = serde_json::to_value(&typed).unwrap();
        let lost = differences(&self.value, &back, "");
        if !lost.is_empty() {
            panic!(
                "{} {} in {} has fields Kubernetes does not know (or wrote them differently): {}",
                self.kind(),
                self.name(),
                self.file,
                lost.join(", ")
            );
        }
        typed
    }
}

/// The paths where `a` has something `b` does not have, or has differently.
fn differences(a: &Value, b: &Value, path: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .flat_map(|(k, v)| match b.get(k) {
                Some(w) => differences(v, w, &format!("{path}.{k}")),
                None => vec![format!("{path}.{k}")],
            })
            .collect(),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (v, w))| differences(v, w, &format!("{path}[{i}]")))
            .collect(),
        _ if a == b => vec![],
        _ => vec![format!("{path} ({a} became {b})")],
    }
}

fn deploy(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(dir)
}

/// Every YAML document under `deploy/<dir>`, recursively.
fn docs(dir: &str) -> Vec<Doc> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy(dir), &mut files);
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            docs.push(Doc {
                file: file.display().to_string(),
                value,
            });
        }
    }
    assert!(!docs.is_empty(), "no documents under deploy/{dir}");
    docs
}

/// The parsed objects of one directory, by kind.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    secrets: Vec<Secret>,
    deployments: Vec<(String, Deployment)>,
    services: Vec<Service>,
    stateful_sets: Vec<StatefulSet>,
    autoscalers: Vec<HorizontalPodAutoscaler>,
}

fn objects(dir: &str) -> Objects {
    let mut o = Objects::default();
    for doc in docs(dir) {
        match (
            doc.value["apiVersion"].as_str().unwrap_or_default(),
            doc.kind(),
        ) {
            ("v1", "Namespace") => o.namespaces.push(doc.typed()),
            ("v1", "ServiceAccount") => o.service_accounts.push(doc.typed()),
            ("v1", "Secret") => o.secrets.push(doc.typed()),
            ("v1", "Service") => o.services.push(doc.typed()),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => o.cluster_roles.push(doc.typed()),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => o.bindings.push(doc.typed()),
            ("apps/v1", "Deployment") => o.deployments.push((doc.file.clone(), doc.typed())),
            ("apps/v1", "StatefulSet") => o.stateful_sets.push(doc.typed()),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => o.autoscalers.push(doc.typed()),
            (api, kind) => panic!("{}: unexpected {api} {kind}", doc.file),
        }
    }
    for ns in o
        .service_accounts
        .iter()
        .map(|x| &x.metadata)
        .chain(o.secrets.iter().map(|x| &x.metadata))
        .chain(o.services.iter().map(|x| &x.metadata))
        .chain(o.deployments.iter().map(|x| &x.1.metadata))
        .chain(o.stateful_sets.iter().map(|x| &x.metadata))
        .chain(o.autoscalers.iter().map(|x| &x.metadata))
    {
        assert_eq!(ns.namespace.as_deref(), Some(NAMESPACE), "{:?}", ns.name);
    }
    assert!(
        o.namespaces
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(NAMESPACE))
    );
    o
}

fn pod_spec(d: &Deployment) -> &PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == name)
}

/// A container that runs as non-root on a read-only root file system, with requests
/// and limits.
fn hardened(pod: &PodSpec, c: &Container) {
    let pod_sc = pod
        .security_context
        .as_ref()
        .expect("a pod security context");
    assert_eq!(pod_sc.run_as_non_root, Some(true), "{}", c.name);
    let sc = c
        .security_context
        .as_ref()
        .expect("a container security context");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
    let resources = c.resources.as_ref().expect("resources");
    for r in ["cpu", "memory"] {
        assert!(
            resources
                .requests
                .as_ref()
                .is_some_and(|q| q.contains_key(r)),
            "{} requests {r}",
            c.name
        );
    }
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|q| q.contains_key("memory")),
        "{} limits memory",
        c.name
    );
}

/// Every `--flag` of `args` is a field of the `flotilla` CLI (clap derives `--a-b` from
/// `a_b`): a renamed flag fails here rather than in a pod's crash loop.
fn flags_exist(args: &[String]) {
    let cli = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../flotilla/src/cli.rs"),
    )
    .unwrap();
    for flag in args.iter().filter_map(|a| a.strip_prefix("--")) {
        let field = flag.split('=').next().unwrap().replace('-', "_");
        assert!(
            cli.contains(&format!("pub {field}:")),
            "--{flag} is not a flag of the flotilla CLI (crates/flotilla/src/cli.rs)"
        );
    }
}

/// `(api group, resource, verb)` for every verb of every rule.
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcards: {rule:?}"
                    );
                    let new = out.insert((group.clone(), resource.clone(), verb.clone()));
                    assert!(new, "{group}/{resource} {verb} granted twice");
                }
            }
        }
    }
    out
}

#[test]
fn the_agent_cluster_role_grants_exactly_the_permission_table() {
    let o = objects("agent");
    let [role] = o.cluster_roles.as_slice() else {
        panic!("one ClusterRole in deploy/agent");
    };
    assert_eq!(role.metadata.name.as_deref(), Some("flotilla-agent"));
    let granted = grants(role);
    let table: BTreeSet<(String, String, String)> = REQUIRED_PERMISSIONS
        .iter()
        .map(|p| (p.api_group.into(), p.resource.into(), p.verb.into()))
        .collect();
    let missing: Vec<_> = table.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&table).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deploy/agent/rbac.yaml differs from flotilla_kube::rbac::REQUIRED_PERMISSIONS: missing {missing:?}, not in the table {extra:?}"
    );
    // Bound to the agent's service account, which exists.
    let [binding] = o.bindings.as_slice() else {
        panic!("one ClusterRoleBinding");
    };
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "flotilla-agent");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        ("ServiceAccount", "flotilla-agent", Some(NAMESPACE))
    );
    assert!(
        o.service_accounts
            .iter()
            .any(|sa| sa.metadata.name.as_deref() == Some("flotilla-agent"))
    );
}

#[test]
fn the_agent_deployments_run_the_agent_as_its_service_account_probed_on_its_http_port() {
    let o = objects("agent");
    let by_file: BTreeMap<String, &Deployment> = o
        .deployments
        .iter()
        .map(|(file, d)| {
            (
                Path::new(file)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                d,
            )
        })
        .collect();
    assert_eq!(
        by_file.keys().map(String::as_str).collect::<Vec<_>>(),
        ["agent.yaml", "standalone.yaml"]
    );
    for (file, d) in &by_file {
        // Same name: applying one mode replaces the other.
        assert_eq!(d.metadata.name.as_deref(), Some("flotilla-agent"), "{file}");
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1), "{file}");
        assert_eq!(
            spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            Some("Recreate"),
            "{file}: never two agents at once"
        );
        let pod = pod_spec(d);
        assert_eq!(pod.service_account_name.as_deref(), Some("flotilla-agent"));
        let [c] = pod.containers.as_slice() else {
            panic!("{file}: one container");
        };
        hardened(pod, c);
        let args = c.args.as_deref().unwrap_or_default();
        // Its HTTP port (--http) is the container's port `http`, probed there.
        let port = args
            .iter()
            .find_map(|a| a.strip_prefix("--http="))
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<i32>().ok())
            .unwrap_or_else(|| panic!("{file}: --http=ADDR:PORT"));
        let ports = c.ports.as_deref().unwrap_or_default();
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some("http") && p.container_port == port),
            "{file}: containerPort {port} named http"
        );
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{file}: an HTTP probe of {path}"));
            assert_eq!(get.path.as_deref(), Some(path), "{file}");
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()),
                "{file}"
            );
        }
        assert_eq!(args.first().map(String::as_str), Some("agent"), "{file}");
        assert!(
            !args.iter().any(|a| a.starts_with("--kubeconfig")),
            "{file}: in-cluster config"
        );
        flags_exist(args);
    }
    let standalone = pod_spec(by_file["standalone.yaml"]);
    assert!(
        standalone.containers[0]
            .args
            .as_deref()
            .unwrap()
            .contains(&"--standalone".to_string())
    );
    // The federated agent: server and cluster from the environment, the token from
    // the Secret (read by the CLI from FLOTILLA_AGENT_TOKEN, never on a command line).
    let agent = &pod_spec(by_file["agent.yaml"]).containers[0];
    let args = agent.args.as_deref().unwrap();
    for (flag, var) in [
        ("--server", "FLOTILLA_SERVER"),
        ("--cluster", "FLOTILLA_CLUSTER"),
    ] {
        let i = args.iter().position(|a| a == flag).expect(flag);
        assert_eq!(args[i + 1], format!("$({var})"));
        assert!(
            env(agent, var).and_then(|e| e.value.as_ref()).is_some(),
            "{var}"
        );
    }
    assert!(!args.iter().any(|a| a.starts_with("--token")));
    let token = env(agent, "FLOTILLA_AGENT_TOKEN")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("the token from a Secret");
    let secret = o
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(token.name.as_str()))
        .expect("the token's Secret is in deploy/agent");
    assert!(
        secret
            .string_data
            .as_ref()
            .is_some_and(|d| d.contains_key(&token.key))
    );
}

#[test]
fn the_server_serves_grpc_and_http_with_health_probes_and_no_kubernetes_access() {
    let o = objects("server");
    assert!(
        o.cluster_roles.is_empty() && o.bindings.is_empty() && o.service_accounts.is_empty(),
        "the server needs no Kubernetes RBAC"
    );
    let [(_, d)] = o.deployments.as_slice() else {
        panic!("one Deployment in deploy/server");
    };
    let pod = pod_spec(d);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let [c] = pod.containers.as_slice() else {
        panic!("one container");
    };
    hardened(pod, c);
    let args = c.args.as_deref().unwrap();
    assert_eq!(args[0], "server");
    flags_exist(args);
    let arg = |flag: &str| {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1].as_str()
    };
    assert_eq!(arg("--listen"), "0.0.0.0:7443");
    assert_eq!(arg("--http"), "0.0.0.0:7080");
    let token = env(c, "FLOTILLA_ADMIN_TOKEN")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("the admin token from a Secret");
    assert!(
        o.secrets
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(token.name.as_str()))
    );
    // Probes on the HTTP port.
    let port_of = |name: &str| {
        c.ports
            .as_deref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(port_of("grpc"), Some(7443));
    assert_eq!(port_of("http"), Some(7080));
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect(path);
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            serde_json::json!("http")
        );
    }
    let annotations = d
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "7080");
    // The Service exposes both ports.
    let service = o
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("flotilla-server"))
        .expect("the server's Service");
    let ports: Vec<(i32, String)> = service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_deref()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p.port,
                serde_json::to_value(&p.target_port)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [(7443, "grpc".to_string()), (7080, "http".to_string())]
    );
    // --etcd-endpoints names the example etcd's Service and client port.
    let endpoint = arg("--etcd-endpoints");
    let host = endpoint.trim_start_matches("http://");
    let (host, port) = host.split_once(':').unwrap();
    let etcd = o
        .services
        .iter()
        .find(|s| format!("{}.{NAMESPACE}.svc", s.metadata.name.as_deref().unwrap()) == host)
        .expect("--etcd-endpoints names a Service of deploy/server");
    assert!(
        etcd.spec
            .as_ref()
            .unwrap()
            .ports
            .as_deref()
            .unwrap()
            .iter()
            .any(|p| p.port.to_string() == port)
    );
    let [sts] = o.stateful_sets.as_slice() else {
        panic!("one etcd StatefulSet");
    };
    assert_eq!(
        sts.spec.as_ref().unwrap().service_name.as_deref(),
        etcd.metadata.name.as_deref()
    );
    assert_eq!(
        sts.spec
            .as_ref()
            .unwrap()
            .volume_claim_templates
            .as_ref()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn a_misspelt_field_is_caught() {
    let doc = Doc {
        file: "inline".into(),
        value: serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "x", "namespce": "typo"},
        }),
    };
    let caught = std::panic::catch_unwind(|| doc.typed::<ServiceAccount>());
    let message = *caught.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains(".metadata.namespce"), "{message}");
}

#[test]
fn the_proxy_serves_redis_is_probed_and_scales_down_slowly() {
    let o = objects("proxy");
    assert_eq!(o.deployments.len(), 1);
    let (_, d) = &o.deployments[0];
    let pod = pod_spec(d);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let c = &pod.containers[0];
    hardened(pod, c);
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args[0], "proxy");
    flags_exist(&args[1..]);
    for flag in [
        "--set=",
        "--listen=0.0.0.0:6379",
        "--http=0.0.0.0:7080",
        "--password-file=",
        "--admin-password-file=",
    ] {
        assert!(
            args.iter().any(|a| a.starts_with(flag)),
            "{flag} in {args:?}"
        );
    }
    // The token and the passwords come from the Secret of this directory.
    let secret = &o.secrets[0];
    let secret_name = secret.metadata.name.clone().unwrap();
    let token = env(c, "FLOTILLA_TOKEN").expect("FLOTILLA_TOKEN");
    let key_ref = token
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(key_ref.name, secret_name);
    let keys: BTreeSet<&str> = secret
        .string_data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(keys.contains(key_ref.key.as_str()));
    let mounted = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.secret.as_ref()?.secret_name.clone());
    assert_eq!(mounted.as_deref(), Some(secret_name.as_str()));
    for file in ["password", "admin-password", "ca.crt"] {
        assert!(keys.contains(file), "the Secret holds {file}");
    }
    // Probes on the HTTP port.
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
    }
    // The Service reaches the pods' redis port.
    let selector = d
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    let service = &o.services[0];
    let spec = service.spec.as_ref().unwrap();
    assert_eq!(spec.selector.clone().unwrap(), selector);
    assert_eq!(spec.ports.as_ref().unwrap()[0].port, 6379);
    // The autoscaler targets the Deployment and waits before scaling down.
    let hpa = o.autoscalers[0].spec.as_ref().unwrap();
    assert_eq!(hpa.scale_target_ref.name, d.metadata.name.clone().unwrap());
    assert!(hpa.min_replicas.unwrap_or(1) >= 2, "two proxies at least");
    let down = hpa
        .behavior
        .as_ref()
        .and_then(|b| b.scale_down.as_ref())
        .and_then(|r| r.stabilization_window_seconds)
        .expect("a scale-down stabilisation window");
    assert!(
        down >= 300,
        "scale-down waits at least 5 minutes, not {down} s"
    );
}
