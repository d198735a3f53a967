//! The InstanceSet custom resource as the Kubernetes API sees it.
//!
//! Flotilla's `InstanceSet` is `flotilla_api::Object<InstanceSetSpec, InstanceSetStatus>`,
//! a type of the pure api crate that cannot implement `kube::Resource` here (both are
//! foreign to this crate). So InstanceSets travel as `DynamicObject`s described by
//! [`instance_sets`], and are converted through JSON at the edge ([`decode`]): one source
//! of truth for the type, no hand-made copy.

use flotilla_api::object::{API_VERSION, GROUP, VERSION};
use flotilla_api::{InstanceSet, InstanceSetSpec, Kind as _};
use kube::api::DynamicObject;
use kube::discovery::ApiResource;

use crate::error::{Error, Result};

/// `instancesets.flotilla.io/v1alpha1`, for the dynamic `Api`.
pub fn instance_sets() -> ApiResource {
    ApiResource {
        group: GROUP.to_string(),
        version: VERSION.to_string(),
        api_version: API_VERSION.to_string(),
        kind: InstanceSetSpec::KIND.to_string(),
        plural: InstanceSetSpec::PLURAL.to_string(),
    }
}

/// The InstanceSet an API object holds.
pub fn decode(object: &DynamicObject) -> Result<InstanceSet> {
    let name = format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or("default"),
        object.metadata.name.as_deref().unwrap_or_default()
    );
    let value = serde_json::to_value(object).map_err(|source| Error::Decode {
        name: name.clone(),
        path: ".".to_string(),
        source,
    })?;
    // Through serde_path_to_error, so that the error names the field: the pod template
    // is opaque to the CRD's schema, so the API server accepts what only this finds.
    let mut set: InstanceSet = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Error::Decode {
            name,
            path,
            source: e.into_inner(),
        }
    })?;
    // Lists and watch events may leave out the type fields of their items.
    set.api_version = API_VERSION.to_string();
    set.kind = InstanceSetSpec::KIND.to_string();
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_object_decodes_into_the_api_type() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "InstanceSet",
            "metadata": {"name": "redis", "namespace": "cache", "uid": "u1", "generation": 3},
            "spec": {
                "ordinals": {"ranges": [{"start": 0, "end": 2}], "discrete": [9]},
                "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}}
            },
            "status": {"replicas": 3, "readyReplicas": 2}
        }))
        .unwrap();
        let set = decode(&object).unwrap();
        assert_eq!(set.name(), "redis");
        assert_eq!(set.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(set.spec.ordinals.to_vec(), vec![0, 1, 2, 9]);
        assert_eq!(set.status.unwrap().ready_replicas, 2);
    }

    #[test]
    fn a_bad_object_names_itself_and_the_field() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "redis", "namespace": "cache"},
            "spec": {"ordinals": {"ranges": "nope"}, "template": {}}
        }))
        .unwrap();
        let e = decode(&object).unwrap_err();
        assert!(e.chain().contains("cache/redis"), "{}", e.chain());
        assert!(e.chain().contains("spec.ordinals.ranges"), "{}", e.chain());
    }

    #[test]
    fn a_template_field_of_the_wrong_type_is_named() {
        // The CRD keeps the template opaque, so the API server accepts this.
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "redis", "namespace": "cache"},
            "spec": {
                "ordinals": {"ranges": [{"start": 0, "end": 0}]},
                "template": {"spec": {"containers": [
                    {"name": "redis", "ports": [{"containerPort": "6379"}]},
                ]}},
            },
        }))
        .unwrap();
        let e = decode(&object).unwrap_err();
        assert!(
            e.chain()
                .contains("spec.template.spec.containers[0].ports[0].containerPort"),
            "{}",
            e.chain()
        );
    }
}
