//! How the agent reaches a pod's Redis port: straight to the pod IP, or through the API
//! server's `pods/portforward` subresource.
//!
//! ```text
//!   PodAccess::Auto ──resolve(config source)──▶ Direct       (in-cluster config: pod IPs route)
//!                                          └──▶ PortForward  (a kubeconfig: the agent may be
//!                                                             outside, e.g. a kind cluster
//!                                                             from the host)
//!   Direct       TCP to <podIP>:<port>
//!   PortForward  GET pods/<pod>/portforward?ports=<port> (websocket), RESP over its stream
//! ```
//!
//! [`crate::client`] records where the configuration of the client it built came from
//! (a process-wide note: the binary hands this crate only the `kube::Client`, which does
//! not say); [`PodAccess::Auto`] resolves against that note. A client not built by
//! [`crate::client`] (tests, embedders) resolves to [`PodAccess::Direct`], the behaviour
//! before port-forwarding existed. Both ways, a replica is told to replicate from the
//! new primary's pod IP: replicas run in the cluster.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use flotilla_member::redis::Dial;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Portforwarder};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

/// How the agent reaches a pod's Redis port (`roleProbe.redis.port`) for a probe or a
/// switchover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodAccess {
    /// [`PodAccess::Direct`] when the client's configuration is the in-cluster service
    /// account, [`PodAccess::PortForward`] when it is a kubeconfig (see [`resolve`]).
    #[default]
    Auto,
    /// TCP to the pod IP: the agent runs where pod IPs route (in the cluster).
    Direct,
    /// Through the API server's `pods/portforward` subresource: works wherever the API
    /// server is reachable, at the cost of a websocket per command.
    PortForward,
}

/// Where a client's configuration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token).
    InCluster,
    /// A kubeconfig file (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`).
    Kubeconfig,
}

/// The way pods are reached under `access`, for a client configured from `source`
/// (`None`: not known). Never [`PodAccess::Auto`].
pub fn resolve(access: PodAccess, source: Option<ConfigSource>) -> PodAccess {
    match (access, source) {
        (PodAccess::Auto, Some(ConfigSource::Kubeconfig)) => PodAccess::PortForward,
        (PodAccess::Auto, Some(ConfigSource::InCluster) | None) => PodAccess::Direct,
        (explicit, _) => explicit,
    }
}

/// 0: no client built by [`crate::client`] yet; else `ConfigSource as u8 + 1`.
static CONFIG_SOURCE: AtomicU8 = AtomicU8::new(0);

/// Notes the source of the configuration [`crate::client`] just used.
pub(crate) fn record(source: ConfigSource) {
    let v = match source {
        ConfigSource::InCluster => 1,
        ConfigSource::Kubeconfig => 2,
    };
    CONFIG_SOURCE.store(v, Ordering::Relaxed);
}

/// The source of the last configuration [`crate::client`] used, if it built one.
pub fn recorded() -> Option<ConfigSource> {
    match CONFIG_SOURCE.load(Ordering::Relaxed) {
        1 => Some(ConfigSource::InCluster),
        2 => Some(ConfigSource::Kubeconfig),
        _ => None,
    }
}

/// Dials the pods of one set by name, for `flotilla_member::redis`: an instance string
/// is a pod name.
pub(crate) struct PodDial {
    pub(crate) api: Api<Pod>,
    /// [`PodAccess::Direct`] or [`PodAccess::PortForward`].
    pub(crate) access: PodAccess,
    pub(crate) port: u16,
    /// `<podIP>:<port>` by pod name (used by [`PodAccess::Direct`]).
    pub(crate) addrs: BTreeMap<String, String>,
}

impl Dial for PodDial {
    type Stream = Box<dyn Stream>;

    async fn dial(&self, pod: &str) -> std::io::Result<Box<dyn Stream>> {
        if self.access == PodAccess::PortForward {
            return Ok(Box::new(self.forward(pod).await?));
        }
        let addr = self.addrs.get(pod).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("pod {pod} has no IP yet"),
            )
        })?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("connecting to {addr}: {e}")))?;
        Ok(Box::new(stream))
    }
}

