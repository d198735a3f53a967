//! Validation: every problem at once, each naming its field and the reason.
//!
//! Only validated objects ([`Valid`]) reach the scheduler or a store, so code past this
//! point may rely on names being DNS labels, quantities parsing, `min ≤ max`, and so on.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{Errors, Invalid};
use crate::object::{API_VERSION, Kind, Object};
use crate::ordinals::{MAX_ORDINAL, OrdinalSpace, Ordinals};
use crate::resources::{self, Requests};
use crate::selector::{EFFECTS, OPERATORS};
use crate::set::{Placement, RoleProbe, Weights};
use crate::{Cluster, FederatedInstanceSet, InstanceSet};

/// The most replicas one set may ask for.
pub const MAX_REPLICAS: u32 = 1_000_000;

/// An object that passed validation. Only this module makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct Valid<T>(T);

impl<T> Valid<T> {
    /// The validated object.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Valid<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> AsRef<T> for Valid<T> {
    fn as_ref(&self) -> &T {
        &self.0
    }
}

/// Validates a federated set.
pub fn federated_instance_set(
    mut set: FederatedInstanceSet,
) -> Result<Valid<FederatedInstanceSet>, Invalid> {
    redis_defaults(&mut set.spec);
    let mut e = Errors::default();
    header(&set, &mut e);
    let spec = &set.spec;
    if spec.replicas > MAX_REPLICAS {
        e.push(
            "spec.replicas",
            format!("{} is more than the limit of {MAX_REPLICAS}", spec.replicas),
        );
    }
    ordinals(spec.ordinals.as_ref(), &spec.offline_ordinals, &mut e);
    let space = OrdinalSpace::new(spec.ordinals.as_ref(), &spec.offline_ordinals);
    if u64::from(spec.replicas) > space.len() {
        e.push(
            if spec.ordinals.is_some() {
                "spec.ordinals"
            } else {
                "spec.offlineOrdinals"
            },
            format!(
                "{} usable ordinals (the ordinal space minus offlineOrdinals) for {} replicas",
                space.len(),
                spec.replicas
            ),
        );
    }
    instance_name_length(set.name(), spec.ordinals.as_ref(), &mut e);
    workload(
        &spec.template,
        &spec.volume_claim_templates,
        &spec.roles,
        spec.role_probe.as_ref(),
        &spec.update_strategy.max_unavailable,
        &mut e,
    );
    placement(&spec.placement, spec.replicas, &mut e);
    if let Some(r) = &spec.redis {
        redis(r, &spec.roles, spec.role_probe.as_ref(), &mut e);
        hostname_announce(r, set.name(), &mut e);
        if r.shard_replicas.is_some() {
            e.push(
                "spec.redis.shardReplicas",
                "written by Flotilla in the members' slices; leave it out (spec.replicas says how many)",
            );
        }
        let wanted = r.min_replicas_to_write_for(spec.replicas);
        if wanted >= spec.replicas.max(1) {
            e.push(
                "spec.redis.minReplicasToWrite",
                format!(
                    "{wanted} is more than the {} replica(s) a set of {} instance(s) has: the primary would refuse every write",
                    spec.replicas.saturating_sub(1),
                    spec.replicas
                ),
            );
        }
    }
    e.into_result().map(|()| Valid(set))
}

/// `spec.redis` implies the roles and their probe: `primary` (exclusive, updated last)
/// and `secondary`, probed with `ROLE` on the Redis port. Filled in when absent.
fn redis_defaults(spec: &mut crate::FederatedInstanceSetSpec) {
    if spec.redis.is_none() {
        return;
    }
    if spec.roles.is_empty() {
        spec.roles = vec![
            crate::Role {
                name: crate::redis::PRIMARY.to_string(),
                update_priority: 2,
                exclusive: true,
            },
            crate::Role {
                name: crate::redis::SECONDARY.to_string(),
                update_priority: 1,
                exclusive: false,
            },
        ];
    }
    if spec.role_probe.is_none() {
        let port = crate::redis::port_of(&spec.template);
        spec.role_probe = Some(RoleProbe {
            redis: Some(crate::set::RedisProbe {
                port,
                role_map: BTreeMap::from([
                    ("master".to_string(), crate::redis::PRIMARY.to_string()),
                    ("slave".to_string(), crate::redis::SECONDARY.to_string()),
                ]),
            }),
            exec: None,
            period_seconds: 2,
            timeout_seconds: 1,
        });
    }
}

