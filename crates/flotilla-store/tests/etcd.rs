//! What only the etcd backend has: other etcd clients, a connection that can break.
//! The shared contract is in `conformance.rs`.

mod support;

use flotilla_store::testing::EtcdServer;
use flotilla_store::{Error, EtcdOptions, EtcdStore, Event, Store};
use futures::StreamExt;
use support::{b, next_event};

#[tokio::test]
async fn the_store_reads_what_other_etcd_clients_write() {
    let etcd = EtcdServer::start().await;
    let store = EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
        .await
        .unwrap();
    let from = store.list("").await.unwrap().revision + 1;
    let mut watch = store.watch("shared/", from).await.unwrap();

    // etcdctl, or any other v3 client, sees and writes the same keys.
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let put = raw.put("shared/k", "from raw", None).await.unwrap();
    let revision = put.header().unwrap().revision();
    let kv = store.get("shared/k").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (b("from raw"), revision));
    let event = next_event(&mut watch).await;
    assert!(
        matches!(&event, Event::Put(kv) if kv.key == "shared/k" && kv.mod_revision == revision)
    );

    let ours = store.create("shared/mine", b("from store")).await.unwrap();
    let got = raw.get("shared/mine", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"from store");
    assert_eq!(got.kvs()[0].mod_revision(), ours);
}

