//! The Kubernetes-style envelope every Flotilla document shares.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group and version of every Flotilla kind.
pub const API_VERSION: &str = "flotilla.io/v1alpha1";
/// The API group of every Flotilla kind.
pub const GROUP: &str = "flotilla.io";
/// The version within [`GROUP`].
pub const VERSION: &str = "v1alpha1";

/// Ties a spec type to its kind, so one generic envelope serves every kind.
pub trait Kind {
    /// The `kind` field, e.g. `FederatedInstanceSet`.
    const KIND: &'static str;
    /// Plural resource name, e.g. `federatedinstancesets`.
    const PLURAL: &'static str;
    /// Whether objects of this kind live in a namespace.
    const NAMESPACED: bool;
}

/// A document: `apiVersion`, `kind`, `metadata`, `spec`, `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "camelCase",
    bound(deserialize = "S: Deserialize<'de> + Default, T: Deserialize<'de>")
)]
#[schemars(bound = "S: JsonSchema + Default, T: JsonSchema")]
pub struct Object<S, T> {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `S::KIND`.
    pub kind: String,
    /// Name, namespace, labels, generation.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the user asked for (required for every kind but `Cluster`; see
    /// [`crate::decode`]).
    #[serde(default)]
    pub spec: S,
    /// What the system observed; written by Flotilla, never by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<T>,
}

impl<S: Kind, T> Object<S, T> {
    /// A new object named `name` with the right `apiVersion` and `kind`.
    pub fn new(name: &str, spec: S) -> Self {
        Object {
            api_version: API_VERSION.to_string(),
            kind: S::KIND.to_string(),
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    /// The object's name, or `""` when it has none (validation refuses that).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The object's namespace; `default` when unset for namespaced kinds.
    pub fn namespace(&self) -> Option<&str> {
        S::NAMESPACED.then(|| self.metadata.namespace.as_deref().unwrap_or("default"))
    }
}
