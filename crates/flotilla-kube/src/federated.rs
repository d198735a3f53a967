//! The Kubernetes requests of the federated agent (`flotilla-agent`'s `KubeMember`),
//! so that the agent itself never names a kube type.
//!
//! ```text
//!   KubeMember (flotilla-agent: what to write, when, statuses) ──▶ FederatedSets
//!     list    GET    /apis/flotilla.io/v1alpha1/instancesets?labelSelector=flotilla.io/federated=true
//!     apply   PATCH  …/namespaces/<ns>/instancesets/<name>?fieldManager=flotilla-agent&force=true
//!             (server-side apply of body(): name, labels + federated, annotations +
//!              federation generation, spec; never uid, resourceVersion or status)
//!     delete  DELETE …/namespaces/<ns>/instancesets/<name> (background; 404 = gone)
//!     version GET    /version
//!     capacity        KubeBackend::capacity (Nodes − Pod requests)
//!     run_standalone  standalone::run, the local controller of every InstanceSet
//! ```
//!
//! Every call answers in flotilla types ([`Mirrored`], `InstanceSet`,
//! `CapacityModel`, [`Error`]). The RBAC rows these requests need are the
//! [`rbac::User::FederatedAgent`](crate::rbac::User::FederatedAgent) ones (the list is
//! covered by the Standalone rows); `tests/mock_api.rs` checks them.
//!
//! Tested against a mock API server (`tower_test`) only, like the rest of this crate.

use flotilla_api::object::API_VERSION;
use flotilla_api::status::InstanceSetStatus;
use flotilla_api::{CapacityModel, InstanceSet, InstanceSetSpec, Kind as _};
use flotilla_member::Backend as _;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::error::{Error, Result, status_code};
use crate::{KubeBackend, resource, standalone};

/// The label on every InstanceSet the federated agent writes: it came from the
/// federation.
pub const FEDERATED_LABEL: &str = "flotilla.io/federated";
/// The annotation carrying the slice's generation in the federation.
pub const GENERATION_ANNOTATION: &str = "flotilla.io/federation-generation";
/// The field manager of the federated agent's writes.
pub const FIELD_MANAGER: &str = "flotilla-agent";

/// The federated InstanceSets of one member cluster, over one client (see the module
/// documentation). Cheap to clone.
#[derive(Clone)]
pub struct FederatedSets {
    client: Client,
    backend: KubeBackend,
}

impl std::fmt::Debug for FederatedSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederatedSets").finish_non_exhaustive()
    }
}

/// A federated InstanceSet as the member's API server holds it: what the agent needs
/// of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirrored {
    /// Its namespace (`default` if the object has none).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its Kubernetes `metadata.generation` (not the federation's).
    pub generation: Option<i64>,
    /// The status the local controller wrote, as written (its `observedGeneration` is
    /// a Kubernetes generation); `None` without one, or when the object does not
    /// decode into an InstanceSet.
    pub status: Option<InstanceSetStatus>,
}

impl Mirrored {
    fn from_object(object: &DynamicObject) -> Mirrored {
        Mirrored {
            namespace: object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: object.metadata.name.clone().unwrap_or_default(),
            generation: object.metadata.generation,
            status: resource::decode(object).ok().and_then(|set| set.status),
        }
    }
}

impl FederatedSets {
    /// The federated InstanceSets reached through `client` (from [`crate::client`]).
    pub fn new(client: Client) -> FederatedSets {
        FederatedSets {
            backend: KubeBackend::new(client.clone()),
            client,
        }
    }

    /// Every InstanceSet labelled [`FEDERATED_LABEL`]`=true`, in all namespaces.
    pub async fn list(&self) -> Result<Vec<Mirrored>> {
        let all: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &resource::instance_sets());
        let selector = format!("{FEDERATED_LABEL}=true");
        let listed = all
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube("listing federated InstanceSets"))?;
        Ok(listed.items.iter().map(Mirrored::from_object).collect())
    }

    /// Writes `set` as [`body`] by server-side apply (field manager [`FIELD_MANAGER`],
    /// forced), creating it if new; the object as stored afterwards.
    pub async fn apply(&self, set: &InstanceSet) -> Result<Mirrored> {
        let namespace = set.namespace().unwrap_or("default");
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource::instance_sets());
        let object = api
            .patch(
                set.name(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body(set)),
            )
            .await
            .map_err(Error::kube(format!(
                "applying InstanceSet {namespace}/{}",
                set.name()
            )))?;
        Ok(Mirrored::from_object(&object))
    }

    /// Deletes an InstanceSet (background propagation: its pods go through their owner
    /// references, claims too when `whenDeleted: Delete`). `Ok(false)` when it was
    /// already gone (404).
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<bool> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource::instance_sets());
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(source) => Err(Error::Kube {
                what: format!("deleting InstanceSet {namespace}/{name}"),
                source,
            }),
        }
    }

    /// The API server's version (`gitVersion`, e.g. `v1.33.1`).
    pub async fn kubernetes_version(&self) -> Result<String> {
        let info = self
            .client
            .apiserver_version()
            .await
            .map_err(Error::kube("reading the API server's version"))?;
        Ok(info.git_version)
    }

    /// The member's capacity model ([`KubeBackend`]'s: lists every node and pod).
    pub async fn capacity(&self) -> flotilla_member::Result<CapacityModel> {
        self.backend.capacity().await
    }

    /// Runs the local controller for every InstanceSet ([`standalone::run`]) until
    /// `shutdown` resolves.
    pub async fn run_standalone(
        &self,
        options: standalone::Options,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) -> Result<()> {
        standalone::run(self.client.clone(), options, shutdown).await
    }
}

/// The object the federated agent applies for a slice: its name, labels (plus
/// [`FEDERATED_LABEL`]), annotations (plus [`GENERATION_ANNOTATION`], the federation's
/// generation) and spec; never the federation's uid, resource version or status.
pub fn body(set: &InstanceSet) -> Value {
    let mut labels = set.metadata.labels.clone().unwrap_or_default();
    labels.insert(FEDERATED_LABEL.into(), "true".into());
    let mut annotations = set.metadata.annotations.clone().unwrap_or_default();
    if let Some(g) = set.metadata.generation {
        annotations.insert(GENERATION_ANNOTATION.into(), g.to_string());
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": InstanceSetSpec::KIND,
        "metadata": {
            "name": set.name(),
            "namespace": set.namespace().unwrap_or("default"),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": set.spec,
    })
}