#[tokio::test]
async fn a_watch_reports_losing_etcd_and_then_ends() {
    let mut etcd = EtcdServer::start().await;
    let store = EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
        .await
        .unwrap();
    let from = store.list("").await.unwrap().revision + 1;
    let mut watch = store.watch("gone/", from).await.unwrap();
    etcd.kill();
    match watch.next().await {
        Some(Err(Error::Etcd { op: "watch", .. } | Error::WatchClosed)) => {}
        other => panic!("expected the watch to fail, got {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test]
async fn a_store_keeps_working_across_an_etcd_restart() {
    let mut etcd = EtcdServer::start().await;
    let store = EtcdStore::connect(&[etcd.endpoint()], EtcdOptions::default())
        .await
        .unwrap();
    let before = store.create("restart/a", b("1")).await.unwrap();
    etcd.restart().await;
    // The same store, without reconnecting by hand.
    let kv = store.get("restart/a").await.unwrap().unwrap();
    assert_eq!(kv.mod_revision, before);
    assert_eq!(store.create("restart/b", b("2")).await.unwrap(), before + 1);
}

/// With the smallest response allowed (2 MiB), a page of 500 records of a mebibyte is
/// read again in halves down to a key a page, at one revision; a watch response
/// catching up on more than that ends the watch with an error, never skipping an event.
#[tokio::test]
async fn pages_too_large_for_a_response_are_read_smaller_and_a_watch_too_large_fails() {
    let etcd = EtcdServer::start().await;
    let store = EtcdStore::connect(
        &[etcd.endpoint()],
        EtcdOptions {
            max_response_bytes: flotilla_store::MIN_RESPONSE_BYTES,
            ..EtcdOptions::default()
        },
    )
    .await
    .unwrap();
    let value = |i: usize| bytes::Bytes::from(vec![b'a' + i as u8; 1 << 20]);
    let mut first = None;
    for i in 0..6 {
        let r = store.create(&format!("big/{i}"), value(i)).await.unwrap();
        first.get_or_insert(r);
    }
    store.create("small", b("x")).await.unwrap();
    let listing = store.list("").await.unwrap();
    assert_eq!(listing.items.len(), 7);
    assert_eq!(listing.revision, first.unwrap() + 6);
    for (i, kv) in listing.items[..6].iter().enumerate() {
        assert_eq!(kv.key, format!("big/{i}"));
        assert!(kv.value == value(i), "{} holds what was written", kv.key);
    }

    let mut watch = store.watch("big/", first.unwrap()).await.unwrap();
    let mut seen = Vec::new();
    let error = loop {
        match watch.next().await {
            Some(Ok(event)) => seen.push(event.revision()),
            Some(Err(e)) => break e,
            None => panic!("the watch ended without an error"),
        }
    };
    assert!(
        matches!(&error, Error::Etcd { op: "watch", .. }),
        "{error:?}"
    );
    assert!(
        format!("{error:?}").contains("message length too large"),
        "{error:?}"
    );
    let expected: Vec<i64> = (first.unwrap()..).take(seen.len()).collect();
    assert_eq!(seen, expected, "every event before the error, in order");
    assert!(
        watch.next().await.is_none(),
        "the stream ends after the error"
    );

    let err = EtcdStore::connect(
        &[etcd.endpoint()],
        EtcdOptions {
            max_response_bytes: 1 << 20,
            ..EtcdOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn a_page_size_below_one_is_refused() {
    let err = EtcdStore::connect(
        &["http://127.0.0.1:1"],
        EtcdOptions {
            page_size: 0,
            ..EtcdOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

/// An etcd that stops answering (SIGSTOP: its sockets stay open) fails every request
/// with a timeout that names it, instead of hanging the caller; an open watch ends with
/// an error once keepalive pings go unanswered; after SIGCONT everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_etcd_times_requests_out_and_ends_watches() {
    use std::time::Duration;

    use flotilla_store::{Compare, Condition, Txn};

    let etcd = EtcdServer::start().await;
    let after = Duration::from_millis(700);
    let store = EtcdStore::connect(
        &[etcd.endpoint()],
        EtcdOptions {
            request_timeout: after,
            // The default pings (every 10 s, 5 s to answer) leave the connection up
            // while the requests below time out one by one, then end the open watch.
            ..EtcdOptions::default()
        },
    )
    .await
    .unwrap();
    let a = store.create("stuck/a", b("1")).await.unwrap();
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let mut open_watch = store.watch("stuck/", a + 1).await.unwrap();

    etcd.pause();
    let s = &store;
    expect_timeout("get", after, async { s.get("stuck/a").await.map(drop) }).await;
    expect_timeout("list", after, async { s.list("stuck/").await.map(drop) }).await;
    expect_timeout("put", after, async {
        s.put("stuck/a", b("2"), Condition::Any, None)
            .await
            .map(drop)
    })
    .await;
    expect_timeout("delete", after, async {
        s.delete("stuck/a", None).await.map(drop)
    })
    .await;
    expect_timeout("txn", after, async {
        s.txn(
            Txn::new()
                .when(Compare::exists("stuck/a"))
                .delete("stuck/a"),
        )
        .await
        .map(drop)
    })
    .await;
    expect_timeout("watch", after, async {
        s.watch("stuck/", a).await.map(drop)
    })
    .await;
    expect_timeout("grant lease", after, async {
        s.grant_lease(Duration::from_secs(5)).await.map(drop)
    })
    .await;
    expect_timeout("renew lease", after, async {
        s.keep_alive(lease.id).await.map(drop)
    })
    .await;
    expect_timeout("revoke lease", after, async {
        s.revoke_lease(lease.id).await
    })
    .await;
    expect_timeout("compact", after, async { s.compact(a).await }).await;
    let message = Error::Timeout { op: "put", after }.to_string();
    assert!(message.contains("put timed out after 700ms"), "{message}");

    match tokio::time::timeout(GUARD, open_watch.next()).await {
        Ok(Some(Err(_))) => {}
        other => panic!("the open watch of a stuck etcd should fail, got {other:?}"),
    }

    etcd.resume();
    // The same store recovers once etcd answers again (its connection is re-made).
    let mut recovered = None;
    for _ in 0..100 {
        match store.get("stuck/a").await {
            Ok(kv) => {
                recovered = Some(kv);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // (Whether the timed-out writes were applied is not known: etcd may still read them
    // from its socket when it runs again.)
    recovered.expect("etcd answers again after SIGCONT");
    assert!(store.txn(Txn::new().put("stuck/b", b("x"))).await.is_ok());
}

/// A guard only against a hang (the bug under test); not a timing assertion.
const GUARD: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `request`, which must fail with a timeout of `op` after `after`.
async fn expect_timeout(
    op: &'static str,
    after: std::time::Duration,
    request: impl std::future::Future<Output = Result<(), Error>>,
) {
    match tokio::time::timeout(GUARD, request).await {
        Ok(Err(Error::Timeout { op: o, after: t })) => assert_eq!((o, t), (op, after)),
        other => panic!("{op}: expected a timeout, got {other:?}"),
    }
}
