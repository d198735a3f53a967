//! Redis as far as the simulated member can have it: every running instance of a
//! `spec.redis` set carries a little replication state, and [`command`] answers the
//! commands the Redis engine sends (`INFO`, `ROLE`, `CONFIG GET/SET`, `REPLICAOF`,
//! `FAILOVER TO`, `CLIENT PAUSE/UNPAUSE`, `PING`) as Redis 7 would, so the engine, the
//! role labels, `status.primary` and planned switchovers work in `flotilla dev
//! --simulated` and in fast tests.
//!
//! ```text
//!   instance starts (Running) ─▶ SimRedis { run_id, role from launch::startup, config }
//!   engine ─▶ Backend::redis ─▶ command(): INFO text, ROLE array, +OK / -ERR
//!   killed, recreated, restarted in place ─▶ a new process: new run_id, startup() again
//! ```
//!
//! What it does not have: data (every instance is empty, offsets stay 0), a network (a
//! replica of an address outside this member is taken to be linked; one of its own
//! address is held back, as a real one is), and sentinels (their companion set's
//! instances answer nothing, so a shard with sentinels neither fails over nor switches
//! over here).

use std::collections::BTreeMap;

use flotilla_redis::Start;
use flotilla_redis::info::join;

use crate::redis::Reply;

/// One simulated `redis-server` process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SimRedis {
    /// A new one per process.
    pub run_id: String,
    /// `None`: a master; else the `host:port` it replicates from.
    pub master: Option<String>,
    /// Its dynamic parameters, as started and then set.
    pub config: BTreeMap<String, String>,
}

impl SimRedis {
    /// A process started as `start` says, with the set's dynamic configuration.
    pub fn start(run_id: String, start: &Start, config: BTreeMap<String, String>) -> SimRedis {
        SimRedis {
            run_id,
            master: match start {
                Start::Primary => None,
                Start::ReplicaOf(addr) => Some(addr.clone()),
            },
            config,
        }
    }
}

/// What [`command`] may look at besides the instance it goes to: the other running
/// instances of the set in this member, by endpoint.
pub(crate) type Peers<'a> = BTreeMap<&'a str, &'a SimRedis>;

/// Whether a replica of `master` has a working link, as far as this member can tell:
/// not to itself (held back), and to a master when the address is one of this member's.
fn linked(own: &str, master: &str, peers: &Peers<'_>) -> bool {
    master != own && peers.get(master).is_none_or(|m| m.master.is_none())
}

/// The replicas in this member linked to `own`.
fn replicas_of<'a>(own: &str, peers: &Peers<'a>) -> Vec<&'a str> {
    peers
        .iter()
        .filter(|(addr, r)| **addr != own && r.master.as_deref() == Some(own))
        .map(|(addr, _)| *addr)
        .collect()
}

fn error(text: &str) -> Reply {
    Reply::Error(text.to_string())
}

fn bulk(text: &str) -> Reply {
    Reply::Bulk(Some(text.as_bytes().to_vec()))
}

