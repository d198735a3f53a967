//! Errors of the agent.

/// What can go wrong running an agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server URL does not parse as a URI.
    #[error("invalid server URL {url:?}")]
    InvalidServer {
        /// The URL as given.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The token cannot travel in an HTTP header.
    #[error("the agent token is not a valid header value (printable ASCII only)")]
    InvalidToken,
    /// The server refused the agent's credentials (`Unauthenticated` or
    /// `PermissionDenied`): the token is wrong, or belongs to another cluster.
    #[error("the server refused cluster {cluster:?} ({code:?}): {message}")]
    Refused {
        /// The cluster the agent claimed to be.
        cluster: String,
        /// `Unauthenticated` or `PermissionDenied`.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached.
    #[error("connecting to the server")]
    Connect(#[source] tonic::transport::Error),
    /// TLS with the server failed in a way retrying cannot fix: a certificate one side
    /// does not accept.
    #[error("TLS with the server failed: {hint}")]
    TlsRefused {
        /// What it most likely means.
        hint: &'static str,
        #[source]
        source: tonic::transport::Error,
    },
    /// A TLS file (`--ca`, `--cert`, `--key`) cannot be used.
    #[error(transparent)]
    Tls(flotilla_tls::Error),
    /// The server ended the call with an error status.
    #[error("the server ended the session: {0:?}: {msg}", msg = .0.message())]
    Stream(tonic::Status),
    /// The server closed the stream.
    #[error("the server closed the session")]
    Closed,
    /// The server broke the protocol (e.g. no Welcome first).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A Kubernetes request failed (`flotilla_kube`'s error names the request, e.g.
    /// `applying InstanceSet cache/redis`, and carries the client's error).
    #[error(transparent)]
    Kube(flotilla_kube::Error),
    /// The member backend failed.
    #[error("member")]
    Member(#[source] flotilla_member::Error),
    /// The process member could not start (its data directory, its state files).
    #[error("process member")]
    Process(#[source] flotilla_process::Error),
}

impl Error {
    /// Whether this is the server refusing the credentials (retrying cannot help
    /// until the token changes).
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Refused { .. } | Error::TlsRefused { .. } | Error::Tls(_) => true,
            Error::Stream(status) => refused(status.code()),
            _ => false,
        }
    }

    /// Whether this is about TLS (a certificate, a TLS file), not the token.
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::TlsRefused { .. } | Error::Tls(_))
    }

    /// The message and every cause, `a: b: c`.
    pub fn chain(&self) -> String {
        chain_of(self)
    }
}

/// An error and every cause, `a: b: c`.
pub fn chain_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a gRPC code means "your credentials are not accepted".
pub(crate) fn refused(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// Results of the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;
