//! The fleet benchmark (`cargo xtask bench fleet`): one set of 10,000 and of 100,000
//! instances over 100 simulated members, on the embedded store and on etcd.
//!
//! The server is the real `flotilla server` process (so its CPU seconds and peak RSS
//! are its own, read from `/proc/<pid>`); the members are simulated (`SimMember`, no
//! start or ready delay) behind real agents over gRPC in this process. For each size:
//! - apply → every instance ready (as `apply --wait` sees it, through a watch);
//! - settling (11 s: the last capacity changes are stored), then idle for a while:
//!   the writes a converged set costs (goal: none);
//! - scale by +1%: apply → ready again;
//! - one member going Unknown (its agent stops): until the set's `Degraded` names it.
//!
//! Each phase reports wall time, the server's CPU seconds and the store writes (count
//! and bytes, from the server's `flotilla_store_write*` counters); the end, the
//! server's peak RSS and the 10k → 100k growth of each figure (the ratio against the
//! 10k run of the same store in the same run). Run as a test (`cargo test
//! --all-targets`) it does a quick pass of 500 instances over 5 members on the embedded
//! store, so it cannot rot. `FLOTILLA_BENCH_SIZES=10000` and
//! `FLOTILLA_BENCH_MEMBERS=20` pick other sizes, `FLOTILLA_BENCH_STORES=etcd` one store.
//! `FLOTILLA_BENCH_LOG=info` sets the server's `RUST_LOG` and logs the agents (in this
//! process) at that level too. A phase that waits longer than
//! `FLOTILLA_BENCH_TIMEOUT` seconds (default 900) fails, first printing what each
//! member holds, what its agent sent and what the federation shows of it (and, on etcd,
//! the member's stored report).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::{Options, SimMember};
use flotilla_api::NodeGroup;
use flotilla_member::sim::SimConfig;
use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::{AddClusterRequest, ApplyRequest, ListRequest, WatchRequest};
use flotilla_store::testing::EtcdServer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use tokio::sync::watch;
use tonic::Request;
use tonic::transport::Channel;

const TOKEN: &str = "bench";
/// Seconds without a heartbeat before a member is Unknown (the full run; the quick
/// pass takes 2).
const TTL: u64 = 4;

fn ttl() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        TTL
    } else {
        2
    }
}

