//! Errors of the Kubernetes backend.
//!
//! At the `Backend` trait boundary they become `flotilla_member::Error::Backend` (or
//! `Switchover` / `Probe`, which the controller treats specially), with the whole
//! cause chain in the message, because that error type carries text.

/// What can go wrong talking to a Kubernetes member.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{what}")]
    Kube {
        /// The request, e.g. `creating pod default/redis-0`.
        what: String,
        /// The client's error (status code and message for API errors).
        #[source]
        source: kube::Error,
    },
    /// The kubeconfig file could not be read or used.
    #[error("loading kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No client configuration was found (neither in-cluster nor `KUBECONFIG`).
    #[error("finding a Kubernetes client configuration (in-cluster or KUBECONFIG)")]
    InferConfig(#[source] kube::config::InferConfigError),
    /// An InstanceSet from the API server does not decode into Flotilla's type.
    #[error("InstanceSet {name} does not decode: {path}")]
    Decode {
        /// `<namespace>/<name>`.
        name: String,
        /// The field that does not decode (`spec.template.spec.containers[0]…`), or `.`
        /// for the whole object.
        path: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An InstanceSet has no `metadata.uid`, so its pods cannot be owned by it (it did
    /// not come from the API server).
    #[error("InstanceSet {0} has no metadata.uid; only sets read from the API server can own pods")]
    NoUid(String),
    /// A pod has no IP yet, so its role cannot be probed or switched over.
    #[error("pod {0} has no IP yet")]
    NoPodIp(String),
    /// A pod that a probe or a switchover needs does not exist.
    #[error("pod {0} does not exist")]
    NoPod(String),
    /// A reconcile pass of the member controller failed.
    #[error("reconciling InstanceSet {set}")]
    Reconcile {
        /// `<namespace>/<name>`.
        set: String,
        /// The controller's or backend's error.
        #[source]
        source: flotilla_member::Error,
    },
    /// An object the set needs exists under its name but belongs to someone else.
    #[error("{0}")]
    Conflict(String),
    /// The set asks for something this backend does not do (yet).
    #[error("{0}")]
    Unsupported(String),
}

/// Results of the Kubernetes backend.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a client error with the request that failed.
    pub(crate) fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }

    /// The message and every cause, `a: b: c`.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// An error's message and every cause, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl From<Error> for flotilla_member::Error {
    fn from(e: Error) -> Self {
        flotilla_member::Error::Backend(e.chain())
    }
}

/// The HTTP status of an API error, if the request reached the API server.
pub(crate) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
