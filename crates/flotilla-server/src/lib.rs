//! The federation server: the user API and the agent protocol over gRPC, the
//! federation controller, cluster health, and `/metrics` `/healthz` `/readyz` over HTTP.
//!
//! ```text
//!  flotilla CLI ──gRPC (user token)──▶ api ──decide, validate──▶ store ◀── controller
//!                                                          ▲  │      (plan, slices,
//!  agents ──gRPC stream (cluster token)──▶ agents ─────────┘  │       status)
//!     ▲  heartbeats → lease, reports                          │
//!     └────────────── slices of its cluster (watch) ◀─────────┘
//! ```
//!
//! All state is in the [`Store`] (see [`keys`] for the layout); the server itself
//! keeps only caches, so it can be killed at any moment and restarted, against etcd or
//! the embedded file. Any number of servers may share one etcd: they all serve the user
//! API and agents, and the one that holds the leader lease runs the federation
//! controller (see [`leader`]).

mod agents;
mod api;
mod audit;
mod auth;
mod controller;
mod counted;
mod decide;
mod drain;
mod federation;
mod fence;
mod http;
pub mod keys;
pub mod leader;
mod metrics;
mod migration;
mod queue;
pub mod records;
mod redis;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use flotilla_proto::v1::agent_service_server::AgentServiceServer;
use flotilla_proto::v1::federation_server::FederationServer;
use flotilla_store::{Condition, Store};
use flotilla_tls::{Alpn, Incoming};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

pub use auth::generate as generate_token;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// gRPC address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// HTTP address for metrics and health (port 0 picks a free one).
    pub http: SocketAddr,
    /// The user API's token; `None`: the one kept in the store, generated on the
    /// first start.
    pub admin_token: Option<String>,
    /// A cluster without a heartbeat for this long goes Unknown.
    pub cluster_ttl: Duration,
    /// How often agents send heartbeats.
    pub heartbeat: Duration,
    /// History older than this is compacted away (agents further behind get a
    /// snapshot when they reconnect).
    pub history: Duration,
    /// The leader lease's TTL: how long the servers go without a federation controller
    /// when the leader dies without resigning.
    pub leader_ttl: Duration,
    /// TLS on both ports (`--tls-cert`/`--tls-key`, mutual with `--client-ca`); its
    /// files are re-read when they change. `None`: plaintext.
    pub tls: Option<Arc<flotilla_tls::ServerTls>>,
    /// Audit records older than this are pruned (default 30 days).
    pub audit_retention: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: ([127, 0, 0, 1], 7443).into(),
            http: ([127, 0, 0, 1], 7080).into(),
            admin_token: None,
            cluster_ttl: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            history: Duration::from_secs(600),
            leader_ttl: Duration::from_secs(10),
            tls: None,
            audit_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Where gRPC is served.
    pub grpc: SocketAddr,
    /// Where HTTP is served.
    pub http: SocketAddr,
    /// The user API's token.
    pub admin_token: String,
    /// This server's identity in the leader election.
    pub identity: String,
    /// Where this server stands in the leader election.
    pub election: watch::Receiver<leader::State>,
    /// Whether both ports serve TLS.
    pub tls: bool,
    store: Arc<dyn Store>,
    lease: Arc<std::sync::Mutex<Option<flotilla_store::LeaseId>>>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The gRPC URL clients dial.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc)
    }

    /// Stops serving and every background task, and gives up the lead if it has it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        leader::Elector::resign(&*self.store, &self.lease).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds both ports and starts serving; returns once both listen.
