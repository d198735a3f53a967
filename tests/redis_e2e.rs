//! A Redis shard end to end, on real processes: etcd, `flotilla server`, three
//! `flotilla agent --process-config` members whose instances are real `redis-server`
//! and `redis-sentinel` processes on their own loopback addresses, driven through the
//! CLI and spoken to over RESP, as a user would.
//!
//! - with sentinels: one primary across members, every replica linked to it, the
//!   sentinels spread so that no member holds a quorum; 1,000 writes acknowledged by
//!   `WAIT 1`, then `kill -9` of the primary: a new primary accepts writes, the status
//!   follows it, no acknowledged write is lost, the old instance comes back a replica;
//! - without sentinels: the primary's volume emptied and its process killed: it comes
//!   back held back, the replica with the most data takes over, nothing is wiped;
//!   `kill -9` of an agent: its instances keep serving and the restarted agent adopts
//!   them (same PIDs); a dynamic config change keeps every PID, a static one restarts
//!   every instance with the old primary last, an immutable one is refused (exit 2).
//!
//! Every process a test starts is stopped by PID when it ends: the agents and the
//! server by their handles, the instances (which outlive their agents by design) from
//! the members' state files.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::resp::{self, Reply};
use support::{Federation, eventually, eventually_or};

/// The federation, its process members, and the instances to stop at the end.
struct Shard {
    f: Federation,
    /// Dropped after `f` (fields drop in order): the agents are gone by then, and the
    /// instances, which outlive agents by design, are killed by pid.
    _reapers: Vec<flotilla_process::Reaper>,
    /// The members' data directories, removed after the reaper read them.
    _data: tempfile::TempDir,
    members: Vec<(String, PathBuf, String)>,
}

/// (pid, instance name) of every instance recorded under a member's data directory.
fn pids(data_dir: &Path) -> Vec<(u32, String)> {
    flotilla_process::Layout::new(data_dir)
        .records()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Some((r.pid?, format!("{}-{}", r.set, r.ordinal))))
        .collect()
}

impl Shard {
    /// Three process members `a`, `b`, `c` (regions eu, us, ap), address blocks from
    /// `block` on (distinct per test: tests of one binary run at once).
    fn start(block: u8) -> Shard {
        let mut f = Federation::start(3);
        let dir = tempfile::tempdir().unwrap();
        let mut members = Vec::new();
        for (i, (name, region)) in [("a", "eu"), ("b", "us"), ("c", "ap")].iter().enumerate() {
            let token = f.register(name, &[&format!("region={region}")]);
            let data = dir.path().join(format!("member-{name}"));
            let config = f.file(
                &format!("{name}.yaml"),
                &format!(
                    "nodeGroups:\n- {{count: 4, free: {{cpu: \"8\", memory: 32Gi, pods: 50}}}}\ndataDir: {}\naddressBlock: \"127.{}\"\n",
                    data.display(),
                    block + i as u8
                ),
            );
            let url = f.url();
            f.start_agent(name, &url, &token, "--process-config", &config);
            members.push((name.to_string(), data, token));
        }
        f.wait_ready_clusters(3);
        let reapers = members
            .iter()
            .map(|(_, d, _)| flotilla_process::Reaper::new(d))
            .collect();
        Shard {
            f,
            _reapers: reapers,
            _data: dir,
            members,
        }
    }

    fn data_dir(&self, cluster: &str) -> &Path {
        &self
            .members
            .iter()
            .find(|(n, _, _)| n == cluster)
            .unwrap()
            .1
    }

    fn pid(&self, cluster: &str, instance: &str) -> u32 {
        pids(self.data_dir(cluster))
            .into_iter()
            .find(|(_, i)| i == instance)
            .unwrap_or_else(|| panic!("no state for {instance} in {cluster}"))
            .0
    }

