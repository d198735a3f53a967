//! The connection loop: one resumable session with the federation server at a time.
//!
//! ```text
//!          ┌────────────────────────── broken (after backoff) ───────────────────────┐
//!          ▼                                                                         │
//!   Connecting ── Hello{cluster, resume_revision} ──▶ Welcomed ──▶ Streaming ─────────┘
//!      │ refused (Unauthenticated / PermissionDenied) before any session was welcomed
//!      ▼
//!   run() returns Error::Refused
//! ```
//!
//! The agent keeps one number across sessions: the revision of the last Snapshot or
//! Change it applied. A new session's Hello carries it (0 before the first), so the
//! server sends either every change after it (`Welcome.resumed`) or a Snapshot that
//! replaces everything held. Applying a message and taking its revision happen with no
//! await in between, so a session cancelled at any point never claims a revision it
//! did not apply.
//!
//! While streaming, the agent sends a Heartbeat (capacity, Kubernetes version) at once
//! and then every `Welcome.heartbeat_interval_ms`, and a Report for every held slice
//! whose status differs from the last one this session queued, so after a reconnect
//! every status is reported again.
//!
//! ```text
//!   session task:   inbound ─▶ apply (Snapshot / Change) ─▶ Member
//!                   statuses (watch) ─▶ changed slices ─▶ outbox.report ─┐
//!   heartbeat task: tick ─▶ capacity, version ─▶ outbox.heartbeat ──────┤
//!                                                                        ▼
//!                        Outbox: Hello, then a waiting Heartbeat, then one Report per
//!                        slice (newest status) ─▶ request stream, as fast as the
//!                        server takes it
//! ```
//!
//! Nothing outbound is unbounded: a slice's newer status replaces its report still
//! waiting (the `outbox` module), so a server that is slow to take messages costs at
//! most one report per held slice, however long it is slow. Heartbeats run on their
//! own task and go out before any waiting report, so neither a burst of reports nor a
//! slow application of what the server sent delays the lease's renewal.
//!
//! A broken session is retried after an exponential backoff with jitter
//! ([`Options::backoff_initial`] doubling to [`Options::backoff_max`], each delay drawn
//! from its upper half), reset once a session is welcomed. A refusal of the
//! credentials is an error, never retried silently: before any session was welcomed,
//! [`run`] returns it; later (a revoked token, a misconfigured server) it is logged as
//! an error on every attempt, retried at the longest backoff.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::InstanceSet;
use flotilla_api::report::{REPORT_LIMIT, Report as ReportForm};
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_proto::v1::{
    Change, Heartbeat, Hello, Report, ServerMessage, Slice, Snapshot, Welcome, change,
    server_message,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tracing::Instrument as _;

use crate::error::refused;
use crate::member::{Member, Statuses};
use crate::metrics::SessionMetrics;
use crate::outbox::{self, Outbox};
use crate::{Error, Result};

/// How the agent reaches its server.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server's gRPC URL (`http://host:7443`).
    pub server: String,
    /// This member's cluster name, as registered.
    pub cluster: String,
    /// The cluster's agent token.
    pub token: String,
    /// The first delay before reconnecting.
    pub backoff_initial: Duration,
    /// The longest delay before reconnecting.
    pub backoff_max: Duration,
    /// Give up a connection attempt after this long.
    pub connect_timeout: Duration,
    /// The heartbeat interval until the server's Welcome says otherwise (and the
    /// shortest one accepted from it).
    pub min_heartbeat: Duration,
    /// What the session counts (connected, sessions, heartbeats).
    pub metrics: Arc<SessionMetrics>,
    /// For an `https://` server: the CA to trust and the client certificate, read
    /// again at every connection (rotated files are picked up on reconnect).
    pub tls: flotilla_tls::ClientTls,
}

