//! The proxy hop, measured (`cargo xtask bench proxy`).
//!
//! One `redis-server` on loopback, and three ways to reach it, each driven by
//! `redis-benchmark -t get,set -c 50` without and with pipelining (`-P 16`), all in
//! one run:
//!
//! - **direct**: the server itself, **the baseline** of every ratio;
//! - **flotilla proxy**: [`flotilla_proxy::start`] in this process (the server offered
//!   as the primary, verified with `ROLE` like any other);
//! - **haproxy**: Debian's `haproxy` configured the way redis-ha does it (`tcp-check`
//!   with `PING`, `info replication` / `role:master`); skipped, and said so, when it is
//!   not installed (`apt-get install haproxy`).
//!
//! For each: requests a second, p50 and p99 latency (redis-benchmark's own), and the
//! ratios to direct (throughput; added p99 in ms).
//!
//! Then a planned switchover seen through the proxy, five times: a primary and its
//! replica, one client writing through the proxy without pause, `FAILOVER TO` the
//! replica (nobody tells the proxy). Reported: the client's longest wait for a write
//! (from the last write accepted by the old primary to the first accepted by the new
//! one), its failed writes, and the time from `FAILOVER` sent to the proxy routing to
//! the new primary; the client's median write time in the same run is the baseline. Not criterion: redis-benchmark is
//! the load generator and the clock. Run as a test (`cargo test`, without `--bench`)
//! it sends a few requests only, so it cannot rot; nothing about speed is asserted.
//! Every process it starts is stopped by PID when it ends.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Waits until `port` answers `PING` with `+PONG`.
fn wait_pong(port: u16) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing answers PING on 127.0.0.1:{port}");
}

fn redis_server(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_pong(port);
    (Proc(child), port)
}

/// HAProxy as redis-ha configures it in front of its master.
fn haproxy(dir: &Path, backend: u16) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode tcp\n  timeout connect 4s\n  timeout server 330s\n  timeout client 330s\n  timeout check 2s\n\
             frontend redis\n  bind 127.0.0.1:{port}\n  default_backend master\n\
             backend master\n  option tcp-check\n  tcp-check connect\n  tcp-check send PING\\r\\n\n  tcp-check expect string +PONG\n\
             \x20 tcp-check send info\\ replication\\r\\n\n  tcp-check expect string role:master\n  tcp-check send QUIT\\r\\n\n  tcp-check expect string +OK\n\
             \x20 server r0 127.0.0.1:{backend} check inter 1s\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    wait_pong(port);
    (Proc(child), port)
}

/// One redis-benchmark result line.
#[derive(Clone, Debug)]
struct Row {
    test: String,
    rps: f64,
    p50: f64,
    p99: f64,
}

/// `redis-benchmark -t get,set -c 50 -P pipeline -n requests --csv` against `port`.
fn benchmark(port: u16, pipeline: u32, requests: u32) -> Vec<Row> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "get,set", "-c", "50", "--csv"])
        .args(["-P", &pipeline.to_string(), "-n", &requests.to_string()])
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("a CSV header")
        .split(',')
        .map(|f| f.trim_matches('"').to_string())
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
    };
    let (rps, p50, p99) = (col("rps"), col("p50_latency_ms"), col("p99_latency_ms"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(|f| f.trim_matches('"')).collect();
            let num = |i: usize| f[i].parse::<f64>().unwrap_or(f64::NAN);
            Row {
                test: f[0].to_string(),
                rps: num(rps),
                p50: num(p50),
                p99: num(p99),
            }
        })
        .collect()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let requests: u32 = if bench { 200_000 } else { 2_000 };
    let dir = tempfile::tempdir().unwrap();
    let (_redis, direct) = redis_server(dir.path());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running =
            flotilla_proxy::start(listener, flotilla_proxy::Config::new("bench/redis")).unwrap();
        running.offers.offer(
            flotilla_proxy::Source::Other("bench".into()),
            format!("127.0.0.1:{direct}"),
        );
        running
    });
    let proxy_port = proxy.addr.port();
    wait_pong(proxy_port);
    let haproxy = on_path("haproxy").then(|| haproxy(dir.path(), direct));

    let mut targets: Vec<(&str, u16)> = vec![("direct", direct), ("flotilla proxy", proxy_port)];
    if let Some((_, port)) = &haproxy {
        targets.push(("haproxy (redis-ha)", *port));
    } else {
        eprintln!("haproxy is not installed (apt-get install haproxy): its rows are skipped");
    }
    println!(
        "redis-benchmark -t get,set -c 50 -n {requests}, 127.0.0.1; ratios against direct in the same run\n"
    );
    println!(
        "{:<20} {:>3} {:<4} {:>12} {:>8} {:>8} {:>10} {:>14}",
        "target", "-P", "test", "ops/s", "p50 ms", "p99 ms", "ops/direct", "added p99 ms"
    );
    for pipeline in [1, 16] {
        let mut base: Vec<Row> = Vec::new();
        for (name, port) in &targets {
            let rows = benchmark(*port, pipeline, requests);
            assert!(
                rows.iter().any(|r| r.test == "SET") && rows.iter().any(|r| r.test == "GET"),
                "{name}: {rows:?}"
            );
            if base.is_empty() {
                base = rows.clone();
            }
            for r in &rows {
                let b = base.iter().find(|b| b.test == r.test).unwrap();
                println!(
                    "{:<20} {:>3} {:<4} {:>12.0} {:>8.3} {:>8.3} {:>10.2} {:>14.3}",
                    name,
                    pipeline,
                    r.test,
                    r.rps,
                    r.p50,
                    r.p99,
                    r.rps / b.rps,
                    r.p99 - b.p99
                );
            }
        }
        println!();
    }
    rt.block_on(proxy.stop());
    switchovers(&rt, dir.path(), if bench { 5 } else { 1 });
}

