//! Sentinels: the companion set `<set>-sentinel` Flotilla runs for a Redis set with
//! `spec.redis.sentinel`, their configuration, and registering the shard with them.
//!
//! ```text
//!   Redis set (sentinel: replicas, quorum, timings)
//!      └─▶ companion(): FederatedInstanceSet <set>-sentinel, placed so that, with three
//!          or more eligible members, no member holds a quorum (perCluster max quorum-1)
//!   each sentinel: sentinel.conf (own address, announce) ─▶ the member's engine asks
//!      SENTINEL MASTER <set>; unknown ─▶ SENTINEL MONITOR <set> <primary> <quorum>
//!      and SENTINEL SET <timings>; timings differ ─▶ SENTINEL SET
//! ```
//!
//! A sentinel that knows the shard is never re-registered: re-registering would reset
//! what it learned (the current primary after a failover, its epoch) to the
//! federation's view, which may be behind.

use std::collections::BTreeMap;

use flotilla_api::redis::{SENTINEL_PORT, SentinelFor, sentinel_set_name};
use flotilla_api::set::{ClusterBounds, Placement};
use flotilla_api::{FederatedInstanceSet, FederatedInstanceSetSpec, InstanceSet, Object};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::engine::Command;
use crate::launch::split_addr;

/// The label on a companion sentinel set naming the Redis set it watches.
pub const SENTINEL_FOR_LABEL: &str = "flotilla.io/sentinel-for";