/// Sends `args` to the instance `me` at `own`. The change a command makes is applied to
/// `me`; `FAILOVER TO` also promotes its target, returned as `(endpoint, new state)`
/// for the caller to store.
pub(crate) fn command(
    me: &mut SimRedis,
    own: &str,
    args: &[&str],
    peers: &Peers<'_>,
) -> (Reply, Option<(String, SimRedis)>) {
    let upper: Vec<String> = args.iter().map(|a| a.to_ascii_uppercase()).collect();
    let words: Vec<&str> = upper.iter().map(String::as_str).collect();
    let reply = match words.as_slice() {
        ["PING"] => Reply::Simple("PONG".into()),
        ["INFO", ..] => bulk(&info(me, own, peers)),
        ["ROLE"] => role(me, own, peers),
        ["CONFIG", "GET", ..] => Reply::Array(Some(
            args[2..]
                .iter()
                .filter_map(|k| Some((k, me.config.get(*k)?)))
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
        )),
        ["CONFIG", "SET", rest @ ..] if !rest.is_empty() && rest.len() % 2 == 0 => {
            for pair in args[2..].chunks(2) {
                me.config.insert(pair[0].to_string(), pair[1].to_string());
            }
            Reply::Simple("OK".into())
        }
        ["REPLICAOF" | "SLAVEOF", "NO", "ONE"] => {
            me.master = None;
            Reply::Simple("OK".into())
        }
        ["REPLICAOF" | "SLAVEOF", _, _] => match args[2].parse::<u16>() {
            Ok(_) => {
                me.master = Some(join(args[1], args[2]));
                Reply::Simple("OK".into())
            }
            Err(_) => error("ERR Invalid master port"),
        },
        ["FAILOVER", "TO", _, _, ..] => {
            let target = join(args[2], args[3]);
            if me.master.is_some() {
                error("ERR FAILOVER is not valid when server is a replica.")
            } else {
                match peers.get(target.as_str()) {
                    Some(t) if t.master.as_deref() == Some(own) => {
                        let mut promoted = (*t).clone();
                        promoted.master = None;
                        me.master = Some(target.clone());
                        return (Reply::Simple("OK".into()), Some((target, promoted)));
                    }
                    _ => error("ERR FAILOVER target HOST and PORT is not a replica."),
                }
            }
        }
        ["CLIENT", "PAUSE" | "UNPAUSE", ..] => Reply::Simple("OK".into()),
        [name, ..] => error(&format!(
            "ERR unknown command '{}' (the simulated member emulates only what the engine sends)",
            name.to_ascii_lowercase()
        )),
        [] => error("ERR empty command"),
    };
    (reply, None)
}

/// `INFO` as Redis 7 writes the sections the engine reads.
fn info(me: &SimRedis, own: &str, peers: &Peers<'_>) -> String {
    let mut out = format!(
        "# Server\r\nredis_version:7.0.0-sim\r\nrun_id:{}\r\n\r\n# Persistence\r\nloading:0\r\nasync_loading:0\r\n\r\n# Replication\r\n",
        me.run_id
    );
    match &me.master {
        Some(master) => {
            let (host, port) = flotilla_redis::launch::split_addr(master).unwrap_or((master, "0"));
            let up = linked(own, master, peers);
            out.push_str(&format!(
                "role:slave\r\nmaster_host:{host}\r\nmaster_port:{port}\r\nmaster_link_status:{}\r\nmaster_sync_in_progress:0\r\nslave_repl_offset:0\r\nconnected_slaves:0\r\nmaster_failover_state:no-failover\r\nmaster_repl_offset:0\r\n",
                if up { "up" } else { "down" }
            ));
        }
        None => {
            let replicas = replicas_of(own, peers);
            out.push_str(&format!(
                "role:master\r\nconnected_slaves:{}\r\n",
                replicas.len()
            ));
            for (i, r) in replicas.iter().enumerate() {
                let (ip, port) = flotilla_redis::launch::split_addr(r).unwrap_or((r, "0"));
                out.push_str(&format!(
                    "slave{i}:ip={ip},port={port},state=online,offset=0,lag=0\r\n"
                ));
            }
            out.push_str("master_failover_state:no-failover\r\nmaster_repl_offset:0\r\n");
        }
    }
    out.push_str("\r\n# Keyspace\r\n");
    out
}

