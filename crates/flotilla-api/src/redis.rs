//! `spec.redis`: a set whose instances Flotilla runs as one Redis shard.
//!
//! With `spec.redis`, Flotilla owns the Redis command line of every instance (port,
//! bind address, `dir` in the data volume, announced address, fencing) and adds the
//! user's `config`, judged by the parameter table below: a *dynamic* parameter is
//! applied to running instances with `CONFIG SET`; a *static* one needs a restart (a
//! role-aware rolling restart); an *immutable* one cannot change once the set exists
//! (it names files or structures the data already on disk depends on). Parameters
//! Flotilla sets itself, and unknown ones, are refused.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a set's instances form a Redis deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// How the instances relate; only `Replication` (one primary, every other instance
    /// its replica) for now.
    #[serde(default)]
    pub mode: RedisMode,
    /// Sentinels for automatic failover, run as the companion set `<set>-sentinel`.
    /// Without them there is no automatic failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSpec>,
    /// The primary refuses writes unless at least this many replicas are connected
    /// with a lag of at most 10 s (`min-replicas-to-write`); default 1 when the set
    /// has more than one instance, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas_to_write: Option<u32>,
    /// Redis parameters (`redis.conf` names) and their values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Which address each instance announces to its replicas and sentinels.
    #[serde(default)]
    pub announce: Announce,
    /// Written by Flotilla in each member's slice: how many instances the whole
    /// federated set has (a member sees only its own). Not set by users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_replicas: Option<u32>,
}

/// On a companion set `<set>-sentinel`, which Flotilla creates for a Redis set with
/// sentinels: the shard its sentinels watch. Written by Flotilla only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SentinelFor {
    /// The Redis set's name (same namespace); also the name sentinels know it by.
    pub set: String,
    /// Quorum and timings.
    pub sentinel: SentinelSpec,
}

/// The name of the companion sentinel set of `set`.
pub fn sentinel_set_name(set: &str) -> String {
    format!("{set}-sentinel")
}

/// The port sentinels listen on.
pub const SENTINEL_PORT: u16 = 26379;

/// Redis deployment modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RedisMode {
    /// One primary in the whole federation; every other instance replicates from it.
    #[default]
    Replication,
}

/// The address an instance announces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Announce {
    /// Its own address (a pod IP; a process member's loopback address).
    #[default]
    #[serde(alias = "PodIP")]
    PodIp,
    /// A per-instance DNS name from a headless Service `<set>` the Kubernetes agent
    /// creates: `<set>-<ordinal>.<set>.<namespace>.svc` (sentinels resolve and announce
    /// names). Replicas in other members must be able to resolve it (multi-cluster
    /// DNS). Process and simulated members have no DNS: they announce their address.
    Hostname,
}

/// Sentinels that watch the shard and fail it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SentinelSpec {
    /// How many sentinels run.
    #[serde(default = "default_sentinels")]
    pub replicas: u32,
    /// Sentinels that must agree the primary is down before a failover.
    #[serde(default = "default_quorum")]
    pub quorum: u32,
    /// How long the primary must be unreachable before a sentinel thinks it down.
    #[serde(default = "default_down_after")]
    pub down_after_milliseconds: u64,
    /// Sentinel's `failover-timeout`.
    #[serde(default = "default_failover_timeout")]
    pub failover_timeout_milliseconds: u64,
}

impl Default for SentinelSpec {
    fn default() -> Self {
        SentinelSpec {
            replicas: default_sentinels(),
            quorum: default_quorum(),
            down_after_milliseconds: default_down_after(),
            failover_timeout_milliseconds: default_failover_timeout(),
        }
    }
}

fn default_sentinels() -> u32 {
    3
}
fn default_quorum() -> u32 {
    2
}
fn default_down_after() -> u64 {
    5000
}
fn default_failover_timeout() -> u64 {
    60_000
}

impl RedisSpec {
    /// `min-replicas-to-write` for a set of `replicas` instances.
    pub fn min_replicas_to_write_for(&self, replicas: u32) -> u32 {
        self.min_replicas_to_write
            .unwrap_or(u32::from(replicas > 1))
    }
}

/// The role name of a Redis set's primary (implied when the set names no roles).
pub const PRIMARY: &str = "primary";
/// The role name of a Redis set's replicas.
pub const SECONDARY: &str = "secondary";

