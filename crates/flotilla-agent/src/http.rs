//! The agent's HTTP port (`flotilla agent --http ADDR`): `/metrics` (Prometheus: the
//! member controller's passes, actions, probe latency and writes, and the session's
//! state and last heartbeat), `/healthz` (the process serves) and `/readyz` (a
//! federated agent: its session with the server is welcomed; a standalone one: it
//! runs).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use flotilla_member::MemberMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use crate::metrics::SessionMetrics;

/// What the agent serves.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    session: Option<Arc<SessionMetrics>>,
}

impl Telemetry {
    /// The member controller's metrics, and the session's for a federated agent
    /// (`None`: standalone, always ready).
    pub fn new(member: &MemberMetrics, session: Option<Arc<SessionMetrics>>) -> Telemetry {
        let mut registry = Registry::with_prefix("flotilla");
        member.register(&mut registry);
        if let Some(s) = &session {
            s.register(&mut registry);
        }
        Telemetry { registry, session }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Why the agent is not ready, if it is not.
    pub fn unready(&self) -> Option<&'static str> {
        match &self.session {
            Some(s) if !s.is_connected() => Some("no session with the federation server"),
            _ => None,
        }
    }
}

/// The routes.
pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(telemetry)
}

/// Serves the routes on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    if let Err(e) = axum::serve(listener, router(telemetry)).await {
        tracing::error!(error = %e, "the agent's HTTP port stopped");
    }
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.encode(),
    )
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> (StatusCode, String) {
    match t.unready() {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        None => (StatusCode::OK, "ok\n".into()),
    }
}

#[cfg(test)]
mod tests {
    //! The routes over a real socket, with a simulated member counting into them.

    use std::time::Duration;

    use flotilla_api::InstanceSet;
    use flotilla_member::sim::SimConfig;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::member::Member as _;
    use crate::{SimMember, SimMemberOptions};

    /// `GET path` over HTTP/1.1: the status line and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (
            head.lines().next().unwrap_or_default().to_string(),
            body.to_string(),
        )
    }

    #[tokio::test]
    async fn metrics_count_the_member_and_readiness_follows_the_session() {
        let member_metrics = Arc::new(MemberMetrics::default());
        let member = SimMember::with_options(
            &SimConfig::from_text(
                "nodeGroups: [{count: 1, free: {cpu: '4', memory: 16Gi, pods: 110}}]\n",
            )
            .unwrap(),
            SimMemberOptions {
                metrics: Arc::clone(&member_metrics),
                ..SimMemberOptions::default()
            },
        );
        let set: InstanceSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "InstanceSet",
            "metadata": {"name": "cache", "namespace": "default", "generation": 1},
            "spec": {
                "ordinals": {"ranges": [{"start": 0, "end": 1}]},
                "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}},
            },
        }))
        .unwrap();
        member.put(set);
        let mut statuses = member.statuses();
        tokio::time::timeout(
            Duration::from_secs(10),
            statuses.wait_for(|s| {
                s.get("default/cache")
                    .is_some_and(|s| s.ready_replicas == 2)
            }),
        )
        .await
        .expect("the set converged")
        .unwrap();

        let session = Arc::new(SessionMetrics::default());
        let telemetry = Arc::new(Telemetry::new(&member_metrics, Some(Arc::clone(&session))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, telemetry));

        let (status, body) = get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        assert!(
            body.contains(r#"flotilla_member_actions_total{kind="create",outcome="wrote"} 2"#),
            "{body}"
        );
        assert!(body.contains("flotilla_member_passes_total"), "{body}");
        assert!(body.contains("flotilla_agent_connected 0"), "{body}");
        assert!(get(addr, "/healthz").await.0.contains("200"));
        let (status, body) = get(addr, "/readyz").await;
        assert!(status.contains("503"), "{status}");
        assert!(body.contains("no session"), "{body}");
        session.welcomed();
        session.heartbeat();
        assert!(get(addr, "/readyz").await.0.contains("200"));
        let (_, body) = get(addr, "/metrics").await;
        assert!(body.contains("flotilla_agent_connected 1"), "{body}");
        assert!(body.contains("flotilla_agent_heartbeats_total 1"), "{body}");
        session.ended();
        assert!(get(addr, "/readyz").await.0.contains("503"));
        server.abort();
    }
}
