//! Prometheus metrics, served at `/metrics` on the HTTP port.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// User API calls by method and gRPC code.
    pub api_requests: Family<Labels, Counter>,
    /// Agent streams open now.
    pub agent_sessions: Gauge,
    /// Agent streams started, by how they started: `snapshot` or `resume`.
    pub agent_streams: Family<Labels, Counter>,
    /// Heartbeats received.
    pub heartbeats: Counter,
    /// Status reports received, and how many changed something.
    pub reports: Family<Labels, Counter>,
    /// Federation controller passes over one set, by result.
    pub reconciles: Family<Labels, Counter>,
    /// How long one pass over one set took.
    pub reconcile_seconds: Histogram,
    /// Federation controller runs ended by a store failure (listing, watching): each
    /// is followed by a backoff and a new listing, and no set reconciles meanwhile.
    pub controller_store_failures: Counter,
    /// Slices written (put or deleted) for members.
    pub slice_writes: Counter,
    /// Writes (puts and deletes) this server made to the store.
    pub store_writes: Counter,
    /// Bytes (keys and values) of those writes.
    pub store_write_bytes: Counter,
    /// Registered clusters by readiness: `ready`, `unknown`, `pending`.
    pub clusters: Family<Labels, Gauge>,
    /// 1 while this server leads (its federation controller runs), else 0.
    pub leader: Gauge,
    /// Controller writes the store refused because this server no longer held the lead
    /// it wrote under (`fence`).
    pub fenced_writes_refused: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flotilla");
        let m = Metrics {
            api_requests: Family::default(),
            agent_sessions: Gauge::default(),
            agent_streams: Family::default(),
            heartbeats: Counter::default(),
            reports: Family::default(),
            reconciles: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            controller_store_failures: Counter::default(),
            slice_writes: Counter::default(),
            store_writes: Counter::default(),
            store_write_bytes: Counter::default(),
            clusters: Family::default(),
            leader: Gauge::default(),
            fenced_writes_refused: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "api_requests",
            "User API calls by method and code",
            m.api_requests.clone(),
        );
        registry.register(
            "agent_sessions",
            "Agent streams open now",
            m.agent_sessions.clone(),
        );
        registry.register(
            "agent_streams",
            "Agent streams started, by mode (snapshot or resume)",
            m.agent_streams.clone(),
        );
        registry.register(
            "heartbeats",
            "Agent heartbeats received",
            m.heartbeats.clone(),
        );
        registry.register(
            "reports",
            "Slice status reports received, by outcome",
            m.reports.clone(),
        );
        registry.register(
            "reconciles",
            "Federation controller passes, by result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Duration of one federation controller pass over one set",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "controller_store_failures",
            "Federation controller runs ended by a store failure (it lists the store again after a backoff)",
            m.controller_store_failures.clone(),
        );
        registry.register(
            "slice_writes",
            "Member slices written or deleted",
            m.slice_writes.clone(),
        );
        registry.register(
            "store_writes",
            "Writes (puts and deletes) this server made to the store",
            m.store_writes.clone(),
        );
        registry.register(
            "store_write_bytes",
            "Bytes (keys and values) this server wrote to the store",
            m.store_write_bytes.clone(),
        );
        registry.register(
            "clusters",
            "Registered clusters by readiness",
            m.clusters.clone(),
        );
        registry.register(
            "leader",
            "1 while this server leads and runs the federation controller",
            m.leader.clone(),
        );
        registry.register(
            "fenced_writes_refused",
            "Federation controller writes refused because this server no longer held its lead",
            m.fenced_writes_refused.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One label.
pub fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}