/// Seconds to wait after "all ready" before the idle window: past the server's 10 s
/// pacing of capacity writes (none in the quick pass).
fn settle() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        11
    } else {
        0
    }
}

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn sim(per_member: u32) -> SimConfig {
    let pods = (per_member / 10 + 50).to_string();
    let free = [("cpu", "256"), ("memory", "1Ti"), ("pods", pods.as_str())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    SimConfig {
        node_groups: vec![NodeGroup { count: 20, free }],
        start_delay: Duration::ZERO,
        ready_delay: Duration::ZERO,
        local_volumes: false,
        request_latency: Duration::ZERO,
    }
}

fn set(replicas: u32) -> String {
    format!(
        "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: fleet}}\n\
         spec:\n  replicas: {replicas}\n  template:\n    spec:\n      containers:\n      - name: redis\n\
         \x20       image: redis:7.2\n        resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}\n"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server process, killed (by its PID) when dropped.
struct Server {
    child: Child,
    grpc: String,
    http: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(store_args: &[String]) -> Server {
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("server")
            .args(["--listen", &format!("127.0.0.1:{grpc}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--admin-token", TOKEN])
            .args(["--cluster-ttl-seconds", &ttl().to_string()])
            .args(store_args)
            .env(
                "RUST_LOG",
                std::env::var("FLOTILLA_BENCH_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting flotilla server");
        Server {
            child,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http: format!("127.0.0.1:{http}"),
        }
    }

    fn proc(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    /// User + system CPU seconds so far.
    fn cpu(&self) -> f64 {
        let stat = self.proc("stat");
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Fields 14 and 15 of stat; `after` starts at field 3. Ticks of 1/100 s.
        (f[11] + f[12]) as f64 / 100.0
    }

    /// Peak resident set, MiB.
    fn peak_rss_mib(&self) -> f64 {
        self.proc("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// The server's `/metrics`.
    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(&self.http).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    }

    /// (writes, bytes) the server made to the store, from its metrics.
    async fn writes(&self) -> (u64, u64) {
        let body = self.metrics().await;
        let metric = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0)
        };
        (
            metric("flotilla_store_writes_total"),
            metric("flotilla_store_write_bytes_total"),
        )
    }
}

/// What one phase cost.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    seconds: f64,
    cpu: f64,
    writes: u64,
    bytes: u64,
}

struct Meter<'a> {
    server: &'a Server,
    at: Instant,
    cpu: f64,
    writes: (u64, u64),
}

impl<'a> Meter<'a> {
    async fn start(server: &'a Server) -> Meter<'a> {
        Meter {
            server,
            at: Instant::now(),
            cpu: server.cpu(),
            writes: server.writes().await,
        }
    }

    async fn stop(self) -> Cost {
        let (w, b) = self.server.writes().await;
        Cost {
            seconds: self.at.elapsed().as_secs_f64(),
            cpu: self.server.cpu() - self.cpu,
            writes: w - self.writes.0,
            bytes: b - self.writes.1,
        }
    }
}

fn show(c: &Cost) -> String {
    format!(
        "{:7.2} s wall, {:7.2} s server CPU, {:6} writes, {:9.1} KiB written",
        c.seconds,
        c.cpu,
        c.writes,
        c.bytes as f64 / 1024.0
    )
}

/// How long a phase may wait before the bench fails with a dump of who is behind.
fn phase_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("FLOTILLA_BENCH_TIMEOUT")
            .ok()
            .map_or(900, |t| t.parse().unwrap()),
    )
}

/// The set's status from the watch, until `done` holds for it; `Err` with the last
/// status seen when that takes longer than [`phase_timeout`].
async fn until(
    stream: &mut tonic::Streaming<flotilla_proto::v1::WatchEvent>,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Value> {
    let deadline = tokio::time::Instant::now() + phase_timeout();
    let mut last = Value::Null;
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(e) => e.expect("watch").expect("watch ended"),
            Err(_) => return Err(last),
        };
        let Some(object) = event.object else { continue };
        let v: Value = serde_json::from_str(&object.json).unwrap();
        if done(&v) {
            return Ok(v);
        }
        last = v;
    }
}

/// One member as the bench drives it: its simulated member and its agent's metrics.
struct Probe {
    name: String,
    member: std::sync::Arc<SimMember>,
    metrics: std::sync::Arc<flotilla_agent::SessionMetrics>,
}

/// Prints, for every member, what it holds and reports locally, what its agent queued
/// and sent, what the federation's status (`last`) says of it and (on etcd) what its
/// stored report says; then the server's report and reconcile counters.
async fn dump(phase: &str, last: &Value, probes: &[Probe], server: &Server, etcd: Option<&str>) {
    eprintln!(
        "=== {phase}: timed out after {:?}; who is behind ===",
        phase_timeout()
    );
    let status = &last["status"];
    eprintln!(
        "federation: readyReplicas {} replicas {} generation {} observed {}",
        status["readyReplicas"],
        status["replicas"],
        last["metadata"]["generation"],
        status["observedGeneration"]
    );
    if let Some(c) = status["conditions"].as_array() {
        for c in c {
            eprintln!(
                "  condition {} {} {}: {}",
                c["type"], c["status"], c["reason"], c["message"]
            );
        }
    }
    let store = match etcd {
        Some(e) => flotilla_store::EtcdStore::connect(&[e], Default::default())
            .await
            .ok(),
        None => None,
    };
    let mut behind = 0;
    for p in probes {
        let local = flotilla_agent::Member::statuses(&*p.member)
            .borrow()
            .get("default/fleet")
            .cloned();
        let fed = status["clusters"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["cluster"] == p.name.as_str())
                .map(|c| {
                    (
                        c["readyReplicas"].as_u64().unwrap_or(0),
                        c["ordinals"].as_array().map_or(0, Vec::len),
                    )
                })
        });
        let stored = match &store {
            Some(s) => {
                use flotilla_store::Store as _;
                match s
                    .get(&format!("/flotilla/reports/{}/default/fleet", p.name))
                    .await
                {
                    Ok(Some(kv)) => {
                        let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
                        format!(
                            "stored report: {} bytes, mod rev {}, ready {} replicas {} generation {}",
                            kv.value.len(),
                            kv.mod_revision,
                            v["readyReplicas"],
                            v["replicas"],
                            v["observedGeneration"]
                        )
                    }
                    Ok(None) => "no stored report".to_string(),
                    Err(e) => format!("reading the stored report: {e}"),
                }
            }
            None => String::new(),
        };
        let local_ready = local.as_ref().map(|s| s.ready_replicas);
        let is_behind = fed.map(|f| f.0) != local_ready.map(u64::from)
            || fed.is_some_and(|(r, n)| r != n as u64);
        if is_behind {
            behind += 1;
        }
        eprintln!(
            "{} {}: local ready {:?} replicas {:?} gen {:?} | federation (ready, ordinals) {:?} | agent sessions {} queued {} sent {} coalesced {} pending {} | {}",
            if is_behind { "BEHIND" } else { "ok    " },
            p.name,
            local_ready,
            local.as_ref().map(|s| s.replicas),
            local.as_ref().and_then(|s| s.observed_generation),
            fed,
            p.metrics.sessions.get(),
            p.metrics.reports_queued.get(),
            p.metrics.reports_sent.get(),
            p.metrics.reports_coalesced.get(),
            p.metrics.reports_pending.get(),
            stored,
        );
    }
    eprintln!("{behind} of {} members behind", probes.len());
    eprintln!("server metrics:");
    for line in server.metrics().await.lines() {
        if [
            "flotilla_reports",
            "flotilla_reconciles",
            "flotilla_agent",
            "flotilla_store",
            "flotilla_heartbeats",
            "flotilla_slice",
        ]
        .iter()
        .any(|m| line.starts_with(m))
        {
            eprintln!("  {line}");
        }
    }
}