impl PodDial {
    /// A stream to the pod's port through `pods/portforward`.
    ///
    /// Not covered by the mock API server tests beyond the request and a refusal: a
    /// tower-test mock cannot complete the websocket upgrade, so the stream itself is
    /// only exercised against a real cluster. Keep this thin.
    async fn forward(&self, pod: &str) -> std::io::Result<Forwarded> {
        let mut forwarder = self.api.portforward(pod, &[self.port]).await.map_err(|e| {
            std::io::Error::other(format!(
                "port-forward to pod {pod} port {}: {}",
                self.port,
                crate::error::chain(&e)
            ))
        })?;
        let stream = forwarder.take_stream(self.port).ok_or_else(|| {
            std::io::Error::other(format!("port-forward to pod {pod} gave no stream"))
        })?;
        let error = forwarder
            .take_error(self.port)
            .map(|e| Box::pin(e) as ErrorFuture);
        Ok(Forwarded {
            stream: Failing::new(stream, error, format!("pod {pod} port {}", self.port)),
            forwarder,
        })
    }
}

/// A byte stream to an instance, whichever way it was opened.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A port-forwarded stream that ends its websocket when dropped (also when a command
/// times out), rather than leave kube-rs's forwarding task to notice.
struct Forwarded {
    stream: Failing<DuplexStream>,
    forwarder: Portforwarder,
}

/// What the API server says on a port's error channel (`None`: the channel closed
/// without a word).
type ErrorFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// A stream whose reads fail once its error channel speaks: the API server reports
/// there, not on the stream, that the pod refused the connection, which would
/// otherwise only show as a timeout.
struct Failing<S> {
    stream: S,
    error: Option<ErrorFuture>,
    what: String,
}

impl<S> Failing<S> {
    fn new(stream: S, error: Option<ErrorFuture>, what: String) -> Failing<S> {
        Failing {
            stream,
            error,
            what,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Failing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.stream).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        if let Some(error) = this.error.as_mut()
            && let Poll::Ready(said) = error.as_mut().poll(cx)
        {
            this.error = None;
            if let Some(message) = said {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("port-forward to {}: {message}", this.what),
                )));
            }
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Failing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl AsyncRead for Forwarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Forwarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// `Failing` stands in for the port-forwarded stream, which needs a websocket: the
    /// error channel's message fails a pending read, and its silent close does not.
    #[tokio::test]
    async fn a_port_error_fails_the_read_that_waits_on_the_stream() {
        let (stream, mut far) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let error: ErrorFuture = Box::pin(async move { rx.await.ok() });
        let mut s = Failing::new(stream, Some(error), "pod redis-0 port 6379".into());
        far.write_all(b"+OK").await.unwrap();
        let mut buf = [0; 3];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"+OK", "data passes through");
        tx.send("connection refused".into()).unwrap();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            e.to_string(),
            "port-forward to pod redis-0 port 6379: connection refused"
        );

        let (stream, mut far) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let error: ErrorFuture = Box::pin(async move { rx.await.ok() });
        let mut s = Failing::new(stream, Some(error), "pod redis-0 port 6379".into());
        drop(tx);
        let reader = tokio::spawn(async move {
            let mut buf = [0; 2];
            s.read_exact(&mut buf).await.map(|_| buf)
        });
        tokio::task::yield_now().await;
        far.write_all(b"ok").await.unwrap();
        assert_eq!(
            &reader.await.unwrap().unwrap(),
            b"ok",
            "a closed error channel is no error"
        );
    }

    #[test]
    fn auto_port_forwards_from_a_kubeconfig_and_goes_direct_in_the_cluster() {
        use ConfigSource::*;
        use PodAccess::*;
        assert_eq!(resolve(Auto, Some(Kubeconfig)), PortForward);
        assert_eq!(resolve(Auto, Some(InCluster)), Direct);
        assert_eq!(
            resolve(Auto, None),
            Direct,
            "a client built elsewhere keeps the old behaviour"
        );
        for source in [Some(Kubeconfig), Some(InCluster), None] {
            assert_eq!(resolve(Direct, source), Direct, "an explicit choice wins");
            assert_eq!(resolve(PortForward, source), PortForward);
        }
    }
}
