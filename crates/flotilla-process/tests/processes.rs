//! The process member with real processes: `redis-server` and `sh`, each instance on
//! its own loopback address, driven through `flotilla_member::Controller`.
//!
//! Needs `redis-server` (Debian package `redis-server`) on PATH or at
//! `FLOTILLA_REDIS_SERVER`. Every test stops every process it started, by pid (read
//! from the state files, and every pid it saw), whatever happens: see [`Reaper`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_api::{InstanceSet, Valid, validate};
use flotilla_instanceset::{Action, Phase};
use flotilla_member::redis::{self, Reply};
use flotilla_member::{Backend, Controller};
use flotilla_process::{Layout, ProcessBackend, ProcessConfig, Reaper, Record, os};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(2);

fn redis_server() -> PathBuf {
    let bin = std::env::var("FLOTILLA_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let found = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{bin} not found: install Debian's redis-server (apt-get install redis-server) or set FLOTILLA_REDIS_SERVER"
    );
    let path = PathBuf::from(&bin);
    if path.is_absolute() {
        return path;
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(&bin))
        .find(|p| p.is_file())
        .unwrap()
}

/// A process member over a fresh data directory, with its reaper.
struct Member {
    // Dropped in this order: the reaper kills, then the directory goes.
    reaper: Reaper,
    _dir: tempfile::TempDir,
    config: ProcessConfig,
}

