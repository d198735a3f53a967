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
    /// What a Redis instance reads only when it starts: the mode, the announced
    /// address and the static and immutable parameters. Dynamic ones are applied to
    /// running instances (`CONFIG SET`) and so are not part of the revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<(
        flotilla_api::redis::RedisMode,
        flotilla_api::redis::Announce,
        std::collections::BTreeMap<&'a str, &'a str>,
    )>,
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
        let redis = spec.redis.as_ref().map(|r| {
            let mut restart = flotilla_api::redis::config_of_class(
                &r.config,
                flotilla_api::redis::ParamClass::Static,
            );
            restart.extend(flotilla_api::redis::config_of_class(
                &r.config,
                flotilla_api::redis::ParamClass::Immutable,
            ));
            (r.mode, r.announce, restart)
        });
        let made = |template| Made {
            template,
            claims: &spec.volume_claim_templates,
            max_per_node: spec.max_instances_per_node,
            redis: redis.clone(),
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

    #[test]
    fn static_redis_parameters_restart_dynamic_ones_do_not() {
        use flotilla_api::redis::RedisSpec;
        let with = |config: &[(&str, &str)], min: u32| {
            let mut s = spec(template("redis:7.2", "a", "redis-server"));
            s.redis = Some(RedisSpec {
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                min_replicas_to_write: Some(min),
                ..RedisSpec::default()
            });
            Revision::of(&s)
        };
        let base = with(&[("maxmemory", "1gb")], 1);
        assert_eq!(
            base,
            with(&[("maxmemory", "2gb")], 0),
            "dynamic: CONFIG SET"
        );
        let restart = with(&[("maxmemory", "1gb"), ("io-threads", "2")], 1);
        assert_ne!(base.revision, restart.revision);
        assert_ne!(base.shape, restart.shape, "static: a restart");
    }
}
