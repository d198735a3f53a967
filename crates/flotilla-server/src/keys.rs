//! Where everything lives in the store. One prefix per kind of record, so a watch on a
//! prefix sees exactly one kind, and an agent's watch sees exactly its own slices.
//!
//! ```text
//! /flotilla/sets/<ns>/<name>               FederatedInstanceSet (user's spec, metadata)
//! /flotilla/status/sets/<ns>/<name>        its aggregated status        (controller)
//! /flotilla/placements/<ns>/<name>         its plan: the sticky placement (controller)
//! /flotilla/clusters/<name>                Cluster (labels, taints)     (cluster add, apply)
//! /flotilla/status/clusters/<name>         its status: ready, capacity  (agent heartbeats,
//!                                                                         controller)
//! /flotilla/tokens/<name>                  its agent token: JSON {digest, previous?:
//!                                          {digest, until}} (SHA-256s; `previous`
//!                                          while a rotation's grace lasts), or the
//!                                          bare hex digest as written before rotation
//! /flotilla/user-tokens/<name>             a user token: JSON {digest, scope,
//!                                          namespaces, created}       (token create)
//! /flotilla/alive/<name>                   under a lease its heartbeats renew
//! /flotilla/slices/<cluster>/<ns>/<name>   InstanceSet: the member's slice (controller)
//! /flotilla/reports/<cluster>/<ns>/<name>  the slice's status as the agent reports it
//! /flotilla/admin-token                    the generated admin token (when none is given)
//! /flotilla/leader                         the server whose controller runs, under its
//!                                          lease (see `leader`)
//!
//! /flotilla-audit/<unix nanos, 20 digits>-<8 hex>   one audit record (JSON, see
//!                                          `audit`), in time order; pruned after the
//!                                          retention
//! ```
//!
//! The audit trail is outside `/flotilla/` on purpose: the controller and every API
//! watch list and watch `/flotilla/`, and a month of records must cost them nothing.
//!
//! Names are DNS labels (validated before anything is stored), so `/` never appears
//! inside a segment.

/// The root of every key but the audit trail's.
pub const ROOT: &str = "/flotilla/";
pub const SETS: &str = "/flotilla/sets/";
pub const SET_STATUS: &str = "/flotilla/status/sets/";
pub const PLACEMENTS: &str = "/flotilla/placements/";
pub const CLUSTERS: &str = "/flotilla/clusters/";
pub const CLUSTER_STATUS: &str = "/flotilla/status/clusters/";
pub const TOKENS: &str = "/flotilla/tokens/";
pub const ALIVE: &str = "/flotilla/alive/";
pub const SLICES: &str = "/flotilla/slices/";
pub const REPORTS: &str = "/flotilla/reports/";
pub const USER_TOKENS: &str = "/flotilla/user-tokens/";
pub const AUDIT: &str = "/flotilla-audit/";
pub const ADMIN_TOKEN: &str = "/flotilla/admin-token";
pub const LEADER: &str = "/flotilla/leader";

/// A namespaced object's identity: `<namespace>/<name>`.
pub type SetKey = String;

/// `<namespace>/<name>`.
pub fn set_key(namespace: &str, name: &str) -> SetKey {
    format!("{namespace}/{name}")
}

/// The namespace and name of a [`SetKey`].
pub fn split_set_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

pub fn set(key: &str) -> String {
    format!("{SETS}{key}")
}

pub fn set_status(key: &str) -> String {
    format!("{SET_STATUS}{key}")
}

pub fn placement(key: &str) -> String {
    format!("{PLACEMENTS}{key}")
}

pub fn cluster(name: &str) -> String {
    format!("{CLUSTERS}{name}")
}

pub fn cluster_status(name: &str) -> String {
    format!("{CLUSTER_STATUS}{name}")
}

pub fn token(name: &str) -> String {
    format!("{TOKENS}{name}")
}

pub fn user_token(name: &str) -> String {
    format!("{USER_TOKENS}{name}")
}

/// An audit record's key: its time (nanoseconds since the epoch, zero-padded so that
/// keys sort by time) and a random suffix, so servers sharing a store never collide.
pub fn audit(unix_nanos: i128, suffix: &str) -> String {
    format!("{AUDIT}{unix_nanos:020}-{suffix}")
}

/// The time (nanoseconds since the epoch) of an audit record's key.
pub fn audit_time(key: &str) -> Option<i128> {
    key.strip_prefix(AUDIT)?.split_once('-')?.0.parse().ok()
}

