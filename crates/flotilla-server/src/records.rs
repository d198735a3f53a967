//! How the controller stores a set's placement and status, so that no record of a set
//! grows with its instances.
//!
//! ```text
//!  /flotilla/placements/<ns>/<name>   the plan, each cluster's ordinals as ranges
//!  /flotilla/status/sets/<ns>/<name>  the summary: counts, conditions, primary and, per
//!                                     cluster, its ordinals as ranges and its ready count
//!  /flotilla/reports/<cluster>/<ns>/<name>   per member: its instances (the agent's)
//!                     │
//!                     ▼ expand (where a reader asks: get, describe, watch, list)
//!  FederatedInstanceSetStatus with `instances` and `clusters[].ordinals`, as the API has
//!  always shown it
//! ```
//!
//! The bound: a placement or summary holds O(clusters + ordinal ranges) bytes, about
//! 100 bytes a cluster plus 30 a range (a sticky plan keeps one or a few ranges a
//! cluster), and never more than [`RECORD_LIMIT`]: [`check`] refuses a bigger one before
//! it reaches the store, and the set then says so in its conditions. The per-ordinal
//! view lives only in the members' reports (compact and bounded too:
//! `flotilla_api::report`). Records written before this layout (plain ordinal lists, a stored `instances`
//! list) still decode.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::ordinals::Ordinals;
use flotilla_api::status::{
    ClusterPlacementStatus, Condition, FederatedInstanceSetStatus, PrimaryStatus,
};
use flotilla_api::{InstanceSetStatus, InstanceStatus};
use flotilla_scheduler::{ClusterPlan, Plan};
use serde::{Deserialize, Serialize};

/// The most any record the controller writes for a set (its status summary, its
/// placement) may hold: a third of etcd's default request limit (1.5 MiB), so a record
/// and the rest of its request always fit.
pub const RECORD_LIMIT: usize = 512 * 1024;

/// A record that would be larger than [`RECORD_LIMIT`].
#[derive(Debug, thiserror::Error)]
#[error("the {what} of {size} bytes exceeds the limit of {limit} bytes a store record may hold")]
pub struct TooLarge {
    /// `placement` or `status`.
    pub what: &'static str,
    /// Its encoded size.
    pub size: usize,
    /// [`RECORD_LIMIT`].
    pub limit: usize,
}

/// `bytes` if they fit in a record.
pub fn check(what: &'static str, bytes: Vec<u8>) -> Result<Vec<u8>, TooLarge> {
    if bytes.len() > RECORD_LIMIT {
        return Err(TooLarge {
            what,
            size: bytes.len(),
            limit: RECORD_LIMIT,
        });
    }
    Ok(bytes)
}

/// Ordinals as stored: ranges, or (in records written before) a plain list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Stored {
    Ranges(Ordinals),
    List(Vec<u32>),
}

impl Stored {
    fn of(ordinals: &[u32]) -> Stored {
        Stored::Ranges(Ordinals::compact(ordinals))
    }

    fn to_vec(&self) -> Vec<u32> {
        match self {
            Stored::Ranges(o) => o.to_vec(),
            Stored::List(l) => l.clone(),
        }
    }
}

impl Default for Stored {
    fn default() -> Stored {
        Stored::Ranges(Ordinals::default())
    }
}

#[derive(Serialize, Deserialize)]
struct PlanRecord {
    placement: Vec<ClusterPlanRecord>,
    #[serde(default)]
    unschedulable: u32,
    #[serde(default)]
    messages: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct ClusterPlanRecord {
    cluster: String,
    #[serde(default)]
    capacity: u32,
    #[serde(default)]
    ordinals: Stored,
}

/// A plan as the placement record stores it.
pub fn encode_plan(plan: &Plan) -> Result<Vec<u8>, TooLarge> {
    let record = PlanRecord {
        placement: plan
            .placement
            .iter()
            .map(|c| ClusterPlanRecord {
                cluster: c.cluster.clone(),
                capacity: c.capacity,
                ordinals: Stored::of(&c.ordinals),
            })
            .collect(),
        unschedulable: plan.unschedulable,
        messages: plan.messages.clone(),
    };
    check(
        "placement",
        serde_json::to_vec(&record).expect("a plan always encodes"),
    )
}

/// A placement record (either layout) as a plan.
pub fn decode_plan(bytes: &[u8]) -> serde_json::Result<Plan> {
    let record: PlanRecord = serde_json::from_slice(bytes)?;
    Ok(Plan {
        placement: record
            .placement
            .into_iter()
            .map(|c| ClusterPlan {
                ordinals: c.ordinals.to_vec(),
                cluster: c.cluster,
                capacity: c.capacity,
            })
            .collect(),
        unschedulable: record.unschedulable,
        messages: record.messages,
    })
}

/// A set's status as stored: everything but the per-ordinal view.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: u32,
    #[serde(default)]
    pub ready_replicas: u32,
    #[serde(default)]
    pub unschedulable: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimaryStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One cluster's share in a [`StatusRecord`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    pub cluster: String,
    #[serde(default)]
    ordinals: Stored,
    #[serde(default)]
    pub ready_replicas: u32,
}