/// The Redis port of a template: its container port named `redis`, else the first
/// container port, else 6379.
pub fn port_of(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> u16 {
    endpoint_port(template).unwrap_or(6379)
}

/// The port of a template's endpoint: its container port named `redis`, else the
/// first container port, else none.
pub fn endpoint_port(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Option<u16> {
    let ports: Vec<&k8s_openapi::api::core::v1::ContainerPort> = template
        .spec
        .iter()
        .flat_map(|p| &p.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    ports
        .iter()
        .find(|p| p.name.as_deref() == Some("redis"))
        .or(ports.first())
        .and_then(|p| u16::try_from(p.container_port).ok())
}

/// On every slice of a Redis set: the primary as the federation knows it,
/// `<ordinal>=<host:port>`. Members wire replication to it; the federation moves it
/// only to follow Sentinel, a planned switchover, or to keep data safe.
pub const PRIMARY_ANNOTATION: &str = "flotilla.io/redis-primary";

/// The primary a slice names (see [`PRIMARY_ANNOTATION`]): its ordinal and address.
pub fn primary_of(set: &crate::InstanceSet) -> Option<(u32, String)> {
    let text = set.metadata.annotations.as_ref()?.get(PRIMARY_ANNOTATION)?;
    let (ordinal, endpoint) = text.split_once('=')?;
    Some((ordinal.trim().parse().ok()?, endpoint.trim().to_string()))
}

/// The annotation value naming `ordinal` at `endpoint` as the primary.
pub fn primary_annotation(ordinal: u32, endpoint: &str) -> String {
    format!("{ordinal}={endpoint}")
}

/// On the slice of the member running the primary, when that instance is a replica
/// with no working link and the federation decided it must take over (it holds the
/// most data): `<ordinal>=<run_id>`. The member promotes it only while it is that very
/// process (`INFO server` run_id), so a decision about one process never promotes the
/// next one to run there.
pub const PROMOTE_ANNOTATION: &str = "flotilla.io/redis-promote";

/// The promotion a slice asks for (see [`PROMOTE_ANNOTATION`]).
pub fn promote_of(set: &crate::InstanceSet) -> Option<(u32, String)> {
    let text = set.metadata.annotations.as_ref()?.get(PROMOTE_ANNOTATION)?;
    let (ordinal, run_id) = text.split_once('=')?;
    Some((ordinal.trim().parse().ok()?, run_id.trim().to_string()))
}

/// On the slice of a member whose instances are being replaced elsewhere (the shard
/// moves away from it): the ordinals that still run there, in the slice, until their
/// replacements have caught up and the primary has moved (`0-2`). Their member keeps
/// them out of every election (`replica-priority 0`), so a failover or a switchover
/// never lands on an instance about to go.
pub const RETIRING_ANNOTATION: &str = "flotilla.io/redis-retiring";

/// The ordinals a slice says are retiring (see [`RETIRING_ANNOTATION`]).
pub fn retiring_of(set: &crate::InstanceSet) -> std::collections::BTreeSet<u32> {
    set.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RETIRING_ANNOTATION))
        .map(|t| crate::ordinals::parse_compact_list(t))
        .unwrap_or_default()
}

/// On every slice of a Redis set with sentinels: the sentinels' addresses
/// (`host:port,host:port`), for the planned switchovers a member asks Sentinel for.
pub const SENTINELS_ANNOTATION: &str = "flotilla.io/redis-sentinels";

/// The sentinels a slice names (see [`SENTINELS_ANNOTATION`]).
pub fn sentinels_of(set: &crate::InstanceSet) -> Vec<String> {
    set.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SENTINELS_ANNOTATION))
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `min-replicas-max-lag`: how far behind (seconds) a replica may be and still count
/// for `min-replicas-to-write`.
pub const MIN_REPLICAS_MAX_LAG_SECONDS: u32 = 10;

/// How a Redis parameter may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamClass {
    /// `CONFIG SET` on running instances: no restart, no new revision.
    Dynamic,
    /// Takes effect on a restart: a role-aware rolling restart.
    Static,
    /// Fixed once the set exists.
    Immutable,
}

impl ParamClass {
    /// The name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamClass::Dynamic => "dynamic",
            ParamClass::Static => "static",
            ParamClass::Immutable => "immutable",
        }
    }
}

/// What a parameter is to Flotilla.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// The user may set it; it changes as its class says.
    User(ParamClass),
    /// Flotilla sets it itself (with the reason): the user may not.
    Owned(&'static str),
}

