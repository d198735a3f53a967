//! The store contract, written once and run against both backends: every test below runs
//! as `embedded::<name>` (a fresh file) and `etcd::<name>` (a fresh etcd process).
//!
//! Tests never assert on time. Lease time passes through `Harness::advance` (a manual
//! clock for the embedded store, real sleeps of a second or two for etcd, whose lease
//! clock is real); waiting for an event that must come has a generous guard that only
//! turns a hang into a failure.

mod support;
#[path = "conformance/txn.rs"]
mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use flotilla_store::{Condition, Error, Event, KeyValue, Store};
use support::{Harness, b, next_event, next_events};
use txn::*;

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let mut harness = crate::support::Harness::embedded().await;
                    crate::$test(&mut harness).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let mut harness = crate::support::Harness::etcd().await;
                    crate::$test(&mut harness).await;
                }
            )*
        }
    };
}

conformance!(
    create_fails_if_the_key_exists,
    update_refuses_a_stale_revision,
    racing_writers_on_one_key_have_one_winner,
    delete_can_compare_and_swap,
    every_write_takes_the_next_revision,
    list_reads_a_prefix_at_one_revision,
    a_watch_from_a_listing_misses_nothing,
    concurrent_writers_are_seen_once_in_order,
    a_watch_from_an_old_revision_replays_history,
    records_of_a_mebibyte_are_listed_and_watched_however_many,
    compacted_history_is_refused,
    acknowledged_writes_survive_a_crash,
    an_expired_lease_deletes_its_keys,
    renewing_a_lease_keeps_its_keys,
    revoking_a_lease_deletes_only_its_keys_at_one_revision,
    invalid_arguments_are_refused,
    a_txn_commits_every_op_at_one_revision,
    a_txn_with_a_failed_compare_writes_nothing,
    racing_txns_on_the_same_keys_have_one_winner,
    a_txn_that_changes_nothing_takes_no_revision,
    a_txn_puts_under_leases_or_not_at_all,
    malformed_txns_are_refused,
);

async fn create_fails_if_the_key_exists(h: &mut Harness) {
    let s = h.store();
    let created = s.create("sets/a", b("one")).await.unwrap();
    let err = s.create("sets/a", b("two")).await.unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { key, mod_revision } if key == "sets/a" && *mod_revision == created),
        "{err:?}"
    );
    assert_eq!(
        s.get("sets/a").await.unwrap(),
        Some(KeyValue {
            key: "sets/a".into(),
            value: b("one"),
            create_revision: created,
            mod_revision: created,
            version: 1,
            lease: None,
        })
    );
    // Once deleted, the key can be created again, as a new key.
    s.delete("sets/a", None).await.unwrap();
    let again = s.create("sets/a", b("three")).await.unwrap();
    let kv = s.get("sets/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.create_revision, kv.version),
        (b("three"), again, 1)
    );
}

async fn update_refuses_a_stale_revision(h: &mut Harness) {
    let s = h.store();
    let created = s.create("sets/a", b("v1")).await.unwrap();
    let updated = s.update("sets/a", b("v2"), created).await.unwrap();
    assert!(updated > created);

    // A second writer still holding the first revision is refused, and nothing changes.
    let err = s.update("sets/a", b("stale"), created).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { key, expected, actual: Some(actual) }
            if key == "sets/a" && *expected == created && *actual == updated),
        "{err:?}"
    );
    let kv = s.get("sets/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.create_revision, kv.mod_revision, kv.version),
        (b("v2"), created, updated, 2)
    );

    // Updating a key that does not exist is a conflict too, and does not create it.
    let err = s.update("sets/missing", b("x"), created).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict { actual: None, .. }),
        "{err:?}"
    );
    assert_eq!(s.get("sets/missing").await.unwrap(), None);

    // An unconditional put overwrites whatever is there.
    let put = s
        .put("sets/a", b("v3"), Condition::Any, None)
        .await
        .unwrap();
    let kv = s.get("sets/a").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision, kv.version), (b("v3"), put, 3));
}

