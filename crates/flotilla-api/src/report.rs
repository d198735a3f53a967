//! A member's report of its slice, as an agent sends it and the federation stores it:
//! compact, so that it grows with what differs between instances, not with how many
//! there are.
//!
//! ```text
//!  InstanceSetStatus { instances: [ {ordinal 0, Running, ready, rev r, node n1,
//!                                     endpoint "s-0.n1.sim:6379"}, … 999 more ] }
//!        │ Report::from_status + encode               ▲ Report::decode
//!        ▼                                            │
//!  { "groups": [ { "ordinals": "0-999", "phase": "Running", "ready": true,
//!                  "revision": "r", "endpointTemplate": "s-{ordinal}.{node}.sim:6379" } ],
//!    "nodes": { "n1": "0-499", "n2": "500-999" }, "leaving": "1000-1009", … }
//! ```
//!
//! Instances that agree on everything but their ordinal and node form one group, whose
//! ordinals are stored as ranges; an endpoint that spells its ordinal (and node) is
//! stored as a template, so it does not split a group. Each node keeps its ordinals as
//! ranges. What is left per instance is what really differs: an endpoint that names no
//! ordinal (a pod IP), Redis's own view of an instance (small shards only).
//!
//! The bound: a report of a member's share of any size is at most [`REPORT_LIMIT`]
//! bytes. One whose detail would exceed it drops, in this order, the nodes, then the
//! endpoints, then Redis's per-instance view, and says so in `omitted` (the counts,
//! phases, readiness, revisions, roles and `leaving`, which the federation's decisions
//! read, are always kept). A report whose groups alone exceed the limit (instances
//! alternating states over hundreds of thousands of ordinals) is refused by
//! [`Report::encode`]. Reports in the plain [`InstanceSetStatus`] form (agents of an
//! earlier version, records stored before) still decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::status::{Condition, InstanceSetStatus, InstanceStatus, RedisInstanceStatus};

/// The most bytes a stored report may hold: a third of etcd's default request limit
/// (1.5 MiB), so a report and the rest of its request always fit.
pub const REPORT_LIMIT: usize = 512 * 1024;

/// The most instances a report may describe (decoding a hostile range such as
/// `0-2147483647` would otherwise allocate billions).
pub const MAX_INSTANCES: usize = 1 << 20;

/// What a report may leave out to stay within [`REPORT_LIMIT`], in the order it does.
pub const OMISSIONS: [&str; 3] = ["nodes", "endpoints", "redis"];

/// A member's status of one slice, in its compact form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// The status as it decodes (what was omitted to fit is `None` in it).
    pub status: InstanceSetStatus,
    /// What was left out to fit (a subset of [`OMISSIONS`]).
    pub omitted: Vec<String>,
}

/// A report that cannot fit in [`REPORT_LIMIT`] even without its detail.
#[derive(Debug, thiserror::Error)]
#[error(
    "the report of {instances} instances takes {size} bytes even without its detail, over the limit of {limit} bytes"
)]
pub struct TooLarge {
    /// How many instances it describes.
    pub instances: usize,
    /// Its smallest encoding.
    pub size: usize,
    /// [`REPORT_LIMIT`].
    pub limit: usize,
}

impl Report {
    /// The compact form of `status`, normalised: instances sorted by ordinal, one per
    /// ordinal (a later duplicate is dropped).
    pub fn from_status(status: &InstanceSetStatus) -> Report {
        Report {
            status: normalised(status),
            omitted: Vec::new(),
        }
    }

