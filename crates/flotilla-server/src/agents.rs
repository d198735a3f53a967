//! The agent protocol's server side (`proto/flotilla/v1/agent.proto`).
//!
//! One session per connected agent:
//!
//! ```text
//!   Hello ─▶ check the token against /flotilla/tokens/<cluster> (current, or the
//!            previous one within its rotation grace; `auth::Tokens::agent`)
//!        ─▶ Welcome, then Snapshot (list /flotilla/slices/<cluster>/) or, when the
//!           agent's revision is still in the store's history, nothing: the watch
//!           resumes right after it
//!        ─▶ every later Put/Delete under the prefix as a Change with its revision
//!   Heartbeat ─▶ renew the cluster's lease (/flotilla/alive/<cluster>), and write
//!                the cluster's status when readiness or capacity changed
//!   Report    ─▶ /flotilla/reports/<cluster>/<ns>/<name>, when it changed and the
//!                slice still exists
//! ```
//!
//! The cluster's identity comes from the token alone, so an agent can only ever watch
//! and report for its own cluster. Every heartbeat checks the token again, so a session
//! opened with a token since revoked or rotated past its grace ends at the next one. A second session for the same cluster (the agent
//! restarted) ends the first.
//!
//! What this server keeps in memory is bounded by what exists, not by what came and
//! went: per connected cluster its session, lease id and capacity-write time (dropped
//! when its session ends); per session the status last stored for each slice (dropped
//! when the slice is deleted); per registered cluster its last heartbeat time (kept
//! after a disconnect, for `get clusters`, and dropped by [`Agents::prune`] once the
//! cluster is deleted).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_api::{CapacityModel, ClusterStatus, InstanceSetStatus, validate};
use flotilla_proto::v1::agent_message::Message as Inbound;
use flotilla_proto::v1::agent_service_server::AgentService;
use flotilla_proto::v1::change::Change as ChangeKind;
use flotilla_proto::v1::server_message::Message as Outbound;
use flotilla_proto::v1::{
    AgentMessage, Change, Heartbeat, Hello, Report, ServerMessage, Slice, SliceRef, Snapshot,
    Welcome,
};
use flotilla_store::{Condition, Error as StoreError, Event, KeyValue, LeaseId, Store};
use futures::{Stream, StreamExt as _};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::controller::put_json;
use crate::federation;
use crate::keys::{self, Key};
use crate::metrics::{Metrics, label};
use crate::store_status;
use flotilla_api::report as reports;

/// What agent sessions share with the rest of the server.
#[derive(Debug, Default)]
pub struct Presence {
    /// The time of each cluster's last heartbeat (RFC 3339), newest first-hand.
    pub last_heartbeat: Mutex<HashMap<String, String>>,
}