/// `spec.redis` on its own: known, user-settable parameters with one-line values,
/// sentinels that can reach a quorum, and one exclusive role (the primary).
/// `announce: Hostname` names a headless Service after the set, and Service names must
/// start with a letter (DNS-1035).
fn hostname_announce(r: &crate::redis::RedisSpec, name: &str, e: &mut Errors) {
    if r.announce == crate::redis::Announce::Hostname
        && !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        e.push(
            "spec.redis.announce",
            format!(
                "Hostname needs a set name starting with a letter: it names the headless Service {name:?}, and Service names must"
            ),
        );
    }
}

fn redis(
    r: &crate::redis::RedisSpec,
    roles: &[crate::Role],
    probe: Option<&RoleProbe>,
    e: &mut Errors,
) {
    let exclusive: Vec<&str> = roles
        .iter()
        .filter(|r| r.exclusive)
        .map(|r| r.name.as_str())
        .collect();
    match probe {
        Some(p) if p.exec.is_some() => e.push(
            "spec.roleProbe.exec",
            "a Redis set's roles come from Redis itself (ROLE); leave roleProbe out",
        ),
        Some(p) => {
            let master = p.redis.as_ref().and_then(|r| r.role_map.get("master"));
            if let [role] = exclusive[..]
                && master.map(String::as_str) != Some(role)
            {
                e.push(
                    "spec.roleProbe.redis.roleMap.master",
                    format!("must name the exclusive role {role:?}: the primary is the instance Redis calls master"),
                );
            }
        }
        None => {}
    }
    use crate::redis::{Param, alias_of, param};
    for (name, value) in &r.config {
        let path = format!("spec.redis.config.{name}");
        let alias = alias_of(name);
        if let Some(current) = alias
            && r.config.contains_key(current)
        {
            e.push(
                path,
                format!("the same parameter as {current}, which is set too: give it once"),
            );
            continue;
        }
        match param(name) {
            None if alias.is_some() => e.push(
                path,
                format!(
                    "an old name of {}: write that instead",
                    alias.unwrap_or_default()
                ),
            ),
            None => e.push(
                path,
                "unknown Redis parameter (Flotilla knows Redis 7's parameters by their redis.conf names)",
            ),
            Some(Param::Owned(why)) => e.push(path, format!("set by Flotilla: {why}")),
            Some(Param::User(_)) => {
                if value.trim().is_empty() {
                    e.push(path, "needs a value");
                } else if value.contains(['\n', '\r', '"']) {
                    e.push(path, "must be one line without double quotes");
                } else if let Some(why) = crate::redis::value_problem(name, value) {
                    e.push(path, why);
                }
            }
        }
    }
    if let Some(s) = &r.sentinel {
        if s.replicas == 0 {
            e.push("spec.redis.sentinel.replicas", "must be at least 1");
        }
        if s.quorum == 0 || s.quorum > s.replicas {
            e.push(
                "spec.redis.sentinel.quorum",
                format!("must be between 1 and replicas ({})", s.replicas),
            );
        }
        if s.down_after_milliseconds < 100 {
            e.push(
                "spec.redis.sentinel.downAfterMilliseconds",
                "must be at least 100",
            );
        }
        if s.failover_timeout_milliseconds < 1000 {
            e.push(
                "spec.redis.sentinel.failoverTimeoutMilliseconds",
                "must be at least 1000",
            );
        }
    }
    if roles.iter().filter(|r| r.exclusive).count() != 1 {
        e.push(
            "spec.roles",
            "a Redis set needs exactly one exclusive role (its primary); leave roles out to get primary and secondary",
        );
    }
}

