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
    leases: Mutex<HashMap<String, LeaseId>>,
    /// When each cluster's status was last written for a capacity change.
    capacity_written: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
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
        let (tx, rx) = watch::channel(false);
        if let Some((_, old)) = lock(&self.sessions).insert(cluster.to_string(), (id, tx)) {
            tracing::info!(cluster, "a new session replaces the previous one");
            old.send_replace(true);
        }
        (id, rx)
    }

    /// Forgets the session, and with it what this server kept for the cluster (its
    /// lease id, when its capacity was last written): the maps hold connected clusters
    /// only, however many come and go. The lease itself is left to run out (the agent
    /// may be reconnecting, here or to another server); a new session grants another
    /// and moves the alive key under it.
    fn deregister(&self, cluster: &str, id: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(cluster).is_some_and(|(i, _)| *i == id) {
            sessions.remove(cluster);
            lock(&self.leases).remove(cluster);
            lock(&self.capacity_written).remove(cluster);
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
        written: &mut HashMap<String, InstanceSetStatus>,
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
        let status: InstanceSetStatus = serde_json::from_str(&report.status_json).map_err(|e| {
            Status::invalid_argument(format!("report for {ns}/{}: status_json: {e}", report.name))
        })?;
        let set = keys::set_key(ns, &report.name);
        if written.get(&set) == Some(&status) {
            self.metrics
                .reports
                .get_or_create(&label("outcome", "unchanged"))
                .inc();
            return Ok(());
        }
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
        let key = keys::report(cluster, &set);
        let stored = self.store.get(&key).await.map_err(store_status)?;
        let same = stored
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<InstanceSetStatus>(&kv.value).ok())
            .is_some_and(|s| s == status);
        if !same {
            put_json(&*self.store, &key, &status, Condition::Any)
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
        written.insert(set, status);
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
        tokio::spawn(async move {
            tokio::select! {
                result = agents.send_slices(&out_cluster, &hello, &out_tx) => {
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
            let mut written = HashMap::new();
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
                    })) => agents.report(&cluster, r, &mut written).await,
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
    async fn send_slices(
        &self,
        cluster: &str,
        hello: &Hello,
        tx: &mpsc::Sender<Result<ServerMessage, Status>>,
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
