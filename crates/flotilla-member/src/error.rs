//! Errors of the member side.

/// What can go wrong applying a plan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A switchover was attempted and refused or failed.
    #[error("switchover failed: {0}")]
    Switchover(String),
    /// A role probe could not get an answer.
    #[error("role probe of {instance} failed: {reason}")]
    Probe {
        /// `<set>-<ordinal>`.
        instance: String,
        /// Why.
        reason: String,
    },
    /// The backend cannot do this at all.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The backend refused or failed a request.
    #[error("backend: {0}")]
    Backend(String),
    /// Talking to an instance failed.
    #[error("talking to {addr}")]
    Io {
        /// Where.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Results of the member side.
pub type Result<T, E = Error> = std::result::Result<T, E>;