pub fn alive(name: &str) -> String {
    format!("{ALIVE}{name}")
}

/// Every slice of one cluster: what its agent watches.
pub fn slices_of(cluster: &str) -> String {
    format!("{SLICES}{cluster}/")
}

pub fn slice(cluster: &str, key: &str) -> String {
    format!("{SLICES}{cluster}/{key}")
}

pub fn report(cluster: &str, key: &str) -> String {
    format!("{REPORTS}{cluster}/{key}")
}

/// What a store key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Set(SetKey),
    SetStatus(SetKey),
    Placement(SetKey),
    Cluster(String),
    ClusterStatus(String),
    Token(String),
    Alive(String),
    Slice { cluster: String, set: SetKey },
    Report { cluster: String, set: SetKey },
    Other,
}

impl Key {
    /// Parses a store key; [`Key::Other`] for anything not laid out above.
    pub fn parse(key: &str) -> Key {
        let two = |rest: &str| rest.matches('/').count() == 1;
        let cluster_and_set = |rest: &str| {
            let (cluster, set) = rest.split_once('/')?;
            two(set).then(|| (cluster.to_string(), set.to_string()))
        };
        if let Some(rest) = key.strip_prefix(SETS) {
            if two(rest) {
                return Key::Set(rest.to_string());
            }
        } else if let Some(rest) = key.strip_prefix(SET_STATUS) {
            if two(rest) {
                return Key::SetStatus(rest.to_string());
            }
        } else if let Some(rest) = key.strip_prefix(PLACEMENTS) {
            if two(rest) {
                return Key::Placement(rest.to_string());
            }
        } else if let Some(rest) = key.strip_prefix(CLUSTERS) {
            return Key::Cluster(rest.to_string());
        } else if let Some(rest) = key.strip_prefix(CLUSTER_STATUS) {
            return Key::ClusterStatus(rest.to_string());
        } else if let Some(rest) = key.strip_prefix(TOKENS) {
            return Key::Token(rest.to_string());
        } else if let Some(rest) = key.strip_prefix(ALIVE) {
            return Key::Alive(rest.to_string());
        } else if let Some(rest) = key.strip_prefix(SLICES) {
            if let Some((cluster, set)) = cluster_and_set(rest) {
                return Key::Slice { cluster, set };
            }
        } else if let Some(rest) = key.strip_prefix(REPORTS)
            && let Some((cluster, set)) = cluster_and_set(rest)
        {
            return Key::Report { cluster, set };
        }
        Key::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_what_made_it() {
        assert_eq!(Key::parse(&set("ns/a")), Key::Set("ns/a".into()));
        assert_eq!(
            Key::parse(&set_status("ns/a")),
            Key::SetStatus("ns/a".into())
        );
        assert_eq!(
            Key::parse(&placement("ns/a")),
            Key::Placement("ns/a".into())
        );
        assert_eq!(Key::parse(&cluster("c")), Key::Cluster("c".into()));
        assert_eq!(
            Key::parse(&cluster_status("c")),
            Key::ClusterStatus("c".into())
        );
        assert_eq!(Key::parse(&token("c")), Key::Token("c".into()));
        assert_eq!(Key::parse(&alive("c")), Key::Alive("c".into()));
        assert_eq!(
            Key::parse(&slice("c", "ns/a")),
            Key::Slice {
                cluster: "c".into(),
                set: "ns/a".into()
            }
        );
        assert_eq!(
            Key::parse(&report("c", "ns/a")),
            Key::Report {
                cluster: "c".into(),
                set: "ns/a".into()
            }
        );
        assert_eq!(Key::parse(ADMIN_TOKEN), Key::Other);
        assert_eq!(Key::parse(LEADER), Key::Other);
        assert_eq!(Key::parse(&user_token("ci")), Key::Other);
        assert!(!audit(1, "ab").starts_with(ROOT));
        assert_eq!(
            audit_time(&audit(1_700_000_000_000_000_000, "ab")),
            Some(1_700_000_000_000_000_000)
        );
        assert!(audit(9, "ff") < audit(10, "00"), "audit keys sort by time");
        assert_eq!(Key::parse("/flotilla/sets/too/many/parts"), Key::Other);
        assert!(slice("c", "ns/a").starts_with(&slices_of("c")));
        assert!(!slice("cc", "ns/a").starts_with(&slices_of("c")));
    }
}
