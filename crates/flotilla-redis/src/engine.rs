//! The member's side of the Redis engine: from the slice and what each local instance
//! says (`INFO`), the commands that wire it into the shard.
//!
//! ```text
//!   primary P (slice annotation, or the member's own newer switchover)
//!   for each local instance with an INFO answer:
//!     it is P:   master ─ ok
//!                replica, unlinked, and the federation asks to promote this process
//!                        ─ REPLICAOF NO ONE            (never with Sentinel: it decides)
//!     not P:     replica of P ─ ok
//!                replica of another ─ REPLICAOF P      (with Sentinel: never, it does)
//!                master with P as an online replica ─ FAILOVER TO P TIMEOUT …
//!                empty master feeding no one ─ REPLICAOF P   (with Sentinel: only a
//!                        brand-new one, offset 0); a master with data never by name
//!   dynamic config differs from what this process was given ─ CONFIG SET
//! ```
//!
//! A master is never demoted towards an instance that is not a caught-up replica of it
//! unless the federation named that instance: the federation compares every member's
//! offsets before it names a primary (see [`crate::primary`]), which one member cannot.

use std::collections::BTreeMap;

use flotilla_api::InstanceSet;
use flotilla_api::redis::{ParamClass, config_of_class, primary_of, promote_of};

use crate::info::Info;
use crate::launch::split_addr;

/// How long a planned switchover may pause writes while the new primary catches up.
pub const FAILOVER_TIMEOUT_MS: u64 = 10_000;

/// The shard's primary as a member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Primary {
    /// Its ordinal.
    pub ordinal: u32,
    /// Its address, `host:port`.
    pub endpoint: String,
}

/// One local instance that answered `INFO`.
#[derive(Clone, Copy, Debug)]
pub struct Local<'a> {
    /// Its ordinal.
    pub ordinal: u32,
    /// Its address.
    pub endpoint: &'a str,
    /// What it said.
    pub info: &'a Info,
}

/// A command for one instance, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The instance.
    pub ordinal: u32,
    /// The command and its arguments.
    pub args: Vec<String>,
    /// Why, for the log.
    pub why: String,
}

/// A switchover this member made, not yet reflected by the federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSwitchover {
    /// The old primary.
    pub from: u32,
    /// The new one, and its address.
    pub to: Primary,
}

/// The primary the member wires to: the federation's, unless this member switched it
/// over from that very instance since (the federation follows once it sees the
/// reports).
pub fn primary(set: &InstanceSet, local: Option<&LocalSwitchover>) -> Option<Primary> {
    let named = primary_of(set).map(|(ordinal, endpoint)| Primary { ordinal, endpoint });
    match (named, local) {
        (Some(p), Some(s)) if p.ordinal == s.from => Some(s.to.clone()),
        (None, Some(s)) => Some(s.to.clone()),
        (named, _) => named,
    }
}

/// The role label of a local instance: the primary role for a master that is the
/// named primary or that serves replicas (a primary the slice does not name yet, after
/// a switchover, is still a primary: it is never updated or removed without a
/// switchover first); the secondary role for replicas; none for a master that serves
/// no one and is not the primary (an empty one about to be demoted). So a new shard,
/// whose instances all answer `master`, labels one primary.
pub fn role(
    primary: Option<&Primary>,
    local: &Local<'_>,
    role_map: &BTreeMap<String, String>,
) -> Option<String> {
    let mapped = |r: &str| role_map.get(r).cloned().unwrap_or_else(|| r.to_string());
    match local.info.status.role.as_str() {
        "master"
            if primary.is_some_and(|p| p.ordinal == local.ordinal)
                || !local.info.status.replicas.is_empty() =>
        {
            Some(mapped("master"))
        }
        "master" => None,
        "slave" => Some(mapped("slave")),
        _ => None,
    }
}

/// Whether `set` is a Redis set with sentinels (failover and handovers are Sentinel's).
pub fn with_sentinel(set: &InstanceSet) -> bool {
    set.spec
        .redis
        .as_ref()
        .is_some_and(|r| r.sentinel.is_some())
}

