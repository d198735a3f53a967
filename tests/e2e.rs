//! End to end: a real etcd, `flotilla server` and `flotilla agent` processes on
//! simulated members, driven with the CLI exactly as users drive it.
//!
//! - apply → every instance ready, ordinals disjoint, status aggregated; scale up and
//!   down → sticky; delete → the members are cleaned up;
//! - `kill -9` the server in the middle of a burst of applies and scales, restart it →
//!   it converges, no acknowledged write lost, no ordinal in two clusters;
//! - cut an agent's connection → its cluster goes Unknown and its instances stay;
//!   restore it → the agent resumes from its revision;
//! - bad documents and bad tokens → clear errors, nothing stored.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{BIN, Federation, eventually, http_get};

/// The e2e sets on a federation.
trait Sets {
    fn apply(&self, name: &str, replicas: u32) -> Output;
    fn apply_wait(&self, name: &str, replicas: u32);
}

impl Sets for Federation {
    fn apply(&self, name: &str, replicas: u32) -> Output {
        let path = self.file(&format!("{name}-{replicas}.yaml"), &set(name, replicas));
        self.cli(&["apply", "-f", path.to_str().unwrap()])
    }

    fn apply_wait(&self, name: &str, replicas: u32) {
        let path = self.file(&format!("{name}-{replicas}.yaml"), &set(name, replicas));
        self.ok(&[
            "apply",
            "-f",
            path.to_str().unwrap(),
            "--wait",
            "--timeout-seconds",
            "120",
        ]);
    }
}

fn set(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: flotilla.io/v1alpha1
kind: FederatedInstanceSet
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  template:
    spec:
      containers:
      - name: redis
        image: redis:7.2
        resources: {{requests: {{cpu: "1", memory: 2Gi}}}}
  roles:
  - {{name: primary, updatePriority: 2, exclusive: true}}
  - {{name: secondary, updatePriority: 1}}
  placement:
    maxInstancesPerNode: 1
"#
    )
}

