//! The commit phase: a plan's actions sent concurrently, in dependency order, within a
//! bound on requests in flight and a client-side rate limit.
//!
//! ```text
//!   Plan.actions ──▶ dependencies: an action waits for every earlier action on one
//!                    of its ordinals (a switchover is on both of its ordinals)
//!        ready ──▶ permit (≤ max_concurrent in flight, across every set of the
//!                  controller) ──▶ token (qps, burst) ──▶ the request
//!        done  ──▶ its dependents may start; failed ──▶ they are skipped, and theirs
//! ```
//!
//! So a volume is created before the pod that mounts it, a switchover completes before
//! anything else touches either instance, and the actions of one ordinal go in the
//! planner's order; actions on different ordinals go out together. A refused action
//! skips what depends on it, transitively (a failed switchover too: nothing touches
//! the old primary after one; a switchover after a failed action on one of its
//! instances waits for the next pass). Ready actions start in plan order (the
//! semaphore is fair), so with `max_concurrent: 1` the requests go one at a time in
//! plan order. A Redis set's switchover is Redis commands, not API writes: it runs
//! outside the write bound and the rate.
//!
//! The rate limit is a token bucket (as client-go's): `burst` requests at once, then
//! `qps` a second; a request that finds no token reserves the next one and waits for
//! it, so waiters are served in order. Reads (observe, probes) are not limited: a pass
//! reads a few lists, and the writes are what a plan multiplies.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_instanceset::Action;
use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[cfg(test)]
use crate::Error;
use crate::Result;
use crate::metrics::MemberMetrics;

/// How a controller sends its writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CommitOptions {
    /// Writes in flight at once, across every set of the controller (at least 1; 1 is
    /// the sequential commit).
    pub max_concurrent: usize,
    /// Writes a second once the burst is spent; 0 for no limit.
    pub qps: f64,
    /// Writes that may go out at once before `qps` applies (at least 1).
    pub burst: u32,
}

impl CommitOptions {
    /// One write at a time, unlimited rate: the commit as it was before it was
    /// concurrent, and the baseline of `cargo xtask bench member`.
    pub const SEQUENTIAL: CommitOptions = CommitOptions {
        max_concurrent: 1,
        qps: 0.0,
        burst: 1,
    };

    /// Checks the options, naming the flag of a bad one.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.max_concurrent == 0 {
            return Err("--max-concurrent-writes: must be at least 1".into());
        }
        if !self.qps.is_finite() || self.qps < 0.0 || (self.qps > 0.0 && self.qps < MIN_QPS) {
            return Err(format!(
                "--write-qps: must be a number of writes a second from {MIN_QPS}, or 0 for no limit, not {}",
                self.qps
            ));
        }
        if self.burst == 0 {
            return Err("--write-burst: must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for CommitOptions {
    /// 16 writes in flight, 200 a second after a burst of 400: well above what one
    /// sequential client gets from a loaded API server (5–20 ms a write), well below
    /// what makes API priority and fairness push back.
    fn default() -> Self {
        CommitOptions {
            max_concurrent: 16,
            qps: 200.0,
            burst: 400,
        }
    }
}

/// The least rate limit: one write in 100 s.
const MIN_QPS: f64 = 0.01;

/// What the commit phase has sent since the controller started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Writes sent (actions and status writes).
    pub sent: u64,
    /// The most writes that were in flight at once.
    pub peak_in_flight: usize,
}

/// The shared part: the bound, the bucket and the counters.
#[derive(Debug)]
pub(crate) struct Limits {
    options: CommitOptions,
    permits: Semaphore,
    bucket: Mutex<Bucket>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    sent: AtomicU64,
    metrics: Arc<MemberMetrics>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens at `at`; negative when waiters have reserved tokens yet to come.
    tokens: f64,
    at: Instant,
}

impl Limits {
    pub(crate) fn new(options: CommitOptions, metrics: Arc<MemberMetrics>) -> Limits {
        let options = CommitOptions {
            max_concurrent: options.max_concurrent.max(1),
            burst: options.burst.max(1),
            qps: if options.qps.is_finite() && options.qps > 0.0 {
                options.qps.max(MIN_QPS)
            } else {
                0.0
            },
        };
        Limits {
            options,
            permits: Semaphore::new(options.max_concurrent),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(options.burst),
                at: Instant::now(),
            }),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            metrics,
        }
    }

    pub(crate) fn options(&self) -> CommitOptions {
        self.options
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            sent: self.sent.load(Ordering::Relaxed),
            peak_in_flight: self.peak.load(Ordering::Relaxed),
        }
    }

    /// How long the next write must wait for its token; takes (reserves) it.
    fn reserve(&self) -> Duration {
        let qps = self.options.qps;
        if qps == 0.0 {
            return Duration::ZERO;
        }
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * qps;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(self.options.burst));
        bucket.at = now;
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-bucket.tokens / qps).unwrap_or(Duration::MAX)
        }
    }

    /// Sends one write within the bound and the rate.
    pub(crate) async fn send<T>(&self, write: impl Future<Output = T>) -> T {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.metrics.writes.inc();
        self.metrics.writes_in_flight.inc();
        // Out of flight however the write ends, dropped (a cancelled pass) included.
        let _landed = Landed(self);
        write.await
    }
}