impl Options {
    /// Options with the default timings.
    pub fn new(
        server: impl Into<String>,
        cluster: impl Into<String>,
        token: impl Into<String>,
    ) -> Options {
        Options {
            server: server.into(),
            cluster: cluster.into(),
            token: token.into(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            min_heartbeat: Duration::from_millis(100),
            metrics: Arc::default(),
            tls: flotilla_tls::ClientTls::default(),
        }
    }
}

/// Runs the agent until `shutdown` resolves: connects, applies what the server sends
/// to `member`, heartbeats and reports, and reconnects when the stream breaks.
///
/// Returns `Err` only for what retrying cannot fix: a malformed URL or token, or the
/// server refusing the credentials before any session was welcomed
/// ([`Error::is_refusal`]).
pub async fn run<M: Member>(
    options: Options,
    member: Arc<M>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let endpoint = Endpoint::from_shared(options.server.clone())
        .map_err(|source| Error::InvalidServer {
            url: options.server.clone(),
            source,
        })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        // A connection that silently died (a NAT or a load balancer dropped it) is
        // found within 20 s, not when the kernel gives up on it.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let auth: MetadataValue<Ascii> = format!("Bearer {}", options.token)
        .parse()
        .map_err(|_| Error::InvalidToken)?;
    let mut shutdown = pin!(shutdown);
    let mut state = Resume {
        revision: 0,
        welcomed: false,
    };
    let mut ever_welcomed = false;
    let mut attempt: u32 = 0;
    let span = tracing::info_span!("agent", cluster = %options.cluster);
    loop {
        state.welcomed = false;
        let ended = tokio::select! {
            () = &mut shutdown => {
                tracing::info!(parent: &span, revision = state.revision, "agent stopping");
                return Ok(());
            }
            e = session(&endpoint, &auth, &options, &member, &mut state).instrument(span.clone()) => e,
        };
        options.metrics.ended();
        if state.welcomed {
            ever_welcomed = true;
            attempt = 0;
        }
        let delay = if ended.is_refusal() {
            if !ever_welcomed {
                let error = match ended {
                    Error::Stream(status) => Error::Refused {
                        cluster: options.cluster.clone(),
                        code: status.code(),
                        message: status.message().to_string(),
                    },
                    other => other,
                };
                tracing::error!(parent: &span, error = %error.chain(), "the server refused this agent (its token, or with TLS its certificate)");
                return Err(error);
            }
            tracing::error!(
                parent: &span,
                error = %ended.chain(),
                "the server refused this agent (token wrong or revoked, or a certificate refused); retrying"
            );
            options.backoff_max
        } else {
            let delay = backoff(&options, attempt);
            attempt = attempt.saturating_add(1);
            tracing::warn!(
                parent: &span,
                error = %ended.chain(),
                revision = state.revision,
                retry_in_ms = delay.as_millis() as u64,
                "session ended; reconnecting"
            );
            delay
        };
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!(parent: &span, revision = state.revision, "agent stopping");
                return Ok(());
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// What survives a session.
#[derive(Debug)]
struct Resume {
    /// The revision of the last Snapshot or Change applied; 0 before the first.
    revision: i64,
    /// Whether the current session got its Welcome.
    welcomed: bool,
}

/// The delay before reconnect attempt `attempt` (0-based): `initial · 2^attempt`, at most
/// `max`, drawn uniformly from its upper half so that many agents cut off at once do not
/// come back at once.
fn backoff(options: &Options, attempt: u32) -> Duration {
    let full = options
        .backoff_initial
        .saturating_mul(1u32 << attempt.min(20))
        .min(options.backoff_max);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let jitter = if nanos == 0 { 0 } else { random() % nanos };
    half + Duration::from_nanos(jitter)
}

/// A random number, from the standard library's randomly seeded hasher (jitter needs no
/// more).
fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// One session: connect, Hello, Welcome, then stream until something breaks. Always
/// ends in the reason it ended.
async fn session<M: Member>(
    endpoint: &Endpoint,
    auth: &MetadataValue<Ascii>,
    options: &Options,
    member: &Arc<M>,
    state: &mut Resume,
) -> Error {
    match stream(endpoint, auth, options, member, state).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The session's body; `Ok` never happens (a session only ends by breaking).
async fn stream<M: Member>(
    endpoint: &Endpoint,
    auth: &MetadataValue<Ascii>,
    options: &Options,
    member: &Arc<M>,
    state: &mut Resume,
) -> Result<std::convert::Infallible> {
    let endpoint = match options.tls.for_url(&options.server).map_err(Error::Tls)? {
        Some(tls) => endpoint.clone().tls_config(tls).map_err(Error::Connect)?,
        None => endpoint.clone(),
    };
    let channel = endpoint.connect().await.map_err(|source| {
        let chain = crate::error::chain_of(&source);
        match flotilla_tls::explain(&options.server, &chain) {
            Some(hint) if flotilla_tls::certificate_refused(&chain) => {
                Error::TlsRefused { hint, source }
            }
            _ => Error::Connect(source),
        }
    })?;
    let mut client = AgentServiceClient::new(channel);
    let hello = Hello {
        cluster: options.cluster.clone(),
        resume_revision: state.revision,
        agent_version: crate::VERSION.to_string(),
    };
    tracing::debug!(resume_revision = state.revision, "sending hello");
    let (outbox, outgoing) = outbox::outbox(hello, Arc::clone(&options.metrics));
    // However the session ends (an error, or cancelled by a shutdown), the request
    // stream ends with it.
    let _closing = Closing(outbox.clone());
    let mut request = tonic::Request::new(outgoing);
    request
        .metadata_mut()
        .insert(flotilla_proto::AUTHORIZATION, auth.clone());
    let mut inbound = client
        .session(request)
        .await
        .map_err(status_error(options))?
        .into_inner();

    let welcome = match inbound.message().await.map_err(status_error(options))? {
        Some(ServerMessage {
            message: Some(server_message::Message::Welcome(w)),
        }) => w,
        Some(other) => {
            return Err(Error::Protocol(format!(
                "expected a Welcome first, got {other:?}"
            )));
        }
        None => return Err(Error::Closed),
    };
    state.welcomed = true;
    options.metrics.welcomed();
    let Welcome {
        heartbeat_interval_ms,
        lease_ttl_ms,
        resumed,
    } = welcome;
    let every = Duration::from_millis(u64::try_from(heartbeat_interval_ms).unwrap_or(0))
        .max(options.min_heartbeat);
    tracing::info!(
        resumed,
        revision = state.revision,
        heartbeat_ms = every.as_millis() as u64,
        lease_ttl_ms,
        "session welcomed"
    );

    // Heartbeats on their own task: neither applying what the server sends nor
    // queueing reports ever holds one up (and the outbox sends it before any report).
    let mut heartbeats = Aborting(tokio::spawn(
        heartbeats(Arc::clone(member), outbox.clone(), every).in_current_span(),
    ));
    let mut statuses = member.statuses();
    // Every status is reported again in a new session.
    statuses.mark_changed();
    let mut statuses_open = true;
    let mut reported = Statuses::new();
    loop {
        tokio::select! {
            message = inbound.message() => {
                match message.map_err(status_error(options))? {
                    Some(m) => apply(m, &**member, state)?,
                    None => return Err(Error::Closed),
                }
            }
            // It ends only when the request stream is gone.
            _ = &mut heartbeats.0 => return Err(Error::Closed),
            changed = statuses.changed(), if statuses_open => {
                if changed.is_err() {
                    // The member is gone; nothing more will change.
                    statuses_open = false;
                    continue;
                }
                let current = statuses.borrow_and_update().clone();
                report(&outbox, &current, &mut reported)?;
            }
        }
    }
}

/// Closes the outbox when the session ends.
struct Closing(Outbox);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Aborts the session's heartbeat task when the session ends.
struct Aborting(tokio::task::JoinHandle<()>);

impl Drop for Aborting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The session's heartbeats: one at once, then one every `every` (a tick that came
/// while the previous beat was still being read waits a full interval), each queued
/// ahead of every report. Ends when the request stream is gone.
async fn heartbeats<M: Member>(member: Arc<M>, outbox: Outbox, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if outbox.heartbeat(beat(&*member).await).is_err() {
            return;
        }
    }
}

/// Maps a gRPC status to the session's error; a refusal names the cluster.
fn status_error(options: &Options) -> impl Fn(tonic::Status) -> Error + '_ {
    move |status| {
        if refused(status.code()) {
            Error::Refused {
                cluster: options.cluster.clone(),
                code: status.code(),
                message: status.message().to_string(),
            }
        } else {
            Error::Stream(status)
        }
    }
}

/// Applies one message from the server to `member` and takes its revision.
fn apply<M: Member>(message: ServerMessage, member: &M, state: &mut Resume) -> Result<()> {
    match message.message {
        Some(server_message::Message::Snapshot(Snapshot { revision, slices })) => {
            let count = slices.len();
            let mut sets = Vec::with_capacity(count);
            let mut undecoded = Vec::new();
            for slice in slices {
                let key = crate::slice_key(&slice.namespace, &slice.name);
                match decode(slice) {
                    Some(set) => sets.push(set),
                    None => undecoded.push(key),
                }
            }
            // A slice that does not decode keeps what runs for it: unknown is not gone.
            member.replace(sets, &undecoded);
            tracing::info!(
                revision,
                slices = count,
                undecoded = undecoded.len(),
                "applied snapshot"
            );
            state.revision = revision;
        }
        Some(server_message::Message::Change(Change {
            revision,
            change: what,
        })) => {
            if revision <= state.revision {
                tracing::debug!(
                    revision,
                    held = state.revision,
                    "skipping a change already applied"
                );
                return Ok(());
            }
            match what {
                Some(change::Change::Put(slice)) => {
                    let key = format!("{}/{}", slice.namespace, slice.name);
                    if let Some(set) = decode(slice) {
                        member.put(set);
                    }
                    tracing::debug!(revision, slice = %key, "applied put");
                }
                Some(change::Change::Delete(r)) => {
                    member.delete(&r.namespace, &r.name);
                    tracing::debug!(revision, slice = %format!("{}/{}", r.namespace, r.name), "applied delete");
                }
                None => {
                    return Err(Error::Protocol(format!(
                        "change at revision {revision} carries neither put nor delete"
                    )));
                }
            }
            state.revision = revision;
        }
        Some(server_message::Message::Welcome(_)) => {
            return Err(Error::Protocol("a second Welcome".into()));
        }
        None => return Err(Error::Protocol("an empty server message".into())),
    }
    Ok(())
}

/// The InstanceSet a slice carries, named as the slice says. A slice that does not
/// decode is logged and skipped: the server validated it, so this is a version skew
/// that reconnecting would not fix, and the rest of the stream must go on. Skipped
/// means unknown, not deleted: a put leaves the slice held before; a snapshot keeps it.
fn decode(slice: Slice) -> Option<InstanceSet> {
    match serde_json::from_str::<InstanceSet>(&slice.json) {
        Ok(mut set) => {
            set.metadata.namespace = Some(slice.namespace);
            set.metadata.name = Some(slice.name);
            Some(set)
        }
        Err(e) => {
            tracing::error!(
                slice = %format!("{}/{}", slice.namespace, slice.name),
                error = %e,
                "a slice from the server does not decode; skipping it"
            );
            None
        }
    }
}

/// One heartbeat. A capacity that cannot be read is sent empty (unknown), never
/// invented: the heartbeat still renews the cluster's lease.
async fn beat<M: Member>(member: &M) -> Heartbeat {
    let capacity_json = match member.capacity().await {
        Ok(c) => serde_json::to_string(&c).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e.chain(), "reading capacity failed; heartbeat without it");
            String::new()
        }
    };
    let kubernetes_version = match member.kubernetes_version().await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e.chain(), "reading the Kubernetes version failed");
            String::new()
        }
    };
    Heartbeat {
        capacity_json,
        kubernetes_version,
    }
}

