//! Reading Redis's `INFO` answer into what the engine and the status need.

use std::collections::BTreeMap;

use flotilla_api::status::RedisInstanceStatus;

/// `INFO server persistence replication keyspace` of one instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// What the status shows.
    pub status: RedisInstanceStatus,
    /// The process's `run_id`: another one means the instance restarted.
    pub run_id: String,
    /// Its replication offset as it is now (the status carries it only while it
    /// stands still: see `RedisInstanceStatus::offset`).
    pub offset: u64,
    /// Keys in all its databases.
    pub keys: u64,
    /// For a primary: its replicas as `(host:port, state, offset)`.
    pub replicas: Vec<(String, String, u64)>,
    /// A `FAILOVER` is in progress (`master_failover_state` other than `no-failover`).
    pub failing_over: bool,
    /// Loading its dataset (`loading` or `async_loading`), or a replica in the middle
    /// of a full sync: its keys and offset say nothing yet, so nothing is decided on them.
    pub loading: bool,
}

impl Info {
    /// A replica whose master is its own address: held back after a restart (see
    /// [`crate::launch`]).
    pub fn held_back(&self, own: &str) -> bool {
        self.status.role == "slave" && self.status.master.as_deref() == Some(own)
    }

    /// A replica with no working link to a primary.
    pub fn unlinked(&self) -> bool {
        self.status.role == "slave" && !self.status.link_up
    }
}

/// Parses the text `INFO` answers. Unknown lines are ignored; a missing role reads as
/// an unknown role (the empty string).
pub fn parse(text: &str) -> Info {
    let fields: BTreeMap<&str, &str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end().split_once(':'))
        .collect();
    let get = |k: &str| fields.get(k).copied();
    let number = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let role = get("role").unwrap_or_default().to_string();
    let mut status = RedisInstanceStatus {
        role: role.clone(),
        ..RedisInstanceStatus::default()
    };
    let mut replicas = Vec::new();
    if role == "slave" {
        if let (Some(h), Some(p)) = (get("master_host"), get("master_port")) {
            status.master = Some(join(h, p));
        }
        status.link_up = get("master_link_status") == Some("up");
    }
    let offset = if role == "slave" {
        number("slave_repl_offset")
    } else {
        number("master_repl_offset")
    };
    if role == "slave" && !status.link_up {
        status.offset = offset;
    }
    if role != "slave" {
        for (k, v) in &fields {
            let Some(n) = k.strip_prefix("slave") else {
                continue;
            };
            if n.parse::<u32>().is_err() {
                continue;
            }
            let kv: BTreeMap<&str, &str> = v.split(',').filter_map(|p| p.split_once('=')).collect();
            if let (Some(ip), Some(port)) = (kv.get("ip"), kv.get("port")) {
                let addr = join(ip, port);
                let state = kv.get("state").copied().unwrap_or_default().to_string();
                let offset = kv.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
                replicas.push((addr, state, offset));
            }
        }
        replicas.sort();
        status.replicas = replicas
            .iter()
            .filter(|(_, state, _)| state == "online")
            .map(|(a, _, _)| a.clone())
            .collect();
    }
    let keys = fields
        .iter()
        .filter(|(k, _)| k.starts_with("db") && k[2..].parse::<u32>().is_ok())
        .filter_map(|(_, v)| {
            v.split(',')
                .find_map(|p| p.strip_prefix("keys="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum();
    status.empty = keys == 0;
    status.run_id = get("run_id").unwrap_or_default().to_string();
    Info {
        run_id: status.run_id.clone(),
        offset,
        keys,
        status,
        replicas,
        failing_over: get("master_failover_state").is_some_and(|s| s != "no-failover"),
        loading: ["loading", "async_loading", "master_sync_in_progress"]
            .iter()
            .any(|k| get(k) == Some("1")),
    }
}

/// `host:port`, an IPv6 host bracketed.
pub fn join(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `CONFIG GET` answers (name, value, name, value, …) as a map.
pub fn config_pairs(items: &[String]) -> BTreeMap<String, String> {
    items
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_with_replicas_and_keys() {
        let i = parse(
            "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.1.2,port=6379,state=online,offset=420,lag=0\r\nslave1:ip=127.0.1.3,port=6379,state=wait_bgsave,offset=0,lag=0\r\nmaster_failover_state:no-failover\r\nmaster_repl_offset:420\r\n# Keyspace\r\ndb0:keys=10,expires=0,avg_ttl=0\r\ndb3:keys=5,expires=1,avg_ttl=9\r\n",
        );
        assert_eq!(i.status.role, "master");
        assert_eq!(i.offset, 420);
        assert_eq!(i.status.offset, 0, "a primary's offset moves: not reported");
        assert_eq!(i.keys, 15);
        assert!(!i.status.empty);
        assert_eq!(i.status.replicas, ["127.0.1.2:6379"], "online ones only");
        assert_eq!(i.replicas.len(), 2);
        assert_eq!(i.run_id, "abc");
        assert!(!i.failing_over);
        assert!(!i.loading);
    }

    #[test]
    fn loading_or_syncing_says_so() {
        for text in [
            "role:master\nloading:1\n",
            "role:master\nloading:0\nasync_loading:1\n",
            "role:slave\nmaster_link_status:down\nmaster_sync_in_progress:1\n",
        ] {
            assert!(parse(text).loading, "{text}");
        }
        assert!(!parse("role:slave\nloading:0\nmaster_sync_in_progress:0\n").loading);
    }

    #[test]
    fn a_replica_and_a_held_back_one() {
        let text = "role:slave\nmaster_host:127.0.1.1\nmaster_port:6379\nmaster_link_status:down\nslave_repl_offset:77\n";
        let i = parse(text);
        assert_eq!(i.status.master.as_deref(), Some("127.0.1.1:6379"));
        assert!(!i.status.link_up && i.unlinked());
        assert_eq!(
            i.status.offset, 77,
            "an unlinked replica's offset stands still"
        );
        assert!(i.status.empty);
        assert!(i.held_back("127.0.1.1:6379"));
        assert!(!i.held_back("127.0.1.2:6379"));
        let v6 =
            parse("role:slave\nmaster_host:fd00::1\nmaster_port:6379\nmaster_link_status:up\n");
        assert_eq!(v6.status.master.as_deref(), Some("[fd00::1]:6379"));
        assert!(v6.status.link_up);
    }
}
