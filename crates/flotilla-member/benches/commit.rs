//! The member controller's commit phase, sequential against concurrent
//! (`cargo xtask bench member`).
//!
//! One InstanceSet of N instances (100, 1,000 and 10,000) on the simulated member,
//! where every request (observe, apply, status write) waits a fixed 5 ms in real time,
//! as on a loaded API server. The pods start and become ready at once (zero start and
//! ready delays), so the wall time is the requests'. Three phases, driven by passes
//! (pass, advance the sim, until converged):
//!
//! - **create**: N instances with one volume claim template each: N create-volume and
//!   N create requests;
//! - **roll**: a new image (same shape: update in place), `maxUnavailable: 25%`, so
//!   four batches of N/4 UpdateInPlace; no roles, so no switchover;
//! - **delete**: the ordinals shrink to none (`ordinals: {}`, which validation allows)
//!   with `persistentVolumeClaimRetentionPolicy.whenScaled: Delete`: N deletes, then N
//!   volume deletions.
//!
//! No roles, so no probes (the agent probes only sets with roles): a pass is one
//! observation, the plan's writes and at most one status write.
//!
//! Each commit mode runs the three phases in order on its own fresh simulated member
//! and fresh controller (so the rate limit's bucket carries from phase to phase, as in
//! a running agent):
//!
//! - `sequential`: [`CommitOptions::SEQUENTIAL`], one write at a time, the commit as it
//!   was before it was concurrent: **the baseline** of the speed-up column;
//! - `concurrent`: [`CommitOptions::default`], 16 in flight, 200 writes a second after
//!   a burst of 400: past the burst the rate limit, not the latency, sets the pace;
//! - `concurrent, no rate limit`: 16 in flight, no QPS limit: the latency bound alone.
//!
//! For each (N, phase, mode): the wall time, the requests the sim served, the most in
//! flight at once (counted per phase: the sim's own count is since it was made), the
//! passes, and the speed-up against the sequential run of the same N and phase in the
//! same run. Not criterion: one sequential 10,000 run takes minutes, so each case runs
//! once; progress goes to stderr.
//!
//! Sizes: `FLOTILLA_BENCH_SIZES=100,1000` or as arguments
//! (`cargo xtask bench member -- 100 1000`). Run as a test (`cargo test`, without
//! `--bench`) it does one small size only, so it cannot rot. Only correctness is
//! asserted (every phase converges with every instance on the right image, or all gone;
//! the write bound holds), never timing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_api::{CapacityModel, InstanceSet, InstanceSetStatus, NodeGroup, Valid, validate};
use flotilla_instanceset::{Action, Observed, Phase, Revision};
use flotilla_member::latency::{RequestLatency, Requests};
use flotilla_member::sim::{Sim, SimConfig};
use flotilla_member::{Applied, Backend, CommitOptions, Controller};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Every request's latency.
const LATENCY: Duration = Duration::from_millis(5);
/// The rollout's batch.
const MAX_UNAVAILABLE: &str = "25%";
/// The sizes when none are given.
const SIZES: [u32; 3] = [100, 1_000, 10_000];
/// The size when run as a test.
const TEST_SIZES: [u32; 1] = [20];
/// Passes a phase may take before it counts as not converging.
const MAX_PASSES: u32 = 50;

/// The commit modes, the baseline first.
fn modes() -> [(&'static str, CommitOptions); 3] {
    [
        ("sequential", CommitOptions::SEQUENTIAL),
        ("concurrent", CommitOptions::default()),
        (
            "concurrent, no rate limit",
            CommitOptions {
                qps: 0.0,
                ..CommitOptions::default()
            },
        ),
    ]
}

const PHASES: [&str; 3] = ["create", "roll", "delete"];

/// The set: `ordinals` (`{ranges: [...]}` or `{}`), `image`.
fn set(ordinals: &str, image: &str) -> Valid<InstanceSet> {
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata: {{name: bench}}
spec:
  ordinals: {ordinals}
  template: {{spec: {{containers: [{{name: redis, image: '{image}', resources: {{requests: {{cpu: 100m, memory: 256Mi}}}}}}]}}}}
  volumeClaimTemplates: [{{metadata: {{name: data}}}}]
  updateStrategy: {{maxUnavailable: '{MAX_UNAVAILABLE}', memberUpdateStrategy: Parallel}}
  persistentVolumeClaimRetentionPolicy: {{whenScaled: Delete}}
"
    );
    let AnyObject::InstanceSet(s) = decode_all(&text).unwrap().remove(0).object else {
        unreachable!()
    };
    validate::instance_set(*s).unwrap_or_else(|e| panic!("{e}"))
}