/// Parameters Flotilla sets on every instance, with why.
const OWNED: &[(&str, &str)] = &[
    ("port", "the port comes from the container port named redis"),
    ("bind", "Flotilla binds every instance to its own address"),
    (
        "bind-source-addr",
        "Flotilla binds every instance to its own address",
    ),
    ("dir", "Flotilla puts the data in the instance's volume"),
    ("daemonize", "instances run in the foreground"),
    ("supervised", "instances run in the foreground"),
    ("pidfile", "Flotilla tracks the process itself"),
    ("logfile", "logs go to the instance's log"),
    ("include", "Flotilla renders the whole configuration"),
    ("replicaof", "Flotilla wires replication"),
    ("slaveof", "Flotilla wires replication"),
    (
        "replica-announce-ip",
        "Flotilla announces the instance's address",
    ),
    (
        "slave-announce-ip",
        "Flotilla announces the instance's address",
    ),
    (
        "replica-announce-port",
        "Flotilla announces the instance's address",
    ),
    (
        "slave-announce-port",
        "Flotilla announces the instance's address",
    ),
    (
        "min-replicas-to-write",
        "set spec.redis.minReplicasToWrite instead",
    ),
    (
        "min-slaves-to-write",
        "set spec.redis.minReplicasToWrite instead",
    ),
    ("min-replicas-max-lag", "fencing allows a lag of 10 s"),
    ("min-slaves-max-lag", "fencing allows a lag of 10 s"),
    ("cluster-enabled", "only mode Replication is supported"),
    ("cluster-config-file", "only mode Replication is supported"),
    (
        "protected-mode",
        "replicas and sentinels connect from other addresses",
    ),
    ("unixsocket", "instances are reached over TCP"),
    ("unixsocketperm", "instances are reached over TCP"),
    (
        "requirepass",
        "authentication is not supported yet: probes and replication would be locked out",
    ),
    (
        "masterauth",
        "authentication is not supported yet: probes and replication would be locked out",
    ),
    (
        "aclfile",
        "authentication is not supported yet: probes and replication would be locked out",
    ),
    (
        "replica-read-only",
        "replicas stay read-only so that no write bypasses the primary",
    ),
    (
        "slave-read-only",
        "replicas stay read-only so that no write bypasses the primary",
    ),
    (
        "rename-command",
        "Flotilla needs ROLE, INFO, CONFIG, REPLICAOF and FAILOVER",
    ),
];

