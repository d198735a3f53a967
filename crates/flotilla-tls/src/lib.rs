//! TLS for Flotilla's ports and clients (rustls with the `ring` provider; no OpenSSL).
//!
//! ```text
//!  --tls-cert --tls-key [--client-ca] ─▶ ServerTls ──(re-read every second when a
//!                                          │          file's mtime or size changes)
//!            TcpListener ─▶ Incoming ──────┘ handshakes run concurrently, 10 s each;
//!                             │              a failed one is logged and dropped
//!                             ├─▶ tonic (gRPC, ALPN h2): peer certificates in the
//!                             │   request's TlsConnectInfo
//!                             └─▶ axum (HTTP/1.1: metrics, health)
//!
//!  --ca [--cert --key] ─▶ ClientTls ─▶ tonic ClientTlsConfig, read afresh at every
//!                                      connect (a rotated client certificate is used
//!                                      from the next connection on)
//! ```
//!
//! With a client CA the server asks every client for a certificate and checks that
//! the client holds its key, but lets every client finish the handshake: the user
//! API authenticates by token, and the agent protocol requires the certificate,
//! verifies it against the CA and checks its name against the cluster of the token
//! ([`ServerTls::check_client`]), refusing with the reason (a TLS alert would mostly
//! reach a TLS 1.3 client as a closed connection).

mod client;
mod error;
mod pem;
mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{ClientTls, certificate_refused, explain, plaintext_warning};
pub use error::Error;
pub use rustls::pki_types::CertificateDer;
pub use server::{Alpn, Incoming, RELOAD_EVERY, ServerFiles, ServerTls};
pub use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use rustls::pki_types::ServerName;

/// Whether `cert` (DER, an end-entity certificate) names `name` among its subject
/// alternative names (DNS names, or IP addresses for an IP). The subject's common name
/// does not count, as in every current TLS client.
pub fn valid_for(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The peer's certificate chain of a gRPC call over TLS (none over plaintext, or
/// when the client sent none).
pub fn peer_certs<T>(request: &tonic::Request<T>) -> Option<Vec<CertificateDer<'static>>> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .map(|certs| certs.to_vec())
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