async fn racing_writers_on_one_key_have_one_winner(h: &mut Harness) {
    let s = h.store();

    // Everyone creates: one wins, the others are told who did.
    let outcomes = race(&s, Condition::Absent).await;
    let created = only_winner(&outcomes);
    for outcome in &outcomes {
        match outcome {
            Ok(_) => {}
            Err(Error::AlreadyExists { mod_revision, .. }) => assert_eq!(*mod_revision, created),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    // Everyone updates from the same read: one wins, the others conflict with it.
    let outcomes = race(&s, Condition::ModRevision(created)).await;
    let updated = only_winner(&outcomes);
    for outcome in &outcomes {
        match outcome {
            Ok(_) => {}
            Err(Error::Conflict { actual, .. }) => assert_eq!(*actual, Some(updated)),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let kv = s.get("race/k").await.unwrap().unwrap();
    assert_eq!((kv.mod_revision, kv.version), (updated, 2));
}

/// Eight concurrent puts to one key under `condition`.
async fn race(s: &Arc<dyn Store>, condition: Condition) -> Vec<Result<i64, Error>> {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.put("race/k", b(&format!("{i}")), condition, None).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

fn only_winner(outcomes: &[Result<i64, Error>]) -> i64 {
    let won: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .copied()
        .collect();
    assert_eq!(won.len(), 1, "exactly one winner: {outcomes:?}");
    won[0]
}

async fn delete_can_compare_and_swap(h: &mut Harness) {
    let s = h.store();
    let created = s.create("sets/a", b("v1")).await.unwrap();
    let updated = s.update("sets/a", b("v2"), created).await.unwrap();

    let err = s.delete("sets/a", Some(created)).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict { expected, actual: Some(actual), .. } if expected == created && actual == updated),
        "{err:?}"
    );
    assert!(
        s.get("sets/a").await.unwrap().is_some(),
        "a refused delete deleted"
    );

    let deleted = s.delete("sets/a", Some(updated)).await.unwrap().unwrap();
    assert!(deleted > updated);
    assert_eq!(s.get("sets/a").await.unwrap(), None);

    // Deleting what is not there writes nothing; with a revision it is a conflict.
    assert_eq!(s.delete("sets/a", None).await.unwrap(), None);
    let err = s.delete("sets/a", Some(deleted)).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict { actual: None, .. }),
        "{err:?}"
    );
    assert_eq!(s.list("").await.unwrap().revision, deleted);
}

async fn every_write_takes_the_next_revision(h: &mut Harness) {
    let s = h.store();
    let start = s.list("").await.unwrap().revision;
    let mut revisions = vec![
        s.create("r/a", b("1")).await.unwrap(),
        s.create("r/b", b("1")).await.unwrap(),
    ];
    revisions.push(s.update("r/a", b("2"), revisions[0]).await.unwrap());
    revisions.push(s.delete("r/b", None).await.unwrap().unwrap());
    revisions.push(
        s.put("other/c", b("1"), Condition::Any, None)
            .await
            .unwrap(),
    );
    let expected: Vec<_> = (1..=5).map(|n| start + n).collect();
    assert_eq!(
        revisions, expected,
        "one new revision per write, across keys"
    );

    // Refused writes take no revision.
    s.create("r/a", b("again")).await.unwrap_err();
    s.update("r/a", b("stale"), revisions[0]).await.unwrap_err();
    assert_eq!(s.list("").await.unwrap().revision, start + 5);
}

async fn list_reads_a_prefix_at_one_revision(h: &mut Harness) {
    let s = h.store();
    let mut last = 0;
    for i in 0..25 {
        last = s
            .create(&format!("many/{i:02}"), b(&i.to_string()))
            .await
            .unwrap();
    }
    for key in ["many0", "man", "other/x", "many"] {
        last = s.create(key, b("outside")).await.unwrap();
    }

    let listing = s.list("many/").await.unwrap();
    assert_eq!(listing.revision, last);
    let keys: Vec<_> = listing.items.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<_> = (0..25).map(|i| format!("many/{i:02}")).collect();
    assert_eq!(keys, expected, "exactly the prefix, in key order");
    assert!(
        listing
            .items
            .iter()
            .enumerate()
            .all(|(i, kv)| kv.value == b(&i.to_string()))
    );

    let all = s.list("").await.unwrap();
    assert_eq!((all.revision, all.items.len()), (last, 29));
    let none = s.list("nothing/").await.unwrap();
    assert_eq!((none.revision, none.items.len()), (last, 0));
}

async fn a_watch_from_a_listing_misses_nothing(h: &mut Harness) {
    let s = h.store();
    s.create("sets/a", b("a1")).await.unwrap();
    s.create("sets/b", b("b1")).await.unwrap();
    let listing = s.list("sets/").await.unwrap();

    // Written after the list and before the watch starts: must all be delivered.
    let a = &listing.items[0];
    s.update("sets/a", b("a2"), a.mod_revision).await.unwrap();
    s.delete("sets/b", None).await.unwrap();
    s.create("sets/c", b("c1")).await.unwrap();
    s.create("other/x", b("not watched")).await.unwrap();

    let mut watch = s.watch("sets/", listing.revision + 1).await.unwrap();
    s.create("sets/d", b("d1")).await.unwrap();

    let events = next_events(&mut watch, 4).await;
    assert_eq!(events[0].revision(), listing.revision + 1);
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()));
    let summary: Vec<_> = events.iter().map(summarize).collect();
    assert_eq!(
        summary,
        [
            "put sets/a=a2",
            "delete sets/b",
            "put sets/c=c1",
            "put sets/d=d1"
        ]
    );

    // The listing with the events applied is the store's state now.
    let mut state: BTreeMap<String, KeyValue> = listing
        .items
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    for event in events {
        match event {
            Event::Put(kv) => {
                state.insert(kv.key.clone(), kv);
            }
            Event::Delete { key, .. } => {
                state.remove(&key);
            }
        }
    }
    let now = s.list("sets/").await.unwrap().items;
    assert_eq!(state.into_values().collect::<Vec<_>>(), now);
}