/// Redis 7 parameters a user may set, by class. Dynamic ones are those `CONFIG SET`
/// accepts; static ones Redis reads only at start; immutable ones name the files and
/// structures the data on disk depends on (changing them would start an instance
/// without its data).
const TABLE: &[(&str, ParamClass)] = {
    use ParamClass::{Dynamic as D, Immutable as I, Static as S};
    &[
        ("active-defrag-cycle-max", D),
        ("active-defrag-cycle-min", D),
        ("active-defrag-ignore-bytes", D),
        ("active-defrag-max-scan-fields", D),
        ("active-defrag-threshold-lower", D),
        ("active-defrag-threshold-upper", D),
        ("active-expire-effort", D),
        ("activedefrag", D),
        ("activerehashing", D),
        ("always-show-logo", S),
        ("aof-load-truncated", D),
        ("aof-rewrite-incremental-fsync", D),
        ("aof-timestamp-enabled", D),
        ("aof-use-rdb-preamble", D),
        ("appenddirname", I),
        ("appendfilename", I),
        ("appendfsync", D),
        ("appendonly", D),
        ("auto-aof-rewrite-min-size", D),
        ("auto-aof-rewrite-percentage", D),
        ("busy-reply-threshold", D),
        ("client-output-buffer-limit", D),
        ("client-query-buffer-limit", D),
        ("crash-log-enabled", D),
        ("crash-memcheck-enabled", D),
        ("databases", I),
        ("dbfilename", I),
        ("disable-thp", S),
        ("dynamic-hz", D),
        ("enable-debug-command", S),
        ("enable-module-command", S),
        ("enable-protected-configs", S),
        ("hash-max-listpack-entries", D),
        ("hash-max-listpack-value", D),
        ("hash-max-ziplist-entries", D),
        ("hash-max-ziplist-value", D),
        ("hll-sparse-max-bytes", D),
        ("hz", D),
        ("io-threads", S),
        ("io-threads-do-reads", S),
        ("jemalloc-bg-thread", D),
        ("latency-monitor-threshold", D),
        ("latency-tracking", D),
        ("latency-tracking-info-percentiles", D),
        ("lazyfree-lazy-eviction", D),
        ("lazyfree-lazy-expire", D),
        ("lazyfree-lazy-server-del", D),
        ("lazyfree-lazy-user-del", D),
        ("lazyfree-lazy-user-flush", D),
        ("lfu-decay-time", D),
        ("lfu-log-factor", D),
        ("list-compress-depth", D),
        ("list-max-listpack-size", D),
        ("list-max-ziplist-size", D),
        ("loglevel", D),
        ("lua-time-limit", D),
        ("maxclients", D),
        ("maxmemory", D),
        ("maxmemory-clients", D),
        ("maxmemory-eviction-tenacity", D),
        ("maxmemory-policy", D),
        ("maxmemory-samples", D),
        ("no-appendfsync-on-rewrite", D),
        ("notify-keyspace-events", D),
        ("oom-score-adj", D),
        ("oom-score-adj-values", D),
        ("proto-max-bulk-len", D),
        ("rdb-del-sync-files", D),
        ("rdb-save-incremental-fsync", D),
        ("rdbchecksum", S),
        ("rdbcompression", D),
        ("repl-backlog-size", D),
        ("repl-backlog-ttl", D),
        ("repl-disable-tcp-nodelay", D),
        ("repl-diskless-load", D),
        ("repl-diskless-sync", D),
        ("repl-diskless-sync-delay", D),
        ("repl-diskless-sync-max-replicas", D),
        ("repl-ping-replica-period", D),
        ("repl-timeout", D),
        ("replica-ignore-maxmemory", D),
        ("replica-lazy-flush", D),
        ("replica-priority", D),
        ("replica-serve-stale-data", D),
        ("save", D),
        ("set-max-intset-entries", D),
        ("set-max-listpack-entries", D),
        ("set-max-listpack-value", D),
        ("set-proc-title", S),
        ("slowlog-log-slower-than", D),
        ("slowlog-max-len", D),
        ("stop-writes-on-bgsave-error", D),
        ("stream-node-max-bytes", D),
        ("stream-node-max-entries", D),
        ("syslog-enabled", S),
        ("syslog-facility", S),
        ("syslog-ident", S),
        ("tcp-backlog", S),
        ("tcp-keepalive", D),
        ("timeout", D),
        ("tracking-table-max-keys", D),
        ("zset-max-listpack-entries", D),
        ("zset-max-listpack-value", D),
        ("zset-max-ziplist-entries", D),
        ("zset-max-ziplist-value", D),
    ]
};

/// The kind of value a parameter takes, as Redis 7 parses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Value {
    /// `yes` or `no`.
    Bool,
    /// A whole number (may be negative where Redis allows it).
    Int,
    /// A size: a whole number with an optional unit (`k`, `kb`, `m`, `mb`, `g`, `gb`,
    /// any case); with `percent`, also `N%`.
    Bytes { percent: bool },
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// Free text (lists, masks, schedules): Redis checks it.
    Text,
}