    /// Every instance's PID, by name, across members.
    fn all_pids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .members
            .iter()
            .flat_map(|(_, d, _)| pids(d))
            .map(|(p, i)| (i, p))
            .collect();
        out.sort();
        out
    }

    fn set(&self, name: &str) -> Value {
        self.f.get("fis", name)
    }

    /// `(ordinal, cluster, endpoint)` of the primary the status names.
    fn primary(&self, name: &str) -> Option<(u64, String, String)> {
        let s = self.set(name);
        let p = &s["status"]["primary"];
        Some((
            p["ordinal"].as_u64()?,
            p["cluster"].as_str()?.to_string(),
            p["endpoint"].as_str()?.to_string(),
        ))
    }

    /// Every instance's endpoint, from the status.
    fn endpoints(&self, name: &str) -> Vec<(u64, String, String)> {
        let s = self.set(name);
        s["status"]["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                Some((
                    i["ordinal"].as_u64()?,
                    i["cluster"].as_str()?.to_string(),
                    i["endpoint"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// The shard is wired: a primary named, every other instance a linked replica of
    /// it (asked over RESP), and one instance labelled primary.
    fn wired(&self, name: &str, replicas: usize) -> bool {
        let Some((_, _, primary)) = self.primary(name) else {
            return false;
        };
        let all = self.endpoints(name);
        if all.len() != replicas {
            return false;
        }
        let labelled = self.set(name)["status"]["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["role"] == "primary")
            .count();
        let good = resp::info_field(&primary, "min_slaves_good_slaves")
            .and_then(|n| n.parse::<usize>().ok());
        labelled == 1
            && resp::info_field(&primary, "role").as_deref() == Some("master")
            // The primary counts them for min-replicas-to-write (after their first ACK).
            && good.is_none_or(|n| n + 1 == replicas)
            && all
                .iter()
                .filter(|(_, _, e)| *e != primary)
                .all(|(_, _, e)| {
                    let host = resp::info_field(e, "master_host");
                    let port = resp::info_field(e, "master_port");
                    let link = resp::info_field(e, "master_link_status");
                    host.zip(port).map(|(h, p)| format!("{h}:{p}")).as_deref()
                        == Some(primary.as_str())
                        && link.as_deref() == Some("up")
                })
    }

    fn apply(&self, file: &str, text: &str) -> std::process::Output {
        let path = self.f.file(file, text);
        self.f.cli(&["apply", "-f", path.to_str().unwrap()])
    }
}

/// What every instance and sentinel of `cache` says, and the logs about it.
fn diagnose(s: &Shard, last: &str) -> String {
    let mut out = format!("last answer: {last}\n");
    for (o, _, e) in s.endpoints("cache") {
        out.push_str(&format!(
            "cache-{o} {e}: role {:?} master {:?}:{:?} link {:?}\n",
            resp::info_field(&e, "role"),
            resp::info_field(&e, "master_host"),
            resp::info_field(&e, "master_port"),
            resp::info_field(&e, "master_link_status")
        ));
    }
    for (_, _, e) in s.endpoints("cache-sentinel") {
        out.push_str(&format!(
            "sentinel {e}: {:?}\n",
            resp::once(&e, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "cache"])
        ));
    }
    for m in ["a", "b", "c"] {
        out.push_str(&format!("{m}:\n{}\n", s.f.agent_log(m, "cache")));
    }
    out + &s.f.server_grep("primary")
}

/// A Redis set of `replicas` instances; `extra` is appended under `spec.redis`.
fn shard(name: &str, replicas: u32, redis: &str) -> String {
    shard_placed(name, replicas, "    maxSharePerCluster: 50\n", redis)
}

/// [`shard`] with `placement` lines (besides one instance per node).
fn shard_placed(name: &str, replicas: u32, placement: &str, redis: &str) -> String {
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
        image: redis:7
        ports: [{{containerPort: 6379, name: redis}}]
        resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec: {{resources: {{requests: {{storage: 1Gi}}}}}}
  placement:
    maxInstancesPerNode: 1
{placement}  redis:
{redis}
"#
    )
}

/// Writes `n` keys to `primary`, each acknowledged by `WAIT 1`; the keys acknowledged.
fn write_acknowledged(primary: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut c = resp::Conn::open(primary).expect("the primary answers");
    let mut acked = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}:{i}");
        let set = c.cmd(&["SET", &key, &format!("v{i}")]).unwrap();
        assert_eq!(set, Reply::Simple("OK".into()), "SET {key}");
        if let Reply::Integer(n) = c.cmd(&["WAIT", "1", "2000"]).unwrap()
            && n >= 1
        {
            acked.push(key);
        }
    }
    acked
}

fn missing(addr: &str, keys: &[String]) -> Vec<String> {
    let mut c = resp::Conn::open(addr).expect("the instance answers");
    keys.iter()
        .filter(|k| c.cmd(&["EXISTS", k]).unwrap() != Reply::Integer(1))
        .cloned()
        .collect()
}

