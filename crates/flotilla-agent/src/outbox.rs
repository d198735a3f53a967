//! The session's outbound queue: what the agent has to tell the server, held until the
//! gRPC request stream takes it, in memory bounded by the number of held slices.
//!
//! ```text
//!   session loop ── report(slice, status) ──▶ ┌ Hello        (once, first)
//!   heartbeat task ── heartbeat(beat) ──────▶ │ Heartbeat    (the newest; one slot)
//!                                             └ Reports      (one per slice, newest status,
//!                                                             oldest-queued slice first)
//!                                                   │ Outgoing (a Stream), polled by tonic
//!                                                   ▼ as HTTP/2 flow control allows
//!                                             request stream ──▶ server
//! ```
//!
//! The server may take messages slowly (its store is slow, it is overloaded) or not at
//! all for a while (a stalled connection before the keepalive finds it). Nothing here
//! grows with that time:
//!
//! - A report of a slice that already has one waiting replaces it, in place (its turn
//!   is kept, so a slice whose status changes all the time does not starve the others).
//!   Reports are statuses, level-triggered: only the newest matters to the server.
//! - A heartbeat replaces a waiting one (the newest capacity is the one worth sending),
//!   and goes out before any waiting report, so a backlog of reports never delays the
//!   lease's renewal by more than what is already in flight (the HTTP/2 window and one
//!   encoded chunk).
//! - A waiting report of a slice no longer held is dropped ([`Outbox::retain`]).
//!
//! Two halves share the queue: [`Outbox`] (cloned by the session's tasks) queues;
//! [`Outgoing`] is the request stream. When the session ends, [`Outbox::close`] ends
//! the stream; when the transport drops the stream, queueing fails with
//! [`Error::Closed`].

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use flotilla_proto::v1::{AgentMessage, Heartbeat, Hello, Report, agent_message};
use futures::Stream;

use crate::metrics::SessionMetrics;
use crate::{Error, Result};

/// The queueing half (cheap to clone: every clone queues into the same stream).
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

/// The stream half: what the gRPC request stream yields.
#[derive(Debug)]
pub(crate) struct Outgoing {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    metrics: Arc<SessionMetrics>,
}

/// What waits to go out.
#[derive(Debug, Default)]
struct Queue {
    hello: Option<Hello>,
    heartbeat: Option<Heartbeat>,
    /// The waiting report of each slice (by `namespace/name`) with its turn.
    reports: HashMap<String, (u64, Report)>,
    /// Slices with a waiting report, by turn (the order they were first queued in).
    turns: BTreeMap<u64, String>,
    next_turn: u64,
    /// The session ended: the stream ends (what waits is dropped).
    closed: bool,
    /// The stream was dropped: nothing queued would ever go out.
    gone: bool,
    /// The stream's task, waiting for something to send.
    waker: Option<Waker>,
}