/// The kind of value `name` takes (see [`Value`]).
fn value_kind(name: &str) -> Value {
    const BOOL: &[&str] = &[
        "activedefrag",
        "activerehashing",
        "always-show-logo",
        "aof-load-truncated",
        "aof-rewrite-incremental-fsync",
        "aof-timestamp-enabled",
        "aof-use-rdb-preamble",
        "appendonly",
        "crash-log-enabled",
        "crash-memcheck-enabled",
        "disable-thp",
        "dynamic-hz",
        "io-threads-do-reads",
        "jemalloc-bg-thread",
        "latency-tracking",
        "lazyfree-lazy-eviction",
        "lazyfree-lazy-expire",
        "lazyfree-lazy-server-del",
        "lazyfree-lazy-user-del",
        "lazyfree-lazy-user-flush",
        "no-appendfsync-on-rewrite",
        "rdb-save-incremental-fsync",
        "rdbchecksum",
        "rdbcompression",
        "repl-disable-tcp-nodelay",
        "repl-diskless-sync",
        "replica-ignore-maxmemory",
        "replica-lazy-flush",
        "replica-serve-stale-data",
        "set-proc-title",
        "stop-writes-on-bgsave-error",
        "syslog-enabled",
    ];
    const BYTES: &[&str] = &[
        "active-defrag-ignore-bytes",
        "auto-aof-rewrite-min-size",
        "client-query-buffer-limit",
        "hash-max-listpack-value",
        "hash-max-ziplist-value",
        "hll-sparse-max-bytes",
        "maxmemory",
        "proto-max-bulk-len",
        "repl-backlog-size",
        "set-max-listpack-value",
        "stream-node-max-bytes",
        "zset-max-listpack-value",
        "zset-max-ziplist-value",
    ];
    const TEXT: &[&str] = &[
        "client-output-buffer-limit",
        "latency-tracking-info-percentiles",
        "notify-keyspace-events",
        "oom-score-adj-values",
        "save",
        "syslog-facility",
        "syslog-ident",
    ];
    const PROTECTED: &[&str] = &["yes", "no", "local"];
    match name {
        _ if BOOL.contains(&name) => Value::Bool,
        _ if BYTES.contains(&name) => Value::Bytes { percent: false },
        "maxmemory-clients" => Value::Bytes { percent: true },
        _ if TEXT.contains(&name) => Value::Text,
        "appendfsync" => Value::OneOf(&["always", "everysec", "no"]),
        "loglevel" => Value::OneOf(&["debug", "verbose", "notice", "warning", "nothing"]),
        "maxmemory-policy" => Value::OneOf(&[
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "noeviction",
        ]),
        "oom-score-adj" => Value::OneOf(&["no", "yes", "relative", "absolute"]),
        "rdb-del-sync-files" => Value::Bool,
        "repl-diskless-load" => Value::OneOf(&["disabled", "on-empty-db", "swapdb"]),
        "enable-debug-command" | "enable-module-command" | "enable-protected-configs" => {
            Value::OneOf(PROTECTED)
        }
        "appenddirname" | "appendfilename" | "dbfilename" => Value::Text,
        _ => Value::Int,
    }
}

/// Why `value` is not a value Redis 7 accepts for `name` (a parameter of the table),
/// or `None`. Caught at apply: a bad static value would keep every restarted instance
/// from starting, a bad dynamic one would be refused by `CONFIG SET` on every pass.
pub fn value_problem(name: &str, value: &str) -> Option<String> {
    let v = value.trim();
    let int = |t: &str| t.parse::<i64>().is_ok();
    match value_kind(name) {
        Value::Bool => (!matches!(v.to_ascii_lowercase().as_str(), "yes" | "no"))
            .then(|| format!("{value:?} is not yes or no")),
        Value::Int => (!int(v)).then(|| format!("{value:?} is not a whole number")),
        Value::Bytes { percent } => {
            let lower = v.to_ascii_lowercase();
            if percent && let Some(n) = lower.strip_suffix('%') {
                return (!n.parse::<u32>().is_ok_and(|n| n <= 100))
                    .then(|| format!("{value:?} is not a percentage from 0% to 100%"));
            }
            let digits = ["gb", "mb", "kb", "g", "m", "k", "b"]
                .iter()
                .find_map(|u| lower.strip_suffix(u))
                .unwrap_or(&lower);
            digits.parse::<u64>().is_err().then(|| {
                format!(
                    "{value:?} is not a size (a whole number, optionally with k, kb, m, mb, g or gb{})",
                    if percent { ", or N%" } else { "" }
                )
            })
        }
        Value::OneOf(words) => (!words.contains(&v.to_ascii_lowercase().as_str()))
            .then(|| format!("{value:?} is not one of {}", words.join(", "))),
        Value::Text => None,
    }
}

/// Redis 7's other names for one parameter, as `(old name, name)`: Redis takes either
/// (the `slave-*` names only through its alias table, which Flotilla does not copy:
/// they are refused, naming the current one).
pub const ALIASES: &[(&str, &str)] = &[
    ("hash-max-ziplist-entries", "hash-max-listpack-entries"),
    ("hash-max-ziplist-value", "hash-max-listpack-value"),
    ("list-max-ziplist-size", "list-max-listpack-size"),
    ("slave-ignore-maxmemory", "replica-ignore-maxmemory"),
    ("slave-lazy-flush", "replica-lazy-flush"),
    ("slave-priority", "replica-priority"),
    ("slave-serve-stale-data", "replica-serve-stale-data"),
    ("zset-max-ziplist-entries", "zset-max-listpack-entries"),
    ("zset-max-ziplist-value", "zset-max-listpack-value"),
];

/// The current name of a parameter given by an old one, if it is one.
pub fn alias_of(name: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|(old, _)| *old == name)
        .map(|(_, new)| *new)
}