/// Takes a write out of flight when dropped.
struct Landed<'a>(&'a Limits);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.0.metrics.writes_in_flight.dec();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What became of one action.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    /// Sent: its result.
    Done(Result<T>),
    /// Not sent: an action it depends on failed or was skipped.
    Skipped,
}

/// The ordinals an action is about: what orders it against the others.
fn ordinals(action: &Action) -> Vec<u32> {
    match action {
        Action::CreateVolume { ordinal, .. }
        | Action::Create { ordinal }
        | Action::SetRole { ordinal, .. }
        | Action::UpdateInPlace { ordinal }
        | Action::Recreate { ordinal, .. }
        | Action::Delete { ordinal }
        | Action::DeleteVolume { ordinal, .. } => vec![*ordinal],
        Action::Switchover { from, to, .. } => vec![*from, *to],
    }
}

/// Each action's dependencies: the latest earlier action on each of its ordinals.
fn dependencies(actions: &[Action]) -> Vec<BTreeSet<usize>> {
    let mut last: BTreeMap<u32, usize> = BTreeMap::new();
    actions
        .iter()
        .enumerate()
        .map(|(i, action)| {
            let mut deps = BTreeSet::new();
            for o in ordinals(action) {
                if let Some(j) = last.insert(o, i) {
                    deps.insert(j);
                }
            }
            deps
        })
        .collect()
}