fn dbsize(addr: &str) -> Option<i64> {
    match resp::once(addr, &["DBSIZE"])? {
        Reply::Integer(n) => Some(n),
        _ => None,
    }
}

#[test]
fn sentinels_fail_a_killed_primary_over_without_losing_an_acknowledged_write() {
    let s = Shard::start(61);
    let out = s.apply("cache.yaml", &shard("cache", 3, SENTINELS));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the shard wired across members", || s.wired("cache", 3));

    // The sentinels: a set of their own, one per member (no member holds a quorum),
    // each watching the primary.
    let (_, _, primary) = s.primary("cache").unwrap();
    eventually("every sentinel watches the primary", || {
        let sentinels = s.endpoints("cache-sentinel");
        sentinels.len() == 3
            && sentinels.iter().all(|(_, _, e)| {
                matches!(resp::once(e, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "cache"]),
                    Some(Reply::Array(a)) if a.len() == 2 && format!("{}:{}", a[0].text(), a[1].text()) == primary)
            })
    });
    let sentinels = s.endpoints("cache-sentinel");
    let mut members: Vec<&str> = sentinels.iter().map(|(_, c, _)| c.as_str()).collect();
    members.sort();
    members.dedup();
    assert_eq!(members.len(), 3, "one sentinel per member: {sentinels:?}");

    let acked = write_acknowledged(&primary, "k", 1000);
    assert_eq!(acked.len(), 1000, "every write acknowledged by a replica");

    // `flotilla proxy` for the set: it routes to the primary the status and the
    // sentinels name, verified by ROLE.
    let proxy = Proxy::start(&s.f);
    let mut through = resp::Conn::open(&proxy.addr).expect("the proxy accepts");
    assert_eq!(
        through.cmd(&["SET", "via-proxy", "1"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(run_id(&mut through), resp::info_field(&primary, "run_id"));

    let (ordinal, cluster, _) = s.primary("cache").unwrap();
    let pid = s.pid(&cluster, &format!("cache-{ordinal}"));
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();

    // A new primary that accepts writes, as the sentinels name it.
    let new_primary: String;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(Reply::Array(a)) = resp::once(
            &sentinels[0].2,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "cache"],
        ) && a.len() == 2
        {
            let addr = format!("{}:{}", a[0].text(), a[1].text());
            if addr != primary {
                let reply = resp::once(&addr, &["SET", "after-failover", "1"]);
                last = format!("{addr}: {reply:?}");
                if reply == Some(Reply::Simple("OK".into())) {
                    new_primary = addr;
                    break;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new primary accepting writes:\n{}",
            diagnose(&s, &last)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = killed.elapsed();
    println!(
        "failover: {:.1} s from kill -9 of the primary to a new primary accepting writes",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(15),
        "a new primary within 15 s (down-after 2 s), took {took:?}"
    );
    // Through the proxy: its connection to the killed primary fails once; writes
    // succeed again on the new primary, as the sentinels name it.
    let writing = Instant::now();
    let mut errors = 0;
    loop {
        match through.cmd(&["SET", "via-proxy", "2"]) {
            Ok(Reply::Simple(ok)) if ok == "OK" => break,
            Ok(_) => {}
            Err(_) => {
                errors += 1;
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(c) = resp::Conn::open(&proxy.addr) {
                    through = c;
                }
            }
        }
        assert!(
            writing.elapsed() < Duration::from_secs(20),
            "no write through the proxy after the failover:\n{}",
            proxy.log()
        );
    }
    println!(
        "through the proxy: writes again {:.1} s after the new primary accepted writes ({errors} connection errors)",
        writing.elapsed().as_secs_f64()
    );
    assert_eq!(
        run_id(&mut through),
        resp::info_field(&new_primary, "run_id"),
        "the proxy routes to the primary Sentinel names"
    );
    assert!(matches!(through.cmd(&["ROLE"]), Ok(Reply::Array(a)) if a[0].text() == "master"));
    assert!(
        proxy.log().contains("+switch-master"),
        "the proxy followed the sentinels:\n{}",
        proxy.log()
    );
    proxy.terminate();

    let lost = missing(&new_primary, &acked);
    println!(
        "acknowledged writes lost: {} of {}",
        lost.len(),
        acked.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The federation follows Sentinel; the old instance comes back as a replica.
    until(&s, "status.primary follows Sentinel", || {
        s.primary("cache").is_some_and(|(_, _, e)| e == new_primary)
    });
    until(&s, "the old primary back as a linked replica", || {
        s.wired("cache", 3)
    });
    let old = s
        .endpoints("cache")
        .into_iter()
        .find(|(o, _, _)| *o == ordinal)
        .unwrap()
        .2;
    assert!(
        missing(&old, &acked).is_empty(),
        "the old primary caught up"
    );

    // A static change rolls a restart; the primary's handover is Sentinel's.
    let before = s.all_pids();
    let (pordinal, _, primary) = s.primary("cache").unwrap();
    let more = write_acknowledged(&primary, "m", 200);
    let out = s.apply(
        "cache-2.yaml",
        &shard(
            "cache",
            3,
            &format!("{SENTINELS}\n    config: {{rdbchecksum: \"no\"}}"),
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut restarted: Vec<String> = Vec::new();
    until(&s, "every instance restarted with rdbchecksum no", || {
        for (name, pid) in s.all_pids() {
            let was = before.iter().find(|(n, _)| *n == name).map(|(_, p)| *p);
            let shard_instance = !name.starts_with("cache-sentinel");
            if shard_instance && was != Some(pid) && !restarted.contains(&name) {
                restarted.push(name);
            }
        }
        restarted.len() == 3 && s.wired("cache", 3)
    });
    assert_eq!(
        restarted.last().map(String::as_str),
        Some(format!("cache-{pordinal}").as_str()),
        "replicas first, the primary last: {restarted:?}"
    );
    let (_, _, primary) = s.primary("cache").unwrap();
    let all = [acked, more].concat();
    let lost = missing(&primary, &all);
    assert!(
        lost.is_empty(),
        "acknowledged writes lost in the rollout: {lost:?}"
    );

    // The primary's volume emptied and its process killed: it restarts before the
    // sentinels notice it died, and must not feed its replicas the empty dataset;
    // the sentinels fail over to a replica that kept everything.
    let (ordinal, cluster, primary) = s.primary("cache").unwrap();
    let volume = s
        .data_dir(&cluster)
        .join("volumes/default")
        .join(format!("data-cache-{ordinal}"));
    for e in std::fs::read_dir(&volume).unwrap().flatten() {
        let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
    }
    let pid = s.pid(&cluster, &format!("cache-{ordinal}"));
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    until(&s, "another primary, and the shard wired again", || {
        s.primary("cache").is_some_and(|(_, _, e)| e != primary) && s.wired("cache", 3)
    });
    for (o, _, e) in s.endpoints("cache") {
        let lost = missing(&e, &all);
        assert!(lost.is_empty(), "cache-{o} lost {} keys", lost.len());
    }
}

/// A `flotilla proxy` process for `default/cache`, killed by its handle.
struct Proxy {
    proc: support::Proc,
    addr: String,
    log: PathBuf,
}

impl Proxy {
    fn start(f: &Federation) -> Proxy {
        Proxy::start_for(f, "cache")
    }

    fn start_for(f: &Federation, set: &str) -> Proxy {
        let port = support::free_port();
        let http = support::free_port();
        let log = f.dir.path().join(format!("proxy-{set}.log"));
        let child = Command::new(support::BIN)
            .args(["proxy", "--server", &f.url(), "--token", support::TOKEN])
            .args(["--set", &format!("default/{set}")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let proxy = Proxy {
            proc: support::Proc(child),
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        eventually_or(
            "the proxy ready (a primary verified)",
            || support::http_get(http, "/readyz").is_some_and(|(code, _)| code == 200),
            || proxy.log(),
        );
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM: the proxy drains (nothing in flight here) and exits 0.
    fn terminate(mut self) {
        let pid = self.proc.0.id();
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.proc.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "the proxy's exit after SIGTERM: {status}\n{}",
            self.log()
        );
    }
}

/// The `run_id` of the instance a connection reaches.
fn run_id(c: &mut resp::Conn) -> Option<String> {
    let text = c.cmd(&["INFO", "server"]).ok()?.text();
    text.lines()
        .find_map(|l| l.trim_end().strip_prefix("run_id:").map(str::to_string))
}

/// `eventually`, with what `cache` looks like when it times out.
fn until(s: &Shard, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            diagnose(s, "")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const SENTINELS: &str = "    sentinel: {replicas: 3, quorum: 2, downAfterMilliseconds: 2000, failoverTimeoutMilliseconds: 10000}";

#[test]
fn without_sentinels_an_emptied_primary_wipes_nothing_agents_can_die_and_config_rolls() {
    let mut s = Shard::start(71);
    let out = s.apply(
        "plain.yaml",
        &shard("plain", 3, "    config: {maxmemory: 64mb}"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the shard wired across members", || s.wired("plain", 3));
    let (ordinal, cluster, primary) = s.primary("plain").unwrap();
    let acked = write_acknowledged(&primary, "w", 200);
    assert_eq!(acked.len(), 200);
    eventually("every replica has every key", || {
        s.endpoints("plain")
            .iter()
            .all(|(_, _, e)| dbsize(e) == Some(200))
    });

    // Empty the primary's volume and kill it: it must never feed its replicas an
    // empty dataset.
    let volume = s
        .data_dir(&cluster)
        .join("volumes/default")
        .join(format!("data-plain-{ordinal}"));
    assert!(volume.is_dir(), "{}", volume.display());
    for e in std::fs::read_dir(&volume).unwrap().flatten() {
        let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
    }
    let pid = s.pid(&cluster, &format!("plain-{ordinal}"));
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    eventually_or(
        "another instance takes over and the shard is wired again",
        || s.primary("plain").is_some_and(|(o, _, _)| o != ordinal) && s.wired("plain", 3),
        || {
            format!(
                "status: {}\nthe server's primary decisions:\n{}",
                s.set("plain")["status"],
                s.f.server_grep("primary")
            )
        },
    );
    for (o, _, e) in s.endpoints("plain") {
        assert_eq!(dbsize(&e), Some(200), "instance {o} kept every key");
    }
    let (_, pcluster, primary) = s.primary("plain").unwrap();

    // kill -9 of the primary's agent: its instances keep serving; the agent started
    // again adopts them.
    let before = s.all_pids();
    let (_, _, token) = s
        .members
        .iter()
        .find(|(n, _, _)| *n == pcluster)
        .cloned()
        .unwrap();
    s.f.agents.remove(&pcluster); // SIGKILL
    assert_eq!(
        resp::once(&primary, &["SET", "while-agent-down", "1"]),
        Some(Reply::Simple("OK".into())),
        "the primary serves without its agent"
    );
    let url = s.f.url();
    let config = s.f.dir.path().join(format!("{pcluster}.yaml"));
    s.f.start_agent(&pcluster, &url, &token, "--process-config", &config);
    s.f.wait_ready_clusters(3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        s.all_pids(),
        before,
        "the restarted agent adopted every instance"
    );

    // Dynamic: CONFIG SET, no restart.
    let out = s.apply(
        "plain-2.yaml",
        &shard("plain", 3, "    config: {maxmemory: 96mb}"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("every instance runs maxmemory 96mb", || {
        s.endpoints("plain").iter().all(|(_, _, e)| {
            matches!(resp::once(e, &["CONFIG", "GET", "maxmemory"]),
                Some(Reply::Array(a)) if a.len() == 2 && a[1].text() == (96u64 << 20).to_string())
        })
    });
    assert_eq!(s.all_pids(), before, "a dynamic change restarts nothing");

    // Immutable: refused, naming the field.
    let out = s.apply(
        "plain-3.yaml",
        &shard(
            "plain",
            3,
            "    config: {maxmemory: 96mb, databases: \"32\"}",
        ),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.redis.config.databases: immutable once the set exists"),
        "{err}"
    );

    // Static: a rolling restart, the primary last.
    let (pordinal, _, _) = s.primary("plain").unwrap();
    let out = s.apply(
        "plain-4.yaml",
        &shard(
            "plain",
            3,
            "    config: {maxmemory: 96mb, rdbchecksum: \"no\"}",
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut restarted: Vec<String> = Vec::new();
    eventually("every instance restarted with rdbchecksum no", || {
        for (name, pid) in s.all_pids() {
            let was = before.iter().find(|(n, _)| *n == name).map(|(_, p)| *p);
            if was != Some(pid) && !restarted.contains(&name) {
                restarted.push(name);
            }
        }
        restarted.len() == 3
            && s.endpoints("plain").iter().all(|(_, _, e)| {
                matches!(resp::once(e, &["CONFIG", "GET", "rdbchecksum"]),
                    Some(Reply::Array(a)) if a.len() == 2 && a[1].text() == "no")
            })
            && s.wired("plain", 3)
    });
    assert_eq!(
        restarted.last().map(String::as_str),
        Some(format!("plain-{pordinal}").as_str()),
        "replicas first, the primary last: {restarted:?}\n{}",
        ["a", "b", "c"]
            .iter()
            .map(|m| format!("{m}:\n{}", s.f.agent_log(m, "plain")))
            .collect::<Vec<_>>()
            .join("\n")
            + "\nserver:\n"
            + &s.f.server_grep("primary")
    );
    let (_, _, primary) = s.primary("plain").unwrap();
    assert_eq!(dbsize(&primary), Some(201), "nothing lost in the rollout");
}

/// What a [`Writer`] saw.
#[derive(Debug, Default)]
struct Written {
    /// Writes answered OK.
    writes: usize,
    /// Keys whose write `WAIT 1` acknowledged.
    acked: Vec<String>,
    /// Every failed command or connection, in order.
    errors: Vec<String>,
    /// The longest time between two writes answered OK.
    longest_gap: Duration,
    /// When the first and the last error came.
    error_times: Option<(Instant, Instant)>,
}

/// One client writing through the proxy without pause (`SET`, then `WAIT 1 1000`),
/// reconnecting after an error, as a user's client would.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Written>>,
}

impl Writer {
    fn start(addr: &str, prefix: &str) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let (addr, prefix) = (addr.to_string(), prefix.to_string());
        let thread = std::thread::spawn(move || {
            let mut w = Written::default();
            let mut conn = None;
            let mut last_ok = Instant::now();
            let mut i = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match resp::Conn::open(&addr) {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            w.errors.push(format!("connect: {e}"));
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    },
                };
                let key = format!("{prefix}:{i}");
                i += 1;
                match c.cmd(&["SET", &key, "v"]) {
                    Ok(Reply::Simple(ok)) if ok == "OK" => {
                        w.writes += 1;
                        w.longest_gap = w.longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    }
                    Ok(other) => {
                        w.errors.push(format!("SET {key}: {other:?}"));
                        let now = Instant::now();
                        w.error_times = Some((w.error_times.map_or(now, |t| t.0), now));
                        continue;
                    }
                    Err(e) => {
                        w.errors.push(format!("SET {key}: {e}"));
                        conn = None;
                        continue;
                    }
                }
                match c.cmd(&["WAIT", "1", "1000"]) {
                    Ok(Reply::Integer(n)) if n >= 1 => w.acked.push(key),
                    Ok(_) => {}
                    Err(e) => {
                        w.errors.push(format!("WAIT after {key}: {e}"));
                        conn = None;
                    }
                }
            }
            w
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Written {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_live_shard_moves_to_another_member_through_the_proxy_without_losing_a_write() {
    move_under_load(81, "    config: {maxmemory: 64mb}", true);
}

#[test]
fn with_sentinels_a_live_shard_moves_and_sentinel_never_elects_a_retiring_replica() {
    // With Sentinel the switchover is Sentinel's: it must promote the replica named
    // (ranked first by replica-priority 1), the other replicas must not need a full
    // resync from it (no replication PING from the paused old primary), and the old
    // primary follows the new one as soon as it is a master. Then a client sees what
    // it sees without Sentinel: at most one retryable error, a pause of about a second.
    move_under_load(91, SENTINELS, true);
}

/// A shard of three in member a moved to member b while a client writes through
/// `flotilla proxy`. `seamless`: the client sees at most one error.
fn move_under_load(block: u8, redis: &str, seamless: bool) {
    let s = Shard::start(block);
    let in_a = "    perCluster: {b: {max: 0}, c: {max: 0}}\n";
    let in_b = "    perCluster: {a: {max: 0}, c: {max: 0}}\n";
    let out = s.apply("moving.yaml", &shard_placed("moving", 3, in_a, redis));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the shard wired in member a", || {
        s.wired("moving", 3) && s.endpoints("moving").iter().all(|(_, c, _)| c == "a")
    });
    let proxy = Proxy::start_for(&s.f, "moving");
    let writer = Writer::start(&proxy.addr, "m");
    std::thread::sleep(Duration::from_millis(1500));

    // The move: a may hold none of it now.
    let out = s.apply("moving-2.yaml", &shard_placed("moving", 3, in_b, redis));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    let in_a_now = || {
        pids(s.data_dir("a"))
            .into_iter()
            .filter(|(_, n)| {
                n.strip_prefix("moving-")
                    .is_some_and(|o| o.parse::<u32>().is_ok())
            })
            .count()
    };
    let mut progress = Vec::new();
    let mut described = String::new();
    loop {
        let set = s.set("moving");
        let conditions = set["status"]["conditions"].as_array().cloned();
        if let Some(c) = conditions
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Progressing" && c["reason"] == "Migrating")
        {
            let m = c["message"].as_str().unwrap_or_default().to_string();
            if progress.last() != Some(&m) {
                progress.push(m);
            }
            if described.is_empty() {
                described = s.f.ok(&["describe", "fis", "moving"]);
            }
        }
        if std::env::var_os("FLOTILLA_TRACE_MOVE").is_some()
            && let Some((o, _, e)) = s.primary("moving")
        {
            let info = resp::once(&e, &["INFO", "replication"])
                .map(|r| r.text())
                .unwrap_or_default();
            let lines: Vec<&str> = info
                .lines()
                .filter(|l| {
                    l.starts_with("slave") || l.starts_with("min_slaves") || l.starts_with("role")
                })
                .collect();
            let roles: Vec<String> = s
                .endpoints("moving")
                .iter()
                .map(|(o, _, e)| {
                    let role = resp::info_field(e, "role").unwrap_or_default();
                    let master = resp::info_field(e, "master_port")
                        .map(|_| resp::info_field(e, "master_host").unwrap_or_default())
                        .unwrap_or_default();
                    let link = resp::info_field(e, "master_link_status").unwrap_or_default();
                    format!("{o}@{e}={role}{master}{link}")
                })
                .collect();
            println!(
                "{:.1} primary {o}: {} || {}",
                started.elapsed().as_secs_f64(),
                lines.join(" | "),
                roles.join(" ")
            );
        }
        let left = in_a_now();
        if left < 3 {
            // Nothing leaves a before the primary runs in b.
            let primary = s.primary("moving");
            assert!(
                primary.as_ref().is_some_and(|(_, c, _)| c == "b"),
                "an instance left a while the primary is {primary:?}\n{progress:#?}"
            );
        }
        if left == 0
            && s.wired("moving", 3)
            && s.endpoints("moving").iter().all(|(_, c, _)| c == "b")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the move did not finish: {} instances left in a; status {}\nprogress {progress:#?}\n{}\na:\n{}\nb:\n{}",
            left,
            s.set("moving")["status"],
            s.f.server_grep("moving"),
            s.f.agent_log("a", "moving"),
            s.f.agent_log("b", "moving")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    if std::env::var_os("FLOTILLA_TRACE_MOVE").is_some() {
        println!(
            "proxy:\n{}\nserver:\n{}\nagent a:\n{}\nagent b:\n{}",
            proxy.log(),
            s.f.server_grep("moving"),
            s.f.agent_log("a", "moving"),
            s.f.agent_log("b", "moving")
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let written = writer.finish();
    println!(
        "move a -> b: {:.1} s; {} writes through the proxy, {} acknowledged by WAIT 1, {} errors {:?}, longest pause {:.2} s\nprogress: {progress:#?}",
        took.as_secs_f64(),
        written.writes,
        written.acked.len(),
        written.errors.len(),
        written.errors.iter().take(3).collect::<Vec<_>>(),
        written.longest_gap.as_secs_f64()
    );
    if let Some((first, last)) = written.error_times {
        println!(
            "errors from {:.1} s to {:.1} s after the placement changed",
            first.saturating_duration_since(started).as_secs_f64(),
            last.saturating_duration_since(started).as_secs_f64()
        );
    }
    assert!(
        !progress.is_empty(),
        "describe shows the move while it runs"
    );
    assert!(described.contains("Migrating"), "{described}");
    assert!(
        !seamless || written.errors.len() <= 1,
        "at most one retryable error for a client writing through the move: {} errors, first {:?}",
        written.errors.len(),
        written.errors.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        !seamless || written.longest_gap < Duration::from_secs(10),
        "writes stalled {:?}",
        written.longest_gap
    );
    // New ordinals for the new instances: none reused one still running in a.
    let mut ordinals: Vec<u64> = s.endpoints("moving").iter().map(|(o, _, _)| *o).collect();
    ordinals.sort_unstable();
    assert_eq!(ordinals, vec![3, 4, 5]);
    let (_, _, primary) = s.primary("moving").unwrap();
    let lost = missing(&primary, &written.acked);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost",
        lost.len(),
        written.acked.len()
    );
    proxy.terminate();
}