/// What `name` is to Flotilla; `None` for a parameter it does not know.
pub fn param(name: &str) -> Option<Param> {
    if let Some((_, why)) = OWNED.iter().find(|(n, _)| *n == name) {
        return Some(Param::Owned(why));
    }
    TABLE
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| Param::User(TABLE[i].1))
}

/// The class of a parameter the user may set.
pub fn class(name: &str) -> Option<ParamClass> {
    match param(name) {
        Some(Param::User(c)) => Some(c),
        _ => None,
    }
}

/// The user's parameters of one class.
pub fn config_of_class(config: &BTreeMap<String, String>, c: ParamClass) -> BTreeMap<&str, &str> {
    config
        .iter()
        .filter(|(k, _)| class(k) == Some(c))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The problems of a change from `old` to `new` that no rollout can make, as
/// `(field, reason)`: an immutable parameter changed, added or removed, or the mode
/// changed. (Sentinels may be added or removed: their companion set follows.)
pub fn immutable_changes(old: &RedisSpec, new: &RedisSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        old.config.keys().chain(new.config.keys()).collect();
    for name in names {
        if class(name) == Some(ParamClass::Immutable)
            && old.config.get(name) != new.config.get(name)
        {
            out.push((
                format!("spec.redis.config.{name}"),
                "immutable once the set exists".to_string(),
            ));
        }
    }
    if old.mode != new.mode {
        out.push((
            "spec.redis.mode".to_string(),
            "immutable once the set exists".to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_disjoint_from_the_owned_parameters() {
        assert!(
            TABLE.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no repeats"
        );
        for (name, _) in OWNED {
            assert!(
                TABLE.binary_search_by(|(n, _)| n.cmp(name)).is_err(),
                "{name} is owned and in the table"
            );
        }
        assert_eq!(param("maxmemory"), Some(Param::User(ParamClass::Dynamic)));
        assert_eq!(param("io-threads"), Some(Param::User(ParamClass::Static)));
        assert_eq!(param("databases"), Some(Param::User(ParamClass::Immutable)));
        assert!(matches!(param("port"), Some(Param::Owned(_))));
        assert_eq!(param("maxmemroy"), None);
    }

    #[test]
    fn values_are_checked_as_redis_parses_them() {
        for (name, good) in [
            ("maxmemory", "2gb"),
            ("maxmemory", "1073741824"),
            ("maxmemory", "512MB"),
            ("maxmemory-clients", "5%"),
            ("maxmemory-policy", "allkeys-lru"),
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
            ("hz", "10"),
            ("slowlog-log-slower-than", "-1"),
            ("list-max-listpack-size", "-2"),
            ("save", "3600 1 300 100"),
            ("enable-debug-command", "local"),
        ] {
            assert_eq!(value_problem(name, good), None, "{name}: {good}");
        }
        for (name, bad, says) in [
            ("maxmemory", "lots", "is not a size"),
            ("maxmemory", "2tb", "is not a size"),
            ("maxmemory-clients", "150%", "is not a percentage"),
            ("maxmemory-policy", "lru", "is not one of volatile-lru"),
            ("appendonly", "true", "is not yes or no"),
            ("hz", "ten", "is not a whole number"),
            ("io-threads", "4.5", "is not a whole number"),
        ] {
            let why = value_problem(name, bad).unwrap_or_else(|| panic!("{name}: {bad}"));
            assert!(why.contains(says), "{name}: {why}");
        }
        // Every parameter of the table has a kind that accepts something: no name falls
        // through to whole numbers by a typo in the lists above.
        for (name, _) in TABLE {
            let kind = value_kind(name);
            if kind == Value::Int {
                assert!(
                    !name.ends_with("-policy") && !name.ends_with("-enabled"),
                    "{name} looks like it is not a number"
                );
            }
        }
    }

    #[test]
    fn immutable_changes_name_the_field() {
        let old = RedisSpec {
            config: BTreeMap::from([("databases".into(), "16".into())]),
            ..RedisSpec::default()
        };
        let mut new = old.clone();
        new.config.insert("maxmemory".into(), "1gb".into());
        assert!(immutable_changes(&old, &new).is_empty());
        new.config.insert("databases".into(), "32".into());
        assert_eq!(
            immutable_changes(&old, &new),
            [(
                "spec.redis.config.databases".to_string(),
                "immutable once the set exists".to_string()
            )]
        );
        new.config.remove("databases");
        assert_eq!(immutable_changes(&old, &new).len(), 1, "removing it too");
    }
}