fn sim(n: u32) -> Arc<Sim> {
    let free = [("cpu", "32"), ("memory", "128Gi"), ("pods", "110")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    Arc::new(Sim::new(&SimConfig {
        // Room for every instance, 100 a node.
        node_groups: vec![NodeGroup {
            count: n.div_ceil(100).max(1),
            free,
        }],
        start_delay: Duration::ZERO,
        ready_delay: Duration::ZERO,
        local_volumes: false,
        request_latency: LATENCY,
    }))
}

/// The sim, with the requests in flight counted per phase: `sim.requests()` counts
/// since the sim was made, so its peak would carry from one phase to the next. Adds no
/// latency of its own.
#[derive(Debug)]
struct Metered {
    sim: Arc<Sim>,
    meter: Mutex<Arc<RequestLatency>>,
}

impl Metered {
    /// Starts counting afresh; returns what the sim served so far.
    fn restart(&self) -> Requests {
        *self.meter.lock().unwrap() = Arc::new(RequestLatency::new(Duration::ZERO));
        self.sim.requests()
    }

    fn meter(&self) -> Arc<RequestLatency> {
        Arc::clone(&self.meter.lock().unwrap())
    }
}

impl Backend for Metered {
    async fn observe(&self, set: &InstanceSet) -> flotilla_member::Result<Observed> {
        self.meter().around(self.sim.observe(set)).await
    }

    async fn apply(&self, set: &InstanceSet, action: &Action) -> flotilla_member::Result<Applied> {
        self.meter().around(self.sim.apply(set, action)).await
    }

    async fn write_status(
        &self,
        set: &InstanceSet,
        status: &InstanceSetStatus,
    ) -> flotilla_member::Result<Applied> {
        self.meter()
            .around(self.sim.write_status(set, status))
            .await
    }

    async fn probe_role(
        &self,
        set: &InstanceSet,
        ordinal: u32,
    ) -> flotilla_member::Result<Option<String>> {
        self.meter().around(self.sim.probe_role(set, ordinal)).await
    }

    async fn capacity(&self) -> flotilla_member::Result<CapacityModel> {
        self.sim.capacity().await
    }
}

/// One (N, mode, phase).
#[derive(Clone, Copy, Debug)]
struct Measured {
    wall: Duration,
    requests: u64,
    peak: usize,
    passes: u32,
}

/// Passes (and advances) until `set` converges; checks every action with `allowed`.
async fn converge(
    c: &Controller<Metered>,
    set: &Valid<InstanceSet>,
    label: &str,
    allowed: impl Fn(&Action) -> bool,
) -> (Measured, u64) {
    let before = c.backend().restart();
    let meter = c.backend().meter();
    let start = Instant::now();
    let driving = async {
        let (mut passes, mut actions) = (0, 0);
        loop {
            passes += 1;
            assert!(
                passes <= MAX_PASSES,
                "{label}: not converged in {MAX_PASSES} passes"
            );
            let pass = c
                .pass(set, false)
                .await
                .unwrap_or_else(|e| panic!("{label}: pass {passes} failed: {e}"));
            if let Some(bad) = pass.actions.iter().find(|a| !allowed(a)) {
                panic!("{label}: unexpected action {bad}");
            }
            actions += pass.actions.len() as u64;
            if pass.converged {
                return (passes, actions);
            }
            c.backend().sim.advance(Duration::from_secs(1));
        }
    };
    // Progress every ten seconds, for the long runs.
    tokio::pin!(driving);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(10),
        Duration::from_secs(10),
    );
    let (passes, actions) = loop {
        tokio::select! {
            done = &mut driving => break done,
            _ = tick.tick() => eprintln!(
                "    {label}: {:.0} s, {} requests",
                start.elapsed().as_secs_f64(),
                meter.requests().total
            ),
        }
    };
    let wall = start.elapsed();
    let seen = meter.requests();
    let served = c.backend().sim.requests().total - before.total;
    assert_eq!(seen.total, served, "{label}: every request went to the sim");
    let bound = c.commit_options().max_concurrent;
    assert!(
        seen.peak_in_flight <= bound,
        "{label}: {} requests in flight, above the bound of {bound}",
        seen.peak_in_flight
    );
    let measured = Measured {
        wall,
        requests: served,
        peak: seen.peak_in_flight,
        passes,
    };
    (measured, actions)
}

