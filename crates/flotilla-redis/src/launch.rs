//! How a Redis instance starts: its configuration file, and whether it starts as the
//! primary or as a replica.
//!
//! ```text
//!   slice (spec.redis, primary annotation) + instance (ordinal, address, data dir)
//!        └─▶ startup(): Primary | ReplicaOf(addr) ─▶ server_config(): redis.conf lines
//! ```
//!
//! The rule that keeps data safe (the KubeBlocks #10753 wipe): an instance that starts
//! again while it is the named primary of a shard of more than one instance starts as
//! a replica, of its own address, which it cannot sync from. A replica refuses to feed
//! its own replicas while it has no link to a primary (`-NOMASTERLINK`), so no replica
//! resyncs from it, with or without data. Then the instance with the most data is
//! made primary (by Sentinel, which treats a primary that reports itself a replica as
//! down, or by the federation, which compares offsets), and the restarted instance
//! catches up from it. A new instance joins as a replica of the named primary; before
//! any primary is named (a new set), every instance starts empty and alone.

use flotilla_api::InstanceSet;
use flotilla_api::redis::{MIN_REPLICAS_MAX_LAG_SECONDS, ParamClass, config_of_class, primary_of};

/// How an instance starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// As a primary.
    Primary,
    /// As a replica of `host:port`.
    ReplicaOf(String),
}

/// Where an instance listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind<'a> {
    /// Its own address only (a process member's loopback address).
    Own(&'a str),
    /// Every interface (a pod, reached on its IP and through port-forward on localhost),
    /// announcing `announce`.
    All {
        /// The address it announces.
        announce: &'a str,
    },
}

/// How instance `ordinal` of `set` starts (see the module documentation). `has_data`:
/// its data directory holds a dataset from before.
pub fn startup(set: &InstanceSet, ordinal: u32, own: &str, has_data: bool) -> Start {
    let _ = has_data; // the rule is the same with or without data: see above
    let Some(redis) = &set.spec.redis else {
        return Start::Primary;
    };
    match primary_of(set) {
        None => Start::Primary,
        Some((p, addr)) if p != ordinal => Start::ReplicaOf(addr),
        Some(_) if redis.shard_replicas.unwrap_or(1) <= 1 => Start::Primary,
        Some(_) => Start::ReplicaOf(own.to_string()),
    }
}

/// `host:port` split for `replicaof`; a bracketed IPv6 host is unbracketed.
pub fn split_addr(addr: &str) -> Option<(&str, &str)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port))
}

/// The `redis.conf` lines (`name value`) of instance `ordinal`: what Flotilla owns,
/// then the user's static and dynamic parameters. `dir` is its data directory.
pub fn server_config(
    set: &InstanceSet,
    port: u16,
    bind: Bind<'_>,
    dir: &str,
    start: &Start,
) -> Vec<(String, String)> {
    let redis = set.spec.redis.clone().unwrap_or_default();
    let (bind_to, announce) = match bind {
        Bind::Own(addr) => (addr.to_string(), addr),
        Bind::All { announce } => ("* -::*".to_string(), announce),
    };
    let mut lines: Vec<(String, String)> = vec![
        ("port".into(), port.to_string()),
        ("bind".into(), bind_to),
        ("protected-mode".into(), "no".into()),
        ("daemonize".into(), "no".into()),
        ("logfile".into(), quote("")),
        ("dir".into(), quote(dir)),
        ("replica-announce-ip".into(), announce.to_string()),
        ("replica-announce-port".into(), port.to_string()),
        ("replica-read-only".into(), "yes".into()),
        (
            "min-replicas-to-write".into(),
            redis.min_replicas_to_write.unwrap_or(0).to_string(),
        ),
        (
            "min-replicas-max-lag".into(),
            MIN_REPLICAS_MAX_LAG_SECONDS.to_string(),
        ),
    ];
    if let Start::ReplicaOf(addr) = start
        && let Some((host, port)) = split_addr(addr)
    {
        lines.push(("replicaof".into(), format!("{host} {port}")));
    }
    for class in [
        ParamClass::Immutable,
        ParamClass::Static,
        ParamClass::Dynamic,
    ] {
        for (k, v) in config_of_class(&redis.config, class) {
            lines.push((k.to_string(), config_value(v)));
        }
    }
    lines
}