    /// Its bytes, within `limit` (use [`REPORT_LIMIT`]): detail is dropped in the order
    /// of [`OMISSIONS`] until it fits, and `self` records what was.
    pub fn encode(&mut self, limit: usize) -> Result<Vec<u8>, TooLarge> {
        let mut bytes = self.to_bytes();
        for what in OMISSIONS {
            if bytes.len() <= limit {
                return Ok(bytes);
            }
            for i in &mut self.status.instances {
                match what {
                    "nodes" => i.node = None,
                    "endpoints" => i.endpoint = None,
                    _ => i.redis = None,
                }
            }
            if !self.omitted.iter().any(|o| o == what) {
                self.omitted.push(what.to_string());
            }
            bytes = self.to_bytes();
        }
        if bytes.len() <= limit {
            return Ok(bytes);
        }
        Err(TooLarge {
            instances: self.status.instances.len(),
            size: bytes.len(),
            limit,
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Wire::of(self)).expect("a report always serialises")
    }

    /// The report of `bytes`, in the compact form or the plain [`InstanceSetStatus`].
    pub fn decode(bytes: &[u8]) -> serde_json::Result<Report> {
        serde_json::from_slice(bytes)
    }
}

/// `status` with its instances sorted by ordinal, one per ordinal: what a report of it
/// decodes to.
pub fn normalised(status: &InstanceSetStatus) -> InstanceSetStatus {
    let mut out = status.clone();
    out.instances.sort_by_key(|i| i.ordinal);
    out.instances.dedup_by_key(|i| i.ordinal);
    out.leaving.sort_unstable();
    out.leaving.dedup();
    out
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire::of(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Report {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Report, D::Error> {
        Wire::deserialize(d)?
            .expand()
            .map_err(serde::de::Error::custom)
    }
}

/// The stored shape. Every field of [`InstanceSetStatus`] but its instances is kept as
/// it is; the instances are in `groups`, `nodes` and `detail` (or, in a plain status,
/// in `instances`).
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    #[serde(default)]
    replicas: u32,
    #[serde(default)]
    ready_replicas: u32,
    #[serde(default)]
    updated_replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    update_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<Condition>,
    /// Plain form only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    instances: Vec<InstanceStatus>,
    /// A list (plain form) or ranges (compact form).
    #[serde(default, skip_serializing_if = "Leaving::is_empty")]
    leaving: Leaving,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<Group>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    nodes: BTreeMap<String, String>,
    /// Per ordinal, what no group holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    detail: BTreeMap<u32, Detail>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    omitted: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Leaving {
    List(Vec<u32>),
    Ranges(String),
}

impl Default for Leaving {
    fn default() -> Leaving {
        Leaving::List(Vec::new())
    }
}

impl Leaving {
    fn is_empty(&self) -> bool {
        match self {
            Leaving::List(l) => l.is_empty(),
            Leaving::Ranges(r) => r.is_empty(),
        }
    }
}

/// Instances that agree on everything but their ordinal, node and [`Detail`].
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
struct Group {
    ordinals: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(default)]
    ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    /// The endpoint with `{ordinal}` (and `{node}`) for the instance's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint_template: Option<String>,
}

/// What one instance does not share with its group.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Detail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redis: Option<RedisInstanceStatus>,
}

const ORDINAL: &str = "{ordinal}";
const NODE: &str = "{node}";

/// `endpoint` as a template of `ordinal` and `node`, if it spells the ordinal as a
/// whole number (and, optionally, the node) and holds no braces of its own.
fn template(endpoint: &str, ordinal: u32, node: Option<&str>) -> Option<String> {
    if endpoint.contains(['{', '}']) {
        return None;
    }
    let mut t = endpoint.to_string();
    if let Some(n) = node.filter(|n| !n.is_empty())
        && let Some(at) = t.find(n)
    {
        t.replace_range(at..at + n.len(), NODE);
    }
    let digits = ordinal.to_string();
    let bytes = t.as_bytes();
    let at = t.match_indices(&digits).map(|(at, _)| at).find(|&at| {
        let before = at.checked_sub(1).map(|b| bytes[b]);
        let after = bytes.get(at + digits.len()).copied();
        !before.is_some_and(|b| b.is_ascii_digit()) && !after.is_some_and(|b| b.is_ascii_digit())
    })?;
    t.replace_range(at..at + digits.len(), ORDINAL);
    (render(&t, ordinal, node) == endpoint).then_some(t)
}

fn render(template: &str, ordinal: u32, node: Option<&str>) -> String {
    let out = template.replacen(ORDINAL, &ordinal.to_string(), 1);
    match node {
        Some(n) => out.replacen(NODE, n, 1),
        None => out,
    }
}

