use std::path::PathBuf;

/// What went wrong with a TLS file or configuration. Every variant names the flag the
/// file came from, so a message reads `--tls-key /etc/x.pem: …`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM block of the kind expected, or a broken one.
    #[error("{flag} {}: {what}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        what: String,
    },
    /// rustls refused the combination (e.g. a key that is not the certificate's).
    #[error("{flag}: {source}")]
    Config {
        flag: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The client CA could not be made into a verifier.
    #[error("--client-ca {}: {what}", path.display())]
    ClientCa { path: PathBuf, what: String },
    /// Flags that need each other.
    #[error("{0}")]
    Flags(String),
}