/// The companion sentinel set of `parent`, or `None` when it has no sentinels.
/// `eligible` are the member clusters the parent may run in: with three or more, each
/// may hold at most `quorum - 1` sentinels (at least one), so no member alone can
/// declare the primary down.
pub fn companion(parent: &FederatedInstanceSet, eligible: &[&str]) -> Option<FederatedInstanceSet> {
    let redis = parent.spec.redis.as_ref()?;
    let sentinel = redis.sentinel?;
    let image = parent
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone());
    let mut per_cluster = BTreeMap::new();
    if eligible.len() >= 3 {
        let max = sentinel.quorum.saturating_sub(1).max(1);
        for c in eligible {
            per_cluster.insert(
                c.to_string(),
                ClusterBounds {
                    min: None,
                    max: Some(max),
                },
            );
        }
    }
    let p = &parent.spec.placement;
    let container = Container {
        name: "sentinel".into(),
        image,
        command: Some(kube_command(
            parent.name(),
            redis.announce == flotilla_api::redis::Announce::Hostname,
        )),
        env: Some(vec![EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("sentinel".into()),
            container_port: i32::from(SENTINEL_PORT),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("64Mi".into())),
            ])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let name = sentinel_set_name(parent.name());
    let mut set: FederatedInstanceSet = Object::new(
        &name,
        FederatedInstanceSetSpec {
            replicas: sentinel.replicas,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([(
                        SENTINEL_FOR_LABEL.to_string(),
                        parent.name().to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            placement: Placement {
                cluster_affinity: p.cluster_affinity.clone(),
                per_cluster,
                tolerations: p.tolerations.clone(),
                failover: p.failover.clone(),
                max_instances_per_node: Some(1),
                ..Placement::default()
            },
            sentinel_for: Some(SentinelFor {
                set: parent.name().to_string(),
                sentinel,
            }),
            ..FederatedInstanceSetSpec::default()
        },
    );
    set.metadata.namespace = parent.metadata.namespace.clone();
    set.metadata.labels = Some(BTreeMap::from([(
        SENTINEL_FOR_LABEL.to_string(),
        parent.name().to_string(),
    )]));
    Some(set)
}

/// A container command for Kubernetes members: writes the configuration from the pod's
/// IP into a writable file (Sentinel rewrites its configuration) and runs Sentinel.
/// It resolves the DNS names a shard may announce; `hostnames`: the shard announces
/// them, so Sentinel reports its master by name too (`announce-hostnames`).
fn kube_command(set: &str, hostnames: bool) -> Vec<String> {
    let announce = if hostnames {
        "sentinel announce-hostnames yes\\n"
    } else {
        ""
    };
    let script = format!(
        "printf 'port {SENTINEL_PORT}\\nprotected-mode no\\nsentinel announce-ip %s\\nsentinel announce-port {SENTINEL_PORT}\\nsentinel resolve-hostnames yes\\n{announce}' \"$POD_IP\" > /tmp/sentinel.conf && exec redis-sentinel /tmp/sentinel.conf # watches {set}"
    );
    vec!["sh".into(), "-c".into(), script]
}

/// The `sentinel.conf` lines of a sentinel listening on `addr` (its own address) and
/// `port`, keeping its state in `dir`. The shard is registered by command (see the
/// module documentation), not here.
pub fn sentinel_config(addr: &str, port: u16, dir: &str) -> Vec<(String, String)> {
    vec![
        ("port".into(), port.to_string()),
        ("bind".into(), addr.to_string()),
        ("protected-mode".into(), "no".into()),
        ("daemonize".into(), "no".into()),
        ("logfile".into(), "\"\"".into()),
        ("dir".into(), format!("\"{dir}\"")),
        ("sentinel announce-ip".into(), addr.to_string()),
        ("sentinel announce-port".into(), port.to_string()),
    ]
}

/// What one sentinel said about the shard: `SENTINEL MASTER <set>` as field → value,
/// or `None` when it does not know it.
pub type MasterView = Option<BTreeMap<String, String>>;

/// How many replicas a sentinel re-points at once after a failover. The new primary
/// takes writes only once `min-replicas-to-write` of them are back (`NOREPLICAS`
/// until then), and Sentinel moves to the next batch only when it has seen the last
/// one linked (its INFO, every second during a failover): one at a time, a shard
/// being moved (old and new instances side by side) refused writes for many seconds.
/// The replicas resume with a partial resync (PSYNC2 keeps the old primary's
/// history), so re-pointing them together is cheap.
pub const PARALLEL_SYNCS: u32 = 16;

/// The commands that register the shard with one sentinel (`view` = what it says),
/// given the shard's primary `primary` (`host:port`) as the federation knows it.
pub fn registration(
    ordinal: u32,
    sentinel_for: &SentinelFor,
    view: &MasterView,
    primary: Option<&str>,
) -> Vec<Command> {
    let name = &sentinel_for.set;
    let s = &sentinel_for.sentinel;
    let timings = [
        (
            "down-after-milliseconds",
            s.down_after_milliseconds.to_string(),
        ),
        (
            "failover-timeout",
            s.failover_timeout_milliseconds.to_string(),
        ),
        ("quorum", s.quorum.to_string()),
        ("parallel-syncs", PARALLEL_SYNCS.to_string()),
    ];
    let set = |pairs: &[(&str, String)], why: String| {
        let mut args = vec!["SENTINEL".to_string(), "SET".to_string(), name.clone()];
        for (k, v) in pairs {
            args.push(k.to_string());
            args.push(v.clone());
        }
        Command { ordinal, args, why }
    };
    match view {
        None => {
            let Some((host, port)) = primary.and_then(split_addr) else {
                return Vec::new();
            };
            vec![
                Command {
                    ordinal,
                    args: vec![
                        "SENTINEL".into(),
                        "MONITOR".into(),
                        name.clone(),
                        host.into(),
                        port.into(),
                        s.quorum.to_string(),
                    ],
                    why: format!("registers the shard {name} at {host}:{port}"),
                },
                set(&timings, format!("sets {name}'s timings")),
            ]
        }
        Some(fields) => {
            let stale: Vec<(&str, String)> = timings
                .iter()
                .filter(|(k, v)| fields.get(*k) != Some(v))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            if stale.is_empty() {
                Vec::new()
            } else {
                vec![set(&stale, format!("updates {name}'s timings"))]
            }
        }
    }
}

/// The shard a companion sentinel slice watches.
pub fn watched(set: &InstanceSet) -> Option<&SentinelFor> {
    set.spec.sentinel_for.as_ref()
}

#[cfg(test)]
mod tests {
    use flotilla_api::redis::{RedisSpec, SentinelSpec};

    use super::*;

    fn parent(sentinels: u32, quorum: u32) -> FederatedInstanceSet {
        let mut s: FederatedInstanceSet = Object::new(
            "cache",
            FederatedInstanceSetSpec {
                replicas: 3,
                redis: Some(RedisSpec {
                    sentinel: Some(SentinelSpec {
                        replicas: sentinels,
                        quorum,
                        ..SentinelSpec::default()
                    }),
                    ..RedisSpec::default()
                }),
                ..FederatedInstanceSetSpec::default()
            },
        );
        s.metadata.namespace = Some("team".into());
        s
    }

    #[test]
    fn no_member_holds_a_quorum_where_three_are_eligible() {
        let c = companion(&parent(3, 2), &["a", "b", "c"]).unwrap();
        assert_eq!(c.name(), "cache-sentinel");
        assert_eq!(c.namespace(), Some("team"));
        assert_eq!(c.spec.replicas, 3);
        assert!(
            c.spec
                .placement
                .per_cluster
                .values()
                .all(|b| b.max == Some(1))
        );
        assert_eq!(c.spec.placement.per_cluster.len(), 3);
        let two = companion(&parent(3, 2), &["a", "b"]).unwrap();
        assert!(
            two.spec.placement.per_cluster.is_empty(),
            "not possible: spread only"
        );
        let mut plain = parent(3, 2);
        plain.spec.redis.as_mut().unwrap().sentinel = None;
        assert!(companion(&plain, &["a"]).is_none());
    }

    #[test]
    fn kubernetes_sentinels_resolve_names_and_announce_them_for_a_hostname_shard() {
        let script = |p: &FederatedInstanceSet| {
            companion(p, &["a"])
                .unwrap()
                .spec
                .template
                .spec
                .unwrap()
                .containers[0]
                .command
                .clone()
                .unwrap()
                .join(" ")
        };
        let by_ip = script(&parent(3, 2));
        assert!(by_ip.contains("sentinel resolve-hostnames yes"), "{by_ip}");
        assert!(!by_ip.contains("announce-hostnames"), "{by_ip}");
        let mut named = parent(3, 2);
        named.spec.redis.as_mut().unwrap().announce = flotilla_api::redis::Announce::Hostname;
        let by_name = script(&named);
        assert!(
            by_name.contains("sentinel announce-hostnames yes"),
            "{by_name}"
        );
    }

    #[test]
    fn a_sentinel_is_registered_once_and_its_timings_kept() {
        let f = SentinelFor {
            set: "cache".into(),
            sentinel: SentinelSpec::default(),
        };
        let fresh = registration(0, &f, &None, Some("127.0.1.1:6379"));
        assert_eq!(fresh.len(), 2);
        assert_eq!(
            fresh[0].args,
            ["SENTINEL", "MONITOR", "cache", "127.0.1.1", "6379", "2"]
        );
        assert!(
            registration(0, &f, &None, None).is_empty(),
            "no primary yet"
        );
        let known: BTreeMap<String, String> = [
            ("down-after-milliseconds", "5000"),
            ("failover-timeout", "60000"),
            ("quorum", "2"),
            ("parallel-syncs", "16"),
            ("ip", "127.0.1.9"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(
            registration(0, &f, &Some(known.clone()), Some("127.0.1.1:6379")).is_empty(),
            "known: never re-registered at the federation's (maybe stale) primary"
        );
        let mut slow = known;
        slow.insert("down-after-milliseconds".into(), "30000".into());
        let c = registration(0, &f, &Some(slow), None);
        assert_eq!(
            c[0].args,
            [
                "SENTINEL",
                "SET",
                "cache",
                "down-after-milliseconds",
                "5000"
            ]
        );
    }
}
