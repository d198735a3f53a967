//! The HTTP port: `/metrics` (Prometheus), `/healthz` (the process serves) and
//! `/readyz` (the store answers, and this server either follows a leader or leads with
//! its federation controller's state loaded).

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
    /// Where this server stands in the leader election.
    pub election: watch::Receiver<crate::leader::State>,
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
    let unready = |why: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    };
    match &*s.election.borrow() {
        crate::leader::State::Campaigning => {
            return unready("electing the server that runs the federation controller");
        }
        crate::leader::State::Leading if !*s.synced.borrow() => {
            return unready("the federation controller has not loaded the store yet");
        }
        // A follower serves the API and agents; the leader's controller does the rest.
        crate::leader::State::Leading | crate::leader::State::Following { .. } => {}
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
