//! Safety that the store enforces, end to end on a real etcd with real `flotilla server`
//! and `flotilla agent` processes:
//!
//! - two `flotilla cluster add eu-1` at once: one wins, its printed token works, the
//!   other fails with a clear message, and nothing half-written is left;
//! - a leader stopped (SIGSTOP) past its lease while another server takes over and
//!   moves ordinals, then let go (SIGCONT): a checker watching every slice throughout
//!   never sees an ordinal in two clusters' slices, and the woken leader writes nothing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use flotilla_store::testing::EtcdServer;
use flotilla_store::{EtcdOptions, EtcdStore, Event, Store};
use serde_json::Value;
use support::{BIN, Federation, Proc, TOKEN, eventually, eventually_or, free_port, http_get};
use tokio_stream::StreamExt as _;

#[test]
fn concurrent_cluster_adds_have_one_winner_whose_token_works() {
    let mut f = Federation::start(5);
    let adds: Vec<_> = (0..6)
        .map(|_| {
            Command::new(BIN)
                .args(["cluster", "add", "eu-1", "--label", "region=eu"])
                .env("FLOTILLA_SERVER", f.url())
                .env("FLOTILLA_TOKEN", TOKEN)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = adds
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let (won, lost): (Vec<_>, Vec<_>) = outputs.iter().partition(|o| o.status.success());
    assert_eq!(won.len(), 1, "exactly one add wins: {outputs:?}");
    for o in &lost {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("cluster \"eu-1\" already exists")
                && stderr.contains("flotilla delete cluster eu-1"),
            "the loser says why and what to do: {stderr}"
        );
        assert!(o.stdout.is_empty(), "a loser prints no token");
    }
    let stdout = String::from_utf8_lossy(&won[0].stdout);
    let token = stdout.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("flt_"), "{stdout}");

    // The printed token is the one stored: its agent connects and the cluster is ready.
    let config = f.file(
        "eu-1.yaml",
        "nodeGroups:\n- {count: 2, free: {cpu: \"8\", memory: 32Gi, pods: 110}}\n",
    );
    let url = f.url();
    f.start_agent("eu-1", &url, &token, "--sim-config", &config);
    f.wait_ready_clusters(1);
    let clusters: Value = serde_json::from_str(&f.ok(&["clusters", "-o", "json"])).unwrap();
    assert_eq!(clusters["items"].as_array().unwrap().len(), 1);
}