async fn concurrent_writers_are_seen_once_in_order(h: &mut Harness) {
    const WRITERS: usize = 4;
    const WRITES: usize = 50;
    let s = h.store();
    let from = s.list("w/").await.unwrap().revision + 1;
    let mut watch = s.watch("w/", from).await.unwrap();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..WRITES {
                    let key = format!("w/{w}/{i:02}");
                    let revision = s
                        .put(&key, b(&format!("{w}-{i}")), Condition::Any, None)
                        .await
                        .unwrap();
                    acknowledged.push((key, revision));
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = HashMap::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert_eq!(acknowledged.len(), WRITERS * WRITES);

    let events = next_events(&mut watch, WRITERS * WRITES).await;
    assert!(
        events.windows(2).all(|w| w[0].revision() < w[1].revision()),
        "revisions out of order"
    );
    let mut seen = HashMap::new();
    for event in &events {
        let Event::Put(kv) = event else {
            panic!("unexpected {event:?}")
        };
        let (w, i) = kv.key["w/".len()..].split_once('/').unwrap();
        assert_eq!(kv.value, b(&format!("{w}-{}", i.parse::<usize>().unwrap())));
        assert!(
            seen.insert(kv.key.clone(), kv.mod_revision).is_none(),
            "{} seen twice",
            kv.key
        );
    }
    assert_eq!(
        seen, acknowledged,
        "every acknowledged write, at its revision, once"
    );

    // Nothing else is queued: the next event is a write made now.
    let last = s
        .put("w/sentinel", b("end"), Condition::Any, None)
        .await
        .unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), last);
}

async fn a_watch_from_an_old_revision_replays_history(h: &mut Harness) {
    let s = h.store();
    let r1 = s.create("hist/k", b("1")).await.unwrap();
    s.create("elsewhere/k", b("x")).await.unwrap();
    let r2 = s.update("hist/k", b("2"), r1).await.unwrap();
    let r3 = s.delete("hist/k", None).await.unwrap().unwrap();
    let r4 = s.create("hist/k", b("4")).await.unwrap();

    let mut watch = s.watch("hist/", r1).await.unwrap();
    let put = |value: &str, create_revision, mod_revision, version| {
        Event::Put(KeyValue {
            key: "hist/k".into(),
            value: b(value),
            create_revision,
            mod_revision,
            version,
            lease: None,
        })
    };
    assert_eq!(
        next_events(&mut watch, 4).await,
        [
            put("1", r1, r1, 1),
            put("2", r1, r2, 2),
            Event::Delete {
                key: "hist/k".into(),
                revision: r3
            },
            put("4", r4, r4, 1),
        ]
    );
    let sentinel = s.create("hist/sentinel", b("end")).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), sentinel);
}

/// Records as large as a request may carry (a mebibyte: etcd's default request limit is
/// 1.5 MiB), more of them than one gRPC message holds (4 MiB by default): a listing
/// returns them all and a watch replays them all, however the backend pages or batches
/// them. (A member's report of a thousand instances is a few hundred KiB; a hundred of
/// them are listed whenever the federation controller starts.)
async fn records_of_a_mebibyte_are_listed_and_watched_however_many(h: &mut Harness) {
    let s = h.store();
    let value = |i: usize| Bytes::from(vec![b'a' + i as u8; 1 << 20]);
    let now = s.list("big/").await.unwrap().revision;
    let live = s.watch("big/", now + 1).await.unwrap();
    let mut first = None;
    for i in 0..12 {
        let r = s.create(&format!("big/{i:02}"), value(i)).await.unwrap();
        first.get_or_insert(r);
    }
    let listing = s.list("big/").await.unwrap();
    assert_eq!(listing.items.len(), 12);
    for (i, kv) in listing.items.iter().enumerate() {
        assert_eq!(kv.key, format!("big/{i:02}"));
        assert!(kv.value == value(i), "{} holds what was written", kv.key);
    }
    // Watched while written, and replayed from the first (one catch-up of twelve
    // mebibytes).
    let replay = s.watch("big/", first.unwrap()).await.unwrap();
    for mut watch in [live, replay] {
        for (i, event) in next_events(&mut watch, 12).await.into_iter().enumerate() {
            match event {
                Event::Put(kv) => {
                    assert_eq!(kv.key, format!("big/{i:02}"));
                    assert!(kv.value == value(i), "{} holds what was written", kv.key);
                }
                other => panic!("expected a put, got {}", summarize(&other)),
            }
        }
    }
}