pub async fn start(store: Arc<dyn Store>, config: Config) -> anyhow::Result<Running> {
    let admin_token = admin_token(&*store, config.admin_token.clone()).await?;
    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening for gRPC on {}", config.listen))?;
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("listening for HTTP on {}", config.http))?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    let metrics = Arc::new(metrics::Metrics::new());
    let store: Arc<dyn Store> = Arc::new(counted::Counted::new(store, metrics.clone()));
    let presence = Arc::new(agents::Presence::default());
    let (synced_tx, synced) = watch::channel(false);
    let identity = leader::identity(grpc_addr);
    let (election_tx, election) = watch::channel(leader::State::Campaigning);
    let lease = Arc::new(std::sync::Mutex::new(None));
    let (term_tx, terms) = watch::channel(None);
    let elector = leader::Elector {
        store: store.clone(),
        identity: identity.clone(),
        ttl: config.leader_ttl,
        state: election_tx,
        metrics: metrics.clone(),
        lease: lease.clone(),
        term: term_tx,
    };
    // Every controller write goes through the fence: it commits only while this
    // server's term as leader lasts.
    let fenced = Arc::new(fence::Fenced::new(store.clone(), terms, metrics.clone()));

    let controller = controller::Controller {
        store: fenced.clone(),
        fence: fenced,
        metrics: metrics.clone(),
        ttl: config.cluster_ttl,
        synced: synced_tx,
    };
    let tokens = Arc::new(auth::Tokens::new(store.clone(), &admin_token));
    let api = Arc::new(api::Api {
        store: store.clone(),
        metrics: metrics.clone(),
        presence: presence.clone(),
        tokens: tokens.clone(),
    });
    let mut agents = agents::Agents::new(
        store.clone(),
        metrics.clone(),
        presence,
        config.cluster_ttl,
        config.heartbeat,
        tokens,
    );
    agents.tls = config.tls.clone();
    let agents = Arc::new(agents);
    // Every call is authorized by the Api itself (`auth::decide`), per RPC.
    let federation = FederationServer::new(api::Service(api));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(elector.run()));
    tasks.push(tokio::spawn(controller.run()));
    tasks.push(tokio::spawn(compact(store.clone(), config.history)));
    let tls = config.tls.clone();
    if let Some(tls) = &tls {
        tasks.push(tls.watch(flotilla_tls::RELOAD_EVERY));
    }
    let grpc = Port::new(grpc, tls.as_ref(), Alpn::H2)?;
    let http_listener = Port::new(http_listener, tls.as_ref(), Alpn::Http1)?;
    tasks.push(tokio::spawn(audit::prune(
        store.clone(),
        config.audit_retention,
    )));
    // Deleted clusters' last heartbeat times.
    tasks.push(tokio::spawn(Arc::clone(&agents).prune()));
    tasks.push(tokio::spawn(async move {
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(federation)
            .add_service(AgentServiceServer::new(agents::Service(agents)));
        let stopped = async {
            let _ = stop_rx.await;
            let _ = http_stop_tx.send(());
        };
        let result = match grpc {
            Port::Tls(incoming) => router.serve_with_incoming_shutdown(incoming, stopped).await,
            Port::Plain(plain) => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(plain), stopped)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));
    let router = http::router(http::Http {
        metrics,
        store: store.clone(),
        synced,
        election: election.clone(),
    });
    tasks.push(tokio::spawn(async move {
        let stopped = async {
            let _ = http_stop_rx.await;
        };
        let result = match http_listener {
            Port::Tls(incoming) => {
                axum::serve(incoming, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            Port::Plain(plain) => {
                axum::serve(plain, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        tls = tls.is_some(),
        client_certs = tls.as_ref().is_some_and(|t| t.verifies_clients()),
        %identity,
        "flotilla server listening"
    );
    Ok(Running {
        grpc: grpc_addr,
        http: http_addr,
        admin_token,
        identity,
        election,
        tls: tls.is_some(),
        store,
        lease,
        stop: Some(stop_tx),
        tasks,
    })
}

/// A bound port, plaintext or TLS.
enum Port {
    Plain(TcpListener),
    Tls(Incoming),
}

impl Port {
    fn new(
        listener: TcpListener,
        tls: Option<&Arc<flotilla_tls::ServerTls>>,
        alpn: Alpn,
    ) -> std::io::Result<Port> {
        Ok(match tls {
            Some(tls) => Port::Tls(Incoming::new(listener, tls.clone(), alpn)?),
            None => Port::Plain(listener),
        })
    }
}

/// The given token, else the stored one, else a new one (stored for the next start).
async fn admin_token(store: &dyn Store, given: Option<String>) -> anyhow::Result<String> {
    if let Some(t) = given {
        anyhow::ensure!(!t.trim().is_empty(), "--admin-token: must not be empty");
        return Ok(t);
    }
    if let Some(kv) = store.get(keys::ADMIN_TOKEN).await? {
        return Ok(String::from_utf8_lossy(&kv.value).into_owned());
    }
    let token = auth::generate()?;
    match store
        .put(
            keys::ADMIN_TOKEN,
            Bytes::from(token.clone()),
            Condition::Absent,
            None,
        )
        .await
    {
        Ok(_) => Ok(token),
        // Another server generated one first: use it.
        Err(flotilla_store::Error::AlreadyExists { .. }) => {
            let kv = store
                .get(keys::ADMIN_TOKEN)
                .await?
                .context("the admin token vanished")?;
            Ok(String::from_utf8_lossy(&kv.value).into_owned())
        }
        Err(e) => Err(e.into()),
    }
}

/// Forgets history older than `keep`, once a minute: watches (agents resuming) from
/// before it get a snapshot instead.
async fn compact(store: Arc<dyn Store>, keep: Duration) {
    let mut seen: std::collections::VecDeque<(tokio::time::Instant, i64)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Ok(listing) = store.list(keys::ADMIN_TOKEN).await else {
            continue;
        };
        let now = tokio::time::Instant::now();
        seen.push_back((now, listing.revision));
        let mut target = None;
        while let Some(&(t, rev)) = seen.front() {
            if now.duration_since(t) >= keep {
                target = Some(rev);
                seen.pop_front();
            } else {
                break;
            }
        }
        if let Some(rev) = target
            && let Err(e) = store.compact(rev).await
        {
            tracing::warn!(revision = rev, error = %e, "compaction failed");
        }
    }
}

/// A store failure as a gRPC status.
pub(crate) fn store_status(e: flotilla_store::Error) -> Status {
    use flotilla_store::Error as E;
    match e {
        E::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        E::Conflict { .. } | E::TxnRefused { .. } => Status::aborted(format!("{e}; retry")),
        E::Timeout { .. } => Status::deadline_exceeded(format!("the store did not answer: {e}")),
        E::Compacted { .. } | E::FutureRevision { .. } => Status::out_of_range(e.to_string()),
        E::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        E::Etcd { .. } | E::WatchClosed | E::WatchCancelled { .. } => {
            Status::unavailable(format!("the store is unavailable: {e}"))
        }
        _ => Status::internal(e.to_string()),
    }
}