/// The three phases for `n` instances in one mode, on a fresh sim and controller.
async fn run(n: u32, mode: &str, options: CommitOptions) -> [Measured; 3] {
    let all = format!("{{ranges: [{{start: 0, end: {}}}]}}", n - 1);
    let v1 = set(&all, "redis:7.2");
    let v2 = set(&all, "redis:7.4");
    let none = set("{}", "redis:7.4");
    let (r1, r2) = (Revision::of(&v1.spec), Revision::of(&v2.spec));
    assert_eq!(r1.shape, r2.shape, "an image change is in place");
    assert_ne!(r1.revision, r2.revision);

    let sim = sim(n);
    let c = Controller::with_commit(
        Arc::new(Metered {
            sim: Arc::clone(&sim),
            meter: Mutex::new(Arc::new(RequestLatency::default())),
        }),
        options,
    );
    let label = |phase: &str| format!("N={n} {mode} {phase}");
    let report = |phase: &str, m: &Measured| {
        eprintln!(
            "  {:<40} {:>9.3} s  {:>6} requests  {:>2} in flight  {} passes",
            label(phase),
            m.wall.as_secs_f64(),
            m.requests,
            m.peak,
            m.passes
        );
    };
    let sent = AtomicU64::new(c.commit_stats().sent);
    let check_sent = |phase: &str, m: &Measured| {
        // Every request but the observations is a write through the commit phase.
        let now = c.commit_stats().sent;
        let before = sent.swap(now, Ordering::Relaxed);
        assert_eq!(
            now - before,
            m.requests - u64::from(m.passes),
            "{}: writes sent",
            label(phase)
        );
    };

    // Create: a volume and an instance each.
    let (create, actions) = converge(&c, &v1, &label("create"), |a| {
        matches!(a, Action::CreateVolume { .. } | Action::Create { .. })
    })
    .await;
    assert_eq!(actions, 2 * u64::from(n), "{}", label("create"));
    let o = sim.observe(&v1).await.unwrap();
    assert_eq!(o.instances.len(), n as usize, "{}", label("create"));
    assert_eq!(o.volumes.len(), n as usize, "{}", label("create"));
    assert!(
        o.instances.iter().zip(0..).all(|(i, o)| i.ordinal == o
            && i.ready
            && i.phase == Phase::Running
            && i.revision == r1.revision),
        "{}: every instance ready on the first image",
        label("create")
    );
    report("create", &create);
    check_sent("create", &create);

    // Roll: the new image, in place, a quarter at a time.
    let (roll, actions) = converge(&c, &v2, &label("roll"), |a| {
        matches!(a, Action::UpdateInPlace { .. })
    })
    .await;
    assert_eq!(actions, u64::from(n), "{}: one update each", label("roll"));
    let o = sim.observe(&v2).await.unwrap();
    assert_eq!(o.instances.len(), n as usize, "{}", label("roll"));
    assert_eq!(o.volumes.len(), n as usize, "{}", label("roll"));
    assert!(
        o.instances
            .iter()
            .all(|i| i.ready && i.phase == Phase::Running && i.revision == r2.revision),
        "{}: every instance ready on the new image",
        label("roll")
    );
    report("roll", &roll);
    check_sent("roll", &roll);

    // Delete: the ordinals shrink to none; the volumes go too.
    let (delete, actions) = converge(&c, &none, &label("delete"), |a| {
        matches!(a, Action::Delete { .. } | Action::DeleteVolume { .. })
    })
    .await;
    assert_eq!(actions, 2 * u64::from(n), "{}", label("delete"));
    let o = sim.observe(&none).await.unwrap();
    assert!(
        o.instances.is_empty() && o.volumes.is_empty(),
        "{}: all gone, volumes too: {} instances, {} volumes left",
        label("delete"),
        o.instances.len(),
        o.volumes.len()
    );
    report("delete", &delete);
    check_sent("delete", &delete);

    [create, roll, delete]
}