impl ClusterRecord {
    /// Its ordinals, ascending.
    pub fn ordinals(&self) -> Vec<u32> {
        self.ordinals.to_vec()
    }
}

impl StatusRecord {
    /// What is stored of `status`.
    pub fn of(status: &FederatedInstanceSetStatus) -> StatusRecord {
        StatusRecord {
            observed_generation: status.observed_generation,
            replicas: status.replicas,
            ready_replicas: status.ready_replicas,
            unschedulable: status.unschedulable,
            clusters: status
                .clusters
                .iter()
                .map(|c| ClusterRecord {
                    cluster: c.cluster.clone(),
                    ordinals: Stored::of(&c.ordinals),
                    ready_replicas: c.ready_replicas,
                })
                .collect(),
            primary: status.primary.clone(),
            conditions: status.conditions.clone(),
        }
    }

    /// The record as stored, or [`TooLarge`].
    pub fn encode(&self) -> Result<Vec<u8>, TooLarge> {
        check(
            "status",
            serde_json::to_vec(self).expect("a status always encodes"),
        )
    }

    /// The clusters whose reports [`StatusRecord::expand`] reads.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(|c| c.cluster.as_str())
    }

    /// The status as users see it. With `instances`, the per-ordinal view from the
    /// members' `reports` (by cluster): each placed ordinal as its cluster reports it
    /// (or only its ordinal and cluster, before the report), as the aggregation saw it.
    pub fn expand(
        &self,
        reports: &BTreeMap<String, InstanceSetStatus>,
        instances: bool,
    ) -> FederatedInstanceSetStatus {
        let mut out = Vec::new();
        let clusters = self
            .clusters
            .iter()
            .map(|c| {
                let ordinals = c.ordinals();
                if instances {
                    let by_ordinal: BTreeMap<u32, &InstanceStatus> = reports
                        .get(&c.cluster)
                        .map(|r| r.instances.iter().map(|s| (s.ordinal, s)).collect())
                        .unwrap_or_default();
                    out.extend(ordinals.iter().map(|&ordinal| {
                        let mut s = by_ordinal.get(&ordinal).map_or_else(
                            || InstanceStatus {
                                ordinal,
                                ..InstanceStatus::default()
                            },
                            |s| (*s).clone(),
                        );
                        s.cluster = Some(c.cluster.clone());
                        s
                    }));
                }
                ClusterPlacementStatus {
                    cluster: c.cluster.clone(),
                    ordinals,
                    ready_replicas: c.ready_replicas,
                }
            })
            .collect();
        out.sort_by_key(|s| s.ordinal);
        FederatedInstanceSetStatus {
            observed_generation: self.observed_generation,
            replicas: self.replicas,
            ready_replicas: self.ready_replicas,
            unschedulable: self.unschedulable,
            clusters,
            instances: out,
            primary: self.primary.clone(),
            conditions: self.conditions.clone(),
        }
    }
}

impl StatusRecord {
    /// One page of the per-ordinal view: the status with `instances` from the
    /// `offset`th placed instance (in ordinal order), at most `limit`, from `reports`
    /// (which need hold only [`StatusRecord::page_clusters`]).
    pub fn expand_page(
        &self,
        reports: &BTreeMap<String, InstanceSetStatus>,
        offset: usize,
        limit: usize,
    ) -> FederatedInstanceSetStatus {
        let mut out = self.expand(&BTreeMap::new(), false);
        let page = self.page(offset, limit);
        let mut by_cluster: BTreeMap<&str, BTreeMap<u32, &InstanceStatus>> = BTreeMap::new();
        out.instances = page
            .into_iter()
            .map(|(ordinal, cluster)| {
                let seen = by_cluster.entry(cluster).or_insert_with(|| {
                    reports
                        .get(cluster)
                        .map(|r| r.instances.iter().map(|s| (s.ordinal, s)).collect())
                        .unwrap_or_default()
                });
                let mut s = seen.get(&ordinal).map_or_else(
                    || InstanceStatus {
                        ordinal,
                        ..InstanceStatus::default()
                    },
                    |s| (*s).clone(),
                );
                s.cluster = Some(cluster.to_string());
                s
            })
            .collect();
        out
    }

