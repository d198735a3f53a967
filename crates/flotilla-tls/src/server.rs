//! The server side: certificate files loaded into rustls configurations, re-read when
//! they change, and a listener that completes handshakes concurrently.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::{Error, pem, provider};

/// How often the files are looked at for a change (their mtime and size).
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Handshakes in progress at once, per port.
const HANDSHAKES: usize = 256;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's files: `--tls-cert` (the chain, leaf first), `--tls-key`, and
/// optionally `--client-ca` (the CA client certificates must be signed by).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerFiles {
    /// The files from optional flags: both of `--tls-cert` and `--tls-key` or neither;
    /// `--client-ca` only with them.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<ServerFiles>, Error> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(ServerFiles {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_some() => Err(Error::Flags(
                "--client-ca: needs --tls-cert and --tls-key (mutual TLS is TLS first)".into(),
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::Flags("--tls-key: required with --tls-cert".into())),
            (None, Some(_)) => Err(Error::Flags("--tls-cert: required with --tls-key".into())),
        }
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }
}

/// Which protocol a port speaks (its ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2.
    H2,
    /// The HTTP port: HTTP/1.1.
    Http1,
}

#[derive(Debug)]
struct Loaded {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    /// The client CA's verifier (`--client-ca`), for [`ServerTls::check_client`].
    clients: Option<Arc<dyn ClientCertVerifier>>,
    /// The files' stamps when last looked at (loaded, or failed to load: a broken
    /// file is reported once, not every second).
    seen: Vec<Option<(SystemTime, u64)>>,
}

/// The server's TLS configuration, current as of the last look at its files.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerFiles,
    loaded: RwLock<Loaded>,
}

impl ServerTls {
    /// Loads the files; every problem names its flag and file.
    pub fn load(files: ServerFiles) -> Result<Arc<ServerTls>, Error> {
        let seen = files.stamps();
        let (grpc, http, clients) = configs(&files)?;
        Ok(Arc::new(ServerTls {
            files,
            loaded: RwLock::new(Loaded {
                grpc,
                http,
                clients,
                seen,
            }),
        }))
    }

    /// The files it was loaded from.
    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// Whether client certificates are asked for (`--client-ca`).
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn current(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        match alpn {
            Alpn::H2 => loaded.grpc.clone(),
            Alpn::Http1 => loaded.http.clone(),
        }
    }

    /// Loads the files again if one of them changed since the last look. `Ok(true)`:
    /// new connections use the new files. On an error the old configuration stays
    /// (a half-written file must not take the server down) and the same files are
    /// not tried again until they change once more.
    pub fn reload_if_changed(&self) -> Result<bool, Error> {
        let stamps = self.files.stamps();
        if self.loaded.read().unwrap_or_else(|e| e.into_inner()).seen == stamps {
            return Ok(false);
        }
        let result = configs(&self.files);
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        loaded.seen = stamps;
        let (grpc, http, clients) = result?;
        loaded.grpc = grpc;
        loaded.http = http;
        loaded.clients = clients;
        Ok(true)
    }

    /// Whether `certs` (a peer's chain, leaf first, as the handshake received it) is
    /// signed by the client CA, valid now, and names `name`; the reason when not.
    /// The handshake itself lets any client through (see [`configs`]), so that this
    /// answer, not a TLS alert a client may never read, is what a refused agent sees.
    pub fn check_client(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
        name: &str,
    ) -> Result<(), String> {
        let clients = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clients
            .clone()
            .ok_or("this server verifies no client certificates (no --client-ca)")?;
        let Some((leaf, intermediates)) = certs.and_then(|c| c.split_first()) else {
            return Err("no client certificate: this server requires one signed by its --client-ca (agent flags --cert/--key)".into());
        };
        clients
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| format!("the client certificate was refused: {e}"))?;
        if crate::valid_for(leaf, name) {
            Ok(())
        } else {
            Err(format!(
                "the client certificate does not name this cluster (it must carry {name:?} as a DNS subject alternative name)"
            ))
        }
    }

    /// Looks at the files every `every` until the task is aborted, logging what
    /// happens.
    pub fn watch(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match tls.reload_if_changed() {
                    Ok(true) => tracing::info!(
                        cert = %tls.files.cert.display(),
                        "TLS certificate files changed: new connections use them"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "TLS certificate files changed but do not load: still serving the previous ones"
                    ),
                }
            }
        })
    }
}

type Configs = (
    Arc<ServerConfig>,
    Arc<ServerConfig>,
    Option<Arc<dyn ClientCertVerifier>>,
);

/// Both ports' configurations from the files, and the client CA's verifier.
///
/// With a client CA the handshake asks for a certificate and checks that the client
/// holds its key, but lets a client with none, or with one that does not verify,
/// finish: in TLS 1.3 a client learns of a refused certificate only from an alert
/// after it thinks the handshake done, which gRPC clients mostly lose to a closed
/// connection. The agent protocol decides instead ([`ServerTls::check_client`]) and
/// says why; the user API, which authenticates by token, ignores client
/// certificates.
fn configs(files: &ServerFiles) -> Result<Configs, Error> {
    let certs = pem::certs("--tls-cert", &files.cert)?;
    let key = pem::key("--tls-key", &files.key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Config {
            flag: "--tls-cert",
            source,
        })?;
    let (builder, clients) = match &files.client_ca {
        Some(path) => {
            let roots = pem::roots("--client-ca", path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::ClientCa {
                    path: path.clone(),
                    what: e.to_string(),
                })?;
            let asking = Arc::new(AskOnly(verifier.clone()));
            (builder.with_client_cert_verifier(asking), Some(verifier))
        }
        None => (builder.with_no_client_auth(), None),
    };
    let mut grpc = builder
        .with_single_cert(certs, key)
        .map_err(|source| Error::Config {
            flag: match source {
                rustls::Error::InconsistentKeys(_) => "--tls-key",
                _ => "--tls-cert",
            },
            source,
        })?;
    let mut http = grpc.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(grpc), Arc::new(http), clients))
}

/// Asks for a client certificate (naming the client CA) and checks the handshake's
/// signature with it, so a client proves it holds the key; leaves the chain to
/// [`ServerTls::check_client`].
#[derive(Debug)]
struct AskOnly(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for AskOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// TLS connections accepted on a listener, as a stream (for tonic's
/// `serve_with_incoming`) or an axum listener. Handshakes run in tasks of their own,
/// so a slow or hostile client holds up no one; a failed one is logged and dropped.
/// Dropping it stops accepting.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept: JoinHandle<()>,
}

impl Incoming {
    /// Accepts on `listener` with the configuration current at each connection.
    pub fn new(listener: TcpListener, tls: Arc<ServerTls>, alpn: Alpn) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        let accept = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, as axum does.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(tls.current(alpn));
                let tx = tx.clone();
                // At most HANDSHAKES at once; beyond that, accepting waits.
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, local = %local, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::warn!(
                            %peer,
                            local = %local,
                            "TLS handshake not finished within 10 s: dropped"
                        ),
                    }
                });
            }
        });
        Ok(Incoming { rx, local, accept })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|(stream, _)| Ok(stream)))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends with this listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