/// Validates a member slice.
pub fn instance_set(set: InstanceSet) -> Result<Valid<InstanceSet>, Invalid> {
    let mut e = Errors::default();
    header(&set, &mut e);
    let spec = &set.spec;
    ordinals(Some(&spec.ordinals), &[], &mut e);
    // Planning lists a slice's ordinals: a range of two billion would take the whole
    // agent down with it.
    let count: u64 = spec
        .ordinals
        .ranges
        .iter()
        .map(|r| u64::from(r.end.saturating_sub(r.start)) + u64::from(r.start <= r.end))
        .sum::<u64>()
        + spec.ordinals.discrete.len() as u64;
    if count > u64::from(MAX_REPLICAS) {
        e.push(
            "spec.ordinals",
            format!("{count} ordinals, more than the limit of {MAX_REPLICAS}"),
        );
    }
    instance_name_length(set.name(), Some(&spec.ordinals), &mut e);
    workload(
        &spec.template,
        &spec.volume_claim_templates,
        &spec.roles,
        spec.role_probe.as_ref(),
        &spec.update_strategy.max_unavailable,
        &mut e,
    );
    if spec.max_instances_per_node == Some(0) {
        e.push("spec.maxInstancesPerNode", "must be at least 1");
    }
    if let Some(r) = &spec.redis {
        redis(r, &spec.roles, spec.role_probe.as_ref(), &mut e);
        hostname_announce(r, set.name(), &mut e);
    }
    e.into_result().map(|()| Valid(set))
}

/// Validates a cluster.
pub fn cluster(cluster: Cluster) -> Result<Valid<Cluster>, Invalid> {
    let mut e = Errors::default();
    header(&cluster, &mut e);
    for (i, t) in cluster.spec.taints.iter().enumerate() {
        let path = format!("spec.taints[{i}]");
        if let Err(why) = label_key(&t.key) {
            e.push(format!("{path}.key"), why);
        }
        if let Some(v) = t.value.as_deref().filter(|v| !v.is_empty())
            && let Err(why) = label_value(v)
        {
            e.push(format!("{path}.value"), why);
        }
        if !EFFECTS.contains(&t.effect.as_str()) {
            e.push(
                format!("{path}.effect"),
                format!("{:?} is not one of {}", t.effect, EFFECTS.join(", ")),
            );
        }
    }
    if let Some(cap) = cluster.status.as_ref().and_then(|s| s.capacity.as_ref()) {
        for (i, g) in cap.node_groups.iter().enumerate() {
            let path = format!("status.capacity.nodeGroups[{i}].free");
            for name in g.free.keys() {
                if let Err(why) = label_key(name) {
                    e.push(
                        format!("{path}.{name}"),
                        format!("not a resource name: {why}"),
                    );
                }
            }
            resources::parse_list(&g.free, &path, &mut e);
        }
    }
    e.into_result().map(|()| Valid(cluster))
}

/// Validates a list of clusters: each one, and that no name repeats.
pub fn clusters(list: Vec<Cluster>) -> Result<Vec<Valid<Cluster>>, Invalid> {
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, c) in list.into_iter().enumerate() {
        let label = format!("cluster {} ({})", i + 1, c.name());
        if !c.name().is_empty() && !seen.insert(c.name().to_string()) {
            errors.push(crate::FieldError::new(
                "metadata.name",
                format!("{:?} is registered twice", c.name()),
            ));
            errors.last_mut().unwrap().document = Some(label.clone());
        }
        match cluster(c) {
            Ok(v) => out.push(v),
            Err(inv) => errors.extend(inv.in_document(&label).0),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Invalid(errors))
    }
}