/// The lines as a configuration file.
pub fn config_file(lines: &[(String, String)]) -> String {
    let mut out = String::from("# Written by Flotilla: changes here are overwritten.\n");
    for (k, v) in lines {
        out.push_str(k);
        out.push(' ');
        out.push_str(v);
        out.push('\n');
    }
    out
}

/// The lines as `redis-server` arguments (`--name value`), for a container's command.
pub fn server_args(lines: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in lines {
        out.push(format!("--{k}"));
        out.extend(v.split(' ').filter(|s| !s.is_empty()).map(unquote));
    }
    out
}

fn quote(s: &str) -> String {
    format!("\"{s}\"")
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_string()
}

/// A user value as a config-file value: kept as words (`save 3600 1 300 100`); an empty
/// value is quoted.
fn config_value(v: &str) -> String {
    if v.is_empty() {
        quote(v)
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flotilla_api::redis::{PRIMARY_ANNOTATION, RedisSpec};
    use flotilla_api::{InstanceSetSpec, Object};

    use super::*;

    fn set(primary: Option<&str>, replicas: u32) -> InstanceSet {
        let mut s: InstanceSet = Object::new(
            "cache",
            InstanceSetSpec {
                redis: Some(RedisSpec {
                    min_replicas_to_write: Some(1),
                    shard_replicas: Some(replicas),
                    config: BTreeMap::from([
                        ("maxmemory".into(), "2gb".into()),
                        ("databases".into(), "4".into()),
                        ("save".into(), "3600 1 300 100".into()),
                    ]),
                    ..RedisSpec::default()
                }),
                ..InstanceSetSpec::default()
            },
        );
        if let Some(p) = primary {
            s.metadata.annotations = Some(BTreeMap::from([(
                PRIMARY_ANNOTATION.to_string(),
                p.to_string(),
            )]));
        }
        s
    }

    #[test]
    fn new_instances_join_the_named_primary_and_a_restarted_primary_holds_back() {
        let own = "127.0.1.1:6379";
        assert_eq!(startup(&set(None, 3), 0, own, false), Start::Primary);
        assert_eq!(
            startup(&set(Some("2=127.0.1.3:6379"), 3), 0, own, false),
            Start::ReplicaOf("127.0.1.3:6379".into())
        );
        for has_data in [false, true] {
            assert_eq!(
                startup(&set(Some("0=127.0.1.1:6379"), 3), 0, own, has_data),
                Start::ReplicaOf(own.into()),
                "the named primary restarting never feeds replicas before a decision"
            );
        }
        assert_eq!(
            startup(&set(Some("0=127.0.1.1:6379"), 1), 0, own, false),
            Start::Primary,
            "a shard of one has no replica to wipe"
        );
    }

    #[test]
    fn the_config_owns_the_address_and_fencing_and_adds_the_users_parameters() {
        let s = set(Some("2=[fd00::3]:6379"), 3);
        let lines = server_config(
            &s,
            6379,
            Bind::Own("127.0.1.1"),
            "/data/x",
            &startup(&s, 0, "127.0.1.1:6379", false),
        );
        let file = config_file(&lines);
        for want in [
            "port 6379\n",
            "bind 127.0.1.1\n",
            "dir \"/data/x\"\n",
            "replica-announce-ip 127.0.1.1\n",
            "min-replicas-to-write 1\n",
            "min-replicas-max-lag 10\n",
            "replicaof fd00::3 6379\n",
            "maxmemory 2gb\n",
            "save 3600 1 300 100\n",
            "databases 4\n",
        ] {
            assert!(file.contains(want), "{want:?} in\n{file}");
        }
        let args = server_args(&lines);
        let i = args.iter().position(|a| a == "--save").unwrap();
        assert_eq!(args[i + 1..i + 5], ["3600", "1", "300", "100"]);
        let i = args.iter().position(|a| a == "--logfile").unwrap();
        assert_eq!(args[i + 1], "");
    }
}