/// A `flotilla server` on the federation's etcd with a short leader lease.
fn server(f: &Federation, grpc: u16, http: u16, name: &str) -> Proc {
    let log = std::fs::File::create(f.dir.path().join(format!("{name}.log"))).unwrap();
    let child = Command::new(BIN)
        .args(["server", "--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(["--etcd-endpoints", &f.endpoint, "--admin-token", TOKEN])
        .args(["--cluster-ttl-seconds", &f.ttl.to_string()])
        .args(["--leader-ttl-seconds", "3"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

/// A metric's value from a server's `/metrics` (0 when absent).
fn metric(http: u16, name: &str) -> f64 {
    let Some((200, body)) = http_get(http, "/metrics") else {
        return f64::NAN;
    };
    body.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

fn set(affinity: &str) -> String {
    format!(
        r#"apiVersion: flotilla.io/v1alpha1
kind: FederatedInstanceSet
metadata: {{name: cache}}
spec:
  replicas: 6
  template:
    spec:
      containers:
      - name: redis
        image: redis:7.2
        resources: {{requests: {{cpu: "1", memory: 2Gi}}}}
  placement:
    maxInstancesPerNode: 1{affinity}
"#
    )
}

/// The ordinals of a slice's JSON.
fn ordinals(value: &[u8]) -> BTreeSet<u32> {
    let v: Value = serde_json::from_slice(value).unwrap_or_default();
    let o = &v["spec"]["ordinals"];
    let mut out = BTreeSet::new();
    for r in o["ranges"].as_array().into_iter().flatten() {
        let (start, end) = (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap());
        out.extend((start..=end).map(|n| u32::try_from(n).unwrap()));
    }
    for d in o["discrete"].as_array().into_iter().flatten() {
        out.insert(u32::try_from(d.as_u64().unwrap()).unwrap());
    }
    out
}

/// Watches every slice from revision 1 and checks, after every event, that no ordinal of
/// a set is in two clusters' slices.
#[derive(Default)]
struct Checker {
    /// Every violation seen, as the state it was seen in.
    violations: Vec<String>,
    /// Events checked.
    events: usize,
    /// Why the watch ended, if it did.
    ended: Option<String>,
}

fn check(slices: &BTreeMap<String, BTreeSet<u32>>) -> Option<String> {
    // Key: /flotilla/slices/<cluster>/<ns>/<name>.
    let mut owner: BTreeMap<(String, u32), String> = BTreeMap::new();
    for (key, ordinals) in slices {
        let rest = key.strip_prefix("/flotilla/slices/")?;
        let (cluster, set) = rest.split_once('/')?;
        for &o in ordinals {
            if let Some(other) = owner.insert((set.to_string(), o), cluster.to_string()) {
                return Some(format!(
                    "ordinal {o} of {set} in {other} and {cluster}: {slices:?}"
                ));
            }
        }
    }
    None
}

fn start_checker(rt: &tokio::runtime::Runtime, endpoint: &str) -> Arc<Mutex<Checker>> {
    let checker = Arc::new(Mutex::new(Checker::default()));
    let store = rt
        .block_on(EtcdStore::connect(&[endpoint], EtcdOptions::default()))
        .unwrap();
    let mut watch = rt.block_on(store.watch("/flotilla/slices/", 1)).unwrap();
    let out = checker.clone();
    rt.spawn(async move {
        let mut slices: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        while let Some(event) = watch.next().await {
            let mut c = out.lock().unwrap();
            match event {
                Ok(Event::Put(kv)) => {
                    slices.insert(kv.key.clone(), ordinals(&kv.value));
                }
                Ok(Event::Delete { key, .. }) => {
                    slices.remove(&key);
                }
                Err(e) => {
                    c.ended = Some(e.to_string());
                    return;
                }
            }
            c.events += 1;
            if let Some(v) = check(&slices) {
                c.violations.push(v);
            }
        }
        out.lock().unwrap().ended = Some("the watch ended".into());
    });
    checker
}

#[test]
fn a_leader_stopped_past_its_lease_writes_nothing_when_it_wakes() {
    // The federation's own server is B (agents and the CLI talk to it); A starts first
    // so that it leads, and runs only the controller that will stall.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(EtcdServer::start());
    let mut f = Federation {
        endpoint: etcd.endpoint(),
        _etcd: etcd,
        grpc: free_port(),
        http: free_port(),
        server: None,
        agents: BTreeMap::new(),
        dir: tempfile::tempdir().unwrap(),
        ttl: 5,
        _rt: rt,
    };
    let checker = start_checker(&f._rt, &f.endpoint);
    let (a_grpc, a_http) = (free_port(), free_port());
    let a = server(&f, a_grpc, a_http, "server-a");
    eventually("A leads", || metric(a_http, "flotilla_leader") == 1.0);
    f.server = Some(server(&f, f.grpc, f.http, "server"));
    eventually("B serves", || {
        http_get(f.http, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(metric(f.http, "flotilla_leader"), 0.0, "B follows");

    for c in ["c1", "c2", "c3"] {
        f.member(c, "eu", 4, None);
    }
    f.wait_ready_clusters(3);
    let path = f.file("cache.yaml", &set(""));
    f.ok(&[
        "apply",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout-seconds",
        "120",
    ]);
    let placed = |f: &Federation| -> BTreeMap<String, usize> {
        let v = f.get("fis", "cache");
        v["status"]["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["cluster"].as_str().unwrap().to_string(),
                    c["ordinals"].as_array().map_or(0, Vec::len),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    assert!(
        placed(&f).contains_key("c3"),
        "the set uses c3 before the move: {:?}",
        placed(&f)
    );

    // Stop A, then move c3's instances to c1 and c2 (through B): A's lease lapses, B
    // takes over and makes the move, which A, stopped, knows nothing of. When A wakes,
    // the change and B's writes arrive at A's controller as its watch catches up,
    // while it still thinks it leads.
    let a_pid = nix::unistd::Pid::from_raw(i32::try_from(a.0.id()).unwrap());
    nix::sys::signal::kill(a_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let moved = f.file("cache-moved.yaml", &set("\n    perCluster: {c3: {max: 0}}"));
    f.ok(&["apply", "-f", moved.to_str().unwrap()]);
    eventually("B leads", || metric(f.http, "flotilla_leader") == 1.0);
    eventually_or(
        "B moves every ordinal off c3",
        || {
            let p = placed(&f);
            !p.contains_key("c3") && p.values().sum::<usize>() == 6
        },
        || format!("{:?}\n{}", placed(&f), f.server_log()),
    );

    // A wakes up believing it leads, with the cache it had: the store refuses every
    // write it still makes, and it steps down.
    nix::sys::signal::kill(a_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    eventually("A follows", || metric(a_http, "flotilla_leader") == 0.0);
    // More work through B after A woke: it still converges, nothing A did is undone.
    let scaled = f.file(
        "cache-7.yaml",
        &set("\n    perCluster: {c3: {max: 0}}").replace("replicas: 6", "replicas: 7"),
    );
    f.ok(&[
        "apply",
        "-f",
        scaled.to_str().unwrap(),
        "--wait",
        "--timeout-seconds",
        "120",
    ]);
    let p = placed(&f);
    assert!(
        !p.contains_key("c3") && p.values().sum::<usize>() == 7,
        "{p:?}"
    );

    let refused = metric(a_http, "flotilla_fenced_writes_refused_total");
    let a_log = std::fs::read_to_string(f.dir.path().join("server-a.log")).unwrap_or_default();
    assert!(
        a_log.contains("stepping down"),
        "A led and stepped down when it woke:\n{a_log}"
    );
    let c = checker.lock().unwrap();
    eprintln!(
        "checker: {} slice events, A's refused writes after waking: {refused}",
        c.events
    );
    assert!(
        c.ended.is_none(),
        "the checker's watch ended: {:?}",
        c.ended
    );
    assert!(c.events > 0, "the checker saw the slices being written");
    assert!(
        c.violations.is_empty(),
        "an ordinal was in two clusters' slices: {:#?}\nA's log:\n{a_log}",
        c.violations
    );
    drop(a);
}

/// Every event under `/flotilla/` from revision 1, recorded in order.
fn record(rt: &tokio::runtime::Runtime, endpoint: &str) -> Arc<Mutex<Vec<Event>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let store = rt
        .block_on(EtcdStore::connect(&[endpoint], EtcdOptions::default()))
        .unwrap();
    let mut watch = rt.block_on(store.watch("/flotilla/", 1)).unwrap();
    let out = log.clone();
    rt.spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            out.lock().unwrap().push(event);
        }
    });
    log
}

#[test]
fn deleting_a_cluster_drains_it_before_its_token_goes() {
    let mut f = Federation::start(5);
    let events = record(&f._rt, &f.endpoint);
    for c in ["c1", "c2", "c3"] {
        f.member(c, "eu", 4, None);
    }
    f.wait_ready_clusters(3);
    let path = f.file("cache.yaml", &set(""));
    f.ok(&[
        "apply",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout-seconds",
        "120",
    ]);

    let out = f.cli(&["delete", "cluster", "c3"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        f.server_log()
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("draining cluster c3"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted"));

    // The store's history: c3's slice emptied, its member's report of no instances, the
    // slice deleted (what its agent receives), and only then, in one revision, the
    // cluster and its token.
    let log = events.lock().unwrap().clone();
    let at = |what: &dyn Fn(&Event) -> bool| log.iter().position(what);
    let slice = "/flotilla/slices/c3/default/cache";
    let emptied =
        at(&|e| matches!(e, Event::Put(kv) if kv.key == slice && ordinals(&kv.value).is_empty()))
            .expect("c3's slice was emptied");
    let after = |from: usize, what: &dyn Fn(&Event) -> bool| {
        log[from..].iter().position(what).map(|i| i + from)
    };
    let confirmed = after(emptied, &|e| {
        matches!(e, Event::Put(kv) if kv.key == "/flotilla/reports/c3/default/cache"
            && serde_json::from_slice::<Value>(&kv.value).is_ok_and(|v| v["replicas"] == 0 && v["leaving"].as_array().is_none_or(Vec::is_empty)))
    })
    .expect("c3's member reported its instances gone after its slice was emptied");
    let slice_gone = at(&|e| matches!(e, Event::Delete { key, .. } if key == slice))
        .expect("c3's slice was deleted");
    let token_gone =
        at(&|e| matches!(e, Event::Delete { key, .. } if key == "/flotilla/tokens/c3"))
            .expect("c3's token was deleted");
    let cluster_gone =
        at(&|e| matches!(e, Event::Delete { key, .. } if key == "/flotilla/clusters/c3"))
            .expect("c3 was deleted");
    assert!(
        emptied < confirmed && confirmed < slice_gone && slice_gone < token_gone,
        "order: emptied {emptied}, confirmed {confirmed}, slice deleted {slice_gone}, token deleted {token_gone}"
    );
    assert_eq!(
        log[token_gone].revision(),
        log[cluster_gone].revision(),
        "the cluster and its token go in one transaction"
    );
    drop(log);
    let v = f.get("fis", "cache");
    let total: usize = v["status"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|c| assert_ne!(c["cluster"], "c3"))
        .map(|c| c["ordinals"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(total, 6);

    // A member that cannot confirm (its agent is gone): the delete says what remains and
    // why, and changes nothing else; --force deletes it.
    f.agents.remove("c2"); // SIGKILL
    let out = f.cli(&["delete", "cluster", "c2", "--timeout-seconds", "8"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster \"c2\" did not drain within 8s")
            && stderr.contains("default/cache")
            && stderr.contains("agent is not connected")
            && stderr.contains("--force"),
        "{stderr}"
    );
    let clusters = f.ok(&["clusters", "-o", "json"]);
    assert!(
        clusters.contains("\"c2\""),
        "c2 is still registered: {clusters}"
    );
    let out = f.cli(&["delete", "cluster", "c2", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clusters = f.ok(&["clusters", "-o", "json"]);
    assert!(!clusters.contains("\"c2\""), "{clusters}");
    let out = f.cli(&["delete", "fis", "cache", "--force"]);
    assert_eq!(out.status.code(), Some(2), "--force is for clusters only");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn the_checker_sees_an_ordinal_in_two_slices() {
    let slice =
        |ranges: &str| ordinals(format!(r#"{{"spec":{{"ordinals":{ranges}}}}}"#).as_bytes());
    let mut slices = BTreeMap::new();
    slices.insert(
        "/flotilla/slices/c1/default/cache".to_string(),
        slice(r#"{"ranges":[{"start":0,"end":2}]}"#),
    );
    slices.insert(
        "/flotilla/slices/c2/default/cache".to_string(),
        slice(r#"{"discrete":[3,5]}"#),
    );
    slices.insert(
        "/flotilla/slices/c2/default/other".to_string(),
        slice(r#"{"discrete":[0]}"#),
    );
    assert_eq!(check(&slices), None, "other sets may reuse an ordinal");
    slices.insert(
        "/flotilla/slices/c3/default/cache".to_string(),
        slice(r#"{"discrete":[2]}"#),
    );
    let found = check(&slices).expect("ordinal 2 is in c1 and c3");
    assert!(
        found.starts_with("ordinal 2 of default/cache in c1 and c3"),
        "{found}"
    );
}