/// Cluster → ordinals, from a set's status; panics if an ordinal is in two clusters.
fn placement(set: &Value) -> BTreeMap<String, BTreeSet<u64>> {
    let mut seen = BTreeSet::new();
    let mut out = BTreeMap::new();
    for c in set["status"]["clusters"].as_array().into_iter().flatten() {
        let ordinals: BTreeSet<u64> = c["ordinals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_u64().unwrap())
            .collect();
        for o in &ordinals {
            assert!(seen.insert(*o), "ordinal {o} is in two clusters: {set}");
        }
        out.insert(c["cluster"].as_str().unwrap().to_string(), ordinals);
    }
    out
}

/// Every slice the members were given: (cluster, set) → ordinals; checks that no
/// ordinal of a set is in two clusters' slices.
fn slices(f: &Federation) -> BTreeMap<(String, String), BTreeSet<u64>> {
    let list: Value = serde_json::from_str(&f.ok(&["get", "instancesets", "-o", "json"])).unwrap();
    let mut out = BTreeMap::new();
    let mut per_set: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for item in list["items"].as_array().unwrap() {
        let cluster = item["metadata"]["labels"]["flotilla.io/cluster"]
            .as_str()
            .unwrap()
            .to_string();
        let name = item["metadata"]["name"].as_str().unwrap().to_string();
        let mut ordinals = BTreeSet::new();
        for r in item["spec"]["ordinals"]["ranges"]
            .as_array()
            .into_iter()
            .flatten()
        {
            ordinals.extend(r["start"].as_u64().unwrap()..=r["end"].as_u64().unwrap());
        }
        for d in item["spec"]["ordinals"]["discrete"]
            .as_array()
            .into_iter()
            .flatten()
        {
            ordinals.insert(d.as_u64().unwrap());
        }
        let all = per_set.entry(name.clone()).or_default();
        for o in &ordinals {
            assert!(
                all.insert(*o),
                "ordinal {o} of {name} is in two members' slices"
            );
        }
        out.insert((cluster, name), ordinals);
    }
    out
}

fn ready(set: &Value) -> u64 {
    set["status"]["readyReplicas"].as_u64().unwrap_or(0)
}

#[test]
fn apply_scale_and_delete_across_three_members() {
    let mut f = Federation::start(10);
    f.member("eu", "eu", 3, None);
    f.member("us", "us", 4, None);
    f.member("ap", "ap", 2, None);
    f.wait_ready_clusters(3);

    // Bad input and bad tokens: clear errors, nothing stored.
    let bad = f.file(
        "bad.yaml",
        &set("cache", 3).replace("replicas: 3", "replicas: many"),
    );
    let out = f.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.replicas"),
        "{out:?}"
    );
    let out = Command::new(BIN)
        .args(["get", "fis"])
        .env("FLOTILLA_SERVER", f.url())
        .env("FLOTILLA_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("token"),
        "{out:?}"
    );
    let list: Value = serde_json::from_str(&f.ok(&["get", "fis", "-o", "json"])).unwrap();
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "nothing stored: {list}"
    );

    // Apply: every instance ready, ordinals disjoint, status aggregated.
    f.apply_wait("cache", 6);
    let s = f.get("fis", "cache");
    assert_eq!(ready(&s), 6, "{s}");
    let first = placement(&s);
    assert_eq!(first.values().map(BTreeSet::len).sum::<usize>(), 6);
    assert_eq!(
        first.values().flatten().copied().collect::<BTreeSet<_>>(),
        (0..6).collect()
    );
    assert_eq!(s["status"]["instances"].as_array().unwrap().len(), 6);
    // One primary for the whole set, not one per member.
    eventually("exactly one primary", || {
        let s = f.get("fis", "cache");
        let roles: Vec<&str> = s["status"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["role"].as_str())
            .collect();
        roles.len() == 6 && roles.iter().filter(|r| **r == "primary").count() == 1
    });
    let given = slices(&f);
    assert_eq!(given.len(), first.len());

    // Scale up: everything placed stays where it was.
    f.apply_wait("cache", 9);
    let up = placement(&f.get("fis", "cache"));
    for (cluster, ordinals) in &first {
        assert!(
            ordinals.is_subset(&up[cluster]),
            "sticky on scale-up: {first:?} → {up:?}"
        );
    }
    assert_eq!(
        up.values().flatten().copied().collect::<BTreeSet<_>>(),
        (0..9).collect()
    );

    // Scale down: the survivors stay where they were.
    f.apply_wait("cache", 4);
    let down = placement(&f.get("fis", "cache"));
    // Four survivors (the scheduler trims the clusters furthest above their share).
    assert_eq!(down.values().map(BTreeSet::len).sum::<usize>(), 4);
    for (cluster, ordinals) in &down {
        assert!(
            ordinals.is_subset(&up[cluster]),
            "sticky on scale-down: {up:?} → {down:?}"
        );
    }

    // Delete: the members are cleaned up.
    f.ok(&["delete", "fis", "cache"]);
    eventually("no slices left", || slices(&f).is_empty());
    let out = f.cli(&["get", "fis", "cache"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_server_killed_mid_burst_converges_without_losing_acknowledged_writes() {
    let mut f = Federation::start(10);
    f.member("eu", "eu", 4, None);
    f.member("us", "us", 4, None);
    f.wait_ready_clusters(2);
    let names = ["s0", "s1", "s2", "s3"];
    // The burst: each set applied at growing and shrinking sizes; the last size each
    // set was acknowledged at (exit 0), and the size of an apply cut short.
    let mut acked: BTreeMap<&str, u32> = BTreeMap::new();
    let mut maybe: BTreeMap<&str, u32> = BTreeMap::new();
    let sizes = [2, 5, 3, 6, 1, 4];
    let mut step = 0;
    'burst: for round in 0..sizes.len() {
        for name in names {
            let replicas = sizes[(round + name.len() + step) % sizes.len()];
            step += 1;
            if step == 9 {
                f.kill_server();
            }
            let out = f.apply(name, replicas);
            if out.status.success() {
                acked.insert(name, replicas);
            } else {
                maybe.insert(name, replicas);
            }
            if step == 12 {
                break 'burst;
            }
        }
    }
    assert!(!maybe.is_empty(), "some applies hit the dead server");
    f.start_server();
    // Nothing acknowledged is lost.
    for (name, replicas) in &acked {
        let stored = f.get("fis", name)["spec"]["replicas"].as_u64().unwrap() as u32;
        assert!(
            stored == *replicas || maybe.get(name) == Some(&stored),
            "{name}: acknowledged {replicas}, stored {stored}"
        );
    }
    // It converges: every set ready, no ordinal in two clusters anywhere.
    for name in acked.keys() {
        eventually(&format!("{name} converged"), || {
            let s = f.get("fis", name);
            let want = s["spec"]["replicas"].as_u64().unwrap();
            placement(&s);
            ready(&s) == want
                && s["status"]["observedGeneration"] == s["metadata"]["generation"]
                && s["status"]["replicas"].as_u64() == Some(want)
        });
    }
    slices(&f);
}

/// A TCP proxy that can cut every connection and refuse new ones until restored.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn metric(f: &Federation, name: &str) -> f64 {
    let (_, body) = http_get(f.http, "/metrics").unwrap();
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_cut_agent_stream_makes_its_cluster_unknown_and_the_agent_resumes_from_its_revision() {
    let mut f = Federation::start(2);
    let proxy = Proxy::start(f.grpc);
    f.member("eu", "eu", 4, Some(proxy.port));
    f.member("us", "us", 4, None);
    f.apply_wait("cache", 6);
    let before = placement(&f.get("fis", "cache"));
    assert!(before.contains_key("eu"), "eu holds instances: {before:?}");
    let resumes = metric(&f, "flotilla_agent_streams_total{mode=\"resume\"}");

    proxy.cut();
    eventually("eu Unknown", || {
        let c = f.get("clusters", "eu");
        c["status"]["conditions"][0]["status"] == "Unknown" && c["status"]["ready"] == false
    });
    // Its instances are left alone: same placement, and the set says why it is degraded.
    let s = f.get("fis", "cache");
    assert_eq!(placement(&s), before);
    assert!(
        s["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Degraded" && c["reason"] == "ClusterUnavailable"),
        "{s}"
    );
    // A change made while eu is cut off: scale up, new instances go to us only.
    f.apply_wait("cache", 7);
    let during = placement(&f.get("fis", "cache"));
    assert_eq!(during["eu"], before["eu"]);

    proxy.restore();
    eventually("eu Ready again", || {
        f.get("clusters", "eu")["status"]["ready"] == true
    });
    eventually("the agent resumed from its revision", || {
        metric(&f, "flotilla_agent_streams_total{mode=\"resume\"}") > resumes
    });
    eventually("the set healthy again", || {
        let s = f.get("fis", "cache");
        ready(&s) == 7
            && s["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Degraded" && c["status"] == "False")
    });
}