    /// The clusters whose reports a page needs.
    pub fn page_clusters(&self, offset: usize, limit: usize) -> BTreeSet<&str> {
        self.page(offset, limit)
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }

    /// The placed instances from the `offset`th, at most `limit`: (ordinal, cluster).
    fn page(&self, offset: usize, limit: usize) -> Vec<(u32, &str)> {
        let mut all: Vec<(u32, &str)> = self
            .clusters
            .iter()
            .flat_map(|c| c.ordinals().into_iter().map(|o| (o, c.cluster.as_str())))
            .collect();
        all.sort_unstable();
        all.into_iter().skip(offset).take(limit).collect()
    }
}

/// The `Degraded` reason of a set whose placement or status does not fit in a record.
pub const TOO_LARGE: &str = "RecordTooLarge";

impl StatusRecord {
    /// What to store instead when `problem` kept the placement or this status out of
    /// the store: the same without the per-cluster ordinals (counts stay), `Degraded`
    /// naming the record, its size and the limit. Always small: O(clusters).
    pub fn unstorable(&self, problem: &TooLarge, now: &str) -> StatusRecord {
        let consequence = match problem.what {
            "placement" => {
                "the set's ordinals are too scattered to store where they run, so nothing is                  placed or moved until they fit (fewer clusters, or contiguous ordinals)"
            }
            _ => "the status shows counts only, not which ordinals each cluster holds",
        };
        let mut out = self.clone();
        for c in &mut out.clusters {
            c.ordinals = Stored::default();
        }
        let degraded = Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: TOO_LARGE.into(),
            message: format!("{problem}: {consequence}"),
            last_transition_time: Some(now.to_string()),
        };
        match out.conditions.iter_mut().find(|c| c.type_ == "Degraded") {
            Some(c) => {
                let since = if c.status == "True" {
                    c.last_transition_time.clone()
                } else {
                    degraded.last_transition_time.clone()
                };
                *c = Condition {
                    last_transition_time: since,
                    ..degraded
                };
            }
            None => out.conditions.push(degraded),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u32, clusters: u32) -> Plan {
        let per = n / clusters;
        Plan {
            placement: (0..clusters)
                .map(|c| ClusterPlan {
                    cluster: format!("member-{c:03}"),
                    capacity: per * 2,
                    ordinals: (c * per..(c + 1) * per).collect(),
                })
                .collect(),
            unschedulable: 0,
            messages: vec!["m".into()],
        }
    }

    #[test]
    fn a_placement_round_trips_and_its_size_does_not_grow_with_the_instances() {
        let small = encode_plan(&plan(1_000, 100)).unwrap();
        let large = encode_plan(&plan(1_000_000, 100)).unwrap();
        assert_eq!(decode_plan(&large).unwrap(), plan(1_000_000, 100));
        // Only the digits of the bigger numbers differ.
        assert!(
            large.len() < small.len() * 2,
            "{} vs {}",
            large.len(),
            small.len()
        );
    }

    #[test]
    fn the_status_of_a_million_instances_over_100_clusters_is_a_few_kilobytes() {
        let status = |n: u32| {
            let per = n / 100;
            FederatedInstanceSetStatus {
                replicas: n,
                ready_replicas: n,
                clusters: (0..100)
                    .map(|c| ClusterPlacementStatus {
                        cluster: format!("member-{c:03}"),
                        ordinals: (c * per..(c + 1) * per).collect(),
                        ready_replicas: per,
                    })
                    .collect(),
                ..FederatedInstanceSetStatus::default()
            }
        };
        let small = StatusRecord::of(&status(1_000)).encode().unwrap();
        let large = StatusRecord::of(&status(1_000_000)).encode().unwrap();
        assert!(large.len() < 16 * 1024, "{}", large.len());
        assert!(
            large.len() < small.len() * 2,
            "{} vs {}",
            large.len(),
            small.len()
        );
    }

