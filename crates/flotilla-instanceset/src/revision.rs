//! Template revisions: which template an instance was made from, and whether moving it
//! to another one can be done in place.
//!
//! An instance carries two hashes of what it was made from: the pod template, the
//! volume claim templates (its mounts and volumes) and `maxInstancesPerNode` (its
//! affinity and spread rules). The *revision* covers all of it; the *shape* covers all
//! but what Kubernetes can change on a running pod (container images, labels,
//! annotations). Same shape, other revision: update in place. Other shape: recreate.

use flotilla_api::InstanceSetSpec;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};
use serde::Serialize;

/// A template's revision and shape, as 16 hex digits each.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision {
    /// Hash of the whole template.
    pub revision: String,
    /// Hash of the template without images, labels and annotations.
    pub shape: String,
}

/// What an instance is made from.
#[derive(Serialize)]
struct Made<'a> {
    template: &'a PodTemplateSpec,
    claims: &'a [PersistentVolumeClaim],
    max_per_node: Option<u32>,
}

impl Revision {
    /// The revision of what a slice's instances are made from. Deterministic:
    /// serde_json writes struct fields in declaration order and the k8s-openapi maps
    /// are ordered.
    pub fn of(spec: &InstanceSetSpec) -> Revision {
        let template = &spec.template;
        let mut shape = template.clone();
        if let Some(meta) = shape.metadata.as_mut() {
            meta.labels = None;
            meta.annotations = None;
        }
        if let Some(spec) = shape.spec.as_mut() {
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                c.image = None;
            }
        }
        let made = |template| Made {
            template,
            claims: &spec.volume_claim_templates,
            max_per_node: spec.max_instances_per_node,
        };
        Revision {
            revision: hash(&made(template)),
            shape: hash(&made(&shape)),
        }
    }
}

fn hash(made: &Made<'_>) -> String {
    // FNV-1a, 64 bits: stable across releases and platforms (unlike std's hasher).
    let bytes = serde_json::to_vec(made).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn template(image: &str, label: &str, cmd: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("team".to_string(), label.to_string())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "redis".into(),
                    image: Some(image.into()),
                    command: Some(vec![cmd.into()]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
        }
    }

    fn spec(template: PodTemplateSpec) -> InstanceSetSpec {
        InstanceSetSpec {
            template,
            ..InstanceSetSpec::default()
        }
    }

    #[test]
    fn images_and_labels_keep_the_shape_other_changes_do_not() {
        let base = Revision::of(&spec(template("redis:7.2", "a", "redis-server")));
        let image = Revision::of(&spec(template("redis:7.4", "b", "redis-server")));
        let command = Revision::of(&spec(template("redis:7.2", "a", "valkey-server")));
        assert_ne!(base.revision, image.revision);
        assert_eq!(base.shape, image.shape);
        assert_ne!(base.shape, command.shape);
        assert_eq!(
            base,
            Revision::of(&spec(template("redis:7.2", "a", "redis-server")))
        );
    }

    #[test]
    fn claims_and_the_per_node_limit_are_part_of_the_shape() {
        let base = spec(template("redis:7.2", "a", "redis-server"));
        let mut spread = base.clone();
        spread.max_instances_per_node = Some(1);
        let mut claims = base.clone();
        claims.volume_claim_templates = vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                ..ObjectMeta::default()
            },
            ..PersistentVolumeClaim::default()
        }];
        let base = Revision::of(&base);
        for other in [Revision::of(&spread), Revision::of(&claims)] {
            assert_ne!(base.revision, other.revision);
            assert_ne!(base.shape, other.shape, "recreated, not updated in place");
        }
    }
}
