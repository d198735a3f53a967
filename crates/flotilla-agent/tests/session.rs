//! The agent against a fake federation server over real sockets: a tonic
//! `AgentService` on 127.0.0.1:0 whose every session the test scripts (what the server
//! sends) and inspects (the token, the Hello, every message the agent sends), with a
//! `SimMember` running in real time underneath.
//!
//! Nothing here asserts a duration: waits are for liveness, with generous timeouts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::{Member, Options, SessionMetrics, SimMember, Statuses};
use flotilla_api::{CapacityModel, InstanceSet, InstanceSetStatus, NodeGroup};
use flotilla_member::Backend as _;
use flotilla_member::sim::SimConfig;
use flotilla_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use flotilla_proto::v1::{
    AgentMessage, Change, Heartbeat, Hello, Report, ServerMessage, Slice, SliceRef, Snapshot,
    Welcome, agent_message, change, server_message,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// Long enough for anything that should happen; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The fake server.
// ---------------------------------------------------------------------------------------

/// One session as the fake server saw it open.
struct Session {
    /// The `authorization` metadata.
    token: String,
    hello: Hello,
    /// What the server sends; dropping it ends the session's stream.
    to_agent: mpsc::UnboundedSender<Result<ServerMessage, Status>>,
    /// What the agent sent after its Hello.
    from_agent: mpsc::UnboundedReceiver<agent_message::Message>,
    /// The last status reported for each slice in this session.
    reported: BTreeMap<String, InstanceSetStatus>,
}

impl Session {
    fn send(&self, message: server_message::Message) {
        self.to_agent
            .send(Ok(ServerMessage {
                message: Some(message),
            }))
            .expect("the session is open");
    }

    fn welcome(&self, resumed: bool) {
        self.send(server_message::Message::Welcome(Welcome {
            heartbeat_interval_ms: 100,
            lease_ttl_ms: 1000,
            resumed,
        }));
    }

    fn snapshot(&self, revision: i64, slices: Vec<Slice>) {
        self.send(server_message::Message::Snapshot(Snapshot {
            revision,
            slices,
        }));
    }

    fn put(&self, revision: i64, slice: Slice) {
        self.send(server_message::Message::Change(Change {
            revision,
            change: Some(change::Change::Put(slice)),
        }));
    }

    fn delete(&self, revision: i64, namespace: &str, name: &str) {
        self.send(server_message::Message::Change(Change {
            revision,
            change: Some(change::Change::Delete(SliceRef {
                namespace: namespace.into(),
                name: name.into(),
            })),
        }));
    }

    async fn next(&mut self) -> agent_message::Message {
        tokio::time::timeout(PATIENCE, self.from_agent.recv())
            .await
            .expect("the agent sent something in time")
            .expect("the agent's stream is open")
    }

    /// Waits for a Report of `namespace/name` whose status satisfies `done`.
    async fn report_until(
        &mut self,
        key: &str,
        done: impl Fn(&InstanceSetStatus) -> bool,
    ) -> InstanceSetStatus {
        if let Some(status) = self.reported.get(key).filter(|s| done(s)) {
            return status.clone();
        }
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                if let agent_message::Message::Report(Report {
                    namespace,
                    name,
                    status_json,
                }) = self.next().await
                {
                    let status = decode(&status_json);
                    let this = format!("{namespace}/{name}");
                    self.reported.insert(this.clone(), status.clone());
                    if this == key && done(&status) {
                        return status;
                    }
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "no report of {key} as expected; the last: {:?}",
                self.reported.get(key)
            )
        })
    }

    /// Waits for a Heartbeat that satisfies `done`.
    async fn heartbeat_until(&mut self, done: impl Fn(&Heartbeat) -> bool) -> Heartbeat {
        let mut last = None;
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                if let agent_message::Message::Heartbeat(h) = self.next().await {
                    if done(&h) {
                        return h;
                    }
                    last = Some(h);
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| panic!("no heartbeat as expected; the last: {last:?}"))
    }
}

/// Hands every session to the test; refuses every token with `refuse`.
struct Fake {
    sessions: mpsc::UnboundedSender<Session>,
    refuse: Option<Status>,
    /// When set, what the agent sends after its Hello is read only while it says
    /// `true` (HTTP/2 flow control then stops the agent's stream).
    reading: Option<watch::Receiver<bool>>,
}

