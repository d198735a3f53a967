//! `flotilla plan` driven as a user drives it: real files, the real binary, exit codes,
//! stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .expect("run flotilla")
}

/// Runs `flotilla plan -f SET --clusters CLUSTERS EXTRA...`.
fn plan(set: &str, clusters: &str, extra: &[&str]) -> Output {
    let mut args = vec!["plan", "-f", set, "--clusters", clusters];
    args.extend_from_slice(extra);
    flotilla(&args)
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples")
}

/// A scratch directory unique to one test, removed when it ends.
fn scratch(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("flotilla-cli-{test}-"))
        .tempdir()
        .unwrap()
}

fn example_set(replicas: u32) -> String {
    let text = std::fs::read_to_string(examples().join("redis-shard.yaml")).unwrap();
    text.replace("replicas: 12", &format!("replicas: {replicas}"))
}

fn plan_json(set: &Path, previous: Option<&Path>) -> serde_json::Value {
    let clusters = examples().join("clusters.yaml");
    let mut extra = vec!["-o", "json"];
    if let Some(p) = previous {
        extra.extend(["--previous", p.to_str().unwrap()]);
    }
    let out = plan(set.to_str().unwrap(), clusters.to_str().unwrap(), &extra);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn ordinals(plan: &serde_json::Value) -> Vec<(String, Vec<u64>)> {
    plan["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ords = p["ordinals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_u64().unwrap())
                .collect();
            (p["cluster"].as_str().unwrap().to_string(), ords)
        })
        .collect()
}

#[test]
fn json_output_has_exactly_the_contract_fields() {
    let dir = scratch("contract");
    let set = dir.path().join("set.yaml");
    std::fs::write(&set, example_set(12)).unwrap();
    let plan = plan_json(&set, None);
    let keys: Vec<&str> = plan
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["messages", "placement", "unschedulable"]);
    for p in plan["placement"].as_array().unwrap() {
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["capacity", "cluster", "ordinals"]);
    }
    assert_eq!(plan["unschedulable"], 0);
    let all: Vec<u64> = ordinals(&plan).into_iter().flat_map(|(_, o)| o).collect();
    let mut sorted = all.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..12).collect::<Vec<_>>());
}

#[test]
fn previous_output_feeds_back_in_and_scale_up_is_sticky() {
    let dir = scratch("sticky");
    let set = dir.path().join("set.yaml");
    std::fs::write(&set, example_set(12)).unwrap();
    let first = plan_json(&set, None);
    let prev = dir.path().join("prev.json");
    std::fs::write(&prev, serde_json::to_string(&first).unwrap()).unwrap();
    assert_eq!(
        plan_json(&set, Some(&prev)),
        first,
        "re-planning unchanged input changes nothing"
    );

    std::fs::write(&set, example_set(16)).unwrap();
    let grown = plan_json(&set, Some(&prev));
    for ((c1, before), (c2, after)) in ordinals(&first).into_iter().zip(ordinals(&grown)) {
        assert_eq!(c1, c2);
        assert!(
            before.iter().all(|o| after.contains(o)),
            "{c1} lost instances: {before:?} -> {after:?}"
        );
    }
    let added: Vec<u64> = ordinals(&grown)
        .into_iter()
        .flat_map(|(_, o)| o)
        .filter(|o| *o >= 12)
        .collect();
    assert_eq!(added.len(), 4);
}

#[test]
fn invalid_sets_exit_2_with_every_field_error() {
    let dir = scratch("invalid");
    let set = dir.path().join("set.yaml");
    let text = example_set(12)
        .replace(
            "maxSharePerCluster: 50",
            "maxSharePerCluster: 50\n    perCluster: {a: {min: 9, max: 8}}\n    maxClusters: 0",
        )
        .replace("requests: {cpu: \"1\"", "requests: {cpu: lots");
    std::fs::write(&set, text).unwrap();
    let clusters = examples().join("clusters.yaml");
    let out = plan(
        set.to_str().unwrap(),
        clusters.to_str().unwrap(),
        &["-o", "json"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "spec.placement.perCluster.a.min: 9 is greater than max 8",
        "spec.placement.maxClusters: must be at least 1",
        "spec.template.spec.containers[0].resources.requests.cpu: \"lots\" is not a quantity",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn type_errors_and_bad_clusters_exit_2_naming_the_field() {
    let dir = scratch("types");
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        example_set(12).replace("replicas: 12", "replicas: -3"),
    )
    .unwrap();
    let clusters = examples().join("clusters.yaml");
    let out = plan(set.to_str().unwrap(), clusters.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.replicas: invalid value: integer `-3`")
    );

    std::fs::write(&set, example_set(12)).unwrap();
    let bad = dir.path().join("clusters.yaml");
    let text = std::fs::read_to_string(&clusters)
        .unwrap()
        .replace("count: 5", "count: five");
    std::fs::write(&bad, text).unwrap();
    let out = plan(set.to_str().unwrap(), bad.to_str().unwrap(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "document 3 (Cluster eu-west-1): status.capacity.nodeGroups[0].count: invalid type"
        ),
        "{err}"
    );
}

#[test]
fn table_output_is_readable() {
    let out = plan(
        examples().join("redis-shard.yaml").to_str().unwrap(),
        examples().join("clusters.yaml").to_str().unwrap(),
        &[],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("CLUSTER"), "{text}");
    assert!(text.contains("placed 12 of 12; unschedulable 0"), "{text}");
}

#[test]
fn unknown_fields_warn_but_do_not_fail() {
    let dir = scratch("unknown");
    let set = dir.path().join("set.yaml");
    std::fs::write(
        &set,
        example_set(3).replace(
            "maxInstancesPerNode: 1",
            "maxInstancesPerNode: 1\n    colour: red",
        ),
    )
    .unwrap();
    let out = plan(
        set.to_str().unwrap(),
        examples().join("clusters.yaml").to_str().unwrap(),
        &[],
    );
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("spec.placement.colour: unknown field, ignored")
    );
}

/// Runs `flotilla ARGS` with no FLOTILLA_SERVER/FLOTILLA_TOKEN from the environment.
fn flotilla_clean_env(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env_remove("FLOTILLA_SERVER")
        .env_remove("FLOTILLA_TOKEN")
        .output()
        .expect("run flotilla")
}

/// A loopback URL nothing listens on.
fn dead_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[test]
fn live_plan_without_a_server_exits_1_naming_the_url() {
    let set = examples().join("redis-shard.yaml");
    let url = dead_server();
    let out = flotilla_clean_env(&[
        "plan",
        "-f",
        set.to_str().unwrap(),
        "--server",
        &url,
        "--token",
        "t",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(&url), "stderr: {stderr}");
    assert!(stderr.contains("flotilla dev"), "stderr: {stderr}");
}

#[test]
fn client_usage_errors_exit_2_before_calling() {
    let set = examples().join("redis-shard.yaml");
    let url = dead_server();
    let out = flotilla_clean_env(&["plan", "-f", set.to_str().unwrap(), "--server", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("FLOTILLA_TOKEN"), "stderr: {stderr}");

    let out = flotilla_clean_env(&["get", "pods", "--server", &url, "--token", "t"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("federatedinstancesets (fis)"),
        "stderr: {stderr}"
    );

    let out = flotilla_clean_env(&[
        "cluster", "add", "eu-1", "--label", "region", "--server", &url, "--token", "t",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