/// Runs `actions` with `run`, in dependency order (see the module documentation), and
/// returns each one's outcome, in plan order. At most `bound` of this plan's actions
/// are started at once, so a plan of 10,000 holds a bounded number of futures; `run`
/// sends what is an API write through [`Limits::send`] (a Redis switchover is not:
/// it would hold a write permit for as long as Redis takes).
pub(crate) async fn commit<'a, T, F, Fut>(
    bound: usize,
    actions: &'a [Action],
    run: F,
) -> Vec<Outcome<T>>
where
    F: Fn(&'a Action) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deps = dependencies(actions);
    let mut waiting: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); actions.len()];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            dependents[j].push(i);
        }
    }
    let mut outcomes: Vec<Option<Outcome<T>>> = (0..actions.len()).map(|_| None).collect();
    // Ready to start, in plan order.
    let mut ready: BTreeSet<usize> = (0..actions.len()).filter(|&i| waiting[i] == 0).collect();
    let mut in_flight = FuturesUnordered::new();
    let bound = bound.max(1);
    loop {
        while in_flight.len() < bound
            && let Some(i) = ready.pop_first()
        {
            let write = run(&actions[i]);
            in_flight.push(async move { (i, write.await) });
        }
        let Some((i, result)) = in_flight.next().await else {
            break;
        };
        let ok = result.is_ok();
        outcomes[i] = Some(Outcome::Done(result));
        // Its dependents: ready when this was their last dependency, skipped (with
        // theirs) when it failed.
        let mut released = vec![(i, ok)];
        while let Some((j, ok)) = released.pop() {
            for &k in &dependents[j] {
                if !ok && outcomes[k].is_none() {
                    outcomes[k] = Some(Outcome::Skipped);
                    ready.remove(&k);
                    released.push((k, false));
                    continue;
                }
                waiting[k] -= 1;
                if waiting[k] == 0 && outcomes[k].is_none() {
                    ready.insert(k);
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Skipped))
        .collect()
}

#[cfg(test)]
mod tests {
    //! The schedule against a fake write that records when each action starts and ends
    //! (in paused tokio time, so the record is exact).

    use super::*;

    fn create(ordinal: u32) -> [Action; 2] {
        [
            Action::CreateVolume {
                ordinal,
                claim: "data".into(),
            },
            Action::Create { ordinal },
        ]
    }

    /// Runs `actions`, each taking 10 ms, failing those named in `fail`; returns the
    /// outcomes and, per action, its (start, end) in ms.
    async fn run(
        limits: &Limits,
        actions: &[Action],
        fail: &[&str],
    ) -> (Vec<Outcome<()>>, BTreeMap<String, (u64, u64)>) {
        let t0 = Instant::now();
        let log = Arc::new(Mutex::new(BTreeMap::new()));
        let bound = limits.options().max_concurrent;
        let outcomes = commit(bound, actions, |action| {
            let log = Arc::clone(&log);
            let name = action.to_string();
            let fails = fail.contains(&name.as_str());
            limits.send(async move {
                let start = t0.elapsed().as_millis() as u64;
                tokio::time::sleep(Duration::from_millis(10)).await;
                let end = t0.elapsed().as_millis() as u64;
                log.lock().unwrap().insert(name.clone(), (start, end));
                if fails {
                    Err(Error::Backend(format!("{name} refused")))
                } else {
                    Ok(())
                }
            })
        })
        .await;
        let log = log.lock().unwrap().clone();
        (outcomes, log)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_goes_after_its_volume_and_ordinals_go_together() {
        let limits = Limits::new(
            CommitOptions {
                max_concurrent: 8,
                qps: 0.0,
                burst: 1,
            },
            Arc::default(),
        );
        let actions: Vec<Action> = (0..3).flat_map(create).collect();
        let (outcomes, log) = run(&limits, &actions, &[]).await;
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Done(Ok(())))));
        for o in 0..3 {
            let volume = log[&format!("create-volume data-{o}")];
            let pod = log[&format!("create {o}")];
            assert!(
                pod.0 >= volume.1,
                "pod {o} {pod:?} after its volume {volume:?}"
            );
            assert_eq!(volume.0, 0, "every volume at once: {log:?}");
        }
        assert_eq!(limits.stats().peak_in_flight, 3);
        assert_eq!(limits.stats().sent, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_holds_and_one_at_a_time_is_the_plan_order() {
        let limits = Limits::new(CommitOptions::SEQUENTIAL, Arc::default());
        let actions: Vec<Action> = (0..4).flat_map(create).collect();
        let (_, log) = run(&limits, &actions, &[]).await;
        let mut order: Vec<(u64, String)> = log.iter().map(|(k, v)| (v.0, k.clone())).collect();
        order.sort();
        let names: Vec<String> = order.into_iter().map(|(_, n)| n).collect();
        let planned: Vec<String> = actions.iter().map(ToString::to_string).collect();
        assert_eq!(names, planned);
        assert_eq!(limits.stats().peak_in_flight, 1);

        let limits = Limits::new(
            CommitOptions {
                max_concurrent: 2,
                qps: 0.0,
                burst: 1,
            },
            Arc::default(),
        );
        run(&limits, &actions, &[]).await;
        assert_eq!(limits.stats().peak_in_flight, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_switchover_waits_for_both_instances_and_holds_them_until_done() {
        let limits = Limits::new(CommitOptions::default(), Arc::default());
        let actions = vec![
            Action::SetRole {
                ordinal: 2,
                role: Some("secondary".into()),
                version: 3,
            },
            Action::Create { ordinal: 5 },
            Action::Switchover {
                role: "primary".into(),
                from: 0,
                to: 2,
            },
            Action::UpdateInPlace { ordinal: 0 },
            Action::UpdateInPlace { ordinal: 1 },
        ];
        let (_, log) = run(&limits, &actions, &[]).await;
        let switchover = log["switchover primary 0->2"];
        assert!(switchover.0 >= log["set-role 2=secondary"].1, "{log:?}");
        assert!(log["update-in-place 0"].0 >= switchover.1, "{log:?}");
        assert_eq!(log["update-in-place 1"].0, 0, "another ordinal: at once");
        assert_eq!(log["create 5"].0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_skips_what_depends_on_it_and_only_that() {
        let limits = Limits::new(CommitOptions::default(), Arc::default());
        let mut actions: Vec<Action> = (0..3).flat_map(create).collect();
        actions.push(Action::Switchover {
            role: "primary".into(),
            from: 1,
            to: 2,
        });
        actions.push(Action::Delete { ordinal: 2 });
        let (outcomes, log) = run(&limits, &actions, &["create-volume data-1"]).await;
        let names: Vec<String> = actions.iter().map(ToString::to_string).collect();
        let skipped: Vec<&str> = names
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Outcome::Skipped))
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(skipped, ["create 1", "switchover primary 1->2", "delete 2"]);
        assert!(log.contains_key("create 2") && log.contains_key("create 0"));
        assert!(!log.contains_key("create 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_lets_a_burst_through_then_paces() {
        let limits = Limits::new(
            CommitOptions {
                max_concurrent: 100,
                qps: 10.0,
                burst: 5,
            },
            Arc::default(),
        );
        let actions: Vec<Action> = (0..15).map(|ordinal| Action::Delete { ordinal }).collect();
        let (_, log) = run(&limits, &actions, &[]).await;
        let mut starts: Vec<u64> = log.values().map(|v| v.0).collect();
        starts.sort_unstable();
        assert_eq!(&starts[..5], &[0; 5], "the burst at once: {starts:?}");
        // Then one every 100 ms: the 15th after 10 more tokens, 1 s.
        assert_eq!(starts[5], 100, "{starts:?}");
        assert_eq!(starts[14], 1000, "{starts:?}");
    }

    #[test]
    fn bad_options_name_their_flag() {
        let bad = |o: CommitOptions| o.check().unwrap_err();
        assert!(
            bad(CommitOptions {
                max_concurrent: 0,
                ..CommitOptions::default()
            })
            .starts_with("--max-concurrent-writes")
        );
        assert!(
            bad(CommitOptions {
                qps: -1.0,
                ..CommitOptions::default()
            })
            .starts_with("--write-qps")
        );
        assert!(
            bad(CommitOptions {
                burst: 0,
                ..CommitOptions::default()
            })
            .starts_with("--write-burst")
        );
        assert!(
            bad(CommitOptions {
                qps: 1e-30,
                ..CommitOptions::default()
            })
            .starts_with("--write-qps")
        );
        CommitOptions::default().check().unwrap();
        CommitOptions::SEQUENTIAL.check().unwrap();
    }
}