#[tonic::async_trait]
impl AgentService for Fake {
    type SessionStream = UnboundedReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if let Some(status) = &self.refuse {
            return Err(status.clone());
        }
        let token = request
            .metadata()
            .get(flotilla_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                message: Some(agent_message::Message::Hello(h)),
            }) => h,
            other => {
                return Err(Status::invalid_argument(format!(
                    "no Hello first: {other:?}"
                )));
            }
        };
        let (to_agent, outbound) = mpsc::unbounded_channel();
        let (forward, from_agent) = mpsc::unbounded_channel();
        let mut reading = self.reading.clone();
        tokio::spawn(async move {
            loop {
                if let Some(reading) = reading.as_mut() {
                    let _ = reading.wait_for(|r| *r).await;
                }
                let Ok(Some(AgentMessage { message: Some(m) })) = inbound.message().await else {
                    break;
                };
                if forward.send(m).is_err() {
                    break;
                }
            }
        });
        let _ = self.sessions.send(Session {
            token,
            hello,
            to_agent,
            from_agent,
            reported: BTreeMap::new(),
        });
        Ok(Response::new(UnboundedReceiverStream::new(outbound)))
    }
}

/// Starts a fake server; returns its URL and the sessions as they open.
async fn fake_server(refuse: Option<Status>) -> (String, mpsc::UnboundedReceiver<Session>) {
    serve(Fake {
        sessions: mpsc::unbounded_channel().0,
        refuse,
        reading: None,
    })
    .await
}

/// Starts a fake server that reads what agents send only while `reading` says so, with
/// HTTP/2's smallest windows (64 KiB), so that an agent's stream stops soon after.
async fn gated_server(
    reading: watch::Receiver<bool>,
) -> (String, mpsc::UnboundedReceiver<Session>) {
    serve(Fake {
        sessions: mpsc::unbounded_channel().0,
        refuse: None,
        reading: Some(reading),
    })
    .await
}

async fn serve(mut fake: Fake) -> (String, mpsc::UnboundedReceiver<Session>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sessions, opened) = mpsc::unbounded_channel();
    fake.sessions = sessions;
    let small = fake.reading.is_some().then_some(65_535);
    let service = AgentServiceServer::new(fake);
    tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(small)
            .initial_connection_window_size(small)
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (url, opened)
}

async fn next_session(opened: &mut mpsc::UnboundedReceiver<Session>) -> Session {
    tokio::time::timeout(PATIENCE, opened.recv())
        .await
        .expect("the agent connected in time")
        .expect("the server runs")
}

// ---------------------------------------------------------------------------------------
// Test data.
// ---------------------------------------------------------------------------------------

/// Three nodes of 4 cpu / 16Gi / 110 pods; instances start and become ready after
/// 100 ms each.
fn sim_config() -> SimConfig {
    SimConfig::from_text(
        "nodeGroups: [{count: 3, free: {cpu: '4', memory: 16Gi, pods: 110}}]\nstartDelayMs: 100\nreadyDelayMs: 100\n",
    )
    .unwrap()
}

/// A slice `namespace/name` running `ordinals` (`{"ranges": ...}`), one cpu each.
fn slice(
    namespace: &str,
    name: &str,
    ordinals: serde_json::Value,
    extra: serde_json::Value,
) -> Slice {
    let mut set = serde_json::json!({
        "apiVersion": "flotilla.io/v1alpha1",
        "kind": "InstanceSet",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {
            "ordinals": ordinals,
            "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}},
        },
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            set["spec"][k] = v;
        }
    }
    Slice {
        namespace: namespace.into(),
        name: name.into(),
        json: set.to_string(),
    }
}

fn set_of(slice: &Slice) -> InstanceSet {
    serde_json::from_str(&slice.json).unwrap()
}

async fn held_until(
    held: &mut watch::Receiver<flotilla_agent::Held>,
    done: impl Fn(&flotilla_agent::Held) -> bool,
) {
    tokio::time::timeout(PATIENCE, held.wait_for(|h| done(h)))
        .await
        .expect("the member held the slices in time")
        .unwrap();
}

fn keys(held: &flotilla_agent::Held) -> BTreeSet<&str> {
    held.keys().map(String::as_str).collect()
}

/// Starts an agent for cluster `a` with token `s3cret`; returns its stop switch and
/// its outcome.
fn agent<M: Member>(
    url: &str,
    member: Arc<M>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<flotilla_agent::Result<()>>,
) {
    agent_counted(url, member, Arc::default())
}

/// [`agent`], counting into `metrics`.
fn agent_counted<M: Member>(
    url: &str,
    member: Arc<M>,
    metrics: Arc<SessionMetrics>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<flotilla_agent::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let mut options = Options::new(url, "a", "s3cret");
    options.backoff_initial = Duration::from_millis(20);
    options.backoff_max = Duration::from_millis(200);
    options.metrics = metrics;
    let run = tokio::spawn(flotilla_agent::run(options, member, async move {
        let _ = stopped.await;
    }));
    (stop, run)
}

