//! Transactions: the part of the contract that `Store::txn` adds, run against both
//! backends by the `conformance!` list in `conformance.rs`.

use std::sync::Arc;

use flotilla_store::{Compare, Condition, Error, Event, Expect, KeyState, Store, Txn};

use crate::support::{Harness, b, next_event, next_events};

pub async fn a_txn_commits_every_op_at_one_revision(h: &mut Harness) {
    let s = h.store();
    let a = s.create("t/a", b("a1")).await.unwrap();
    let bb = s.create("t/b", b("b1")).await.unwrap();
    let mut watch = s.watch("t/", bb + 1).await.unwrap();
    let committed = s
        .txn(
            Txn::new()
                .when(Compare::absent("t/c"))
                .when(Compare::mod_revision("t/a", a))
                .when(Compare::create_revision("t/b", bb))
                .when(Compare::exists("t/b"))
                .put("t/c", b("c1"))
                .put("t/a", b("a2"))
                .delete("t/b")
                .delete("t/never"),
        )
        .await
        .unwrap();
    let r = committed.revision.expect("the transaction wrote");
    assert_eq!(r, bb + 1, "one new revision for the whole transaction");
    assert_eq!(committed.changed, [true, true, true, false]);
    assert_eq!(s.list("").await.unwrap().revision, r);

    let c = s.get("t/c").await.unwrap().unwrap();
    assert_eq!(
        (c.value, c.create_revision, c.mod_revision, c.version),
        (b("c1"), r, r, 1)
    );
    let a2 = s.get("t/a").await.unwrap().unwrap();
    assert_eq!(
        (a2.value, a2.create_revision, a2.mod_revision, a2.version),
        (b("a2"), a, r, 2)
    );
    assert_eq!(s.get("t/b").await.unwrap(), None);

    // A watch sees the transaction's events at its one revision, in the order of its ops.
    let events = next_events(&mut watch, 3).await;
    let seen: Vec<(String, i64)> = events
        .iter()
        .map(|e| (crate::summarize(e), e.revision()))
        .collect();
    assert_eq!(
        seen,
        [
            ("put t/c=c1".to_string(), r),
            ("put t/a=a2".to_string(), r),
            ("delete t/b".to_string(), r),
        ]
    );
    let after = s.create("t/after", b("x")).await.unwrap();
    assert_eq!(after, r + 1);
    assert_eq!(
        next_event(&mut watch).await.revision(),
        after,
        "nothing else in between"
    );
}

