//! `flotilla proxy`: one stable address for a Redis shard that always reaches its
//! current primary.
//!
//! ```text
//! client ──RESP──▶ conn (one session per client: auth, deny list, audit)
//!                    │ one backend connection each, to the primary of its generation
//!                    ▼
//!                 primary (candidates from the federation / sentinels / a test,
//!                          verified with ROLE, re-verified; published by generation)
//! ```
//!
//! Modules: [`resp`] the bounded wire reader, [`conn`] the client session,
//! [`primary`] discovery, [`policy`] auth/deny/audit, [`metrics`] the HTTP port.
//! The federation's gRPC watch is the binary's (it feeds [`primary::Offers`]), so that
//! this crate knows Redis and not the federation's API.
//!
//! Architecture invariant: the proxy never routes to an instance that `ROLE` did not
//! call `master` in the last `verify_every`, and a session never writes to a primary
//! once a newer one is published.

pub mod conn;
pub mod metrics;
pub mod policy;
pub mod primary;
pub mod resp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use metrics::Metrics;
pub use policy::{Audit, Policy};
pub use primary::{BackendAuth, Offers, Primary, Source, Timing};

/// How the proxy runs.
#[derive(Debug)]
pub struct Config {
    /// `NS/NAME` of the set, for messages.
    pub set: String,
    /// Passwords and the deny list.
    pub policy: Policy,
    /// Where denied and admin commands are recorded.
    pub audit: Audit,
    /// How long a stopping proxy lets connections finish their in-flight commands.
    pub drain: Duration,
    /// How long a new client's first command waits for a verified primary.
    pub wait_for_primary: Duration,
    /// Discovery's timings.
    pub timing: Timing,
    /// The proxy's own credentials to Redis, if the instances require them.
    pub backend_auth: Option<BackendAuth>,
    /// How long a command the primary refuses for now (`-NOREPLICAS` while its
    /// replicas come back after a failover, `-LOADING`) is held and sent again before
    /// the refusal reaches the client. Only for a connection with that one command in
    /// flight and no state on its Redis connection.
    pub hold_refused: Duration,
    /// Where read-only commands go.
    pub reads: Reads,
}

/// Where read-only commands go (`--reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reads {
    /// Everything to the primary.
    #[default]
    Primary,
    /// A read-only command (of [`conn::READ_ONLY`]) from a connection with nothing in
    /// flight and no state on its Redis connection goes to a caught-up replica of the
    /// primary, when there is one: a replica lags, so a client may not read its own
    /// latest writes.
    Replicas,
}

impl Config {
    /// Defaults for `set`: no passwords, the default deny list, no audit log.
    pub fn new(set: impl Into<String>) -> Config {
        Config {
            set: set.into(),
            policy: Policy::new(None, None),
            audit: Audit::none(),
            drain: Duration::from_secs(10),
            wait_for_primary: Duration::from_secs(5),
            timing: Timing::default(),
            backend_auth: None,
            hold_refused: Duration::from_secs(2),
            reads: Reads::Primary,
        }
    }
}

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Shared {
    set: String,
    policy: Policy,
    audit: Audit,
    metrics: Arc<Metrics>,
    primary: watch::Receiver<Primary>,
    drain: Duration,
    wait_for_primary: Duration,
    offers: Offers,
    backend_auth: Option<BackendAuth>,
    hold_refused: Duration,
    reads: Reads,
    readable: watch::Receiver<Vec<String>>,
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Feeds primary candidates and sentinels to discovery.
    pub offers: Offers,
    /// The proxy's metrics (serve them with [`metrics::serve`]).
    pub metrics: Arc<Metrics>,
    /// The primary as published.
    pub primary: watch::Receiver<Primary>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    discovery: tokio::task::JoinHandle<()>,
}

/// Starts serving clients on `listener`.
pub fn start(listener: TcpListener, config: Config) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::default());
    let published = primary::start(config.timing, config.backend_auth.clone(), metrics.clone());
    let (offers, primary, discovery) = (published.offers, published.primary, published.task);
    let shared = Arc::new(Shared {
        set: config.set,
        policy: config.policy,
        audit: config.audit,
        metrics: metrics.clone(),
        primary: primary.clone(),
        drain: config.drain,
        wait_for_primary: config.wait_for_primary,
        offers: offers.clone(),
        backend_auth: config.backend_auth,
        hold_refused: config.hold_refused,
        reads: config.reads,
        readable: published.readable,
    });
    let (stop, stopped) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, shared, stopped));
    Ok(Running {
        addr,
        offers,
        metrics,
        primary,
        stop,
        accept,
        discovery,
    })
}

impl Running {
    /// Stops accepting, lets every connection finish its in-flight commands (within
    /// the drain time), then returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.accept.await;
        self.discovery.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    shared.metrics.connections_total.inc();
                    sessions.spawn(conn::serve(stream, peer, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(connections = sessions.len(), "stopped accepting; draining");
    // Each session drains within `drain`; a little more for the last writes.
    let deadline = shared.drain + Duration::from_secs(1);
    if tokio::time::timeout(deadline, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            left = sessions.len(),
            "connections still open after draining; closing them"
        );
        sessions.abort_all();
    }
}
