//! The HTTP port: `/metrics` (Prometheus), `/healthz` (the process serves) and
//! `/readyz` (the store answers and the federation controller has loaded its state).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use flotilla_store::Store;
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Http {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    /// True once the controller has listed the store.
    pub synced: watch::Receiver<bool>,
}

pub fn router(state: Http) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<Http>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<Http>) -> (StatusCode, String) {
    if !*s.synced.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the federation controller has not loaded the store yet\n".into(),
        );
    }
    match tokio::time::timeout(
        Duration::from_secs(2),
        s.store.get(crate::keys::ADMIN_TOKEN),
    )
    .await
    {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: store: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the store did not answer within 2s\n".into(),
        ),
    }
}