/// `ROLE`: `[master, offset, [[ip, port, offset]…]]` or `[slave, host, port, state,
/// offset]`.
fn role(me: &SimRedis, own: &str, peers: &Peers<'_>) -> Reply {
    match &me.master {
        None => Reply::Array(Some(vec![
            bulk("master"),
            Reply::Integer(0),
            Reply::Array(Some(
                replicas_of(own, peers)
                    .iter()
                    .map(|r| {
                        let (ip, port) = flotilla_redis::launch::split_addr(r).unwrap_or((r, "0"));
                        Reply::Array(Some(vec![bulk(ip), bulk(port), bulk("0")]))
                    })
                    .collect(),
            )),
        ])),
        Some(master) => {
            let (host, port) = flotilla_redis::launch::split_addr(master).unwrap_or((master, "0"));
            let state = if linked(own, master, peers) {
                "connected"
            } else {
                "connect"
            };
            Reply::Array(Some(vec![
                bulk("slave"),
                bulk(host),
                Reply::Integer(port.parse().unwrap_or(0)),
                bulk(state),
                Reply::Integer(0),
            ]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Reply) -> String {
        r.as_text().unwrap()
    }

    #[test]
    fn replication_follows_replicaof_and_failover_to() {
        let mut a = SimRedis::start("a1".into(), &Start::Primary, BTreeMap::new());
        let mut b = SimRedis::start(
            "b1".into(),
            &Start::ReplicaOf("10.0.0.1:6379".into()),
            BTreeMap::new(),
        );
        let peers = |a: &SimRedis, b: &SimRedis| -> BTreeMap<String, SimRedis> {
            BTreeMap::from([
                ("10.0.0.1:6379".to_string(), a.clone()),
                ("10.0.0.2:6379".to_string(), b.clone()),
            ])
        };
        let all = peers(&a, &b);
        let view: Peers<'_> = all.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let info_a = flotilla_redis::info::parse(&text(
            &command(&mut a.clone(), "10.0.0.1:6379", &["INFO"], &view).0,
        ));
        assert_eq!(info_a.status.role, "master");
        assert_eq!(info_a.status.replicas, ["10.0.0.2:6379"]);
        let info_b = flotilla_redis::info::parse(&text(
            &command(&mut b.clone(), "10.0.0.2:6379", &["INFO"], &view).0,
        ));
        assert!(info_b.status.link_up && info_b.status.empty);
        assert_eq!(info_b.status.master.as_deref(), Some("10.0.0.1:6379"));

        let (reply, promoted) = command(
            &mut a,
            "10.0.0.1:6379",
            &["FAILOVER", "TO", "10.0.0.2", "6379", "TIMEOUT", "5000"],
            &view,
        );
        assert_eq!(reply, Reply::Simple("OK".into()));
        let (addr, new_b) = promoted.unwrap();
        assert_eq!(addr, "10.0.0.2:6379");
        assert_eq!(new_b.master, None);
        assert_eq!(a.master.as_deref(), Some("10.0.0.2:6379"));
        b = new_b;
        // Not a replica of the one asked: refused, nothing changes.
        let all = peers(&a, &b);
        let view: Peers<'_> = all.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let (reply, none) = command(
            &mut b.clone(),
            "10.0.0.2:6379",
            &["FAILOVER", "TO", "10.0.0.9", "6379"],
            &view,
        );
        assert!(matches!(reply, Reply::Error(_)) && none.is_none());
    }

    #[test]
    fn a_held_back_instance_has_no_link_and_config_round_trips() {
        let own = "10.0.0.3:6379";
        let mut c = SimRedis::start("c1".into(), &Start::ReplicaOf(own.into()), BTreeMap::new());
        let none = Peers::new();
        let i = flotilla_redis::info::parse(&text(&command(&mut c, own, &["INFO"], &none).0));
        assert!(i.held_back(own) && !i.status.link_up);
        let (r, _) = command(&mut c, own, &["CONFIG", "SET", "maxmemory", "1gb"], &none);
        assert_eq!(r, Reply::Simple("OK".into()));
        let (r, _) = command(&mut c, own, &["CONFIG", "GET", "maxmemory", "nope"], &none);
        assert_eq!(r, Reply::Array(Some(vec![bulk("maxmemory"), bulk("1gb")])));
        let (r, _) = command(&mut c, own, &["REPLICAOF", "NO", "ONE"], &none);
        assert_eq!(r, Reply::Simple("OK".into()));
        assert_eq!(c.master, None);
        assert!(matches!(
            command(&mut c, own, &["FLUSHALL"], &none).0,
            Reply::Error(e) if e.contains("unknown command 'flushall'")
        ));
    }
}
