//! What the conformance suite needs from a backend, behind one [`Harness`]: a store,
//! a way to make lease time pass, and a crash followed by a restart.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_store::testing::EtcdServer;
use flotilla_store::{
    EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Event, ManualClock, Store, WatchStream,
};
use futures::StreamExt;
use tempfile::TempDir;

/// Lists are read in pages this small against etcd, so that every test that lists more
/// than a handful of keys also checks paging.
pub const ETCD_PAGE_SIZE: i64 = 7;

/// How long a test waits for an event that must come before calling it lost. Not a
/// timing assertion: it only turns a hang into a failure with a message.
const EVENT_GUARD: Duration = Duration::from_secs(30);

/// A store under test, and its backend's controls.
#[derive(Debug)]
pub struct Harness {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Embedded {
        dir: TempDir,
        path: PathBuf,
        clock: ManualClock,
        store: Arc<EmbeddedStore>,
        crashes: u32,
    },
    Etcd {
        server: EtcdServer,
        store: Arc<EtcdStore>,
    },
}

impl Harness {
    /// An embedded store in a fresh file, on a manual clock with no background reaper:
    /// lease time passes only through [`Harness::advance`].
    pub async fn embedded() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store.redb");
        let clock = ManualClock::at(1_700_000_000_000);
        let store = Arc::new(open_embedded(&path, &clock).await);
        Harness {
            backend: Backend::Embedded {
                dir,
                path,
                clock,
                store,
                crashes: 0,
            },
        }
    }

    /// A fresh etcd process and a store connected to it.
    pub async fn etcd() -> Harness {
        let server = EtcdServer::start().await;
        let store = Arc::new(connect_etcd(&server).await);
        Harness {
            backend: Backend::Etcd { server, store },
        }
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Embedded { store, .. } => store.clone(),
            Backend::Etcd { store, .. } => store.clone(),
        }
    }

    /// A lease TTL to ask for: long on the manual clock, as short as etcd's real lease
    /// clock allows with a margin for renewals to arrive in time.
    pub fn lease_ttl(&self) -> Duration {
        match &self.backend {
            Backend::Embedded { .. } => Duration::from_secs(10),
            Backend::Etcd { .. } => Duration::from_secs(2),
        }
    }

    /// Lets `by` pass on the lease clock. Embedded: moves the manual clock and sweeps
    /// expired leases. etcd: sleeps (its lease clock is real time).
    pub async fn advance(&self, by: Duration) {
        match &self.backend {
            Backend::Embedded { clock, store, .. } => {
                clock.advance(by);
                store.expire_leases().await.expect("expire leases");
            }
            Backend::Etcd { .. } => tokio::time::sleep(by).await,
        }
    }

    /// Crashes the backend with everything acknowledged so far, and starts it again on
    /// the same data. Embedded: copies the file while the store has it open (what a
    /// `kill -9` leaves on disk) and opens the copy in a fresh store. etcd: `kill -9`,
    /// then a restart on the same data directory. Stores handed out before are stale
    /// afterwards: take [`Harness::store`] again.
    pub async fn crash_and_restart(&mut self) {
        match &mut self.backend {
            Backend::Embedded {
                dir,
                path,
                clock,
                store,
                crashes,
            } => {
                *crashes += 1;
                let copy = dir.path().join(format!("after-crash-{crashes}.redb"));
                std::fs::copy(&path, &copy).expect("copy the open store file");
                *store = Arc::new(open_embedded(&copy, clock).await);
                *path = copy;
            }
            Backend::Etcd { server, store } => {
                server.restart().await;
                *store = Arc::new(connect_etcd(server).await);
            }
        }
    }
}

async fn open_embedded(path: &std::path::Path, clock: &ManualClock) -> EmbeddedStore {
    let options = EmbeddedOptions {
        clock: Arc::new(clock.clone()),
        lease_check_interval: None,
        ..EmbeddedOptions::default()
    };
    EmbeddedStore::open(path, options)
        .await
        .expect("open the embedded store")
}

async fn connect_etcd(server: &EtcdServer) -> EtcdStore {
    let options = EtcdOptions {
        page_size: ETCD_PAGE_SIZE,
        ..EtcdOptions::default()
    };
    EtcdStore::connect(&[server.endpoint()], options)
        .await
        .expect("connect to etcd")
}

/// Bytes of a string, for values.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The next event, failing the test if the stream errors, ends, or stays silent.
pub async fn next_event(stream: &mut WatchStream) -> Event {
    match tokio::time::timeout(EVENT_GUARD, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("the watch failed: {error:?}"),
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("no event within {EVENT_GUARD:?}: an event was lost"),
    }
}

/// The next `n` events.
pub async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(next_event(stream).await);
    }
    events
}