impl Wire {
    fn of(report: &Report) -> Wire {
        let s = &report.status;
        let mut groups: BTreeMap<Group, Vec<u32>> = BTreeMap::new();
        let mut nodes: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        let mut detail: BTreeMap<u32, Detail> = BTreeMap::new();
        for i in &s.instances {
            let node = i.node.as_deref();
            let endpoint_template = i
                .endpoint
                .as_deref()
                .and_then(|e| template(e, i.ordinal, node));
            if endpoint_template.is_none() && i.endpoint.is_some() || i.redis.is_some() {
                detail.insert(
                    i.ordinal,
                    Detail {
                        endpoint: if endpoint_template.is_none() {
                            i.endpoint.clone()
                        } else {
                            None
                        },
                        redis: i.redis.clone(),
                    },
                );
            }
            if let Some(n) = node {
                nodes.entry(n).or_default().push(i.ordinal);
            }
            let key = Group {
                ordinals: String::new(),
                cluster: i.cluster.clone(),
                phase: i.phase.clone(),
                role: i.role.clone(),
                ready: i.ready,
                revision: i.revision.clone(),
                endpoint_template,
            };
            groups.entry(key).or_default().push(i.ordinal);
        }
        Wire {
            observed_generation: s.observed_generation,
            replicas: s.replicas,
            ready_replicas: s.ready_replicas,
            updated_replicas: s.updated_replicas,
            update_revision: s.update_revision.clone(),
            conditions: s.conditions.clone(),
            instances: Vec::new(),
            leaving: Leaving::Ranges(ranges(&s.leaving)),
            groups: groups
                .into_iter()
                .map(|(g, o)| Group {
                    ordinals: ranges(&o),
                    ..g
                })
                .collect(),
            nodes: nodes
                .into_iter()
                .map(|(n, o)| (n.to_string(), ranges(&o)))
                .collect(),
            detail,
            omitted: report.omitted.clone(),
        }
    }

    fn expand(self) -> Result<Report, String> {
        let mut count = 0usize;
        let mut instances: Vec<InstanceStatus> = self.instances;
        if instances.len() > MAX_INSTANCES {
            return Err(format!(
                "instances: {} are more than the {MAX_INSTANCES} a report may hold",
                instances.len()
            ));
        }
        let mut node_of: BTreeMap<u32, &str> = BTreeMap::new();
        for (node, ordinals) in &self.nodes {
            for o in parse_ranges(ordinals, &mut count, "nodes")? {
                node_of.insert(o, node);
            }
        }
        let mut seen = 0usize;
        for g in &self.groups {
            for o in parse_ranges(&g.ordinals, &mut seen, "groups[].ordinals")? {
                let node = node_of.get(&o).copied();
                instances.push(InstanceStatus {
                    ordinal: o,
                    cluster: g.cluster.clone(),
                    phase: g.phase.clone(),
                    role: g.role.clone(),
                    ready: g.ready,
                    node: node.map(str::to_string),
                    revision: g.revision.clone(),
                    endpoint: g.endpoint_template.as_deref().map(|t| render(t, o, node)),
                    redis: None,
                });
            }
        }
        instances.sort_by_key(|i| i.ordinal);
        if let Some(w) = instances.windows(2).find(|w| w[0].ordinal == w[1].ordinal) {
            return Err(format!("groups: ordinal {} is in two groups", w[0].ordinal));
        }
        for (o, d) in self.detail {
            let Ok(at) = instances.binary_search_by_key(&o, |i| i.ordinal) else {
                return Err(format!("detail: ordinal {o} is in no group"));
            };
            let i = &mut instances[at];
            if d.endpoint.is_some() {
                i.endpoint = d.endpoint;
            }
            i.redis = d.redis;
        }
        let leaving = match self.leaving {
            Leaving::List(l) => l,
            Leaving::Ranges(r) => parse_ranges(&r, &mut count, "leaving")?,
        };
        Ok(Report {
            status: InstanceSetStatus {
                observed_generation: self.observed_generation,
                replicas: self.replicas,
                ready_replicas: self.ready_replicas,
                updated_replicas: self.updated_replicas,
                update_revision: self.update_revision,
                instances,
                leaving,
                conditions: self.conditions,
            },
            omitted: self.omitted,
        })
    }
}