impl Member {
    fn new() -> Member {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "nodeGroups: [{{count: 3, free: {{cpu: '4', pods: 10}}}}]\ndataDir: {}\nbinaries: {{redis-server: {}}}\n",
            dir.path().join("member").display(),
            redis_server().display()
        );
        let config = ProcessConfig::from_text(&text).unwrap();
        Member {
            reaper: Reaper::new(&dir.path().join("member")),
            _dir: dir,
            config,
        }
    }

    /// A controller over a new backend. A backend just dropped may still hold the
    /// directory's lock for a moment (a task of its own finishing): retried on `Busy`.
    fn controller(&self) -> Controller<ProcessBackend> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match ProcessBackend::new(&self.config) {
                Ok(b) => return Controller::new(Arc::new(b)),
                Err(flotilla_process::Error::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn decode(text: &str) -> Valid<InstanceSet> {
    let AnyObject::InstanceSet(s) = decode_all(text).unwrap().remove(0).object else {
        panic!("not an InstanceSet")
    };
    validate::instance_set(*s).unwrap_or_else(|e| panic!("{e}"))
}

/// A Redis slice of ordinals `0..=last` on `port`, as the federation would write it.
fn redis_set(last: u32, port: u16) -> Valid<InstanceSet> {
    decode(&format!(
        "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata: {{name: cache, namespace: team, uid: 1f0e5bfa-0000-4000-8000-000000000001}}
spec:
  ordinals: {{ranges: [{{start: 0, end: {last}}}]}}
  template: {{spec: {{containers: [{{name: redis, image: 'redis:7', ports: [{{name: redis, containerPort: {port}}}], resources: {{requests: {{cpu: 500m}}}}}}]}}}}
  volumeClaimTemplates: [{{metadata: {{name: data}}}}]
  persistentVolumeClaimRetentionPolicy: {{whenScaled: Delete}}
  roles:
  - {{name: primary, updatePriority: 2, exclusive: true}}
  - {{name: secondary, updatePriority: 1}}
  roleProbe: {{redis: {{port: {port}, roleMap: {{master: primary, slave: secondary}}}}, periodSeconds: 2}}
  redis: {{}}
"
    ))
}

/// Passes (with probes) until `done` holds of the backend, within a deadline.
async fn drive(
    c: &Controller<ProcessBackend>,
    s: &Valid<InstanceSet>,
    what: &str,
    mut done: impl AsyncFnMut(&ProcessBackend) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = match c.pass(s, true).await {
            Ok(pass) => format!("{pass:?}"),
            Err(e) => e.to_string(),
        };
        if done(c.backend()).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 15s; last pass: {last}; status: {:?}",
            c.backend().status(s)
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// The controller's last status says every instance is ready, and so does the backend.
async fn converged(b: &ProcessBackend, s: &InstanceSet, n: usize) -> bool {
    b.status(s)
        .is_some_and(|st| st.ready_replicas as usize == n && st.updated_replicas as usize == n)
        && all_ready(b, s, n).await
}

/// Every instance exists, runs and is ready.
async fn all_ready(b: &ProcessBackend, s: &InstanceSet, n: usize) -> bool {
    let o = b.observe(s).await.unwrap();
    o.instances.len() == n
        && o.instances
            .iter()
            .all(|i| i.phase == Phase::Running && i.ready)
}

fn records(reaper: &Reaper, b: &ProcessBackend, s: &InstanceSet, ordinals: &[u32]) -> Vec<Record> {
    ordinals
        .iter()
        .map(|&o| {
            let r = b.record(s, o).unwrap_or_else(|| panic!("no record of {o}"));
            reaper.saw(&r);
            r
        })
        .collect()
}

async fn ping(endpoint: &str) -> Reply {
    redis::command(endpoint, &["PING"], TIMEOUT).await.unwrap()
}

#[tokio::test]
async fn a_redis_set_becomes_ready_with_each_instance_on_its_own_address() {
    let m = Member::new();
    let c = m.controller();
    let s = redis_set(2, 16379);
    drive(&c, &s, "ready", async |b| converged(b, &s, 3).await).await;
    let rs = records(&m.reaper, c.backend(), &s, &[0, 1, 2]);
    let addresses: BTreeSet<&str> = rs.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(addresses.len(), 3, "one address each: {addresses:?}");
    let block = c.backend().block().0;
    for r in &rs {
        let ip: std::net::Ipv4Addr = r.address.parse().unwrap();
        assert_eq!(ip.octets()[..2], [127, block], "{ip} in the member's block");
        let endpoint = r.endpoint().unwrap();
        assert_eq!(ping(&endpoint).await, Reply::Simple("PONG".into()));
        let layout = Layout::new(c.backend().data_dir());
        let conf_path = layout
            .instance_dir("team", "cache", r.ordinal)
            .join("redis.conf");
        assert_eq!(r.command[1], conf_path.to_string_lossy());
        let conf = std::fs::read_to_string(&conf_path).unwrap();
        assert!(conf.contains(&format!("bind {}\n", r.address)), "{conf}");
        let data = layout.volume("team", "data", "cache", r.ordinal);
        assert!(
            conf.contains(&format!("dir \"{}\"\n", data.display())),
            "{conf}"
        );
        // Bound to its own address only: not reachable on another.
        assert!(
            redis::command(&format!("127.0.0.1:{}", 16379), &["PING"], TIMEOUT)
                .await
                .is_err_and(|e| e.to_string().contains("127.0.0.1")),
            "nothing of this member on 127.0.0.1"
        );
    }
    let o = c.backend().observe(&s).await.unwrap();
    let endpoints: Vec<String> = o
        .instances
        .iter()
        .map(|i| i.endpoint.clone().unwrap())
        .collect();
    assert_eq!(
        endpoints,
        rs.iter().map(|r| r.endpoint().unwrap()).collect::<Vec<_>>()
    );
    assert_eq!(o.volumes.len(), 3);
    // The member's capacity counts what the instances take: 3 nodes, one instance each.
    let cap = c.backend().capacity().await.unwrap();
    assert_eq!(cap.node_groups.len(), 1, "{cap:?}");
    assert_eq!(cap.node_groups[0].free["cpu"].0, "3500m");
    // Its Redis is reachable through the backend too.
    assert_eq!(
        c.backend().redis(&s, 1, &["PING"], TIMEOUT).await.unwrap(),
        Reply::Simple("PONG".into())
    );
}

#[tokio::test]
async fn a_killed_instance_fails_and_comes_back_on_its_address_with_its_volume() {
    let m = Member::new();
    let c = m.controller();
    let s = redis_set(1, 16380);
    drive(&c, &s, "ready", async |b| converged(b, &s, 2).await).await;
    let before = records(&m.reaper, c.backend(), &s, &[0, 1]);
    let volume = Layout::new(c.backend().data_dir()).volume("team", "data", "cache", 1);
    std::fs::write(volume.join("kept.txt"), "still here").unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[1].pid.unwrap() as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let o = c.backend().observe(&s).await.unwrap();
        if o.instances[1].phase == Phase::Failed {
            assert!(!o.instances[1].ready);
            break;
        }
        assert!(Instant::now() < deadline, "never observed Failed: {o:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pass = c.pass(&s, true).await.unwrap();
    assert!(
        pass.actions
            .iter()
            .any(|a| matches!(a, Action::Recreate { ordinal: 1, .. })),
        "{pass:?}"
    );
    drive(&c, &s, "back", async |b| converged(b, &s, 2).await).await;
    let after = records(&m.reaper, c.backend(), &s, &[0, 1]);
    assert_ne!(after[1].pid, before[1].pid, "a new process");
    assert_eq!(after[1].address, before[1].address, "on its address");
    assert_eq!(after[0].pid, before[0].pid, "the other one untouched");
    assert_eq!(
        std::fs::read_to_string(volume.join("kept.txt")).unwrap(),
        "still here"
    );
    assert_eq!(
        ping(&after[1].endpoint().unwrap()).await,
        Reply::Simple("PONG".into())
    );
}

#[tokio::test]
async fn an_agent_started_again_adopts_the_running_instances() {
    let m = Member::new();
    let s = redis_set(1, 16381);
    let before = {
        let c = m.controller();
        drive(&c, &s, "ready", async |b| converged(b, &s, 2).await).await;
        records(&m.reaper, c.backend(), &s, &[0, 1])
        // The backend (the agent) goes; its processes stay.
    };
    for r in &before {
        assert!(
            os::alive(r.pid.unwrap(), r.start_time.unwrap()),
            "still running"
        );
    }
    let c = m.controller();
    let e = ProcessBackend::new(&m.config).unwrap_err();
    assert!(
        e.to_string().contains("in use by another process member"),
        "{e}"
    );
    assert!(
        all_ready(c.backend(), &s, 2).await,
        "adopted, running and ready"
    );
    let after = records(&m.reaper, c.backend(), &s, &[0, 1]);
    assert_eq!(after, before, "same processes, nothing restarted");
    let pass = c.pass(&s, true).await.unwrap();
    assert!(
        !pass.actions.iter().any(|a| matches!(
            a,
            Action::Create { .. } | Action::Recreate { .. } | Action::Delete { .. }
        )),
        "{pass:?}"
    );
    assert_eq!(
        records(&m.reaper, c.backend(), &s, &[0, 1])[0].pid,
        before[0].pid
    );
    assert_eq!(
        c.backend().sets(),
        [("team".to_string(), "cache".to_string())]
    );
}

#[tokio::test]
async fn delete_and_delete_volume_remove_the_process_and_its_directory() {
    let m = Member::new();
    let c = m.controller();
    let s = redis_set(1, 16382);
    drive(&c, &s, "ready", async |b| converged(b, &s, 2).await).await;
    let r = records(&m.reaper, c.backend(), &s, &[0, 1]).remove(1);
    let layout = Layout::new(c.backend().data_dir());
    let volume = layout.volume("team", "data", "cache", 1);
    assert!(volume.is_dir());
    // The federation takes ordinal 1 away (whenScaled: Delete).
    let smaller = redis_set(0, 16382);
    drive(&c, &smaller, "scaled in", async |b| {
        b.observe(&smaller).await.unwrap().instances.len() == 1
            && b.observe(&smaller).await.unwrap().volumes.len() == 1
    })
    .await;
    assert!(!os::alive(r.pid.unwrap(), r.start_time.unwrap()), "stopped");
    assert!(
        !layout.state("team", "cache", 1).exists(),
        "state file removed"
    );
    assert!(!volume.exists(), "volume removed");
    assert!(!layout.instance_dir("team", "cache", 1).exists());
    // Applying them again changes nothing.
    for a in [
        Action::Delete { ordinal: 1 },
        Action::DeleteVolume {
            ordinal: 1,
            claim: "data".into(),
        },
    ] {
        assert_eq!(
            c.backend().apply(&smaller, &a).await.unwrap(),
            flotilla_member::Applied::Unchanged
        );
    }
    // A volume in use is not deleted.
    let e = c
        .backend()
        .apply(
            &smaller,
            &Action::DeleteVolume {
                ordinal: 0,
                claim: "data".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in use by cache-0"), "{e}");

    // A removed set is forgotten only once its last instance is gone.
    let b = c.backend();
    assert!(b.status(&smaller).is_some());
    b.forget(&smaller);
    assert!(b.status(&smaller).is_some(), "cache-0 still runs");
    b.apply(&smaller, &Action::Delete { ordinal: 0 })
        .await
        .unwrap();
    b.forget(&smaller);
    assert_eq!(b.status(&smaller), None);
    assert!(b.sets().is_empty());
}

fn sleeper(command: &str) -> Valid<InstanceSet> {
    decode(&format!(
        "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata: {{name: sleeper, namespace: team}}
spec:
  ordinals: {{ranges: [{{start: 0, end: 1}}]}}
  template: {{spec: {{terminationGracePeriodSeconds: 1, containers: [{{name: main, image: busybox, {command} env: [{{name: GREETING, value: 'hi $(HOSTNAME)'}}]}}]}}}}
"
    ))
}

#[tokio::test]
async fn a_template_runs_its_command_with_the_pod_ip_expanded_in_its_own_group() {
    let m = Member::new();
    let c = m.controller();
    let s = sleeper(
        "command: [sh, -c, 'exec sleep 1000', sh, '$(POD_IP)', '$(GREETING)', '$$(POD_IP)'],",
    );
    drive(&c, &s, "running", async |b| converged(b, &s, 2).await).await;
    let rs = records(&m.reaper, c.backend(), &s, &[0, 1]);
    for r in &rs {
        assert_eq!(
            r.command[1..],
            [
                "-c".to_string(),
                "exec sleep 1000".into(),
                "sh".into(),
                r.address.clone(),
                format!("hi sleeper-{}", r.ordinal),
                "$(POD_IP)".into()
            ]
        );
        let pid = r.pid.unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        assert!(vars.contains(&format!("POD_IP={}", r.address).as_bytes()));
        assert!(vars.contains(&format!("HOSTNAME=sleeper-{}", r.ordinal).as_bytes()));
        // Its own process group: a Ctrl-C to the agent's group does not reach it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let pgrp: u32 = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pgrp, pid);
        let o = c.backend().observe(&s).await.unwrap();
        assert_eq!(o.instances[0].endpoint, None, "no port, no endpoint");
    }
    assert_ne!(rs[0].address, rs[1].address);
    // Deleting stops it (SIGTERM is enough for sleep).
    let gone = c
        .backend()
        .apply(&s, &Action::Delete { ordinal: 1 })
        .await
        .unwrap();
    assert_eq!(gone, flotilla_member::Applied::Wrote);
    assert!(!os::alive(rs[1].pid.unwrap(), rs[1].start_time.unwrap()));
}

#[tokio::test]
async fn a_template_without_a_command_fails_naming_the_field() {
    let m = Member::new();
    let c = m.controller();
    let s = sleeper("");
    let e = c.pass(&s, false).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("spec.template.spec.containers[0].command: required on a process member"),
        "{e}"
    );
    let status = c.backend().status(&s).unwrap();
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "ApplyFailed");
    assert!(
        degraded.message.contains("containers[0].command"),
        "{}",
        degraded.message
    );
    assert!(c.backend().observe(&s).await.unwrap().instances.is_empty());
    assert_eq!(
        c.backend().capacity().await.unwrap().node_groups[0].count,
        3,
        "nothing reserved"
    );
}

#[tokio::test]
async fn an_instance_that_keeps_crashing_is_restarted_later_saying_why_and_where_its_log_is() {
    let m = Member::new();
    let c = m.controller();
    let s = sleeper("command: [sh, -c, 'echo no luck >&2; exit 3'],");
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        if let Some(r) = c.backend().record(&s, 0) {
            m.reaper.saw(&r);
        }
        if let Err(e) = c.pass(&s, false).await
            && e.to_string().contains("in a row")
        {
            break e.to_string();
        }
        assert!(Instant::now() < deadline, "never refused a restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused.contains("sleeper-0 exit status: 3"), "{refused}");
    assert!(refused.contains("restarting in"), "{refused}");
    let log = Layout::new(c.backend().data_dir()).log("team", "sleeper", 0);
    assert!(refused.contains(&log.display().to_string()), "{refused}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("no luck"));
}

#[tokio::test]
async fn config_file_problems_name_their_fields() {
    let e = ProcessConfig::from_text(
        "nodeGroups: [{count: 1}]\nbinaries: {redis-server: /nonexistent/redis-server}\naddressBlock: '127.300'\n",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e.lines()
            .map(|l| l.split_once(':').unwrap().0)
            .collect::<Vec<_>>(),
        ["dataDir", "binaries.redis-server", "addressBlock"],
        "{e}"
    );
}
