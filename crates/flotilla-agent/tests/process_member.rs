//! `ProcessMember` in real time over real processes (`sh -c 'exec sleep 1000'`): a
//! held slice runs, a removed one is torn down, and a member started again over the
//! same data directory adopts what runs or, once a Snapshot says the set is no longer
//! held, tears it down. Every process a test started is killed by pid at the end
//! ([`Reaper`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::{LocalMemberOptions, Member, ProcessMember};
use flotilla_api::InstanceSet;
use flotilla_api::decode::{AnyObject, decode_all};
use flotilla_process::{ProcessConfig, Reaper, Record, os};

const PATIENCE: Duration = Duration::from_secs(10);

fn sleeper() -> InstanceSet {
    let text = "apiVersion: flotilla.io/v1alpha1
kind: InstanceSet
metadata: {name: sleeper, namespace: team}
spec:
  ordinals: {ranges: [{start: 0, end: 1}]}
  template: {spec: {terminationGracePeriodSeconds: 1, containers: [{name: main, image: busybox, command: [sh, -c, 'exec sleep 1000']}]}}
  volumeClaimTemplates: [{metadata: {name: data}}]
";
    let AnyObject::InstanceSet(s) = decode_all(text).unwrap().remove(0).object else {
        panic!("not an InstanceSet")
    };
    *s
}

/// A member over `data_dir`. The one before it may still be finishing a round (its
/// ticker holds it until then, and with it the data directory's lock): retried.
async fn member(data_dir: &Path) -> Arc<ProcessMember> {
    let config = ProcessConfig::from_text(&format!(
        "nodeGroups: [{{count: 2, free: {{pods: 10}}}}]\ndataDir: {}\n",
        data_dir.display()
    ))
    .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let options = LocalMemberOptions {
            tick: Duration::from_millis(20),
            max_retry: Duration::from_millis(100),
            ..LocalMemberOptions::default()
        };
        match ProcessMember::with_options(&config, options) {
            Ok(m) => return m,
            Err(e) if Instant::now() < deadline => {
                assert!(e.chain().contains("in use by another"), "{}", e.chain());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{}", e.chain()),
        }
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for both instances to be reported ready; their records.
async fn running(m: &ProcessMember, reaper: &Reaper) -> Vec<Record> {
    let mut statuses = m.statuses();
    tokio::time::timeout(
        PATIENCE,
        statuses.wait_for(|s| {
            s.get("team/sleeper")
                .is_some_and(|st| st.ready_replicas == 2)
        }),
    )
    .await
    .expect("ready in time")
    .unwrap();
    let set = sleeper();
    let records: Vec<Record> = (0..2)
        .map(|o| m.processes().record(&set, o).unwrap())
        .collect();
    for r in &records {
        reaper.saw(r);
    }
    records
}

fn alive(records: &[Record]) -> Vec<bool> {
    records
        .iter()
        .map(|r| os::alive(r.pid.unwrap(), r.start_time.unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_slice_is_torn_down_and_a_new_member_adopts_or_tears_down_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("member");
    let reaper = Reaper::new(&data_dir);

    // Held, then removed: its processes go, its volumes stay (whenDeleted: Retain).
    let m = member(&data_dir).await;
    m.put(sleeper());
    let first = running(&m, &reaper).await;
    m.delete("team", "sleeper");
    until("torn down", || alive(&first) == [false, false]).await;
    let layout = m.processes().layout().clone();
    until("state files removed", || {
        layout.records().unwrap().is_empty()
    })
    .await;
    assert!(layout.volume("team", "data", "sleeper", 0).is_dir());

    // Held again, then the agent goes: nothing stops.
    m.put(sleeper());
    let second = running(&m, &reaper).await;
    drop(m);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        alive(&second),
        [true, true],
        "the agent going stops nothing"
    );

    // A new agent that still holds the set adopts the processes.
    let m = member(&data_dir).await;
    m.replace(vec![sleeper()], &[]);
    let adopted = running(&m, &reaper).await;
    assert_eq!(adopted, second, "same processes, nothing restarted");
    drop(m);

    // A new agent whose first Snapshot no longer has the set tears it down.
    let m = member(&data_dir).await;
    m.replace(vec![], &[]);
    until("leftovers torn down", || alive(&second) == [false, false]).await;
    until("their state files removed", || {
        layout.records().unwrap().is_empty()
    })
    .await;
    assert!(
        layout.volume("team", "data", "sleeper", 1).is_dir(),
        "volumes kept"
    );
    drop(m);
}