fn header<S: Kind, T>(o: &Object<S, T>, e: &mut Errors) {
    if o.api_version != API_VERSION {
        e.push(
            "apiVersion",
            format!("must be {API_VERSION}, not {:?}", o.api_version),
        );
    }
    if o.kind != S::KIND {
        e.push("kind", format!("must be {}, not {:?}", S::KIND, o.kind));
    }
    meta(&o.metadata, S::NAMESPACED, e);
}

fn meta(m: &ObjectMeta, namespaced: bool, e: &mut Errors) {
    match m.name.as_deref() {
        None | Some("") => e.push("metadata.name", "is required"),
        Some(n) => {
            if let Err(why) = dns_label(n) {
                e.push("metadata.name", why);
            }
        }
    }
    match (m.namespace.as_deref(), namespaced) {
        (Some(ns), true) => {
            if let Err(why) = dns_label(ns) {
                e.push("metadata.namespace", why);
            }
        }
        (Some(_), false) => e.push(
            "metadata.namespace",
            "must not be set: this kind is not namespaced",
        ),
        (None, _) => {}
    }
    labels(m.labels.as_ref(), "metadata.labels", e);
}

fn labels(l: Option<&BTreeMap<String, String>>, path: &str, e: &mut Errors) {
    for (k, v) in l.into_iter().flatten() {
        if let Err(why) = label_key(k) {
            e.push(format!("{path}.{k}"), format!("key {why}"));
        }
        if let Err(why) = label_value(v) {
            e.push(format!("{path}.{k}"), format!("value {why}"));
        }
    }
}

/// `<set>-<ordinal>` is a pod hostname, so it must fit a DNS label.
fn instance_name_length(name: &str, space: Option<&Ordinals>, e: &mut Errors) {
    let max = space
        .and_then(|o| o.sorted_ranges().last().map(|r| r.1))
        .unwrap_or(MAX_ORDINAL);
    let longest = name.len() + 1 + max.to_string().len();
    if !name.is_empty() && longest > 63 {
        e.push(
            "metadata.name",
            format!("{name:?} is too long: instance names {name}-{max} must fit 63 characters"),
        );
    }
}

fn ordinals(space: Option<&Ordinals>, offline: &[u32], e: &mut Errors) {
    if let Some(o) = space {
        for (i, r) in o.ranges.iter().enumerate() {
            if r.start > r.end {
                e.push(
                    format!("spec.ordinals.ranges[{i}]"),
                    format!("start {} is after end {}", r.start, r.end),
                );
            }
            if r.end > MAX_ORDINAL {
                e.push(
                    format!("spec.ordinals.ranges[{i}].end"),
                    format!("{} is above the largest ordinal {MAX_ORDINAL}", r.end),
                );
            }
        }
        for (i, &d) in o.discrete.iter().enumerate() {
            if d > MAX_ORDINAL {
                e.push(
                    format!("spec.ordinals.discrete[{i}]"),
                    format!("{d} is above the largest ordinal {MAX_ORDINAL}"),
                );
            }
        }
    }
    for (i, &d) in offline.iter().enumerate() {
        if d > MAX_ORDINAL {
            e.push(
                format!("spec.offlineOrdinals[{i}]"),
                format!("{d} is above the largest ordinal {MAX_ORDINAL}"),
            );
        }
    }
}

