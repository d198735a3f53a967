//! The scheduler at fleet scale: 10,000 replicas over 100 clusters of 50 node groups
//! each, dynamic weights; a fresh plan, and a re-plan after scaling to 10,500.
//!
//! Two shapes: `karmada` is exactly the input the issue compared with Karmada's
//! division (dynamic weights by available capacity, nothing else), `policy` adds a 5%
//! share cap and a spread over three regions. A fresh plan is measured on an inventory
//! that has planned nothing yet (no template's room estimated); a re-plan on the
//! inventory that made the previous plan, as the controller's reconcile does.
//!
//! Baselines measured in the same run, to quote ratios rather than absolute times on a
//! noisy machine: sorting 10,500 ordinals, and serializing the finished plan to JSON.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_api::{Cluster, FederatedInstanceSet, Valid, validate};
use flotilla_scheduler::Inventory;

fn set(replicas: u32, policy: bool) -> Valid<FederatedInstanceSet> {
    let extra = if policy {
        "    maxSharePerCluster: 5\n    spread: [{byLabel: region, minGroups: 3}]\n"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1
kind: FederatedInstanceSet
metadata: {{name: redis-big}}
spec:
  replicas: {replicas}
  template:
    spec:
      containers:
      - name: redis
        image: redis:7.2
        resources: {{requests: {{cpu: '1', memory: 4Gi, flotilla.io/network-mbps: '200'}}}}
  placement:
    weights: {{dynamic: AvailableCapacity}}
{extra}"
    );
    let AnyObject::FederatedInstanceSet(s) = decode_all(&text).unwrap().remove(0).object else {
        unreachable!()
    };
    validate::federated_instance_set(*s).unwrap()
}

/// 100 clusters in 5 regions, each with 50 node groups of varied sizes.
fn clusters() -> Vec<Valid<Cluster>> {
    let mut docs = Vec::new();
    for c in 0..100u32 {
        let mut groups = String::new();
        for g in 0..50u32 {
            let cpu = 2 + (c * 7 + g * 3) % 30;
            let mem = 8 + (c * 5 + g * 11) % 120;
            groups.push_str(&format!(
                "    - {{count: {}, free: {{cpu: '{cpu}', memory: {mem}Gi, pods: 110, flotilla.io/network-mbps: '10000'}}}}\n",
                1 + (c + g) % 4
            ));
        }
        docs.push(format!(
            "apiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {{name: member-{c:03}, labels: {{region: r{}}}}}\nstatus:\n  ready: true\n  capacity:\n    nodeGroups:\n{groups}",
            c % 5
        ));
    }
    let list = decode_all(&docs.join("---\n"))
        .unwrap()
        .into_iter()
        .map(|d| match d.object {
            AnyObject::Cluster(c) => *c,
            _ => unreachable!(),
        })
        .collect();
    validate::clusters(list).unwrap()
}

fn bench(c: &mut Criterion) {
    let clusters = clusters();
    let mut g = c.benchmark_group("scheduler");
    for (shape, policy) in [("karmada", false), ("policy", true)] {
        let base = set(10_000, policy);
        let grown = set(10_500, policy);
        let inventory = Inventory::new(&clusters);
        let fresh = inventory.plan(&base, None).unwrap();
        assert_eq!(fresh.unschedulable, 0, "{:?}", fresh.messages);
        let scaled = inventory.plan(&grown, Some(&fresh)).unwrap();
        assert_eq!(scaled.unschedulable, 0, "{:?}", scaled.messages);

        g.bench_function(format!("{shape}: fresh plan 10000 x 100 clusters"), |b| {
            b.iter_batched(
                || Inventory::new(&clusters),
                |inventory| inventory.plan(black_box(&base), None).unwrap(),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("{shape}: re-plan after scale to 10500"), |b| {
            b.iter(|| {
                black_box(&inventory)
                    .plan(black_box(&grown), Some(black_box(&fresh)))
                    .unwrap()
            })
        });
        g.bench_function(format!("{shape}: re-plan unchanged 10000"), |b| {
            b.iter(|| {
                black_box(&inventory)
                    .plan(black_box(&base), Some(black_box(&fresh)))
                    .unwrap()
            })
        });
    }
    g.bench_function("digest 100 clusters (Inventory::new)", |b| {
        b.iter(|| Inventory::new(black_box(&clusters)))
    });
    g.bench_function("inventory from a CapacityCache, capacity unchanged", |b| {
        let mut cache = flotilla_scheduler::CapacityCache::new();
        let _ = cache.inventory(&clusters);
        b.iter(|| {
            let inventory = cache.inventory(black_box(&clusters));
            black_box(&inventory);
        })
    });
    g.bench_function("baseline: sort 10500 ordinals", |b| {
        let shuffled: Vec<u32> = (0..10_500u32)
            .map(|i| i.wrapping_mul(2_654_435_761) % 10_500)
            .collect();
        b.iter(|| {
            let mut v = black_box(&shuffled).clone();
            v.sort_unstable();
            v
        })
    });
    let fresh = Inventory::new(&clusters)
        .plan(&set(10_000, true), None)
        .unwrap();
    g.bench_function("baseline: plan to JSON", |b| {
        b.iter(|| serde_json::to_vec(black_box(&fresh)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
