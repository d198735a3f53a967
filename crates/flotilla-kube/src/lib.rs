//! The Kubernetes member backend: `flotilla_member::Backend` over kube-rs.
//!
//! ```text
//!   InstanceSet (CRD, flotilla.io/v1alpha1) ──▶ Controller (flotilla-member)
//!        ▲ status (server-side apply)              │ prepare (pure) → Actions
//!        │                                          ▼
//!   KubeBackend ◀── observe: Pods + PVCs by label ── apply: create/patch/delete
//!        │          (+ Nodes, PVs when a pod is     capacity: Nodes − Pod requests
//!        │           not ready: lost nodes)
//!        │ Redis ROLE / REPLICAOF on pod IPs, or through pods/portforward
//! ```
//!
//! - [`objects`]: the Pod and PVCs of an ordinal, what listed objects tell the planner,
//!   and the patches, all pure.
//! - [`capacity`]: the member's capacity model from Nodes and Pods, pure.
//! - [`locality`]: lost nodes and node-local volumes (instance rebuild), pure.
//! - [`backend`]: [`KubeBackend`], the requests.
//! - [`access`]: how Redis ports are reached, pod IP or the API server's port-forward.
//! - [`resource`]: InstanceSets as dynamic objects of the CRD.
//! - [`federated`]: [`FederatedSets`], the requests of the federated agent
//!   (`flotilla-agent`'s `KubeMember`): its slices as InstanceSet objects, the API
//!   server's version, capacity, the local controller.
//! - [`rbac`]: every Kubernetes permission the agent needs, the source of its
//!   ClusterRole (`deploy/agent/rbac.yaml`).
//! - [`standalone`]: the agent loop that runs the controller for every InstanceSet in
//!   the cluster (`flotilla agent --standalone`).
//!
//! This is the only crate of the workspace (with `xtask`) that knows kube: other crates
//! hold a client only as an opaque value from [`client`] and reach the API through this
//! crate's types. Its unit
//! tests and `tests/mock_api.rs` run against a mock API server (`tower_test`), never a
//! real one; `tests/cluster.rs` holds `#[ignore = "needs cluster"]` tests that run
//! against whatever `KUBECONFIG` points at.

pub mod access;
pub mod backend;
pub mod capacity;
mod error;
pub mod federated;
pub mod locality;
pub mod objects;
pub mod rbac;
pub mod resource;
pub mod standalone;

pub use access::PodAccess;
pub use backend::KubeBackend;
pub use error::{Error, Result};
pub use federated::FederatedSets;

/// A client from a kubeconfig file, or, without one, from the environment (`KUBECONFIG`
/// or `~/.kube/config` when present, else the in-cluster service account: what a pod
/// of `deploy/agent/` uses). Which of these it used decides how a backend built
/// afterwards reaches pods by default ([`PodAccess::Auto`]): a kubeconfig means the
/// process may be outside the cluster, so port-forward; the service account, pod IPs.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let (config, source) = match kubeconfig {
        Some(path) => {
            let loading = |source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(loading)?;
            let config = kube::Config::from_custom_kubeconfig(
                file,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(loading)?;
            (config, access::ConfigSource::Kubeconfig)
        }
        None => {
            let config = kube::Config::infer().await.map_err(Error::InferConfig)?;
            // `infer` takes the environment's kubeconfig when one loads, else the
            // in-cluster config; asking the first question again tells which it took.
            let from_kubeconfig =
                kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
                    .await
                    .is_ok();
            let source = if from_kubeconfig {
                access::ConfigSource::Kubeconfig
            } else {
                access::ConfigSource::InCluster
            };
            (config, source)
        }
    };
    let client =
        kube::Client::try_from(config).map_err(Error::kube("building a Kubernetes client"))?;
    access::record(source);
    Ok(client)
}