fn workload(
    template: &PodTemplateSpec,
    claims: &[k8s_openapi::api::core::v1::PersistentVolumeClaim],
    roles: &[crate::Role],
    probe: Option<&RoleProbe>,
    max_unavailable: &IntOrString,
    e: &mut Errors,
) -> Requests {
    if let Some(m) = &template.metadata {
        labels(m.labels.as_ref(), "spec.template.metadata.labels", e);
    }
    let requests = match &template.spec {
        None => {
            e.push(
                "spec.template.spec",
                "is required (a pod spec with at least one container)",
            );
            Requests::new()
        }
        Some(pod) => {
            if pod.containers.is_empty() {
                e.push(
                    "spec.template.spec.containers",
                    "needs at least one container",
                );
            }
            let mut names = BTreeSet::new();
            let all = pod.containers.iter().map(|c| ("containers", c));
            let init = pod
                .init_containers
                .iter()
                .flatten()
                .map(|c| ("initContainers", c));
            for (i, (list, c)) in all.chain(init).enumerate() {
                let idx = if list == "containers" {
                    i
                } else {
                    i - pod.containers.len()
                };
                let path = format!("spec.template.spec.{list}[{idx}]");
                if let Err(why) = dns_label(&c.name) {
                    e.push(format!("{path}.name"), why);
                } else if !names.insert(c.name.as_str()) {
                    e.push(
                        format!("{path}.name"),
                        format!("{:?} is used by another container", c.name),
                    );
                }
                if c.image.as_deref().unwrap_or_default().trim().is_empty() {
                    e.push(format!("{path}.image"), "is required");
                }
            }
            resources::pod_requests_checked(pod, "spec.template.spec", e)
        }
    };
    let mut claim_names = BTreeSet::new();
    for (i, c) in claims.iter().enumerate() {
        let path = format!("spec.volumeClaimTemplates[{i}].metadata.name");
        match c.metadata.name.as_deref() {
            None | Some("") => e.push(path, "is required"),
            Some(n) => {
                if let Err(why) = dns_label(n) {
                    e.push(path, why);
                } else if !claim_names.insert(n) {
                    e.push(path, format!("{n:?} is used by another claim template"));
                }
            }
        }
    }
    let mut role_names = BTreeSet::new();
    for (i, r) in roles.iter().enumerate() {
        if let Err(why) = label_value(&r.name).and_then(|()| {
            if r.name.is_empty() {
                Err("is required".into())
            } else {
                Ok(())
            }
        }) {
            e.push(format!("spec.roles[{i}].name"), why);
        } else if !role_names.insert(r.name.as_str()) {
            e.push(
                format!("spec.roles[{i}].name"),
                format!("{:?} is declared twice", r.name),
            );
        }
    }
    if let Some(p) = probe {
        match (&p.redis, &p.exec) {
            (Some(_), Some(_)) => e.push(
                "spec.roleProbe",
                "set exactly one of redis or exec, not both",
            ),
            (None, None) => e.push("spec.roleProbe", "set exactly one of redis or exec"),
            (None, Some(x)) if x.command.is_empty() => {
                e.push("spec.roleProbe.exec.command", "needs at least one word")
            }
            _ => {}
        }
        if let Some(r) = &p.redis {
            if r.port == 0 {
                e.push("spec.roleProbe.redis.port", "must be 1 to 65535");
            }
            for (answer, role) in &r.role_map {
                if !role_names.contains(role.as_str()) {
                    e.push(
                        format!("spec.roleProbe.redis.roleMap.{answer}"),
                        format!("{role:?} is not one of spec.roles"),
                    );
                }
            }
        }
        if p.period_seconds == 0 {
            e.push("spec.roleProbe.periodSeconds", "must be at least 1");
        }
        if p.timeout_seconds == 0 {
            e.push("spec.roleProbe.timeoutSeconds", "must be at least 1");
        }
    }
    match max_unavailable {
        IntOrString::Int(n) if *n < 1 => e.push(
            "spec.updateStrategy.maxUnavailable",
            format!("{n} must be at least 1"),
        ),
        IntOrString::String(s) => {
            let pct = s.strip_suffix('%').and_then(|p| p.parse::<u32>().ok());
            if !pct.is_some_and(|p| (1..=100).contains(&p)) {
                e.push(
                    "spec.updateStrategy.maxUnavailable",
                    format!("{s:?} must be a count or a percentage from 1% to 100%"),
                );
            }
        }
        _ => {}
    }
    requests
}