pub async fn a_txn_with_a_failed_compare_writes_nothing(h: &mut Harness) {
    let s = h.store();
    let lease = s.grant_lease(h.lease_ttl()).await.unwrap();
    let a = s.create("f/a", b("a")).await.unwrap();
    let l = s
        .put("f/leased", b("l"), Condition::Any, Some(lease.id))
        .await
        .unwrap();
    let before = s.list("").await.unwrap();
    let a_state = Some(KeyState {
        create_revision: a,
        mod_revision: a,
        lease: None,
    });
    let cases = [
        (Compare::absent("f/a"), a_state),
        (Compare::exists("f/missing"), None),
        (Compare::mod_revision("f/a", a + 100), a_state),
        (Compare::mod_revision("f/missing", a), None),
        (Compare::create_revision("f/a", a + 100), a_state),
        (Compare::lease("f/a", lease.id), a_state),
        (
            Compare::lease("f/leased", lease.id + 1),
            Some(KeyState {
                create_revision: l,
                mod_revision: l,
                lease: Some(lease.id),
            }),
        ),
    ];
    for (failing, actual) in cases {
        // The failing compare comes second, after one that holds: the refusal names it.
        let txn = Txn::new()
            .when(Compare::mod_revision("f/a", a))
            .when(failing.clone())
            .when(Compare::absent("f/new"))
            .put("f/new", b("new"))
            .put("f/a", b("overwritten"))
            .delete("f/leased");
        let err = s.txn(txn).await.unwrap_err();
        match &err {
            Error::TxnRefused {
                index,
                key,
                expected,
                actual: seen,
            } => {
                assert_eq!(
                    (*index, key.as_str(), *expected, *seen),
                    (1, failing.key.as_str(), failing.expect, actual),
                    "{err}"
                );
            }
            other => panic!("{failing:?}: expected TxnRefused, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("compare 1 failed") && message.contains(&failing.key),
            "{message}"
        );
        assert_eq!(
            s.list("").await.unwrap(),
            before,
            "{failing:?} changed the store"
        );
    }
    // Every compare holding, the same transaction commits.
    let ok = Txn::new()
        .when(Compare::mod_revision("f/a", a))
        .when(Compare::lease("f/leased", lease.id))
        .put("f/a", b("overwritten"))
        .delete("f/leased");
    assert!(s.txn(ok).await.unwrap().revision.is_some());
}

pub async fn racing_txns_on_the_same_keys_have_one_winner(h: &mut Harness) {
    let s = h.store();
    // Everyone registers a cluster and its token together: one wins, whole.
    let outcomes = race(&s, |i| {
        Txn::new()
            .when(Compare::absent("race/cluster"))
            .when(Compare::absent("race/token"))
            .put("race/cluster", b(&format!("c{i}")))
            .put("race/token", b(&format!("t{i}")))
    })
    .await;
    let (winner, created) = one_winner(&outcomes);
    let cluster = s.get("race/cluster").await.unwrap().unwrap();
    let token = s.get("race/token").await.unwrap().unwrap();
    assert_eq!(
        (cluster.value, token.value),
        (b(&format!("c{winner}")), b(&format!("t{winner}"))),
        "both keys come from the one winner"
    );
    assert_eq!(
        (cluster.mod_revision, token.mod_revision),
        (created, created)
    );

    // Everyone moves both keys on from what they read: one wins again.
    let outcomes = race(&s, move |i| {
        Txn::new()
            .when(Compare::mod_revision("race/cluster", created))
            .when(Compare::mod_revision("race/token", created))
            .put("race/cluster", b(&format!("c{i}-2")))
            .delete("race/token")
    })
    .await;
    let (winner, moved) = one_winner(&outcomes);
    for outcome in &outcomes {
        if let Err(e) = outcome {
            assert!(
                matches!(e, Error::TxnRefused { index: 0, expected: Expect::ModRevision(r), actual: Some(KeyState { mod_revision, .. }), .. } if *r == created && *mod_revision == moved),
                "{e:?}"
            );
        }
    }
    let cluster = s.get("race/cluster").await.unwrap().unwrap();
    assert_eq!(
        (cluster.value, cluster.mod_revision),
        (b(&format!("c{winner}-2")), moved)
    );
    assert_eq!(s.get("race/token").await.unwrap(), None);
    assert_eq!(
        s.list("").await.unwrap().revision,
        moved,
        "losers wrote nothing"
    );
}

/// Sixteen concurrent transactions, the `i`th made by `txn(i)`.
async fn race(
    s: &Arc<dyn Store>,
    txn: impl Fn(usize) -> Txn,
) -> Vec<Result<flotilla_store::Committed, Error>> {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            let txn = txn(i);
            tokio::spawn(async move { s.txn(txn).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

/// The one winner's index and revision; every other outcome is a refusal.
fn one_winner(outcomes: &[Result<flotilla_store::Committed, Error>]) -> (usize, i64) {
    let won: Vec<(usize, i64)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().ok().map(|c| (i, c.revision.unwrap())))
        .collect();
    assert_eq!(won.len(), 1, "exactly one winner: {outcomes:?}");
    for o in outcomes {
        if let Err(e) = o {
            assert!(matches!(e, Error::TxnRefused { .. }), "{e:?}");
        }
    }
    won[0]
}

pub async fn a_txn_that_changes_nothing_takes_no_revision(h: &mut Harness) {
    let s = h.store();
    let a = s.create("n/a", b("a")).await.unwrap();
    let nothing = s
        .txn(
            Txn::new()
                .when(Compare::exists("n/a"))
                .delete("n/missing")
                .delete("n/also-missing"),
        )
        .await
        .unwrap();
    assert_eq!(
        (nothing.revision, nothing.changed),
        (None, vec![false, false])
    );
    let check_only = s
        .txn(Txn::new().when(Compare::mod_revision("n/a", a)))
        .await
        .unwrap();
    assert_eq!((check_only.revision, check_only.changed), (None, vec![]));
    assert_eq!(s.list("").await.unwrap().revision, a);
    assert_eq!(s.create("n/b", b("b")).await.unwrap(), a + 1);
}

pub async fn a_txn_puts_under_leases_or_not_at_all(h: &mut Harness) {
    let s = h.store();
    let lease = s.grant_lease(h.lease_ttl()).await.unwrap();
    let before = s.list("").await.unwrap();
    let err = s
        .txn(
            Txn::new()
                .put("l/plain", b("p"))
                .put_under("l/leased", b("x"), 987_654_321),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::LeaseNotFound { lease: 987_654_321 }),
        "{err:?}"
    );
    assert_eq!(
        s.list("").await.unwrap(),
        before,
        "nothing of it was written"
    );

    let r = s
        .txn(
            Txn::new()
                .put("l/plain", b("p"))
                .put_under("l/leased", b("x"), lease.id),
        )
        .await
        .unwrap()
        .revision
        .unwrap();
    assert_eq!(
        s.get("l/leased").await.unwrap().unwrap().lease,
        Some(lease.id)
    );
    let mut watch = s.watch("l/", r + 1).await.unwrap();
    s.revoke_lease(lease.id).await.unwrap();
    match next_event(&mut watch).await {
        Event::Delete { key, .. } => assert_eq!(key, "l/leased"),
        other => panic!("{other:?}"),
    }
    assert!(s.get("l/plain").await.unwrap().is_some());
}

pub async fn malformed_txns_are_refused(h: &mut Harness) {
    let s = h.store();
    let invalid =
        |r: Result<flotilla_store::Committed, Error>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(invalid(
        s.txn(Txn::new().put("m/a", b("1")).delete("m/a")).await
    ));
    assert!(invalid(s.txn(Txn::new().put("", b("1"))).await));
    assert!(invalid(s.txn(Txn::new().when(Compare::exists(""))).await));
    let mut big = Txn::new();
    for i in 0..=flotilla_store::txn::MAX_OPS {
        big = big.put(format!("m/{i}"), b("x"));
    }
    assert!(invalid(s.txn(big).await));
    let mut most = Txn::new();
    for i in 0..flotilla_store::txn::MAX_OPS {
        most = most.put(format!("m/{i}"), b("x"));
    }
    assert!(
        s.txn(most).await.unwrap().revision.is_some(),
        "the limit itself is accepted"
    );
}
