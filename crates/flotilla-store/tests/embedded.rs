//! What only the embedded store has: its file, its bounded history, its lease clock and
//! reaper. The shared contract is in `conformance.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use flotilla_store::{Condition, EmbeddedOptions, EmbeddedStore, Error, Event, ManualClock, Store};
use futures::StreamExt;
use support::{b, next_event, next_events};

fn options(clock: &ManualClock) -> EmbeddedOptions {
    EmbeddedOptions {
        clock: Arc::new(clock.clone()),
        lease_check_interval: None,
        ..EmbeddedOptions::default()
    }
}

#[tokio::test]
async fn a_reopened_file_has_everything_and_revisions_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let clock = ManualClock::at(0);
    let store = EmbeddedStore::open(&path, options(&clock)).await.unwrap();
    let first = store.create("k/a", b("1")).await.unwrap();
    let updated = store.update("k/a", b("2"), first).await.unwrap();
    let other = store.create("k/b", b("3")).await.unwrap();
    drop(store);

    // A fresh instance on the same file.
    let store = EmbeddedStore::open(&path, options(&clock)).await.unwrap();
    let listing = store.list("k/").await.unwrap();
    assert_eq!(listing.revision, other);
    let found: Vec<_> = listing
        .items
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone(), kv.mod_revision))
        .collect();
    assert_eq!(found, [("k/a", b("2"), updated), ("k/b", b("3"), other)]);
    assert_eq!(store.create("k/c", b("4")).await.unwrap(), other + 1);
    let mut watch = store.watch("k/", first).await.unwrap();
    let revisions: Vec<_> = next_events(&mut watch, 4)
        .await
        .iter()
        .map(Event::revision)
        .collect();
    assert_eq!(revisions, [first, updated, other, other + 1]);
}

#[tokio::test]
async fn history_is_bounded_by_the_option_and_the_bound_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let clock = ManualClock::at(0);
    let bounded = || EmbeddedOptions {
        history: 5,
        ..options(&clock)
    };
    let store = EmbeddedStore::open(&path, bounded()).await.unwrap();
    let mut last = 0;
    for i in 0..10 {
        last = store.create(&format!("h/{i}"), b("v")).await.unwrap();
    }
    let oldest = last - 4;
    let err = store
        .watch("h/", oldest - 1)
        .await
        .err()
        .expect("compacted");
    assert!(
        matches!(err, Error::Compacted { requested } if requested == oldest - 1),
        "{err:?}"
    );
    let mut watch = store.watch("h/", oldest).await.unwrap();
    let revisions: Vec<_> = next_events(&mut watch, 5)
        .await
        .iter()
        .map(Event::revision)
        .collect();
    assert_eq!(revisions, (oldest..=last).collect::<Vec<_>>());
    drop(watch);
    drop(store);

    let store = EmbeddedStore::open(&path, bounded()).await.unwrap();
    let err = store
        .watch("h/", oldest - 1)
        .await
        .err()
        .expect("still compacted");
    assert!(matches!(err, Error::Compacted { .. }), "{err:?}");
    let err = EmbeddedStore::open(
        dir.path().join("other.redb"),
        EmbeddedOptions {
            history: 0,
            ..options(&clock)
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn a_watcher_left_behind_by_the_history_bound_is_told_to_relist() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(0);
    let store = EmbeddedStore::open(
        dir.path().join("s.redb"),
        EmbeddedOptions {
            history: 5,
            ..options(&clock)
        },
    )
    .await
    .unwrap();
    let from = store.list("").await.unwrap().revision + 1;
    let mut watch = store.watch("x/", from).await.unwrap();
    // The watcher does not read while 20 writes push its start out of the history.
    for i in 0..20 {
        store.create(&format!("x/{i}"), b("v")).await.unwrap();
    }
    match watch.next().await {
        Some(Err(Error::Compacted { requested })) => assert_eq!(requested, from),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn the_reaper_ends_leases_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(0);
    let options = EmbeddedOptions {
        lease_check_interval: Some(Duration::from_millis(10)),
        ..options(&clock)
    };
    let store = EmbeddedStore::open(dir.path().join("s.redb"), options)
        .await
        .unwrap();
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let put = store
        .put("hb/a", b("alive"), Condition::Any, Some(lease.id))
        .await
        .unwrap();
    let mut watch = store.watch("hb/", put + 1).await.unwrap();
    clock.advance(Duration::from_secs(11));
    let event = next_event(&mut watch).await;
    assert!(
        matches!(&event, Event::Delete { key, .. } if key == "hb/a"),
        "{event:?}"
    );
}

#[tokio::test]
async fn lease_deadlines_are_kept_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::at(0);
    let store = EmbeddedStore::open(&path, options(&clock)).await.unwrap();
    let short = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let long = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store
        .put("l/short", b("s"), Condition::Any, Some(short.id))
        .await
        .unwrap();
    let last = store
        .put("l/long", b("l"), Condition::Any, Some(long.id))
        .await
        .unwrap();
    drop(store);

    // Time passes while the store is closed: the short lease is due when it reopens.
    clock.advance(Duration::from_secs(30));
    let store = EmbeddedStore::open(&path, options(&clock)).await.unwrap();
    let mut watch = store.watch("l/", last + 1).await.unwrap();
    assert_eq!(store.expire_leases().await.unwrap(), 1);
    let event = next_event(&mut watch).await;
    assert!(
        matches!(&event, Event::Delete { key, .. } if key == "l/short"),
        "{event:?}"
    );
    assert_eq!(
        store.keep_alive(long.id).await.unwrap(),
        Duration::from_secs(60)
    );
    let err = store.keep_alive(short.id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
    // Lease ids are not reused after a reopen.
    let next = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    assert!(next.id > long.id);
}

#[tokio::test]
async fn a_lease_past_its_deadline_cannot_be_renewed_before_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(0);
    let store = EmbeddedStore::open(dir.path().join("s.redb"), options(&clock))
        .await
        .unwrap();
    let lease = store
        .grant_lease(Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(
        lease.ttl,
        Duration::from_millis(1500),
        "milliseconds are kept"
    );
    store
        .put("late/a", b("v"), Condition::Any, Some(lease.id))
        .await
        .unwrap();
    clock.advance(Duration::from_millis(1500));
    let err = store.keep_alive(lease.id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
    let err = store
        .put("late/b", b("v"), Condition::Any, Some(lease.id))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
    assert_eq!(store.expire_leases().await.unwrap(), 1);
    assert_eq!(store.get("late/a").await.unwrap(), None);
    assert_eq!(store.expire_leases().await.unwrap(), 0, "a lease ends once");
}

#[tokio::test]
async fn a_file_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let clock = ManualClock::at(0);
    let _first = EmbeddedStore::open(&path, options(&clock)).await.unwrap();
    let err = EmbeddedStore::open(&path, options(&clock))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Open { path: p, .. } if *p == path),
        "{err:?}"
    );
    let source = std::error::Error::source(&err)
        .expect("a cause")
        .to_string();
    assert!(source.contains("already open"), "{source}");
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "not a database, just some text that is long enough to look like a header",
    )
    .unwrap();
    let err = EmbeddedStore::open(&path, options(&ManualClock::at(0)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
}
