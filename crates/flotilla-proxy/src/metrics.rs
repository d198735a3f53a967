//! The proxy's HTTP port: `/metrics` (Prometheus: connections, commands by outcome,
//! backend switches), `/healthz` (the process serves) and `/readyz` (it knows a
//! primary it verified with `ROLE`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a command ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `forwarded`, `denied`, `noauth`, `auth_ok`, `auth_failed`, `local`,
    /// `no_primary`.
    pub outcome: &'static str,
}

/// Everything the proxy counts.
#[derive(Debug)]
pub struct Metrics {
    /// Seconds from a request written to the backend to its reply's last byte read.
    pub latency: Histogram,
    /// Client connections open now.
    pub connections: Gauge,
    /// Client connections accepted.
    pub connections_total: Counter,
    /// Commands, by outcome.
    pub commands: Family<OutcomeLabel, Counter>,
    /// Changes of the verified primary (a switch to none counts).
    pub backend_switches: Counter,
    /// Client connections closed because their primary was replaced.
    pub closed_on_switch: Counter,
    /// Client connections moved to a new primary unseen (nothing in flight, no state).
    pub moved_on_switch: Counter,
    /// Commands a demoted primary refused (`-READONLY`) sent again to the new one.
    pub resent: Counter,
    /// 1 while a verified primary is known.
    pub primary_known: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            // 50 µs to ~0.8 s.
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 15)),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            commands: Family::default(),
            backend_switches: Counter::default(),
            closed_on_switch: Counter::default(),
            moved_on_switch: Counter::default(),
            resent: Counter::default(),
            primary_known: Gauge::default(),
            ready: AtomicBool::default(),
        }
    }
}

impl Metrics {
    /// Counts one command.
    pub fn command(&self, outcome: &'static str) {
        self.commands.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Whether a verified primary is known.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.primary_known.set(i64::from(ready));
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("flotilla_proxy");
        r.register(
            "connections",
            "Client connections open",
            self.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections accepted",
            self.connections_total.clone(),
        );
        r.register(
            "commands",
            "Client commands, by outcome",
            self.commands.clone(),
        );
        r.register(
            "backend_latency_seconds",
            "From a request written to the backend to its reply read",
            self.latency.clone(),
        );
        r.register(
            "backend_switches",
            "Changes of the verified primary",
            self.backend_switches.clone(),
        );
        r.register(
            "closed_on_switch",
            "Client connections closed because their primary was replaced",
            self.closed_on_switch.clone(),
        );
        r.register(
            "moved_on_switch",
            "Client connections moved to a new primary unseen",
            self.moved_on_switch.clone(),
        );
        r.register(
            "resent_after_readonly",
            "Commands refused by a demoted primary and sent again to the new one",
            self.resent.clone(),
        );
        r.register(
            "primary_known",
            "1 while a primary verified by ROLE is known",
            self.primary_known.clone(),
        );
        r
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry());
        out
    }
}

/// The routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// Serves the routes on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    if let Err(e) = axum::serve(listener, router(metrics)).await {
        tracing::error!(error = %e, "the proxy's HTTP port stopped");
    }
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no primary verified by ROLE yet\n",
        )
    }
}