/// The replication commands for the local instances.
pub fn replication(set: &InstanceSet, primary: &Primary, locals: &[Local<'_>]) -> Vec<Command> {
    let sentinel = with_sentinel(set);
    let promote = promote_of(set);
    let Some((host, port)) = split_addr(&primary.endpoint) else {
        return Vec::new();
    };
    let replicaof = |ordinal: u32, why: String| Command {
        ordinal,
        args: vec!["REPLICAOF".into(), host.into(), port.into()],
        why,
    };
    let mut out = Vec::new();
    for l in locals {
        let s = &l.info.status;
        if l.info.failing_over {
            continue; // a FAILOVER is running on it: let it finish
        }
        if l.ordinal == primary.ordinal {
            let asked = promote
                .as_ref()
                .is_some_and(|(o, run)| *o == l.ordinal && *run == l.info.run_id);
            if s.role == "slave" && l.info.unlinked() && asked && !sentinel {
                out.push(Command {
                    ordinal: l.ordinal,
                    args: vec!["REPLICAOF".into(), "NO".into(), "ONE".into()],
                    why: format!(
                        "the federation made {} the primary: it holds the most data",
                        l.ordinal
                    ),
                });
            }
            continue;
        }
        match s.role.as_str() {
            "slave" if s.master.as_deref() == Some(primary.endpoint.as_str()) => {}
            // With Sentinel, a replica's master is Sentinel's to change: it reconfigures
            // every replica it knows, and a link down may be its reconfiguration in
            // progress, which re-pointing to a possibly stale name would undo.
            // A held-back instance (a replica of its own address) is wired either way:
            // Sentinel does not know it.
            "slave" if !sentinel || l.info.held_back(l.endpoint) => out.push(replicaof(
                l.ordinal,
                format!(
                    "replicates from {}, the primary is {} at {}",
                    s.master.as_deref().unwrap_or("?"),
                    primary.ordinal,
                    primary.endpoint
                ),
            )),
            // With Sentinel a handover is Sentinel's too (see [`handover`]).
            "master"
                if !sentinel
                    && l.info
                        .replicas
                        .iter()
                        .any(|(a, state, _)| *a == primary.endpoint && state == "online") =>
            {
                out.push(Command {
                    ordinal: l.ordinal,
                    args: vec![
                        "FAILOVER".into(),
                        "TO".into(),
                        host.into(),
                        port.into(),
                        "TIMEOUT".into(),
                        FAILOVER_TIMEOUT_MS.to_string(),
                    ],
                    why: format!(
                        "hands the primary over to {} at {}",
                        primary.ordinal, primary.endpoint
                    ),
                })
            }
            // A master is demoted by name only while it is empty and feeds no one
            // (a new shard's instances): one with data hands over by FAILOVER TO to a
            // caught-up replica, or waits (the federation follows the real master),
            // since a full resync from a lagging or chained name would lose writes.
            "master"
                if l.info.keys == 0
                    && l.info.replicas.is_empty()
                    && (!sentinel || l.info.offset == 0) =>
            {
                out.push(replicaof(
                    l.ordinal,
                    format!(
                        "is an empty master, the primary is {} at {}",
                        primary.ordinal, primary.endpoint
                    ),
                ))
            }
            _ => {}
        }
    }
    out
}

/// With Sentinel: the local master that must hand the primary over (the primary is
/// named elsewhere, and is one of its online replicas). The member asks Sentinel for
/// the failover: `FAILOVER TO` behind Sentinel's back would be failed over again.
pub fn handover(set: &InstanceSet, primary: &Primary, locals: &[Local<'_>]) -> Option<u32> {
    set.spec.redis.as_ref()?.sentinel?;
    locals
        .iter()
        .find(|l| {
            l.ordinal != primary.ordinal
                && l.info.status.role == "master"
                && l.info
                    .replicas
                    .iter()
                    .any(|(a, state, _)| *a == primary.endpoint && state == "online")
        })
        .map(|l| l.ordinal)
}

/// The dynamic parameters every instance of the set should run with: the user's
/// dynamic ones and the fencing.
pub fn dynamic_config(set: &InstanceSet) -> BTreeMap<String, String> {
    let Some(redis) = &set.spec.redis else {
        return BTreeMap::new();
    };
    let mut out: BTreeMap<String, String> = config_of_class(&redis.config, ParamClass::Dynamic)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.insert(
        "min-replicas-to-write".into(),
        redis.min_replicas_to_write.unwrap_or(0).to_string(),
    );
    out
}

/// The dynamic parameters instance `ordinal` runs with: the set's, and
/// `replica-priority` 0 while the slice says it is retiring (a replacement elsewhere is
/// catching up), so that neither Sentinel nor a switchover ever promotes it; back to
/// the set's value (Redis's default 100) once it is not.
///
/// With Sentinel, the instance the federation names primary runs `replica-priority` 1
/// (unless the set says 0: never promote): when a planned switchover asks Sentinel to
/// fail over to it, Sentinel promotes the replica of lowest priority, so it picks the
/// one named instead of any caught-up replica (which the named one's member would then
/// hand over from again).
pub fn instance_config(set: &InstanceSet, ordinal: u32) -> BTreeMap<String, String> {
    let mut out = dynamic_config(set);
    let sentinel = with_sentinel(set);
    if sentinel {
        // A switchover by Sentinel holds a master's replication PINGs back while it
        // runs; an agent that died meanwhile left them held back: set again here.
        out.entry(PING_PERIOD.into())
            .or_insert_with(|| DEFAULT_PING_PERIOD.into());
    }
    if flotilla_api::redis::retiring_of(set).contains(&ordinal) {
        out.insert(REPLICA_PRIORITY.into(), "0".into());
        return out;
    }
    let named = sentinel && flotilla_api::redis::primary_of(set).is_some_and(|(o, _)| o == ordinal);
    let priority = out
        .entry(REPLICA_PRIORITY.into())
        .or_insert_with(|| DEFAULT_REPLICA_PRIORITY.into());
    if named && priority.trim() != "0" {
        *priority = NAMED_PRIMARY_PRIORITY.into();
    }
    out
}

/// The `replica-priority` of the instance named primary, with Sentinel: lower than any
/// other promotable replica's.
pub const NAMED_PRIMARY_PRIORITY: &str = "1";

const REPLICA_PRIORITY: &str = "replica-priority";
/// How often a master PINGs its replicas (a switchover by Sentinel holds it back).
pub const PING_PERIOD: &str = "repl-ping-replica-period";
const DEFAULT_PING_PERIOD: &str = "10";
const DEFAULT_REPLICA_PRIORITY: &str = "100";

/// `CONFIG SET` of every parameter of `want` (one command; Redis 7 sets them
/// atomically).
pub fn config_set(ordinal: u32, want: &BTreeMap<String, String>) -> Option<Command> {
    if want.is_empty() {
        return None;
    }
    let mut args = vec!["CONFIG".to_string(), "SET".to_string()];
    for (k, v) in want {
        args.push(k.clone());
        args.push(v.clone());
    }
    Some(Command {
        ordinal,
        args,
        why: "the set's dynamic config changed".into(),
    })
}

/// The `FAILOVER TO` a planned switchover from `from` sends, when `to` (at
/// `to_endpoint`) is one of its online replicas; else why it cannot go yet.
pub fn failover_to(from: &Info, to_endpoint: &str) -> Result<Vec<String>, String> {
    if from.status.role != "master" {
        return Err(format!("the old primary is a {}", from.status.role));
    }
    if !from
        .replicas
        .iter()
        .any(|(a, state, _)| a == to_endpoint && state == "online")
    {
        return Err(format!(
            "{to_endpoint} is not an online replica of the old primary"
        ));
    }
    let (host, port) =
        split_addr(to_endpoint).ok_or_else(|| format!("bad address {to_endpoint}"))?;
    Ok(vec![
        "FAILOVER".into(),
        "TO".into(),
        host.into(),
        port.into(),
        "TIMEOUT".into(),
        FAILOVER_TIMEOUT_MS.to_string(),
    ])
}

#[cfg(test)]
mod tests {
    use flotilla_api::redis::{PRIMARY_ANNOTATION, PROMOTE_ANNOTATION, RedisSpec, SentinelSpec};
    use flotilla_api::{InstanceSetSpec, Object};

    use super::*;
    use crate::info::parse;

    fn set(annotations: &[(&str, &str)], sentinel: bool) -> InstanceSet {
        let mut s: InstanceSet = Object::new(
            "cache",
            InstanceSetSpec {
                redis: Some(RedisSpec {
                    sentinel: sentinel.then(SentinelSpec::default),
                    ..RedisSpec::default()
                }),
                ..InstanceSetSpec::default()
            },
        );
        s.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        s
    }

    #[test]
    fn with_sentinel_the_named_primary_is_ranked_first_and_pings_are_set_back() {
        use flotilla_api::redis::RETIRING_ANNOTATION;
        let annotations = [
            (PRIMARY_ANNOTATION, "3=127.0.0.4:6379"),
            (RETIRING_ANNOTATION, "0-2"),
        ];
        let s = set(&annotations, true);
        let priority = |o: u32| instance_config(&s, o)[REPLICA_PRIORITY].clone();
        assert_eq!(priority(3), NAMED_PRIMARY_PRIORITY);
        assert_eq!(priority(4), DEFAULT_REPLICA_PRIORITY);
        // Retiring: never promoted, even when named (it is handing over).
        assert_eq!(priority(0), "0");
        assert_eq!(instance_config(&s, 4)[PING_PERIOD], DEFAULT_PING_PERIOD);
        // Without Sentinel neither matters: the FAILOVER TO names its target.
        let plain = set(&annotations, false);
        assert_eq!(
            instance_config(&plain, 3)[REPLICA_PRIORITY],
            DEFAULT_REPLICA_PRIORITY
        );
        assert!(!instance_config(&plain, 3).contains_key(PING_PERIOD));
        // A set that says never promote (0) keeps it.
        let mut never = set(&annotations, true);
        never.spec.redis.as_mut().unwrap().config =
            [(REPLICA_PRIORITY.to_string(), "0".to_string())].into();
        assert_eq!(instance_config(&never, 3)[REPLICA_PRIORITY], "0");
    }

    fn master(replicas: &[&str], keys: u64) -> Info {
        let mut text = String::from("run_id:r1\nrole:master\nmaster_repl_offset:100\n");
        for (i, r) in replicas.iter().enumerate() {
            let (h, p) = r.split_once(':').unwrap();
            text.push_str(&format!(
                "slave{i}:ip={h},port={p},state=online,offset=100,lag=0\n"
            ));
        }
        text.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\n"));
        parse(&text)
    }

    fn replica(of: &str, up: bool) -> Info {
        let (h, p) = of.split_once(':').unwrap();
        parse(&format!(
            "run_id:r2\nrole:slave\nmaster_host:{h}\nmaster_port:{p}\nmaster_link_status:{}\nslave_repl_offset:90\n",
            if up { "up" } else { "down" }
        ))
    }

    fn check(set: &InstanceSet, locals: &[(u32, &str, Info)], expect: &[&str]) {
        let p = primary(set, None).unwrap();
        let locals: Vec<Local<'_>> = locals
            .iter()
            .map(|(o, e, i)| Local {
                ordinal: *o,
                endpoint: e,
                info: i,
            })
            .collect();
        let got: Vec<String> = replication(set, &p, &locals)
            .iter()
            .map(|c| format!("{} {}", c.ordinal, c.args.join(" ")))
            .collect();
        assert_eq!(got, expect);
    }

    const A: &str = "127.0.1.1:6379";
    const B: &str = "127.0.1.2:6379";
    const C: &str = "127.0.1.3:6379";

    #[test]
    fn a_new_shard_is_wired_to_the_named_primary() {
        let s = set(&[(PRIMARY_ANNOTATION, "0=127.0.1.1:6379")], false);
        check(
            &s,
            &[
                (0, A, master(&[], 0)),
                (1, B, master(&[], 0)),
                (2, C, replica(A, true)),
            ],
            &["1 REPLICAOF 127.0.1.1 6379"],
        );
    }

    #[test]
    fn replicas_follow_a_moved_primary_and_a_master_hands_over_to_its_replica() {
        let s = set(&[(PRIMARY_ANNOTATION, "1=127.0.1.2:6379")], false);
        check(
            &s,
            &[(0, A, master(&[B, C], 5)), (2, C, replica(A, true))],
            &[
                "0 FAILOVER TO 127.0.1.2 6379 TIMEOUT 10000",
                "2 REPLICAOF 127.0.1.2 6379",
            ],
        );
    }

    #[test]
    fn a_held_back_primary_is_promoted_only_when_the_federation_names_its_process() {
        let held = replica(A, false);
        let s = set(&[(PRIMARY_ANNOTATION, "0=127.0.1.1:6379")], false);
        check(&s, &[(0, A, held.clone())], &[]);
        let other_run = set(
            &[
                (PRIMARY_ANNOTATION, "0=127.0.1.1:6379"),
                (PROMOTE_ANNOTATION, "0=r1"),
            ],
            false,
        );
        check(&other_run, &[(0, A, held.clone())], &[]);
        let this_run = set(
            &[
                (PRIMARY_ANNOTATION, "0=127.0.1.1:6379"),
                (PROMOTE_ANNOTATION, "0=r2"),
            ],
            false,
        );
        check(&this_run, &[(0, A, held.clone())], &["0 REPLICAOF NO ONE"]);
        let sentinel = set(
            &[
                (PRIMARY_ANNOTATION, "0=127.0.1.1:6379"),
                (PROMOTE_ANNOTATION, "0=r2"),
            ],
            true,
        );
        check(&sentinel, &[(0, A, held)], &[]);
    }

    #[test]
    fn masters_with_data_and_sentinels_replicas_are_left_alone_held_back_and_new_ones_wired() {
        let s = set(&[(PRIMARY_ANNOTATION, "0=127.0.1.1:6379")], true);
        check(
            &s,
            &[
                (1, B, master(&[], 7)),
                (2, C, replica(B, true)),
                (3, "127.0.1.4:6379", master(&[], 0)),
                (4, "127.0.1.5:6379", replica(B, false)),
                (5, "127.0.1.6:6379", replica("127.0.1.6:6379", false)),
                (
                    6,
                    "127.0.1.7:6379",
                    parse("run_id:n\nrole:master\nmaster_repl_offset:0\n"),
                ),
            ],
            &["5 REPLICAOF 127.0.1.1 6379", "6 REPLICAOF 127.0.1.1 6379"],
        );
        // Without Sentinel a master with data is never demoted by name either.
        let plain = set(&[(PRIMARY_ANNOTATION, "0=127.0.1.1:6379")], false);
        check(
            &plain,
            &[(1, B, master(&[], 7)), (3, C, master(&[], 0))],
            &["3 REPLICAOF 127.0.1.1 6379"],
        );
    }

    #[test]
    fn with_sentinel_a_master_hands_over_through_sentinel_not_failover_to() {
        let s = set(&[(PRIMARY_ANNOTATION, "1=127.0.1.2:6379")], true);
        let old = master(&[B, C], 5);
        check(&s, &[(0, A, old.clone())], &[]);
        let p = primary(&s, None).unwrap();
        let locals = [Local {
            ordinal: 0,
            endpoint: A,
            info: &old,
        }];
        assert_eq!(handover(&s, &p, &locals), Some(0));
        let plain = set(&[(PRIMARY_ANNOTATION, "1=127.0.1.2:6379")], false);
        assert_eq!(handover(&plain, &p, &locals), None, "FAILOVER TO does it");
    }

    #[test]
    fn a_local_switchover_outranks_the_stale_name_of_its_old_primary() {
        let s = set(&[(PRIMARY_ANNOTATION, "0=127.0.1.1:6379")], false);
        let sw = LocalSwitchover {
            from: 0,
            to: Primary {
                ordinal: 1,
                endpoint: B.into(),
            },
        };
        assert_eq!(primary(&s, Some(&sw)).unwrap().ordinal, 1);
        let moved = set(&[(PRIMARY_ANNOTATION, "2=127.0.1.3:6379")], false);
        assert_eq!(primary(&moved, Some(&sw)).unwrap().ordinal, 2);
    }

    #[test]
    fn only_the_primary_is_labelled_primary() {
        let map = BTreeMap::from([
            ("master".to_string(), "primary".to_string()),
            ("slave".to_string(), "secondary".to_string()),
        ]);
        let p = Primary {
            ordinal: 0,
            endpoint: A.into(),
        };
        let m = master(&[], 0);
        let r = replica(A, true);
        let l = |o, info| Local {
            ordinal: o,
            endpoint: A,
            info,
        };
        assert_eq!(role(Some(&p), &l(0, &m), &map).as_deref(), Some("primary"));
        assert_eq!(role(Some(&p), &l(1, &m), &map), None);
        let serving = master(&[B], 3);
        assert_eq!(
            role(Some(&p), &l(1, &serving), &map).as_deref(),
            Some("primary"),
            "a master with replicas is a primary, named or not"
        );
        assert_eq!(role(None, &l(0, &m), &map), None);
        assert_eq!(
            role(Some(&p), &l(2, &r), &map).as_deref(),
            Some("secondary")
        );
    }
}