fn placement(p: &Placement, replicas: u32, e: &mut Errors) {
    let path = "spec.placement";
    if let Some(a) = &p.cluster_affinity {
        let mut seen = BTreeSet::new();
        for (i, n) in a.cluster_names.iter().enumerate() {
            if let Err(why) = dns_label(n) {
                e.push(format!("{path}.clusterAffinity.clusterNames[{i}]"), why);
            } else if !seen.insert(n) {
                e.push(
                    format!("{path}.clusterAffinity.clusterNames[{i}]"),
                    format!("{n:?} is listed twice"),
                );
            }
        }
        if let Some(s) = &a.label_selector {
            selector(s, &format!("{path}.clusterAffinity.labelSelector"), e);
        }
    }
    if let Some(Weights::Static(w)) = &p.weights {
        for n in w.keys() {
            if let Err(why) = dns_label(n) {
                e.push(
                    format!("{path}.weights.static.{n}"),
                    format!("not a cluster name: {why}"),
                );
            }
        }
        if w.values().all(|&v| v == 0) {
            e.push(
                format!("{path}.weights.static"),
                "needs at least one cluster with a weight above 0",
            );
        }
    }
    let share_cap = p
        .max_share_per_cluster
        .map(|s| u64::from(replicas) * u64::from(s) / 100);
    let mut min_sum: u64 = 0;
    let mut with_min = 0u32;
    for (n, b) in &p.per_cluster {
        let at = format!("{path}.perCluster.{n}");
        if let Err(why) = dns_label(n) {
            e.push(&at, format!("not a cluster name: {why}"));
        }
        if let (Some(min), Some(max)) = (b.min, b.max)
            && min > max
        {
            e.push(
                format!("{at}.min"),
                format!("{min} is greater than max {max}"),
            );
        }
        if let (Some(min), Some(cap)) = (b.min, share_cap)
            && u64::from(min) > cap
        {
            e.push(
                format!("{at}.min"),
                format!("{min} is more than maxSharePerCluster allows ({}% of {replicas} replicas is {cap})", p.max_share_per_cluster.unwrap_or(0)),
            );
        }
        let min = b.min.unwrap_or(0);
        min_sum += u64::from(min);
        with_min += u32::from(min > 0);
    }
    if min_sum > u64::from(replicas) {
        e.push(
            format!("{path}.perCluster"),
            format!("minimums add up to {min_sum}, more than replicas {replicas}"),
        );
    }
    if let Some(max) = p.max_clusters {
        if max == 0 {
            e.push(format!("{path}.maxClusters"), "must be at least 1");
        }
        if with_min > max {
            e.push(
                format!("{path}.perCluster"),
                format!("{with_min} clusters have a minimum, but maxClusters is {max}"),
            );
        }
    }
    if let Some(min) = p.min_clusters {
        if let Some(max) = p.max_clusters
            && min > max
        {
            e.push(
                format!("{path}.minClusters"),
                format!("{min} is greater than maxClusters {max}"),
            );
        }
        if replicas > 0 && min > replicas {
            e.push(
                format!("{path}.minClusters"),
                format!("{min} clusters cannot each run one of {replicas} replicas"),
            );
        }
    }
    let mut spread_labels = BTreeSet::new();
    for (i, s) in p.spread.iter().enumerate() {
        let at = format!("{path}.spread[{i}]");
        if let Err(why) = label_key(&s.by_label) {
            e.push(format!("{at}.byLabel"), why);
        } else if !spread_labels.insert(s.by_label.as_str()) {
            e.push(
                format!("{at}.byLabel"),
                format!("{:?} is spread by twice", s.by_label),
            );
        }
        if s.min_groups == Some(0) {
            e.push(format!("{at}.minGroups"), "must be at least 1");
        }
        if s.max_groups == Some(0) {
            e.push(format!("{at}.maxGroups"), "must be at least 1");
        }
        if let (Some(min), Some(max)) = (s.min_groups, s.max_groups)
            && min > max
        {
            e.push(
                format!("{at}.minGroups"),
                format!("{min} is greater than maxGroups {max}"),
            );
        }
        if let Some(min) = s.min_groups {
            if replicas > 0 && min > replicas {
                e.push(
                    format!("{at}.minGroups"),
                    format!("{min} groups cannot each run one of {replicas} replicas"),
                );
            }
            if let Some(max) = p.max_clusters
                && min > max
            {
                e.push(
                    format!("{at}.minGroups"),
                    format!("{min} groups need more clusters than maxClusters {max}"),
                );
            }
        }
    }
    if p.max_instances_per_node == Some(0) {
        e.push(format!("{path}.maxInstancesPerNode"), "must be at least 1");
    }
    if let Some(share) = p.max_share_per_cluster {
        if !(1..=100).contains(&share) {
            e.push(
                format!("{path}.maxSharePerCluster"),
                format!("{share} must be a percentage from 1 to 100"),
            );
        } else if replicas > 0 && share_cap == Some(0) {
            e.push(
                format!("{path}.maxSharePerCluster"),
                format!("{share}% of {replicas} replicas rounds down to 0 instances per cluster"),
            );
        }
    }
    tolerations(&p.tolerations, &format!("{path}.tolerations"), e);
}

