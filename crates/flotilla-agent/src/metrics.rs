//! What the agent's session counts, for its `/metrics`: whether it is connected, how
//! many sessions it opened, when it last sent a heartbeat, and how its outbound queue
//! (the session's `outbox`) fares: reports queued, sent, coalesced (a slice's newer
//! status replaced its unsent report) and waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The session's metrics.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    /// 1 while a session is welcomed, else 0.
    pub connected: Gauge,
    /// Sessions the server welcomed.
    pub sessions: Counter,
    /// Heartbeats sent.
    pub heartbeats: Counter,
    /// When the last heartbeat went out, in seconds since the Unix epoch.
    pub last_heartbeat: Gauge,
    /// Reports queued: one per change of a slice's status seen by the session.
    pub reports_queued: Counter,
    /// Reports handed to the stream.
    pub reports_sent: Counter,
    /// Queued reports replaced by a newer status of their slice before they went out.
    pub reports_coalesced: Counter,
    /// Reports waiting to go out (at most one per held slice).
    pub reports_pending: Gauge,
    /// Heartbeats replaced by a newer one before they went out (the server took
    /// nothing for a whole interval).
    pub heartbeats_coalesced: Counter,
    welcomed: AtomicBool,
}

impl SessionMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "agent_connected",
            "1 while the agent's session with the federation server is welcomed",
            self.connected.clone(),
        );
        registry.register(
            "agent_sessions",
            "Sessions the federation server welcomed",
            self.sessions.clone(),
        );
        registry.register(
            "agent_heartbeats",
            "Heartbeats sent",
            self.heartbeats.clone(),
        );
        registry.register(
            "agent_last_heartbeat_timestamp_seconds",
            "When the last heartbeat was sent (Unix time)",
            self.last_heartbeat.clone(),
        );
        registry.register(
            "agent_reports_queued",
            "Reports queued (a slice's status changed)",
            self.reports_queued.clone(),
        );
        registry.register(
            "agent_reports_sent",
            "Reports handed to the stream",
            self.reports_sent.clone(),
        );
        registry.register(
            "agent_reports_coalesced",
            "Queued reports replaced by a newer status of their slice before they went out",
            self.reports_coalesced.clone(),
        );
        registry.register(
            "agent_reports_pending",
            "Reports waiting to go out (at most one per slice)",
            self.reports_pending.clone(),
        );
        registry.register(
            "agent_heartbeats_coalesced",
            "Heartbeats replaced by a newer one before they went out",
            self.heartbeats_coalesced.clone(),
        );
    }

    /// Whether a session is welcomed now (readiness).
    pub fn is_connected(&self) -> bool {
        self.welcomed.load(Ordering::Relaxed)
    }

    pub(crate) fn welcomed(&self) {
        self.welcomed.store(true, Ordering::Relaxed);
        self.connected.set(1);
        self.sessions.inc();
    }

    pub(crate) fn ended(&self) {
        self.welcomed.store(false, Ordering::Relaxed);
        self.connected.set(0);
    }

    pub(crate) fn heartbeat(&self) {
        self.heartbeats.inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.last_heartbeat.set(now);
    }
}