    #[test]
    fn records_written_before_the_compact_layout_still_decode() {
        let old = serde_json::to_vec(&plan(10, 2)).unwrap();
        assert_eq!(decode_plan(&old).unwrap(), plan(10, 2));
        let status = r#"{"replicas":2,"readyReplicas":1,"clusters":[{"cluster":"a","ordinals":[0,1],"readyReplicas":1}],
            "instances":[{"ordinal":0,"ready":true},{"ordinal":1}]}"#;
        let r: StatusRecord = serde_json::from_str(status).unwrap();
        assert_eq!(r.clusters[0].ordinals(), vec![0, 1]);
    }

    #[test]
    fn a_fragmented_placement_past_the_limit_is_refused_naming_its_size() {
        // Every other ordinal: no ranges, 200,000 discrete ordinals.
        let p = Plan {
            placement: vec![ClusterPlan {
                cluster: "a".into(),
                capacity: 0,
                ordinals: (0..400_000).step_by(2).collect(),
            }],
            ..Plan::default()
        };
        let e = encode_plan(&p).unwrap_err();
        assert!(e.size > RECORD_LIMIT);
        assert!(
            e.to_string().contains(&format!(
                "placement of {} bytes exceeds the limit of {RECORD_LIMIT}",
                e.size
            )),
            "{e}"
        );
    }

    #[test]
    fn a_status_that_cannot_be_stored_keeps_its_counts_and_says_why() {
        let record = StatusRecord {
            replicas: 4,
            ready_replicas: 3,
            clusters: vec![ClusterRecord {
                cluster: "a".into(),
                ordinals: Stored::of(&[0, 1, 2, 3]),
                ready_replicas: 3,
            }],
            conditions: vec![Condition {
                type_: "Degraded".into(),
                status: "False".into(),
                reason: "Healthy".into(),
                ..Condition::default()
            }],
            ..StatusRecord::default()
        };
        let problem = TooLarge {
            what: "placement",
            size: 600_000,
            limit: RECORD_LIMIT,
        };
        let out = record.unstorable(&problem, "t1");
        assert_eq!((out.replicas, out.ready_replicas), (4, 3));
        assert!(out.clusters[0].ordinals().is_empty());
        assert_eq!(out.clusters[0].ready_replicas, 3);
        let d = &out.conditions[0];
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", TOO_LARGE));
        assert!(
            d.message
                .starts_with("the placement of 600000 bytes exceeds the limit of 524288 bytes"),
            "{}",
            d.message
        );
        assert_eq!(d.last_transition_time.as_deref(), Some("t1"));
        // Again later: the same record (nothing to write), the time kept.
        assert_eq!(out.unstorable(&problem, "t2"), out);
    }

    #[test]
    fn the_summary_expands_to_the_status_the_aggregation_made() {
        let reports = BTreeMap::from([(
            "a".to_string(),
            InstanceSetStatus {
                instances: vec![InstanceStatus {
                    ordinal: 1,
                    ready: true,
                    endpoint: Some("10.0.0.1:6379".into()),
                    ..InstanceStatus::default()
                }],
                ..InstanceSetStatus::default()
            },
        )]);
        let status = FederatedInstanceSetStatus {
            replicas: 3,
            ready_replicas: 1,
            clusters: vec![
                ClusterPlacementStatus {
                    cluster: "a".into(),
                    ordinals: vec![0, 1],
                    ready_replicas: 1,
                },
                ClusterPlacementStatus {
                    cluster: "b".into(),
                    ordinals: vec![2],
                    ready_replicas: 0,
                },
            ],
            instances: vec![
                InstanceStatus {
                    ordinal: 0,
                    cluster: Some("a".into()),
                    ..InstanceStatus::default()
                },
                InstanceStatus {
                    ordinal: 1,
                    cluster: Some("a".into()),
                    ready: true,
                    endpoint: Some("10.0.0.1:6379".into()),
                    ..InstanceStatus::default()
                },
                InstanceStatus {
                    ordinal: 2,
                    cluster: Some("b".into()),
                    ..InstanceStatus::default()
                },
            ],
            ..FederatedInstanceSetStatus::default()
        };
        let record = StatusRecord::of(&status);
        let stored = record.encode().unwrap();
        let back: StatusRecord = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.expand(&reports, true), status);
        // Pages of two: the same instances.
        let pages: Vec<InstanceStatus> = [0, 2]
            .into_iter()
            .flat_map(|o| back.expand_page(&reports, o, 2).instances)
            .collect();
        assert_eq!(pages, status.instances);
        assert_eq!(
            back.page_clusters(2, 2).into_iter().collect::<Vec<_>>(),
            ["b"]
        );
        let summary = back.expand(&reports, false);
        assert!(summary.instances.is_empty());
        assert_eq!(summary.clusters, status.clusters);
    }
}
