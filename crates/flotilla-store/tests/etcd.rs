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
