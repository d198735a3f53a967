//! Write throughput of the two backends, with raw etcd-client puts as the baseline, all
//! in the same run against the same etcd process, so the numbers compare as ratios.
//!
//! - `embedded`: [`EmbeddedStore::put`] (a redb write transaction with fsync).
//! - `etcd_store`: [`EtcdStore::put`] (what the store adds over etcd: conversion,
//!   boxing, error mapping).
//! - `etcd_client_raw`: `etcd_client::KvClient::put`, nothing of ours in between.
//!
//! Each is measured sequential (one writer, each put awaited) and with 8 concurrent
//! writers. Counts are small so the whole bench takes well under a minute.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flotilla_store::testing::EtcdServer;
use flotilla_store::{Condition, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Store};
use tokio::runtime::Runtime;

/// Puts per measured iteration.
const PUTS: u64 = 64;
/// Concurrent writers in the concurrent case.
const WRITERS: u64 = 8;

/// A ~1 KiB value, about the size of a small stored object.
fn value() -> Bytes {
    Bytes::from(vec![b'x'; 1024])
}

/// One way of writing a key.
#[derive(Clone)]
enum Writer {
    Store(Arc<dyn Store>),
    Raw(Box<etcd_client::KvClient>),
}

impl Writer {
    async fn put(&self, key: String, value: Bytes) {
        match self {
            Writer::Store(store) => {
                store
                    .put(&key, value, Condition::Any, None)
                    .await
                    .expect("put");
            }
            Writer::Raw(client) => {
                let mut kv = (**client).clone();
                kv.put(key, value.to_vec(), None).await.expect("raw put");
            }
        }
    }
}

/// `PUTS` puts, by `writers` tasks.
async fn burst(writer: &Writer, writers: u64, round: u64) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 0..PUTS / writers {
                    writer
                        .put(format!("bench/{w}/{}", round * PUTS + i), value())
                        .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
}

fn writes(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let etcd = runtime.block_on(EtcdServer::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let writers = runtime.block_on(async {
        let embedded =
            EmbeddedStore::open(dir.path().join("store.redb"), EmbeddedOptions::default())
                .await
                .expect("open embedded store");
        let etcd_store = EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
            .await
            .expect("connect etcd store");
        let raw = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .expect("connect etcd");
        [
            ("embedded", Writer::Store(Arc::new(embedded))),
            ("etcd_store", Writer::Store(Arc::new(etcd_store))),
            ("etcd_client_raw", Writer::Raw(Box::new(raw.kv_client()))),
        ]
    });

    for (case, concurrency) in [("sequential", 1), ("concurrent_8", WRITERS)] {
        let mut group = c.benchmark_group(format!("write_{case}"));
        group
            .throughput(Throughput::Elements(PUTS))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for (name, writer) in &writers {
            let mut round = 0;
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    round += 1;
                    runtime.block_on(burst(writer, concurrency, round));
                });
            });
        }
        group.finish();
    }
    drop(writers);
    drop(etcd);
}

criterion_group!(benches, writes);
criterion_main!(benches);