async fn compacted_history_is_refused(h: &mut Harness) {
    let s = h.store();
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(s.create(&format!("c/{i}"), b("v")).await.unwrap());
    }
    let [r1, r2, r3, r4, r5] = revisions[..] else {
        unreachable!()
    };
    s.compact(r3).await.unwrap();

    let err = s
        .watch("c/", r2)
        .await
        .err()
        .expect("a watch into compacted history");
    assert!(
        matches!(err, Error::Compacted { requested } if requested == r2),
        "{err:?}"
    );
    let err = s
        .watch("c/", r1)
        .await
        .err()
        .expect("a watch into compacted history");
    assert!(matches!(err, Error::Compacted { .. }), "{err:?}");

    // The compaction revision itself is kept.
    let mut watch = s.watch("c/", r3).await.unwrap();
    let seen: Vec<_> = next_events(&mut watch, 3)
        .await
        .iter()
        .map(Event::revision)
        .collect();
    assert_eq!(seen, [r3, r4, r5]);

    // Compacting again, or below, changes nothing; the future cannot be compacted.
    s.compact(r3).await.unwrap();
    s.compact(r2).await.unwrap();
    let err = s.compact(r5 + 100).await.unwrap_err();
    assert!(
        matches!(err, Error::FutureRevision { requested } if requested == r5 + 100),
        "{err:?}"
    );
    // The current state is untouched.
    assert_eq!(s.list("c/").await.unwrap().items.len(), 5);
}

async fn acknowledged_writes_survive_a_crash(h: &mut Harness) {
    let s = h.store();
    let mut expected = BTreeMap::new();
    let mut first = None;
    let mut last = 0;
    for i in 0..40 {
        let key = format!("d/{i:02}");
        last = s.create(&key, b(&format!("v{i}"))).await.unwrap();
        first.get_or_insert(last);
        expected.insert(key, (b(&format!("v{i}")), last));
    }
    for i in (0..40).step_by(3) {
        let key = format!("d/{i:02}");
        let (_, at) = expected[&key];
        last = s.update(&key, b("updated"), at).await.unwrap();
        expected.insert(key, (b("updated"), last));
    }
    for i in (1..40).step_by(5) {
        let key = format!("d/{i:02}");
        last = s.delete(&key, None).await.unwrap().unwrap();
        expected.remove(&key);
    }
    drop(s);

    h.crash_and_restart().await;
    let s = h.store();

    let listing = s.list("d/").await.unwrap();
    assert_eq!(
        listing.revision, last,
        "the revision after a restart is the last acknowledged one"
    );
    let found: BTreeMap<_, _> = listing
        .items
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
        .collect();
    assert_eq!(
        found, expected,
        "every acknowledged write, and nothing else"
    );

    let next = s.create("d/after", b("new")).await.unwrap();
    assert_eq!(next, last + 1, "revisions continue");

    // The history from before the crash is still there to watch.
    let mut watch = s.watch("d/", first.unwrap()).await.unwrap();
    let replayed = next_events(&mut watch, 40 + 14 + 8 + 1).await;
    assert_eq!(replayed.last().unwrap().revision(), next);
}

