//! The P10K case: one InstanceSet of 10,000 instances.
//!
//! - `prepare` alone (the pure planner) for a fresh set, a converged set and a set in
//!   the middle of a rollout;
//! - full convergence of 10,000 instances on the simulated member (probe, reconcile,
//!   advance, until every instance is ready), reporting the writes issued;
//! - and the writes a converged set costs per pass (must be 0: asserted).
//!
//! Baseline in the same run: cloning the observed state of 10,000 instances, the least
//! any pass must touch.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_api::{InstanceSet, NodeGroup, Valid, validate};
use flotilla_instanceset::{Instance, Observed, Phase, ProbeResult, Revision, prepare};
use flotilla_member::Controller;
use flotilla_member::sim::{Sim, SimConfig};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const N: u32 = 10_000;

fn set(image: &str) -> Valid<InstanceSet> {
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata: {{name: big}}
spec:
  ordinals: {{ranges: [{{start: 0, end: {}}}]}}
  template: {{spec: {{containers: [{{name: redis, image: '{image}', resources: {{requests: {{cpu: 100m, memory: 256Mi}}}}}}]}}}}
  roles:
  - {{name: primary, updatePriority: 2, exclusive: true}}
  - {{name: secondary, updatePriority: 1}}
  updateStrategy: {{maxUnavailable: '10%', memberUpdateStrategy: BestEffortParallel}}
",
        N - 1
    );
    let AnyObject::InstanceSet(s) = decode_all(&text).unwrap().remove(0).object else {
        unreachable!()
    };
    validate::instance_set(*s).unwrap()
}

fn converged(r: &Revision) -> Observed {
    let instances = (0..N)
        .map(|o| {
            let role = if o == 0 { "primary" } else { "secondary" };
            Instance {
                ordinal: o,
                revision: r.revision.clone(),
                shape: r.shape.clone(),
                phase: Phase::Running,
                ready: true,
                deleting: false,
                node: Some(format!("node-{}", o % 500)),
                node_lost: false,
                role: Some(role.into()),
                role_version: 1,
                probe: Some(ProbeResult {
                    role: Some(role.into()),
                    version: 1,
                }),
                endpoint: None,
            }
        })
        .collect();
    Observed {
        instances,
        volumes: Vec::new(),
        last_switchover: None,
    }
}

fn sim() -> Arc<Sim> {
    let free = [("cpu", "32"), ("memory", "128Gi"), ("pods", "110")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    Arc::new(Sim::new(&SimConfig {
        node_groups: vec![NodeGroup { count: 500, free }],
        start_delay: Duration::from_secs(1),
        ready_delay: Duration::from_secs(1),
        local_volumes: false,
        request_latency: Duration::ZERO,
    }))
}

fn bench(c: &mut Criterion) {
    let v1 = set("redis:7.2");
    let v2 = set("redis:7.4");
    let r1 = Revision::of(&v1.spec);
    let steady = converged(&r1);
    let mut mid = steady.clone();
    for i in mid.instances.iter_mut().skip(N as usize / 2) {
        i.revision = Revision::of(&v2.spec).revision;
    }
    assert!(prepare(&v1, &steady).actions.is_empty());

    let mut g = c.benchmark_group("p10k");
    g.sample_size(20);
    g.bench_function("prepare fresh", |b| {
        b.iter(|| prepare(black_box(&v1), black_box(&Observed::default())))
    });
    g.bench_function("prepare converged", |b| {
        b.iter(|| prepare(black_box(&v1), black_box(&steady)))
    });
    g.bench_function("prepare mid-rollout", |b| {
        b.iter(|| prepare(black_box(&v2), black_box(&mid)))
    });
    g.bench_function("baseline: clone observed", |b| {
        b.iter(|| black_box(&steady).clone())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    g.sample_size(10);
    g.bench_function("converge 10000 on the simulated member", |b| {
        b.iter(|| {
            rt.block_on(async {
                let c = Controller::new(sim());
                for _ in 0..20 {
                    c.probe_roles(&v1).await.unwrap();
                    if c.reconcile(&v1).await.unwrap().converged {
                        break;
                    }
                    c.backend().advance(Duration::from_secs(1));
                }
                let writes = c.backend().writes();
                c.probe_roles(&v1).await.unwrap();
                let pass = c.reconcile(&v1).await.unwrap();
                assert!(pass.converged);
                assert_eq!(pass.writes, 0, "a converged set must cost no writes");
                writes
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