impl Presence {
    pub fn last_heartbeat(&self, cluster: &str) -> Option<String> {
        lock(&self.last_heartbeat).get(cluster).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A cluster's current session.
#[derive(Debug)]
struct Connected {
    id: u64,
    /// Set to end the session (a newer one replaced it).
    stop: watch::Sender<bool>,
}

/// What one session stored for each slice it reported, so that an unchanged report
/// costs no store request. Its entries go with their slices: the session's watch
/// forgets a slice when it sends the agent its deletion.
#[derive(Debug, Default)]
struct Written {
    statuses: HashMap<keys::SetKey, InstanceSetStatus>,
    /// Deletions forgotten so far; a report that raced one is not remembered (it may
    /// be of the deleted slice).
    deletions: u64,
}

impl Written {
    fn forget(&mut self, set: &str) {
        self.deletions += 1;
        self.statuses.remove(set);
    }
}

/// How often [`Agents::prune`] looks for deleted clusters' heartbeat times.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A change of free capacity alone is stored at most this often per cluster.
const CAPACITY_EVERY: Duration = Duration::from_secs(10);

/// The agent service.
#[derive(Debug)]
pub struct Agents {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub presence: Arc<Presence>,
    /// A cluster without a heartbeat for this long goes Unknown.
    pub ttl: Duration,
    /// How often agents are asked to send one.
    pub heartbeat: Duration,
    /// The server's TLS: with `--client-ca`, an agent must present a certificate of
    /// that CA naming its cluster.
    pub tls: Option<Arc<flotilla_tls::ServerTls>>,
    /// The lease of each connected cluster.
    leases: Mutex<HashMap<String, LeaseId>>,
    /// When each connected cluster's status was last written for a capacity change.
    capacity_written: Mutex<HashMap<String, Instant>>,
    /// The session of each connected cluster. Lock order: `sessions` before any other
    /// map of this server.
    sessions: Mutex<HashMap<String, Connected>>,
    next: AtomicU64,
    /// Checks agent tokens.
    tokens: Arc<auth::Tokens>,
}

impl Agents {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        presence: Arc<Presence>,
        ttl: Duration,
        heartbeat: Duration,
        tokens: Arc<auth::Tokens>,
    ) -> Agents {
        Agents {
            store,
            metrics,
            presence,
            ttl,
            heartbeat,
            tls: None,
            leases: Mutex::new(HashMap::new()),
            capacity_written: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            tokens,
        }
    }

    /// The token must be the cluster's (see [`auth::Tokens::agent`]).
    async fn authenticate(&self, cluster: &str, token: &str) -> Result<(), Status> {
        self.tokens.agent(cluster, token).await
    }

    /// Registers a session, ending any earlier one of the same cluster.
    fn register(&self, cluster: &str) -> (u64, watch::Receiver<bool>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (stop, rx) = watch::channel(false);
        let session = Connected { id, stop };
        if let Some(old) = lock(&self.sessions).insert(cluster.to_string(), session) {
            tracing::info!(cluster, "a new session replaces the previous one");
            old.stop.send_replace(true);
        }
        (id, rx)
    }

    /// Forgets the session, and with it what this server kept for the cluster (its
    /// lease id, when its capacity was last written): the maps hold connected clusters
    /// only, however many come and go. The lease itself is left to run out (the agent
    /// may be reconnecting, here or to another server); a new session grants another
    /// and moves the alive key under it.
    ///
    /// A session that a newer one replaced leaves the maps to the newer one, unless
    /// that one has ended too: a heartbeat of the older one still in flight when the
    /// newer one ended put its entries back, and nobody else would remove them.
    fn deregister(&self, cluster: &str, id: u64) {
        let mut sessions = lock(&self.sessions);
        match sessions.get(cluster) {
            Some(current) if current.id != id => {}
            _ => {
                sessions.remove(cluster);
                lock(&self.leases).remove(cluster);
                lock(&self.capacity_written).remove(cluster);
            }
        }
    }

    /// Drops the last heartbeat time of every cluster that is not connected here and
    /// is no longer registered; returns how many went. (A connected cluster that is
    /// deleted loses its session at its next heartbeat, and its time at the next
    /// prune.)
    pub async fn prune_presence(&self) -> flotilla_store::Result<usize> {
        let candidates: Vec<String> = {
            let sessions = lock(&self.sessions);
            lock(&self.presence.last_heartbeat)
                .keys()
                .filter(|c| !sessions.contains_key(*c))
                .cloned()
                .collect()
        };
        let mut gone = Vec::new();
        for cluster in candidates {
            if self.store.get(&keys::cluster(&cluster)).await?.is_none() {
                gone.push(cluster);
            }
        }
        let sessions = lock(&self.sessions);
        let mut presence = lock(&self.presence.last_heartbeat);
        let mut pruned = 0;
        for cluster in gone {
            // Registered again and connected meanwhile: its time is current.
            if !sessions.contains_key(&cluster) && presence.remove(&cluster).is_some() {
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Runs [`Agents::prune_presence`] every minute, for ever.
    pub async fn prune(self: Arc<Self>) {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match self.prune_presence().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(clusters = n, "forgot deleted clusters' heartbeats"),
                Err(e) => tracing::warn!(error = %e, "pruning heartbeat times failed"),
            }
        }
    }

    async fn heartbeat(&self, cluster: &str, token: &str, hb: Heartbeat) -> Result<(), Status> {
        self.metrics.heartbeats.inc();
        // The cluster may have been deleted or its token replaced since the Hello.
        self.authenticate(cluster, token).await?;
        self.renew(cluster).await.map_err(store_status)?;
        let now = federation::now();
        lock(&self.presence.last_heartbeat).insert(cluster.to_string(), now.clone());
        let capacity = if hb.capacity_json.is_empty() {
            None
        } else {
            match serde_json::from_str::<CapacityModel>(&hb.capacity_json) {
                Ok(c) => Some(c),
                Err(e) => {
                    return Err(Status::invalid_argument(format!(
                        "heartbeat capacity_json: {e}"
                    )));
                }
            }
        };
        let key = keys::cluster_status(cluster);
        let stored = self.store.get(&key).await.map_err(store_status)?;
        let before: Option<ClusterStatus> = stored
            .as_ref()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let mut status = before.clone().unwrap_or_default();
        status.ready = true;
        status.reason = None;
        status.capacity = capacity;
        status.kubernetes_version = Some(hb.kubernetes_version).filter(|v| !v.is_empty());
        federation::set_ready_condition(
            &mut status,
            "True",
            "HeartbeatCurrent",
            "the agent is connected and its heartbeats are current".to_string(),
            &now,
        );
        // The heartbeat time alone is not worth a write each time: it is kept in
        // memory and persisted once a minute.
        let stale_time = before
            .as_ref()
            .and_then(|b| b.last_heartbeat_time.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_none_or(|t| jiff::Timestamp::now().duration_since(t).as_secs() >= 60);
        let mut compare = status.clone();
        compare.last_heartbeat_time = before.as_ref().and_then(|b| b.last_heartbeat_time.clone());
        compare.capacity = before.as_ref().and_then(|b| b.capacity.clone());
        let changed = before.as_ref() != Some(&compare);
        // Every instance placed changes the free capacity; storing each change would
        // re-plan every set on every heartbeat. A capacity change alone is stored at
        // most once per CAPACITY_EVERY per cluster.
        let capacity_due = before.as_ref().and_then(|b| b.capacity.as_ref())
            != status.capacity.as_ref()
            && lock(&self.capacity_written)
                .get(cluster)
                .is_none_or(|t| t.elapsed() >= CAPACITY_EVERY);
        if changed || capacity_due || stale_time {
            tracing::debug!(
                cluster,
                changed,
                capacity_due,
                stale_time,
                "cluster status written"
            );
            lock(&self.capacity_written).insert(cluster.to_string(), Instant::now());
            status.last_heartbeat_time = Some(now);
            let condition = stored.as_ref().map_or(Condition::Absent, |kv| {
                Condition::ModRevision(kv.mod_revision)
            });
            match put_json(&*self.store, &key, &status, condition).await {
                Ok(_) => {}
                // Someone (the controller marking it Unknown) wrote in between: the
                // next heartbeat writes again.
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(Status::unavailable(format!("{e:#}"))),
            }
        }
        Ok(())
    }

    /// Renews the cluster's lease, granting a new one (and putting its alive key under
    /// it) when there is none or it ended.
    ///
    /// A live lease is not enough: the alive key must still be under it. Another
    /// session (on this server or another) may have put the key under its own lease
    /// since, or the cluster was deleted and registered again; renewing a lease that
    /// holds no key would leave the cluster looking lost for ever.
    async fn renew(&self, cluster: &str) -> flotilla_store::Result<()> {
        let known = lock(&self.leases).get(cluster).copied();
        if let Some(lease) = known {
            match self.store.keep_alive(lease).await {
                Ok(_) => {
                    let key = self.store.get(&keys::alive(cluster)).await?;
                    if key.is_some_and(|kv| kv.lease == Some(lease)) {
                        return Ok(());
                    }
                    self.store
                        .put(
                            &keys::alive(cluster),
                            Bytes::from(lease.to_string()),
                            Condition::Any,
                            Some(lease),
                        )
                        .await?;
                    tracing::info!(
                        cluster,
                        lease,
                        "alive key put back under this session's lease"
                    );
                    return Ok(());
                }
                Err(StoreError::LeaseNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let lease = self.store.grant_lease(self.ttl).await?;
        self.store
            .put(
                &keys::alive(cluster),
                Bytes::from(lease.id.to_string()),
                Condition::Any,
                Some(lease.id),
            )
            .await?;
        lock(&self.leases).insert(cluster.to_string(), lease.id);
        tracing::info!(cluster, lease = lease.id, ttl = ?lease.ttl, "cluster lease granted");
        Ok(())
    }

    async fn report(
        &self,
        cluster: &str,
        report: Report,
        written: &Mutex<Written>,
    ) -> Result<(), Status> {
        let ns = if report.namespace.is_empty() {
            "default"
        } else {
            &report.namespace
        };
        if validate::dns_label(ns).is_err() || validate::dns_label(&report.name).is_err() {
            return Err(Status::invalid_argument(format!(
                "report for {ns:?}/{:?}: not a valid namespace and name",
                report.name
            )));
        }
        // Compact or plain (an agent of an earlier version), normalised either way so
        // that the same status always compares equal.
        let mut form = reports::Report::decode(report.status_json.as_bytes()).map_err(|e| {
            Status::invalid_argument(format!("report for {ns}/{}: status_json: {e}", report.name))
        })?;
        form.status = reports::normalised(&form.status);
        let status = form.status.clone();
        let set = keys::set_key(ns, &report.name);
        let deletions = {
            let written = lock(written);
            if written.statuses.get(&set) == Some(&status) {
                drop(written);
                self.metrics
                    .reports
                    .get_or_create(&label("outcome", "unchanged"))
                    .inc();
                return Ok(());
            }
            written.deletions
        };
        // Only slices the cluster holds can be reported on.
        if self
            .store
            .get(&keys::slice(cluster, &set))
            .await
            .map_err(store_status)?
            .is_none()
        {
            self.metrics
                .reports
                .get_or_create(&label("outcome", "no-slice"))
                .inc();
            return Ok(());
        }
        // Stored compact, keeping what the agent already left out to fit (and saying
        // so); one that cannot fit is refused and the stored report stays (an empty
        // one would read as no instances).
        let bytes = form.encode(reports::REPORT_LIMIT).map_err(|e| {
            self.metrics
                .reports
                .get_or_create(&label("outcome", "too-large"))
                .inc();
            Status::resource_exhausted(format!("report for {ns}/{}: {e}", report.name))
        })?;
        if !form.omitted.is_empty() {
            tracing::warn!(cluster, slice = %set, omitted = ?form.omitted, "report trimmed to fit");
        }
        let key = keys::report(cluster, &set);
        let stored = self.store.get(&key).await.map_err(store_status)?;
        if stored.as_ref().is_none_or(|kv| kv.value[..] != bytes[..]) {
            self.store
                .put(&key, bytes.into(), Condition::Any, None)
                .await
                .map_err(|e| Status::unavailable(format!("{e:#}")))?;
            self.metrics
                .reports
                .get_or_create(&label("outcome", "written"))
                .inc();
        } else {
            self.metrics
                .reports
                .get_or_create(&label("outcome", "unchanged"))
                .inc();
        }
        let mut written = lock(written);
        if written.deletions == deletions {
            written.statuses.insert(set, status);
        }
        Ok(())
    }
}

fn is_conflict(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StoreError>(),
        Some(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })
    )
}

/// Resolves once the session is told to stop.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The gRPC service over the shared [`Agents`].
#[derive(Clone, Debug)]
pub struct Service(pub Arc<Agents>);

type Outgoing = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Service {
    type SessionStream = Outgoing;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Outgoing>, Status> {
        let token = auth::bearer(request.metadata())?.to_string();
        let certs = flotilla_tls::peer_certs(&request);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))??;
        let Some(AgentMessage {
            message: Some(Inbound::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a Hello",
            ));
        };
        // With mutual TLS the certificate must be the CA's and name the cluster of the
        // token: a stolen token alone is not enough, nor another cluster's certificate.
        // It is checked first, so that without one nothing is learnt about a token.
        if let Some(tls) = self.0.tls.as_ref().filter(|t| t.verifies_clients()) {
            tls.check_client(certs.as_deref(), &hello.cluster)
                .map_err(|why| {
                    tracing::warn!(cluster = %hello.cluster, %why, "agent refused");
                    Status::permission_denied(format!("cluster {:?}: {why}", hello.cluster))
                })?;
        }
        self.0.authenticate(&hello.cluster, &token).await?;
        let cluster = hello.cluster.clone();
        let (id, stop) = self.0.register(&cluster);
        let written = Arc::new(Mutex::new(Written::default()));
        self.0.metrics.agent_sessions.inc();
        tracing::info!(
            cluster,
            resume = hello.resume_revision,
            agent = %hello.agent_version,
            "agent connected"
        );
        let (tx, rx) = mpsc::channel::<Result<ServerMessage, Status>>(256);

        let agents = self.0.clone();
        let out_tx = tx.clone();
        let mut out_stop = stop.clone();
        let out_cluster = cluster.clone();
        let out_written = Arc::clone(&written);
        tokio::spawn(async move {
            tokio::select! {
                result = agents.send_slices(&out_cluster, &hello, &out_tx, &out_written) => {
                    if let Err(status) = result {
                        tracing::warn!(cluster = %out_cluster, error = %status.message(), "agent stream ended");
                        let _ = out_tx.send(Err(status)).await;
                    }
                }
                _ = stopped(&mut out_stop) => {
                    let _ = out_tx.send(Err(Status::aborted("a newer session of this cluster replaced this one"))).await;
                }
                _ = out_tx.closed() => {}
            }
        });

        let agents = self.0.clone();
        let mut in_stop = stop;
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = stopped(&mut in_stop) => break,
                    _ = tx.closed() => break,
                };
                let result = match message {
                    Ok(Some(AgentMessage {
                        message: Some(Inbound::Heartbeat(hb)),
                    })) => agents.heartbeat(&cluster, &token, hb).await,
                    Ok(Some(AgentMessage {
                        message: Some(Inbound::Report(r)),
                    })) => agents.report(&cluster, r, &written).await,
                    Ok(Some(_)) => Err(Status::invalid_argument("Hello is only the first message")),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(cluster, error = %e.message(), "agent stream broke");
                        break;
                    }
                };
                if let Err(status) = result {
                    tracing::warn!(cluster, error = %status.message(), "agent message refused");
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
            agents.deregister(&cluster, id);
            agents.metrics.agent_sessions.dec();
            tracing::info!(cluster, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Agents {
    /// Welcome, the snapshot or the resumed history, then every change, until the
    /// agent goes away or the store fails.
    ///
    /// A slice's deletion makes the session forget what it stored for it (`written`).
    async fn send_slices(
        &self,
        cluster: &str,
        hello: &Hello,
        tx: &mpsc::Sender<Result<ServerMessage, Status>>,
        written: &Mutex<Written>,
    ) -> Result<(), Status> {
        let prefix = keys::slices_of(cluster);
        let listing = self.store.list(&prefix).await.map_err(store_status)?;
        let resume = hello.resume_revision;
        let resumed = if resume > 0 && resume <= listing.revision {
            match self.store.watch(&prefix, resume + 1).await {
                Ok(w) => Some(w),
                Err(StoreError::Compacted { .. }) => None,
                Err(e) => return Err(store_status(e)),
            }
        } else {
            None
        };
        let send = |m: Outbound| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(ServerMessage { message: Some(m) }))
                    .await
                    .map_err(|_| Status::cancelled("the agent went away"))
            }
        };
        let welcome = |resumed| Welcome {
            heartbeat_interval_ms: self.heartbeat.as_millis() as i64,
            lease_ttl_ms: self.ttl.as_millis() as i64,
            resumed,
        };
        let mut watch = match resumed {
            Some(w) => {
                self.metrics
                    .agent_streams
                    .get_or_create(&label("mode", "resume"))
                    .inc();
                send(Outbound::Welcome(welcome(true))).await?;
                w
            }
            None => {
                self.metrics
                    .agent_streams
                    .get_or_create(&label("mode", "snapshot"))
                    .inc();
                send(Outbound::Welcome(welcome(false))).await?;
                let slices = listing.items.iter().filter_map(slice_of).collect();
                send(Outbound::Snapshot(Snapshot {
                    revision: listing.revision,
                    slices,
                }))
                .await?;
                self.store
                    .watch(&prefix, listing.revision + 1)
                    .await
                    .map_err(store_status)?
            }
        };
        while let Some(event) = watch.next().await {
            let event = event.map_err(store_status)?;
            let change = match &event {
                Event::Put(kv) => slice_of(kv).map(ChangeKind::Put),
                Event::Delete { key, .. } => match Key::parse(key) {
                    Key::Slice { set, .. } => {
                        lock(written).forget(&set);
                        let (namespace, name) = keys::split_set_key(&set);
                        Some(ChangeKind::Delete(SliceRef {
                            namespace: namespace.to_string(),
                            name: name.to_string(),
                        }))
                    }
                    _ => None,
                },
            };
            if let Some(change) = change {
                send(Outbound::Change(Change {
                    revision: event.revision(),
                    change: Some(change),
                }))
                .await?;
            }
        }
        Err(Status::unavailable(
            "the store's watch ended; reconnect to resume",
        ))
    }
}

fn slice_of(kv: &KeyValue) -> Option<Slice> {
    let Key::Slice { set, .. } = Key::parse(&kv.key) else {
        return None;
    };
    let (namespace, name) = keys::split_set_key(&set);
    Some(Slice {
        namespace: namespace.to_string(),
        name: name.to_string(),
        json: String::from_utf8_lossy(&kv.value).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    //! What the server keeps per cluster and per session goes when they go: against the
    //! embedded store, with the agent service over a real socket where a session is
    //! needed.

    use flotilla_proto::v1::agent_service_client::AgentServiceClient;
    use flotilla_proto::v1::agent_service_server::AgentServiceServer;
    use flotilla_store::{EmbeddedOptions, EmbeddedStore};
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    const TOKEN: &str = "agent-secret";

    /// The agent service on a fresh embedded store, with clusters `a`, `b` and `c`
    /// registered (token [`TOKEN`] for each).
    async fn agents() -> (Arc<Agents>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(dir.path().join("s.redb"), EmbeddedOptions::default())
                .await
                .unwrap(),
        );
        for cluster in ["a", "b", "c"] {
            store
                .put(
                    &keys::cluster(cluster),
                    Bytes::from_static(b"{}"),
                    Condition::Any,
                    None,
                )
                .await
                .unwrap();
            store
                .put(
                    &keys::token(cluster),
                    auth::ClusterToken::new(auth::digest(TOKEN)).to_bytes(),
                    Condition::Any,
                    None,
                )
                .await
                .unwrap();
        }
        let tokens = Arc::new(auth::Tokens::new(store.clone(), "admin"));
        let agents = Agents::new(
            store,
            Arc::new(Metrics::new()),
            Arc::default(),
            Duration::from_secs(30),
            Duration::from_secs(1),
            tokens,
        );
        (Arc::new(agents), dir)
    }

    fn beat() -> Heartbeat {
        Heartbeat {
            capacity_json: String::new(),
            kubernetes_version: String::new(),
        }
    }

    /// Which of the per-cluster maps hold `cluster`: sessions, leases, capacity writes.
    fn kept(agents: &Agents, cluster: &str) -> [bool; 3] {
        [
            lock(&agents.sessions).contains_key(cluster),
            lock(&agents.leases).contains_key(cluster),
            lock(&agents.capacity_written).contains_key(cluster),
        ]
    }

    #[tokio::test]
    async fn a_clusters_entries_go_with_its_last_session_even_after_a_late_heartbeat() {
        let (agents, _dir) = agents().await;
        let (one, _) = agents.register("a");
        agents.heartbeat("a", TOKEN, beat()).await.unwrap();
        assert_eq!(kept(&agents, "a"), [true; 3]);

        // A newer session replaces the first: the first's end leaves its entries.
        let (two, _) = agents.register("a");
        agents.deregister("a", one);
        assert_eq!(kept(&agents, "a"), [true; 3]);
        agents.deregister("a", two);
        assert_eq!(kept(&agents, "a"), [false; 3]);

        // A replaced session's heartbeat still in flight when the newer session ended
        // puts entries back; the replaced session's own end takes them out.
        let (three, _) = agents.register("a");
        let (four, _) = agents.register("a");
        agents.deregister("a", four);
        agents.heartbeat("a", TOKEN, beat()).await.unwrap();
        assert!(
            kept(&agents, "a")[1],
            "the late heartbeat renewed the lease"
        );
        agents.deregister("a", three);
        assert_eq!(kept(&agents, "a"), [false; 3]);
    }

    #[tokio::test]
    async fn a_deleted_clusters_heartbeat_time_is_pruned_once_it_is_not_connected() {
        let (agents, _dir) = agents().await;
        for cluster in ["a", "b", "c"] {
            agents.heartbeat(cluster, TOKEN, beat()).await.unwrap();
        }
        let (b, _) = agents.register("b");
        let times = || {
            let mut t: Vec<String> = lock(&agents.presence.last_heartbeat)
                .keys()
                .cloned()
                .collect();
            t.sort();
            t
        };
        // Disconnected but registered: its time stays (`get clusters` shows it).
        assert_eq!(agents.prune_presence().await.unwrap(), 0);
        assert_eq!(times(), ["a", "b", "c"]);

        for cluster in ["a", "b"] {
            agents
                .store
                .delete(&keys::cluster(cluster), None)
                .await
                .unwrap();
        }
        assert_eq!(agents.prune_presence().await.unwrap(), 1);
        assert_eq!(times(), ["b", "c"], "b is still connected");
        agents.deregister("b", b);
        assert_eq!(agents.prune_presence().await.unwrap(), 1);
        assert_eq!(times(), ["c"]);
        assert!(agents.presence.last_heartbeat("c").is_some());
    }

    /// A scripted agent's session with `agents` over a real socket.
    struct Session {
        tx: mpsc::Sender<AgentMessage>,
        rx: Streaming<ServerMessage>,
    }

    impl Session {
        async fn open(agents: &Arc<Agents>, cluster: &str) -> Session {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(AgentServiceServer::new(Service(agents.clone())))
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
            let mut client = AgentServiceClient::connect(url).await.unwrap();
            let (tx, out) = mpsc::channel(16);
            tx.send(AgentMessage {
                message: Some(Inbound::Hello(Hello {
                    cluster: cluster.into(),
                    resume_revision: 0,
                    agent_version: "test".into(),
                })),
            })
            .await
            .unwrap();
            let mut request = Request::new(ReceiverStream::new(out));
            request.metadata_mut().insert(
                flotilla_proto::AUTHORIZATION,
                format!("Bearer {TOKEN}").parse().unwrap(),
            );
            let rx = client.session(request).await.unwrap().into_inner();
            Session { tx, rx }
        }

        async fn next(&mut self) -> Outbound {
            tokio::time::timeout(Duration::from_secs(20), self.rx.message())
                .await
                .expect("a message from the server")
                .unwrap()
                .unwrap()
                .message
                .unwrap()
        }

        async fn report(&self, name: &str, status: &InstanceSetStatus) {
            self.send(name, serde_json::to_string(status).unwrap())
                .await;
        }

        async fn send(&self, name: &str, status_json: String) {
            let report = Report {
                namespace: "default".into(),
                name: name.into(),
                status_json,
            };
            self.tx
                .send(AgentMessage {
                    message: Some(Inbound::Report(report)),
                })
                .await
                .unwrap();
        }
    }

    async fn stored_report(store: &dyn Store, key: &str) -> Option<InstanceSetStatus> {
        let kv = store.get(key).await.unwrap()?;
        Some(reports::Report::decode(&kv.value).unwrap().status)
    }

    async fn until_stored(store: &dyn Store, key: &str, status: &InstanceSetStatus) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while stored_report(store, key).await.as_ref() != Some(status) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the report stored");
    }

    #[tokio::test]
    async fn a_deleted_slice_is_forgotten_so_its_successor_gets_the_same_report_stored() {
        let (agents, _dir) = agents().await;
        let store = agents.store.clone();
        let mut s = Session::open(&agents, "a").await;
        assert!(matches!(s.next().await, Outbound::Welcome(_)));
        assert!(matches!(s.next().await, Outbound::Snapshot(_)));
        let slice = keys::slice("a", "default/r");
        let report = keys::report("a", "default/r");
        let status = InstanceSetStatus {
            observed_generation: Some(1),
            replicas: 2,
            ..InstanceSetStatus::default()
        };

        store
            .put(&slice, Bytes::from_static(b"{}"), Condition::Any, None)
            .await
            .unwrap();
        assert!(matches!(s.next().await, Outbound::Change(_)));
        s.report("r", &status).await;
        until_stored(&*store, &report, &status).await;

        // The slice goes (and its report with it, as the controller does), then a new
        // slice of the same name comes, whose first status is the same as the old one's.
        store.delete(&slice, None).await.unwrap();
        store.delete(&report, None).await.unwrap();
        assert!(matches!(
            s.next().await,
            Outbound::Change(Change {
                change: Some(ChangeKind::Delete(_)),
                ..
            })
        ));
        store
            .put(&slice, Bytes::from_static(b"{}"), Condition::Any, None)
            .await
            .unwrap();
        assert!(matches!(
            s.next().await,
            Outbound::Change(Change {
                change: Some(ChangeKind::Put(_)),
                ..
            })
        ));
        s.report("r", &status).await;
        until_stored(&*store, &report, &status).await;
    }

    fn instances(n: u32, ready: impl Fn(u32) -> bool) -> InstanceSetStatus {
        InstanceSetStatus {
            observed_generation: Some(1),
            replicas: n,
            ready_replicas: (0..n).filter(|o| ready(*o)).count() as u32,
            instances: (0..n)
                .rev()
                .map(|o| flotilla_api::InstanceStatus {
                    ordinal: o,
                    phase: Some("Running".into()),
                    ready: ready(o),
                    node: Some(format!("n{}", o % 4)),
                    endpoint: Some(format!("r-{o}.n{}.sim:6379", o % 4)),
                    ..flotilla_api::InstanceStatus::default()
                })
                .collect(),
            ..InstanceSetStatus::default()
        }
    }

    #[tokio::test]
    async fn a_plain_report_is_stored_compact_and_one_too_large_is_refused_keeping_the_last() {
        let (agents, _dir) = agents().await;
        let store = agents.store.clone();
        let mut s = Session::open(&agents, "a").await;
        assert!(matches!(s.next().await, Outbound::Welcome(_)));
        assert!(matches!(s.next().await, Outbound::Snapshot(_)));
        let slice = keys::slice("a", "default/r");
        let report = keys::report("a", "default/r");
        store
            .put(&slice, Bytes::from_static(b"{}"), Condition::Any, None)
            .await
            .unwrap();
        assert!(matches!(s.next().await, Outbound::Change(_)));

        // 2,000 instances sent plain (in reverse order, as an older agent might).
        let status = instances(2_000, |_| true);
        let plain = serde_json::to_vec(&status).unwrap().len();
        s.report("r", &status).await;
        let expected = reports::normalised(&status);
        until_stored(&*store, &report, &expected).await;
        let kv = store.get(&report).await.unwrap().unwrap();
        assert!(
            kv.value.len() * 20 < plain,
            "stored {} bytes for a plain {plain}",
            kv.value.len()
        );

        // Readiness without a pattern over 300,000 ordinals cannot fit even as groups.
        let hostile = instances(300_000, |o| {
            o.wrapping_mul(2_654_435_761).rotate_left(7) & 1 == 0
        });
        // Sent compact without a bound (plain it would pass the 4 MiB message limit).
        let mut form = reports::Report::from_status(&hostile);
        let json = String::from_utf8(form.encode(usize::MAX).unwrap()).unwrap();
        assert!(json.len() > reports::REPORT_LIMIT);
        s.send("r", json).await;
        let refused = || {
            agents
                .metrics
                .reports
                .get_or_create(&label("outcome", "too-large"))
                .get()
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            while refused() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the report refused");
        assert_eq!(stored_report(&*store, &report).await, Some(expected));

        // The session goes on: the next report that fits is stored.
        let next = instances(3, |o| o != 1);
        s.report("r", &next).await;
        until_stored(&*store, &report, &reports::normalised(&next)).await;
    }
}