async fn an_expired_lease_deletes_its_keys(h: &mut Harness) {
    let s = h.store();
    let lease = s.grant_lease(h.lease_ttl()).await.unwrap();
    assert!(lease.ttl >= h.lease_ttl(), "{lease:?}");
    s.put("leased/a", b("owned"), Condition::Absent, Some(lease.id))
        .await
        .unwrap();
    s.create("leased/b", b("free")).await.unwrap();
    assert_eq!(
        s.get("leased/a").await.unwrap().unwrap().lease,
        Some(lease.id)
    );
    let listing = s.list("leased/").await.unwrap();
    let mut watch = s.watch("leased/", listing.revision + 1).await.unwrap();

    // Nobody renews it.
    h.advance(lease.ttl + lease.ttl / 4).await;
    let event = next_event(&mut watch).await;
    assert!(
        matches!(&event, Event::Delete { key, revision } if key == "leased/a" && *revision > listing.revision),
        "{event:?}"
    );
    assert_eq!(s.get("leased/a").await.unwrap(), None);
    assert!(s.get("leased/b").await.unwrap().is_some());

    // The lease is gone for good.
    let gone =
        |r: Result<_, Error>| matches!(r, Err(Error::LeaseNotFound { lease: l }) if l == lease.id);
    assert!(gone(s.keep_alive(lease.id).await.map(|_| ())));
    assert!(gone(
        s.put("leased/c", b("x"), Condition::Any, Some(lease.id))
            .await
            .map(|_| ())
    ));
    assert!(gone(s.revoke_lease(lease.id).await));
    let sentinel = s.create("leased/sentinel", b("end")).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await.revision(),
        sentinel,
        "only the leased key went"
    );
}

async fn renewing_a_lease_keeps_its_keys(h: &mut Harness) {
    let s = h.store();
    let lease = s.grant_lease(h.lease_ttl()).await.unwrap();
    s.put("renewed/a", b("alive"), Condition::Any, Some(lease.id))
        .await
        .unwrap();
    let from = s.list("renewed/").await.unwrap().revision + 1;
    let mut watch = s.watch("renewed/", from).await.unwrap();

    // Renewed every half TTL, the lease outlives its TTL twice over.
    for _ in 0..3 {
        h.advance(lease.ttl / 2).await;
        assert_eq!(s.keep_alive(lease.id).await.unwrap(), lease.ttl);
    }
    h.advance(lease.ttl / 2).await;
    assert!(
        s.get("renewed/a").await.unwrap().is_some(),
        "a renewed lease expired"
    );

    let sentinel = s.create("renewed/sentinel", b("x")).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await.revision(),
        sentinel,
        "nothing was deleted"
    );
}

async fn revoking_a_lease_deletes_only_its_keys_at_one_revision(h: &mut Harness) {
    let s = h.store();
    let lease = s.grant_lease(h.lease_ttl()).await.unwrap();
    for key in ["rev/a", "rev/b", "rev/c"] {
        s.put(key, b("leased"), Condition::Any, Some(lease.id))
            .await
            .unwrap();
    }
    // A put without a lease takes the key out of it (as in etcd).
    s.put("rev/c", b("kept"), Condition::Any, None)
        .await
        .unwrap();
    assert_eq!(s.get("rev/c").await.unwrap().unwrap().lease, None);
    let from = s.list("rev/").await.unwrap().revision + 1;
    let mut watch = s.watch("rev/", from).await.unwrap();

    s.revoke_lease(lease.id).await.unwrap();
    let events = next_events(&mut watch, 2).await;
    let keys: Vec<_> = events.iter().map(summarize).collect();
    assert_eq!(keys, ["delete rev/a", "delete rev/b"]);
    assert_eq!(
        events[0].revision(),
        events[1].revision(),
        "one revision for the revoke"
    );
    assert_eq!(s.list("rev/").await.unwrap().items.len(), 1);

    let err = s.revoke_lease(lease.id).await.unwrap_err();
    assert!(matches!(err, Error::LeaseNotFound { .. }), "{err:?}");
    let sentinel = s.create("rev/sentinel", b("x")).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), sentinel);
}

async fn invalid_arguments_are_refused(h: &mut Harness) {
    let s = h.store();
    let invalid = |r: Result<(), Error>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(invalid(s.create("", b("x")).await.map(|_| ())));
    assert!(invalid(s.get("").await.map(|_| ())));
    assert!(invalid(s.watch("x/", 0).await.map(|_| ())));
    assert!(invalid(
        s.grant_lease(std::time::Duration::ZERO).await.map(|_| ())
    ));
    let err = s.keep_alive(987_654_321).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound { lease: 987_654_321 }),
        "{err:?}"
    );
    let err = s
        .put("x/a", b("x"), Condition::Any, Some(987_654_321))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound { lease: 987_654_321 }),
        "{err:?}"
    );
    assert_eq!(
        s.list("").await.unwrap().items.len(),
        0,
        "nothing was written"
    );
}

fn summarize(event: &Event) -> String {
    match event {
        Event::Put(kv) => format!("put {}={}", kv.key, String::from_utf8_lossy(&kv.value)),
        Event::Delete { key, .. } => format!("delete {key}"),
    }
}