/// The ordinals of `0-3,7`, strictly: every part a number or a range `a-b` with
/// `a <= b`; `count` is the running total, kept within [`MAX_INSTANCES`].
/// Sorted, distinct `ordinals` as ranges: `a-b` for a run, `a-b/s` for every `s`th
/// ordinal from `a` to `b` (instances spread round-robin over nodes), `a` alone.
fn ranges(ordinals: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ordinals.len() {
        let a = ordinals[i];
        let mut j = i;
        let step = ordinals.get(i + 1).map_or(1, |b| b - a);
        while ordinals.get(j + 1).is_some_and(|b| b - ordinals[j] == step) {
            j += 1;
        }
        // A step other than 1 pays for its `/s` only over three or more.
        if step != 1 && j - i < 2 {
            j = i;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let b = ordinals[j];
        match (j - i, step) {
            (0, _) => out.push_str(&a.to_string()),
            (_, 1) => out.push_str(&format!("{a}-{b}")),
            _ => out.push_str(&format!("{a}-{b}/{step}")),
        }
        i = j + 1;
    }
    out
}

/// The ordinals of [`ranges`]' text, adding their number to `count` and refusing,
/// naming `field`, what is malformed or would take `count` past [`MAX_INSTANCES`].
fn parse_ranges(text: &str, count: &mut usize, field: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    for part in text.split(',') {
        let (range, step) = part.split_once('/').unwrap_or((part, "1"));
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (Ok(a), Ok(b), Ok(step)) = (a.parse::<u32>(), b.parse::<u32>(), step.parse::<u32>())
        else {
            return Err(format!(
                "{field}: {part:?} is not an ordinal, a range a-b or a stepped range a-b/s"
            ));
        };
        if a > b {
            return Err(format!("{field}: {part:?} ends before it starts"));
        }
        if step == 0 || (b - a) % step != 0 {
            return Err(format!(
                "{field}: {part:?} does not step from its start to its end"
            ));
        }
        *count += ((b - a) / step) as usize + 1;
        if *count > MAX_INSTANCES {
            return Err(format!(
                "{field}: more than the {MAX_INSTANCES} ordinals a report may hold"
            ));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(o: u32, node: &str) -> InstanceStatus {
        InstanceStatus {
            ordinal: o,
            phase: Some("Running".into()),
            ready: true,
            node: Some(node.into()),
            revision: Some("s-7f9c8d6b5a".into()),
            endpoint: Some(format!("s-{o}.{node}.sim:6379")),
            ..InstanceStatus::default()
        }
    }

    fn share(n: u32) -> InstanceSetStatus {
        InstanceSetStatus {
            observed_generation: Some(3),
            replicas: n,
            ready_replicas: n,
            updated_replicas: n,
            update_revision: Some("s-7f9c8d6b5a".into()),
            instances: (0..n)
                .map(|o| instance(o, &format!("node-{}", o % 7)))
                .collect(),
            leaving: vec![n + 3, n + 1, n + 2],
            ..InstanceSetStatus::default()
        }
    }

    fn round_trip(s: &InstanceSetStatus) -> (Report, usize) {
        let mut r = Report::from_status(s);
        let bytes = r.encode(REPORT_LIMIT).unwrap();
        (Report::decode(&bytes).unwrap(), bytes.len())
    }

    #[test]
    fn a_report_decodes_to_the_status_it_was_made_of() {
        let mut s = share(50);
        s.instances[7].ready = false;
        s.instances[7].phase = Some("Pending".into());
        s.instances[9].endpoint = Some("10.0.0.9:6379".into());
        s.instances[11].node = None;
        s.instances[11].endpoint = None;
        s.instances[12].redis = Some(RedisInstanceStatus {
            role: "slave".into(),
            master: Some("s-0.node-0.sim:6379".into()),
            link_up: true,
            ..RedisInstanceStatus::default()
        });
        s.instances.swap(3, 40);
        s.conditions.push(Condition {
            type_: "Available".into(),
            status: "True".into(),
            ..Condition::default()
        });
        let (r, _) = round_trip(&s);
        assert_eq!(r.status, normalised(&s));
        assert!(r.omitted.is_empty());
        assert_eq!(r.status.leaving, vec![51, 52, 53]);
    }

    #[test]
    fn a_plain_status_still_decodes() {
        let s = share(5);
        let r = Report::decode(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(r.status, s);
    }

    #[test]
    fn ten_thousand_alike_instances_take_a_few_bytes_in_all() {
        let s = share(10_000);
        let plain = serde_json::to_vec(&s).unwrap().len();
        let (r, size) = round_trip(&s);
        assert!(
            r.status == normalised(&s),
            "the round trip changed the status"
        );
        // Seven nodes, round-robin: each node's ordinals are one stepped range;
        // everything else is one group.
        assert!(size < 2_000, "{size} bytes");
        assert!(plain > 500 * size, "plain {plain} vs compact {size}");
    }

    /// Half the ordinals, with no pattern that ranges could tell.
    fn unpatterned(o: u32) -> bool {
        o.wrapping_mul(2_654_435_761).rotate_left(7) & 1 == 0
    }

    #[test]
    fn a_report_too_big_for_its_detail_drops_it_in_order_and_says_so() {
        let mut s = share(20_000);
        for i in &mut s.instances {
            i.endpoint = Some(format!(
                "10.{}.{}.{}:6379",
                i.ordinal >> 16,
                (i.ordinal >> 8) & 255,
                i.ordinal & 255
            ));
        }
        let full = Report::from_status(&s).encode(usize::MAX).unwrap().len();
        let mut r = Report::from_status(&s);
        let bytes = r.encode(full - 1).unwrap();
        assert!(bytes.len() < full);
        assert_eq!(r.omitted, vec!["nodes"]);
        let back = Report::decode(&bytes).unwrap();
        assert_eq!(back.omitted, vec!["nodes"]);
        assert!(back.status.instances.iter().all(|i| i.node.is_none()));
        assert_eq!(
            back.status.instances[300].endpoint.as_deref(),
            Some("10.0.1.44:6379")
        );
        let mut r = Report::from_status(&s);
        let bytes = r.encode(10_000).unwrap();
        assert_eq!(r.omitted, vec!["nodes", "endpoints"]);
        let back = Report::decode(&bytes).unwrap();
        assert_eq!(back.status.instances.len(), 20_000);
        assert!(
            back.status
                .instances
                .iter()
                .all(|i| i.ready && i.endpoint.is_none())
        );
        // Alternating states are two stepped groups, but states without a pattern
        // cannot be told in fewer bytes than there are instances.
        for i in &mut s.instances {
            i.ready = i.ordinal % 2 == 0;
        }
        let alternating = Report::from_status(&s).encode(10_000).unwrap();
        assert!(alternating.len() < 1_000, "{} bytes", alternating.len());
        for i in &mut s.instances {
            i.ready = unpatterned(i.ordinal);
        }
        let e = Report::from_status(&s).encode(10_000).unwrap_err();
        assert_eq!(e.instances, 20_000);
        assert!(e.size > 10_000, "{e}");
    }

    #[test]
    fn an_endpoint_is_a_template_only_where_it_renders_back() {
        assert_eq!(
            template("s-12.n-1.sim:6379", 12, Some("n-1")).as_deref(),
            Some("s-{ordinal}.{node}.sim:6379")
        );
        assert_eq!(
            template("a-1:6379", 1, None).as_deref(),
            Some("a-{ordinal}:6379")
        );
        // `1` first appears inside `12`, then on its own.
        assert_eq!(
            template("p12-1:80", 1, None).as_deref(),
            Some("p12-{ordinal}:80")
        );
        assert_eq!(template("10.0.0.9:6379", 3, None), None);
        assert_eq!(template("x-{3}", 3, None), None);
    }

    #[test]
    fn hostile_reports_are_refused_naming_the_field() {
        for (text, field) in [
            (
                r#"{"groups":[{"ordinals":"0-2147483647"}]}"#,
                "groups[].ordinals",
            ),
            (
                r#"{"groups":[{"ordinals":"5-3"}]}"#,
                "ends before it starts",
            ),
            (r#"{"groups":[{"ordinals":"x"}]}"#, "not an ordinal"),
            (
                r#"{"groups":[{"ordinals":"1"},{"ordinals":"1","ready":true}]}"#,
                "two groups",
            ),
            (
                r#"{"groups":[{"ordinals":"1"}],"detail":{"2":{}}}"#,
                "ordinal 2 is in no group",
            ),
            (r#"{"leaving":"0-4294967295"}"#, "leaving"),
            (r#"{"nodes":{"n":"0-4000000000/2"}}"#, "nodes: more than"),
            (r#"{"groups":[{"ordinals":"0-10/0"}]}"#, "does not step"),
            (r#"{"groups":[{"ordinals":"0-10/3"}]}"#, "does not step"),
            (r#"{"groups":[{"ordinals":"0-10/x"}]}"#, "stepped range"),
        ] {
            let e = Report::decode(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn ordinals_spread_round_robin_are_stepped_ranges() {
        let every_fourth: Vec<u32> = (0..2_000).step_by(4).collect();
        assert_eq!(ranges(&every_fourth), "0-1996/4");
        assert_eq!(
            ranges(&[0, 1, 2, 3, 9, 10, 20, 30, 40, 41]),
            "0-3,9-10,20-40/10,41"
        );
        assert_eq!(ranges(&[5, 9]), "5,9");
        assert_eq!(ranges(&[]), "");
        for list in [
            every_fourth,
            vec![0, 1, 2, 3, 9, 10, 20, 30, 40, 41],
            vec![5, 9],
            vec![7],
        ] {
            let mut count = 0;
            assert_eq!(parse_ranges(&ranges(&list), &mut count, "f").unwrap(), list);
            assert_eq!(count, list.len());
        }
    }
}
