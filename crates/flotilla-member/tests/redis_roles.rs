//! Role probes and a switchover against real `redis-server` processes.
//!
//! Needs `redis-server` (Debian package `redis-server`; `.ci/run` installs it) on PATH
//! or at `FLOTILLA_REDIS_SERVER`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_member::redis;

const TIMEOUT: Duration = Duration::from_secs(2);

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> String {
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
    bin
}

/// A `redis-server` on a free loopback port. The port is free when picked but may be
/// taken by another process before Redis binds it: then Redis exits, and another
/// port is tried.
async fn start(replica_of: Option<&str>) -> Redis {
    for _ in 0..5 {
        if let Some(redis) = try_start(replica_of).await {
            return redis;
        }
    }
    panic!("redis-server did not start on any of 5 free ports");
}

async fn try_start(replica_of: Option<&str>) -> Option<Redis> {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("flotilla-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(binary());
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(&dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(primary) = replica_of {
        let (host, p) = primary.rsplit_once(':').unwrap();
        cmd.args(["--replicaof", host, p]);
    }
    let child = cmd.spawn().expect("start redis-server");
    let mut redis = Redis {
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: TempDir(dir),
    };
    for _ in 0..200 {
        if redis::command(&redis.addr, &["PING"], TIMEOUT)
            .await
            .is_ok()
        {
            return Some(redis);
        }
        if redis.child.try_wait().ok().flatten().is_some() {
            return None; // exited: the port was taken
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server on {} did not answer within 10 s", redis.addr);
}

#[tokio::test]
async fn probes_map_roles_and_a_switchover_swaps_them() {
    let primary = start(None).await;
    let replica = start(Some(&primary.addr)).await;
    let map: BTreeMap<String, String> = [
        ("master".to_string(), "primary".to_string()),
        ("slave".to_string(), "secondary".to_string()),
    ]
    .into();
    let role_of = |addr: String| {
        let map = map.clone();
        async move { redis::map_role(&redis::role(&addr, TIMEOUT).await.unwrap(), &map) }
    };
    assert_eq!(role_of(primary.addr.clone()).await, "primary");
    assert_eq!(role_of(replica.addr.clone()).await, "secondary");

    redis::switchover(&replica.addr, &[&primary.addr], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(role_of(replica.addr.clone()).await, "primary");
    assert_eq!(role_of(primary.addr.clone()).await, "secondary");
    // Idempotent: the same switchover again changes nothing.
    redis::switchover(&replica.addr, &[&primary.addr], TIMEOUT)
        .await
        .unwrap();
    assert_eq!(role_of(replica.addr.clone()).await, "primary");
}

#[tokio::test]
async fn a_dead_instance_is_a_probe_error_not_a_role() {
    let gone = {
        let r = start(None).await;
        r.addr.clone()
    };
    assert!(
        redis::role(&gone, Duration::from_millis(500))
            .await
            .is_err()
    );
}