fn ready(n: u32) -> impl Fn(&Value) -> bool {
    move |v| {
        let s = &v["status"];
        s["readyReplicas"].as_u64() == Some(u64::from(n))
            && s["observedGeneration"] == v["metadata"]["generation"]
            && s["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Available" && c["status"] == "True")
            })
    }
}

struct Run {
    apply: Cost,
    settling: Cost,
    idle: Cost,
    scale: Cost,
    unknown: Cost,
    rss: f64,
}

async fn run(store_args: &[String], etcd: Option<&str>, replicas: u32, members: usize) -> Run {
    let server = Server::start(store_args);
    let mut api = loop {
        if let Ok(c) = Channel::from_shared(server.grpc.clone())
            .unwrap()
            .connect()
            .await
        {
            break FederationClient::new(c).max_decoding_message_size(64 << 20);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let per_member = replicas.div_ceil(members as u32) * 2;
    let mut stops = Vec::new();
    let mut agents = Vec::new();
    let mut probes = Vec::new();
    for i in 0..members {
        let name = format!("m{i:03}");
        let token = loop {
            match api
                .add_cluster(authed(AddClusterRequest {
                    name: name.clone(),
                    labels: Default::default(),
                }))
                .await
            {
                Ok(r) => break r.into_inner().token,
                // The server is still starting (its controller not yet leading).
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let member = SimMember::new(&sim(per_member));
        let (stop_tx, mut stop) = watch::channel(false);
        stops.push(stop_tx);
        let options = Options::new(server.grpc.clone(), name.clone(), token);
        probes.push(Probe {
            name,
            member: member.clone(),
            metrics: options.metrics.clone(),
        });
        agents.push(tokio::spawn(async move {
            let _ = flotilla_agent::run(options, member, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        }));
    }
    loop {
        let list = api
            .list(authed(ListRequest {
                kind: "clusters".into(),
                namespace: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let n = list
            .items
            .iter()
            .filter(|o| o.json.contains("\"ready\":true"))
            .count();
        if n == members {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stream = api
        .watch(authed(WatchRequest {
            kind: "fis".into(),
            name: "fleet".into(),
            namespace: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();

    let m = Meter::start(&server).await;
    api.apply(authed(ApplyRequest {
        document: set(replicas),
        dry_run: false,
    }))
    .await
    .unwrap();
    if let Err(last) = until(&mut stream, ready(replicas)).await {
        dump("apply", &last, &probes, &server, etcd).await;
        panic!("apply: not all ready within {:?}", phase_timeout());
    }
    let apply = m.stop().await;

    // Converged: what idling costs (heartbeats go on). Members' free capacity still
    // moves as their last instances start, and the server stores a cluster's capacity
    // change at most every 10 s: the full run lets that settle first (`settle`), then
    // measures a set with nothing left to do.
    let m = Meter::start(&server).await;
    tokio::time::sleep(Duration::from_secs(settle())).await;
    let settling = m.stop().await;
    let m = Meter::start(&server).await;
    tokio::time::sleep(Duration::from_secs(ttl() + 1)).await;
    let idle = m.stop().await;

    let bigger = replicas + replicas / 100;
    let m = Meter::start(&server).await;
    api.apply(authed(ApplyRequest {
        document: set(bigger),
        dry_run: false,
    }))
    .await
    .unwrap();
    if let Err(last) = until(&mut stream, ready(bigger)).await {
        dump("scale +1%", &last, &probes, &server, etcd).await;
        panic!("scale +1%: not all ready within {:?}", phase_timeout());
    }
    let scale = m.stop().await;

    let m = Meter::start(&server).await;
    stops[0].send_replace(true);
    if let Err(last) = until(&mut stream, |v| {
        v["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == "Degraded" && c["message"].as_str().is_some_and(|m| m.contains("m000"))
            })
        })
    })
    .await
    {
        dump("one member Unknown", &last, &probes, &server, etcd).await;
        panic!("one member Unknown: not seen within {:?}", phase_timeout());
    }
    let unknown = m.stop().await;

    let rss = server.peak_rss_mib();
    for s in &stops {
        s.send_replace(true);
    }
    for a in agents {
        let _ = a.await;
    }
    drop(server);
    Run {
        apply,
        settling,
        idle,
        scale,
        unknown,
        rss,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<u32> = match std::env::var("FLOTILLA_BENCH_SIZES") {
        Ok(s) => s.split(',').map(|x| x.trim().parse().unwrap()).collect(),
        Err(_) if full => vec![10_000, 100_000],
        Err(_) => vec![500],
    };
    let members: usize = std::env::var("FLOTILLA_BENCH_MEMBERS")
        .ok()
        .map(|m| m.parse().unwrap())
        .unwrap_or(if full { 100 } else { 5 });
    if let Ok(filter) = std::env::var("FLOTILLA_BENCH_LOG") {
        // The agents run in this process: their logs, at the server's level.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stores: Vec<String> = match std::env::var("FLOTILLA_BENCH_STORES") {
            Ok(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
            Err(_) if full || std::env::var_os("FLOTILLA_BENCH_ETCD").is_some() => {
                vec!["embedded".into(), "etcd".into()]
            }
            Err(_) => vec!["embedded".into()],
        };
        for store in stores.iter().map(String::as_str) {
            let mut runs: Vec<(u32, Run)> = Vec::new();
            for &n in &sizes {
                let dir = tempfile::tempdir().unwrap();
                let etcd = if store == "etcd" {
                    Some(EtcdServer::start().await)
                } else {
                    None
                };
                let args = match &etcd {
                    Some(e) => vec!["--etcd-endpoints".to_string(), e.endpoint()],
                    None => vec![
                        "--data-dir".to_string(),
                        dir.path().display().to_string(),
                    ],
                };
                let endpoint = etcd.as_ref().map(EtcdServer::endpoint);
                let r = run(&args, endpoint.as_deref(), n, members).await;
                println!("{store} {n} instances over {members} members:");
                println!("  apply → all ready       {}", show(&r.apply));
                println!("  settling, {:2} s         {}", settle(), show(&r.settling));
                println!("  converged, {:2} s idle    {}", ttl() + 1, show(&r.idle));
                println!("  scale +1%               {}", show(&r.scale));
                println!("  one member Unknown      {}", show(&r.unknown));
                println!("  server peak RSS         {:.1} MiB", r.rss);
                runs.push((n, r));
                drop(etcd);
            }
            if let [(a, first), .., (b, last)] = runs.as_slice() {
                let g = |x: f64, y: f64| if x > 0.0 { y / x } else { f64::NAN };
                println!(
                    "{store} growth {a} → {b} ({:.0}× the instances): apply CPU {:.1}×, apply wall {:.1}×, \
                     bytes written {:.1}×, scale +1% CPU {:.1}×, Unknown CPU {:.1}×, peak RSS {:.1}×",
                    f64::from(*b) / f64::from(*a),
                    g(first.apply.cpu, last.apply.cpu),
                    g(first.apply.seconds, last.apply.seconds),
                    g(first.apply.bytes as f64, last.apply.bytes as f64),
                    g(first.scale.cpu, last.scale.cpu),
                    g(first.unknown.cpu, last.unknown.cpu),
                    g(first.rss, last.rss),
                );
            }
        }
    });
}