/// Queues a report of every status that differs from the last one queued in this
/// session (a report still waiting for its slice is replaced), and drops the waiting
/// reports of slices no longer held.
fn report(outbox: &Outbox, current: &Statuses, reported: &mut Statuses) -> Result<()> {
    if reported.keys().any(|key| !current.contains_key(key)) {
        reported.retain(|key, _| current.contains_key(key));
        outbox.retain(|key| current.contains_key(key))?;
    }
    for (key, status) in current {
        if reported.get(key) == Some(status) {
            continue;
        }
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        // Compact (`flotilla_api::report`), so a report grows with what differs between
        // instances, not with how many there are. One that cannot fit is not sent (the
        // server would refuse it, and plain it could pass the stream's message limit):
        // the federation keeps the last report, and this one is tried again when the
        // status changes.
        let status_json = match ReportForm::from_status(status).encode(REPORT_LIMIT) {
            Ok(bytes) => String::from_utf8(bytes).expect("a report is JSON"),
            Err(e) => {
                tracing::error!(slice = %key, error = %e, "report too large to send");
                reported.insert(key.clone(), status.clone());
                continue;
            }
        };
        outbox.report(
            key,
            Report {
                namespace: namespace.to_string(),
                name: name.to_string(),
                status_json,
            },
        )?;
        tracing::debug!(slice = %key, ready = status.ready_replicas, "report queued");
        reported.insert(key.clone(), status.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_within_its_upper_half() {
        let options = Options::new("http://x", "a", "t");
        for attempt in 0..12 {
            let full = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(5));
            for _ in 0..20 {
                let d = backoff(&options, attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        assert!(backoff(&options, u32::MAX) <= Duration::from_secs(5));
    }
}