/// A member whose statuses the test sets, whose every heartbeat says which it is (its
/// Kubernetes version is `v1.<n>` for the n-th), and whose `replace` can be made to
/// hold its thread (a slow application of a Snapshot) until the test lets it go.
#[derive(Default)]
struct Scripted {
    statuses: watch::Sender<Statuses>,
    beats: std::sync::atomic::AtomicU64,
    /// When set, `replace` says it started (once) and waits for the other end.
    hold: std::sync::Mutex<Option<(oneshot::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

impl Member for Scripted {
    fn replace(&self, _: Vec<InstanceSet>, _: &[String]) {
        let hold = self.hold.lock().unwrap().take();
        if let Some((started, release)) = hold {
            let _ = started.send(());
            // Busy for as long as the test says, as a long, CPU-bound application
            // would be (the runtime's other tasks move to another thread).
            tokio::task::block_in_place(|| {
                let _ = release.recv();
            });
        }
    }

    fn put(&self, _: InstanceSet) {}

    fn delete(&self, _: &str, _: &str) {}

    fn statuses(&self) -> watch::Receiver<Statuses> {
        self.statuses.subscribe()
    }

    async fn capacity(&self) -> flotilla_agent::Result<CapacityModel> {
        Ok(CapacityModel::default())
    }

    async fn kubernetes_version(&self) -> flotilla_agent::Result<String> {
        let n = self.beats.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Ok(format!("v1.{n}"))
    }
}

/// Which heartbeat this is (see [`Scripted`]).
fn beat_number(h: &Heartbeat) -> u64 {
    h.kubernetes_version
        .strip_prefix("v1.")
        .and_then(|n| n.parse().ok())
        .expect("a scripted heartbeat")
}

/// A status of about 16 KiB saying `round` (its observed generation).
/// A report as the agent sends it: the compact form of `flotilla_api::report`.
fn decode(json: &str) -> InstanceSetStatus {
    flotilla_api::report::Report::decode(json.as_bytes())
        .expect("the agent sends a report the server can read")
        .status
}

fn big_status(round: i64) -> InstanceSetStatus {
    InstanceSetStatus {
        observed_generation: Some(round),
        conditions: vec![flotilla_api::status::Condition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: "Test".into(),
            message: "x".repeat(16 * 1024),
            last_transition_time: None,
        }],
        ..InstanceSetStatus::default()
    }
}

/// Waits until `done` holds, checking every few milliseconds.
async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_holds_its_slices_reports_them_and_resumes_after_a_broken_stream() {
    let (url, mut opened) = fake_server(None).await;
    let member = SimMember::new(&sim_config());
    let mut held = member.held();
    let (stop, run) = agent(&url, member.clone());

    // Hello: the cluster, no revision yet, the bearer token.
    let mut s = next_session(&mut opened).await;
    assert_eq!(s.token, "Bearer s3cret");
    assert_eq!(s.hello.cluster, "a");
    assert_eq!(s.hello.resume_revision, 0);
    assert!(!s.hello.agent_version.is_empty());

    // A snapshot: held at once, then the instances become ready and are reported.
    let redis = slice(
        "cache",
        "redis",
        serde_json::json!({"ranges": [{"start": 0, "end": 2}]}),
        serde_json::json!({}),
    );
    let other = slice(
        "cache",
        "other",
        serde_json::json!({"discrete": [7]}),
        serde_json::json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"},
                           "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}),
    );
    s.welcome(false);
    s.snapshot(5, vec![redis.clone(), other.clone()]);
    held_until(&mut held, |h| {
        keys(h) == BTreeSet::from(["cache/other", "cache/redis"])
    })
    .await;
    let status = s
        .report_until("cache/redis", |st| st.ready_replicas == 3)
        .await;
    assert_eq!(status.replicas, 3);
    s.report_until("cache/other", |st| st.ready_replicas == 1)
        .await;

    // Heartbeats carry the simulated capacity (three nodes, three cpus taken by redis
    // and one by other).
    let expected = member.sim().capacity().await.unwrap();
    let beat = s
        .heartbeat_until(|h| {
            serde_json::from_str::<CapacityModel>(&h.capacity_json).ok() == Some(expected.clone())
        })
        .await;
    assert_eq!(beat.kubernetes_version, "");
    let nodes: u32 = expected
        .node_groups
        .iter()
        .map(|g: &NodeGroup| g.count)
        .sum();
    assert_eq!(nodes, 3);

    // A change puts a bigger redis; another deletes `other`: its instance and (with
    // whenDeleted: Delete) its volume go.
    let bigger = slice(
        "cache",
        "redis",
        serde_json::json!({"ranges": [{"start": 0, "end": 3}]}),
        serde_json::json!({}),
    );
    s.put(6, bigger.clone());
    s.report_until("cache/redis", |st| st.ready_replicas == 4)
        .await;
    assert_eq!(member.held().borrow()["cache/redis"], set_of(&bigger));
    s.delete(7, "cache", "other");
    held_until(&mut held, |h| keys(h) == BTreeSet::from(["cache/redis"])).await;
    let gone = set_of(&other);
    tokio::time::timeout(PATIENCE, async {
        loop {
            let observed = member.sim().observe(&gone).await.unwrap();
            if observed.instances.is_empty() && observed.volumes.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the deleted slice's instance and volume went");
    assert!(!member.statuses().borrow().contains_key("cache/other"));

    // The server drops the stream: the agent comes back from revision 7 and reports
    // every status again.
    drop(s);
    let mut s = next_session(&mut opened).await;
    assert_eq!(s.hello.resume_revision, 7);
    assert_eq!(s.token, "Bearer s3cret");
    s.welcome(true);
    s.report_until("cache/redis", |st| st.ready_replicas == 4)
        .await;

    // A stale change (already applied) is ignored; a new snapshot replaces everything.
    s.delete(6, "cache", "redis");
    s.snapshot(9, vec![other.clone()]);
    held_until(&mut held, |h| keys(h) == BTreeSet::from(["cache/other"])).await;
    s.report_until("cache/other", |st| st.ready_replicas == 1)
        .await;

    // And the next session resumes from the snapshot's revision.
    drop(s);
    let s = next_session(&mut opened).await;
    assert_eq!(s.hello.resume_revision, 9);

    // A snapshot whose slice for `other` does not decode: `other` is unknown, not
    // gone, and what runs for it stays. (A change the agent can read follows, so the
    // snapshot has been applied when it shows.)
    s.welcome(false);
    let before = member.held().borrow()["cache/other"].clone();
    let broken = Slice {
        namespace: "cache".into(),
        name: "other".into(),
        json: r#"{"spec": 42}"#.into(),
    };
    s.snapshot(10, vec![broken]);
    s.put(11, redis.clone());
    held_until(&mut held, |h| {
        keys(h) == BTreeSet::from(["cache/other", "cache/redis"])
    })
    .await;
    assert_eq!(member.held().borrow()["cache/other"], before);
    let observed = member.sim().observe(&set_of(&other)).await.unwrap();
    assert_eq!(observed.instances.len(), 1, "other's instance still runs");

    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the agent stopped")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_refused_token_is_an_error_naming_the_cluster() {
    for status in [
        Status::unauthenticated("unknown token"),
        Status::permission_denied("token is not cluster a's"),
    ] {
        let (url, _opened) = fake_server(Some(status.clone())).await;
        let member = SimMember::new(&sim_config());
        let (_stop, run) = agent(&url, member);
        let e = tokio::time::timeout(PATIENCE, run)
            .await
            .expect("the agent gave up in time")
            .unwrap()
            .unwrap_err();
        assert!(e.is_refusal(), "{e:?}");
        let text = e.chain();
        assert!(text.contains("\"a\""), "{text}");
        assert!(text.contains(status.message()), "{text}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_retried_until_shutdown() {
    // A port nothing listens on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let member = SimMember::new(&sim_config());
    let (stop, run) = agent(&url, member);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!run.is_finished(), "a connection failure is not fatal");
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the agent stopped")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_malformed_url_or_token_is_refused_at_once() {
    let member = SimMember::new(&sim_config());
    let e = flotilla_agent::run(
        Options::new("not a url", "a", "t"),
        member.clone(),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not a url"), "{e}");
    let e = flotilla_agent::run(
        Options::new("http://127.0.0.1:1", "a", "bad\ntoken"),
        member,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, flotilla_agent::Error::InvalidToken), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_costs_one_report_per_slice_and_gets_the_heartbeat_first() {
    const SLICES: i64 = 20;
    const ROUNDS: i64 = 30;
    let (reading, gate) = watch::channel(false);
    let (url, mut opened) = gated_server(gate).await;
    let member = Arc::new(Scripted::default());
    let keys: Vec<String> = (0..SLICES).map(|i| format!("ns/s{i}")).collect();
    let all = |round: i64| -> Statuses {
        keys.iter()
            .map(|k| (k.clone(), big_status(round)))
            .collect()
    };
    member.statuses.send_replace(all(0));
    let metrics = Arc::new(SessionMetrics::default());
    let (stop, run) = agent_counted(&url, member.clone(), metrics.clone());
    let mut s = next_session(&mut opened).await;
    s.welcome(false);

    // The server reads nothing after the Hello. Every slice's status changes again and
    // again (each round seen by the agent before the next): however many changes, the
    // agent holds at most one report per slice, its newest.
    let queued = |rounds: i64| (rounds * SLICES) as u64;
    until("the first reports queued", || {
        metrics.reports_queued.get() == queued(1)
    })
    .await;
    for round in 1..=ROUNDS {
        member.statuses.send_replace(all(round));
        until("the round's reports queued", || {
            metrics.reports_queued.get() == queued(round + 1)
        })
        .await;
        assert!(metrics.reports_pending.get() <= SLICES, "round {round}");
    }
    assert_eq!(
        metrics.reports_pending.get(),
        SLICES,
        "the stream stopped before the last round: every slice's newest report waits"
    );
    assert!(metrics.reports_coalesced.get() >= queued(ROUNDS - 1));
    assert_eq!(
        metrics.reports_sent.get()
            + metrics.reports_coalesced.get()
            + metrics.reports_pending.get() as u64,
        metrics.reports_queued.get()
    );

    // Heartbeats are still made meanwhile; one made after the last round must not wait
    // behind the reports queued before it.
    let after_last_round = member.beats.load(std::sync::atomic::Ordering::SeqCst) + 1;
    until("a heartbeat made after the last round was queued", || {
        member.beats.load(std::sync::atomic::Ordering::SeqCst) > after_last_round
    })
    .await;
    assert!(metrics.heartbeats_coalesced.get() >= 1);

    // The server reads again.
    reading.send_replace(true);
    let mut received = Vec::new();
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    while newest.len() < SLICES as usize || newest.values().any(|r| *r != ROUNDS) {
        let m = s.next().await;
        if let agent_message::Message::Report(r) = &m {
            let status = decode(&r.status_json);
            let round = status.observed_generation.unwrap();
            let before = newest.insert(format!("{}/{}", r.namespace, r.name), round);
            assert!(
                before.is_none_or(|b| b < round),
                "reports of a slice in order"
            );
        }
        received.push(m);
    }
    let first_of_last_round = received
        .iter()
        .position(|m| {
            matches!(m, agent_message::Message::Report(r)
                if decode(&r.status_json).observed_generation == Some(ROUNDS))
        })
        .unwrap();
    let heartbeat = received.iter().position(
        |m| matches!(m, agent_message::Message::Heartbeat(h) if beat_number(h) >= after_last_round),
    );
    assert!(
        heartbeat.is_some_and(|h| h < first_of_last_round),
        "a heartbeat made after the last round goes out before that round's reports \
         (heartbeat at {heartbeat:?}, first report of the last round at {first_of_last_round})"
    );
    let reports = received
        .iter()
        .filter(|m| matches!(m, agent_message::Message::Report(_)))
        .count() as u64;
    assert!(
        reports < queued(ROUNDS + 1) / 4,
        "{reports} reports of {} changes reached the server",
        queued(ROUNDS + 1)
    );
    until("nothing waits", || metrics.reports_pending.get() == 0).await;
    assert_eq!(metrics.reports_sent.get(), reports);

    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the agent stopped")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_while_the_agent_is_busy_applying_a_snapshot() {
    let (url, mut opened) = fake_server(None).await;
    let member = Arc::new(Scripted::default());
    let (started, busy) = oneshot::channel();
    let (release, released) = std::sync::mpsc::channel();
    *member.hold.lock().unwrap() = Some((started, released));
    let (stop, run) = agent(&url, member.clone());
    let mut s = next_session(&mut opened).await;
    s.welcome(false);
    s.snapshot(1, vec![]);
    tokio::time::timeout(PATIENCE, busy)
        .await
        .expect("the agent applies the snapshot")
        .unwrap();

    // While the session is busy applying, three heartbeats made after it started
    // reach the server.
    let since = member.beats.load(std::sync::atomic::Ordering::SeqCst);
    for n in 1..=3 {
        let h = s.heartbeat_until(|h| beat_number(h) >= since + n).await;
        assert!(beat_number(&h) > since);
    }
    release.send(()).unwrap();

    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the agent stopped")
        .unwrap()
        .unwrap();
}