/// Sends `line` (an inline command) on a fresh connection and returns the reply line.
fn once(port: u16, line: &str) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut out = String::new();
    r.read_line(&mut out).unwrap();
    if let Some(n) = out
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; n + 2];
        std::io::Read::read_exact(&mut r, &mut body).unwrap();
        return String::from_utf8_lossy(&body).into_owned();
    }
    out
}

fn switchovers(rt: &tokio::runtime::Runtime, dir: &Path, runs: usize) {
    use std::io::{BufRead, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    println!("planned switchover (FAILOVER TO) through the flotilla proxy, one client writing:");
    println!(
        "{:<4} {:>10} {:>16} {:>12} {:>8} {:>14}",
        "run", "writes", "longest wait ms", "median ms", "failed", "rerouted ms"
    );
    for run in 0..runs {
        let (da, db) = (dir.join(format!("a{run}")), dir.join(format!("b{run}")));
        std::fs::create_dir_all(&da).unwrap();
        std::fs::create_dir_all(&db).unwrap();
        let (_a, a) = redis_server(&da);
        let (_b, b) = redis_server(&db);
        assert!(once(b, &format!("REPLICAOF 127.0.0.1 {a}")).starts_with("+OK"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !once(a, "INFO replication").contains("state=online") {
            assert!(Instant::now() < deadline, "the replica never linked");
            std::thread::sleep(Duration::from_millis(20));
        }
        let proxy = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let running =
                flotilla_proxy::start(listener, flotilla_proxy::Config::new("bench/redis"))
                    .unwrap();
            running.offers.offer(
                flotilla_proxy::Source::Other("bench".into()),
                format!("127.0.0.1:{a}"),
            );
            running
        });
        let port = proxy.addr.port();
        wait_pong(port);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut replies: Vec<(Instant, bool)> = Vec::new();
            let mut conn = None;
            let mut i = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let (w, r) = match conn.as_mut() {
                    Some(c) => c,
                    None => match std::net::TcpStream::connect(("127.0.0.1", port)) {
                        Ok(s) => conn.insert((s.try_clone().unwrap(), std::io::BufReader::new(s))),
                        Err(_) => continue,
                    },
                };
                i += 1;
                let mut line = String::new();
                let ok = w.write_all(format!("SET k:{i} v\r\n").as_bytes()).is_ok()
                    && r.read_line(&mut line).is_ok_and(|n| n > 0);
                replies.push((Instant::now(), ok && line.starts_with("+OK")));
                if !ok {
                    conn = None;
                }
            }
            replies
        });
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        assert!(once(a, &format!("FAILOVER TO 127.0.0.1 {b}")).starts_with("+OK"));
        let new = format!("127.0.0.1:{b}");
        let mut primary = proxy.primary.clone();
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                primary.wait_for(|p| p.addr.as_deref() == Some(new.as_str())),
            )
            .await
            .expect("the proxy follows the switchover")
            .unwrap();
        });
        let rerouted = started.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let replies = writer.join().unwrap();
        let oks: Vec<Instant> = replies.iter().filter(|r| r.1).map(|r| r.0).collect();
        let mut gaps: Vec<Duration> = oks.windows(2).map(|w| w[1] - w[0]).collect();
        let longest = gaps.iter().max().copied().unwrap_or_default();
        gaps.sort_unstable();
        let median = gaps.get(gaps.len() / 2).copied().unwrap_or_default();
        println!(
            "{:<4} {:>10} {:>16.2} {:>12.3} {:>8} {:>14.2}",
            run + 1,
            replies.len(),
            longest.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            replies.iter().filter(|r| !r.1).count(),
            rerouted.as_secs_f64() * 1e3
        );
        rt.block_on(proxy.stop());
    }
}