/// The sizes from the arguments, else `FLOTILLA_BENCH_SIZES`, else the default; `None`
/// when a name filter (as `cargo bench FILTER` passes) leaves this benchmark out.
fn sizes() -> Option<Vec<u32>> {
    let parse = |s: &str| -> Option<Vec<u32>> {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('_', "").parse().ok().filter(|&n| n > 0))
            .collect()
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mut from_args = Vec::new();
    let mut filters = Vec::new();
    for a in args.iter().filter(|a| !a.starts_with('-')) {
        match parse(a) {
            Some(n) => from_args.extend(n),
            None => filters.push(a.as_str()),
        }
    }
    if !filters.is_empty() && !filters.iter().any(|f| "member commit".contains(f)) {
        return None;
    }
    if !from_args.is_empty() {
        return Some(from_args);
    }
    if let Ok(env) = std::env::var("FLOTILLA_BENCH_SIZES") {
        return Some(parse(&env).unwrap_or_else(|| {
            panic!("FLOTILLA_BENCH_SIZES: expected sizes like 100,1000, not {env:?}")
        }));
    }
    Some(if benching {
        SIZES.to_vec()
    } else {
        TEST_SIZES.to_vec()
    })
}

fn main() {
    let Some(sizes) = sizes() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    println!(
        "commit phase on the simulated member, {} ms a request, no probes (no roles)",
        LATENCY.as_millis()
    );
    println!(
        "  create: N instances, one volume claim each; roll: new image in place, \
         maxUnavailable {MAX_UNAVAILABLE} (Parallel); delete: ordinals to none, whenScaled: Delete"
    );
    for (mode, o) in modes() {
        let qps = if o.qps == 0.0 {
            "no rate limit".to_string()
        } else {
            format!("{} qps after a burst of {}", o.qps, o.burst)
        };
        let baseline = if o == CommitOptions::SEQUENTIAL {
            " (the baseline)"
        } else {
            ""
        };
        println!("  {mode}: {} in flight, {qps}{baseline}", o.max_concurrent);
    }
    println!("  speed-up: the sequential wall time over this one (same N, phase and run)");
    println!();
    println!(
        "{:>6}  {:<6}  {:<26} {:>10} {:>9} {:>5} {:>6} {:>9}",
        "N", "phase", "mode", "wall", "requests", "peak", "passes", "speed-up"
    );
    for &n in &sizes {
        eprintln!("N={n}:");
        let runs: Vec<[Measured; 3]> = modes()
            .iter()
            .map(|&(mode, options)| rt.block_on(run(n, mode, options)))
            .collect();
        for (p, phase) in PHASES.iter().enumerate() {
            let baseline = runs[0][p].wall.as_secs_f64();
            for ((mode, _), r) in modes().iter().zip(&runs) {
                let m = &r[p];
                println!(
                    "{:>6}  {:<6}  {:<26} {:>8.3} s {:>9} {:>5} {:>6} {:>8.1}x",
                    n,
                    phase,
                    mode,
                    m.wall.as_secs_f64(),
                    m.requests,
                    m.peak,
                    m.passes,
                    baseline / m.wall.as_secs_f64()
                );
            }
        }
    }
}
