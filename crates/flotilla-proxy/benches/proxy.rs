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
//! ratios to direct (throughput; added p99 in ms). Not criterion: redis-benchmark is
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
}