/// A new queue whose first message is `hello`.
pub(crate) fn outbox(hello: Hello, metrics: Arc<SessionMetrics>) -> (Outbox, Outgoing) {
    metrics.reports_pending.set(0);
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            hello: Some(hello),
            ..Queue::default()
        }),
        metrics,
    });
    (
        Outbox {
            shared: Arc::clone(&shared),
        },
        Outgoing { shared },
    )
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the queue unless the stream is gone or closed, then wakes the stream.
    fn queue(&self, f: impl FnOnce(&mut Queue, &SessionMetrics)) -> Result<()> {
        let waker = {
            let mut queue = self.lock();
            if queue.gone || queue.closed {
                return Err(Error::Closed);
            }
            f(&mut queue, &self.metrics);
            self.metrics.reports_pending.set(queue.reports.len() as i64);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Outbox {
    /// Queues a heartbeat ahead of every report, replacing one still waiting.
    pub(crate) fn heartbeat(&self, heartbeat: Heartbeat) -> Result<()> {
        self.shared.queue(|queue, metrics| {
            if queue.heartbeat.replace(heartbeat).is_some() {
                metrics.heartbeats_coalesced.inc();
            }
        })
    }

    /// Queues the report of slice `key` (`namespace/name`), replacing (in its turn) the
    /// one still waiting for that slice.
    pub(crate) fn report(&self, key: &str, report: Report) -> Result<()> {
        self.shared.queue(|queue, metrics| {
            metrics.reports_queued.inc();
            if let Some((_, waiting)) = queue.reports.get_mut(key) {
                *waiting = report;
                metrics.reports_coalesced.inc();
                return;
            }
            let turn = queue.next_turn;
            queue.next_turn += 1;
            queue.turns.insert(turn, key.to_string());
            queue.reports.insert(key.to_string(), (turn, report));
        })
    }

    /// Drops the waiting reports of slices `keep` says are no longer held.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) -> Result<()> {
        self.shared.queue(|queue, _| {
            let Queue { reports, turns, .. } = queue;
            reports.retain(|key, (turn, _)| {
                let kept = keep(key);
                if !kept {
                    turns.remove(turn);
                }
                kept
            });
        })
    }

    /// Ends the stream; what still waits is dropped. Later queueing fails.
    pub(crate) fn close(&self) {
        let waker = {
            let mut queue = self.shared.lock();
            queue.closed = true;
            queue.hello = None;
            queue.heartbeat = None;
            queue.reports.clear();
            queue.turns.clear();
            self.shared.metrics.reports_pending.set(0);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Queue {
    /// The next message due: the Hello, a heartbeat, then the report whose turn came.
    fn pop(&mut self, metrics: &SessionMetrics) -> Option<agent_message::Message> {
        if let Some(hello) = self.hello.take() {
            return Some(agent_message::Message::Hello(hello));
        }
        if let Some(heartbeat) = self.heartbeat.take() {
            metrics.heartbeat();
            return Some(agent_message::Message::Heartbeat(heartbeat));
        }
        let (_, key) = self.turns.pop_first()?;
        let (_, report) = self.reports.remove(&key)?;
        metrics.reports_sent.inc();
        metrics.reports_pending.set(self.reports.len() as i64);
        Some(agent_message::Message::Report(report))
    }
}

impl Stream for Outgoing {
    type Item = AgentMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AgentMessage>> {
        let mut queue = self.shared.lock();
        if queue.closed {
            return Poll::Ready(None);
        }
        match queue.pop(&self.shared.metrics) {
            Some(message) => Poll::Ready(Some(AgentMessage {
                message: Some(message),
            })),
            None => {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.gone = true;
        queue.reports.clear();
        queue.turns.clear();
        self.shared.metrics.reports_pending.set(0);
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt as _, StreamExt as _};

    use super::*;

    fn hello() -> Hello {
        Hello {
            cluster: "a".into(),
            resume_revision: 0,
            agent_version: "test".into(),
        }
    }

    fn report(key: &str, value: u32) -> Report {
        let (namespace, name) = key.split_once('/').unwrap();
        Report {
            namespace: namespace.into(),
            name: name.into(),
            status_json: value.to_string(),
        }
    }

    fn beat(version: &str) -> Heartbeat {
        Heartbeat {
            capacity_json: String::new(),
            kubernetes_version: version.into(),
        }
    }

    /// What the stream yields now, without waiting.
    fn ready(out: &mut Outgoing) -> Vec<agent_message::Message> {
        let mut got = Vec::new();
        while let Some(Some(m)) = out.next().now_or_never() {
            got.push(m.message.unwrap());
        }
        got
    }

    /// Short names for what went out: `hello`, `hb:<version>`, `<slice>=<status>`.
    fn names(messages: &[agent_message::Message]) -> Vec<String> {
        messages
            .iter()
            .map(|m| match m {
                agent_message::Message::Hello(_) => "hello".to_string(),
                agent_message::Message::Heartbeat(h) => format!("hb:{}", h.kubernetes_version),
                agent_message::Message::Report(r) => {
                    format!("{}/{}={}", r.namespace, r.name, r.status_json)
                }
            })
            .collect()
    }

    #[test]
    fn many_changes_of_few_slices_wait_as_one_report_each_with_the_newest_status() {
        let metrics = Arc::new(SessionMetrics::default());
        let (outbox, mut out) = outbox(hello(), metrics.clone());
        for round in 0..1000 {
            for key in ["ns/a", "ns/b", "ns/c"] {
                outbox.report(key, report(key, round)).unwrap();
            }
            assert!(metrics.reports_pending.get() <= 3);
        }
        // A slice first queued later waits behind the others, whatever changes after.
        outbox.report("ns/d", report("ns/d", 0)).unwrap();
        outbox.report("ns/a", report("ns/a", 1000)).unwrap();
        assert_eq!(metrics.reports_pending.get(), 4);
        assert_eq!(
            names(&ready(&mut out)),
            ["hello", "ns/a=1000", "ns/b=999", "ns/c=999", "ns/d=0"]
        );
        assert_eq!(metrics.reports_queued.get(), 3002);
        assert_eq!(metrics.reports_sent.get(), 4);
        assert_eq!(metrics.reports_coalesced.get(), 2998);
        assert_eq!(metrics.reports_pending.get(), 0);
    }

    #[test]
    fn a_heartbeat_goes_out_before_every_waiting_report() {
        let metrics = Arc::new(SessionMetrics::default());
        let (outbox, mut out) = outbox(hello(), metrics.clone());
        assert_eq!(names(&ready(&mut out)), ["hello"]);
        for i in 0..100 {
            outbox
                .report(&format!("ns/s{i}"), report(&format!("ns/s{i}"), 1))
                .unwrap();
        }
        outbox.heartbeat(beat("1")).unwrap();
        let first = out.next().now_or_never().flatten().unwrap();
        assert_eq!(names(&[first.message.unwrap()]), ["hb:1"]);
        // Two heartbeats before the stream takes one: the newer goes, once.
        outbox.heartbeat(beat("2")).unwrap();
        outbox.heartbeat(beat("3")).unwrap();
        let rest = names(&ready(&mut out));
        assert_eq!(rest[0], "hb:3");
        assert_eq!(rest.len(), 101, "{rest:?}");
        assert!(rest[1..].iter().all(|m| !m.starts_with("hb:")));
        assert_eq!(metrics.heartbeats.get(), 2);
        assert_eq!(metrics.heartbeats_coalesced.get(), 1);
    }

    #[test]
    fn reports_of_slices_no_longer_held_are_dropped() {
        let metrics = Arc::new(SessionMetrics::default());
        let (outbox, mut out) = outbox(hello(), metrics.clone());
        for key in ["ns/a", "ns/b", "ns/c"] {
            outbox.report(key, report(key, 1)).unwrap();
        }
        outbox.retain(|key| key != "ns/b").unwrap();
        assert_eq!(metrics.reports_pending.get(), 2);
        // Queued again later: a new turn, behind the others.
        outbox.report("ns/b", report("ns/b", 2)).unwrap();
        outbox.report("ns/a", report("ns/a", 2)).unwrap();
        assert_eq!(
            names(&ready(&mut out)),
            ["hello", "ns/a=2", "ns/c=1", "ns/b=2"]
        );
    }

    #[tokio::test]
    async fn the_stream_waits_for_what_is_queued_and_ends_when_the_session_closes() {
        let metrics = Arc::new(SessionMetrics::default());
        let (outbox, mut out) = outbox(hello(), metrics.clone());
        assert_eq!(names(&ready(&mut out)), ["hello"]);
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = out.next().await {
                got.push(m.message.unwrap());
            }
            names(&got)
        });
        tokio::task::yield_now().await;
        outbox.report("ns/a", report("ns/a", 1)).unwrap();
        tokio::task::yield_now().await;
        outbox.heartbeat(beat("1")).unwrap();
        tokio::task::yield_now().await;
        outbox.close();
        assert_eq!(waiting.await.unwrap(), ["ns/a=1", "hb:1"]);
        assert!(outbox.report("ns/a", report("ns/a", 2)).is_err());
        assert_eq!(metrics.reports_pending.get(), 0);
    }

    #[test]
    fn queueing_fails_once_the_stream_is_gone() {
        let metrics = Arc::new(SessionMetrics::default());
        let (outbox, out) = outbox(hello(), metrics.clone());
        outbox.report("ns/a", report("ns/a", 1)).unwrap();
        drop(out);
        assert!(matches!(outbox.heartbeat(beat("1")), Err(Error::Closed)));
        assert!(matches!(
            outbox.report("ns/a", report("ns/a", 2)),
            Err(Error::Closed)
        ));
        assert_eq!(metrics.reports_pending.get(), 0);
    }
}