fn selector(s: &LabelSelector, path: &str, e: &mut Errors) {
    labels(s.match_labels.as_ref(), &format!("{path}.matchLabels"), e);
    for (i, x) in s.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        if let Err(why) = label_key(&x.key) {
            e.push(format!("{at}.key"), why);
        }
        let values = x.values.as_deref().unwrap_or_default();
        match x.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => e.push(
                format!("{at}.values"),
                format!("{} needs at least one value", x.operator),
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => e.push(
                format!("{at}.values"),
                format!("must be empty with {}", x.operator),
            ),
            op if !OPERATORS.contains(&op) => e.push(
                format!("{at}.operator"),
                format!("{op:?} is not one of {}", OPERATORS.join(", ")),
            ),
            _ => {}
        }
    }
}

fn tolerations(list: &[Toleration], path: &str, e: &mut Errors) {
    for (i, t) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match t.operator.as_deref().unwrap_or("Equal") {
            "Equal" => {
                if t.key.as_deref().unwrap_or_default().is_empty() {
                    e.push(format!("{at}.key"), "is required with operator Equal");
                }
            }
            "Exists" => {
                if !t.value.as_deref().unwrap_or_default().is_empty() {
                    e.push(format!("{at}.value"), "must be empty with operator Exists");
                }
            }
            op => e.push(
                format!("{at}.operator"),
                format!("{op:?} is not Equal or Exists"),
            ),
        }
        if let Some(eff) = t.effect.as_deref().filter(|e| !e.is_empty())
            && !EFFECTS.contains(&eff)
        {
            e.push(
                format!("{at}.effect"),
                format!("{eff:?} is not one of {}", EFFECTS.join(", ")),
            );
        }
    }
}

/// A DNS-1123 label: 1–63 lowercase letters, digits and `-`, starting and ending with
/// a letter or digit.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !s.chars().all(ok_char) || s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "{s:?} is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain, the name a label name.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !p.split('.').all(|part| dns_label(part).is_ok()))
    {
        return Err(format!("{s:?} has a prefix that is not a DNS subdomain"));
    }
    if name.is_empty() {
        return Err(format!("{s:?} has an empty name"));
    }
    label_value(name).map_err(|_| format!("{s:?} is not a valid label key"))
}

/// A label value: empty, or up to 63 letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let ok = s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid label value (up to 63 letters, digits, '-', '_', '.')"
        ))
    }
}
