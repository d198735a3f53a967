//! The federation's part in a Redis set (`spec.redis`): which instance is the shard's
//! primary, decided from every member's report by [`flotilla_redis::primary::choose`],
//! and how the slices say so.
//!
//! ```text
//!   reports (instances: endpoint, ready, INFO) + placement + previous status.primary
//!      └─▶ choose ─▶ Decision { primary, promote, problem, also_masters }
//!            ├─▶ every slice: flotilla.io/redis-primary (+ flotilla.io/redis-promote)
//!            └─▶ status.primary, Degraded=PrimaryLost with the problem,
//!                Degraded=SecondMaster naming a master with data beside the primary
//! ```

use std::collections::BTreeMap;

use flotilla_api::redis::{PRIMARY_ANNOTATION, PROMOTE_ANNOTATION, primary_annotation};
use flotilla_api::status::PrimaryStatus;
use flotilla_api::{
    Cluster, FederatedInstanceSet, InstanceSet, InstanceSetStatus, Valid, selector,
};
use flotilla_redis::primary::{Decision, Seen, choose};

/// Where a set's ordinals are, by member.
#[derive(Clone, Copy, Debug)]
pub struct Placed<'a> {
    /// The ordinals staying in each member.
    pub staying: &'a BTreeMap<String, Vec<u32>>,
    /// Those held there until a move caught up (see `migration`).
    pub retiring: &'a BTreeMap<String, Vec<u32>>,
}

/// The primary of a Redis set, or `None` for any other set.
pub fn decide(
    set: &FederatedInstanceSet,
    placed: Placed<'_>,
    slices: &BTreeMap<String, &InstanceSet>,
    reports: &BTreeMap<String, &InstanceSetStatus>,
    home: Option<&str>,
    previous: Option<&PrimaryStatus>,
    alive: &dyn Fn(&str) -> bool,
) -> Option<Decision> {
    let redis = set.spec.redis.as_ref()?;
    let Placed {
        staying: desired,
        retiring,
    } = placed;
    let seen: Vec<Seen<'_>> = reports
        .iter()
        .flat_map(|(cluster, r)| {
            let staying = desired.get(cluster);
            // A report of an older slice says nothing about the current revision.
            let fresh = slices.get(cluster).is_some_and(|s| {
                r.observed_generation.is_some() && r.observed_generation >= s.metadata.generation
            });
            let revision = r.update_revision.as_deref();
            r.instances.iter().map(move |i| Seen {
                current: fresh && i.revision.as_deref() == revision,
                outdated: fresh && i.revision.as_deref() != revision,
                ordinal: i.ordinal,
                cluster,
                endpoint: i.endpoint.as_deref(),
                ready: i.ready && alive(cluster),
                staying: staying.is_some_and(|o| o.contains(&i.ordinal)),
                redis: i.redis.as_ref(),
            })
        })
        .collect();
    let first = home
        .and_then(|h| desired.get(h))
        .and_then(|o| o.first().copied())
        .or_else(|| desired.values().filter_map(|o| o.first()).min().copied());
    // A retiring instance still runs (it is not gone when it stops answering), but it
    // does not stay: a primary among them hands over.
    let placed = |o: u32| {
        desired
            .values()
            .chain(retiring.values())
            .any(|ordinals| ordinals.contains(&o))
    };
    Some(choose(
        previous,
        &seen,
        first,
        &placed,
        redis.sentinel.is_some(),
    ))
}

/// The member clusters `set` may run in: ready, inside its cluster affinity, with no
/// taint it does not tolerate (but `PreferNoSchedule`).
pub fn eligible<'a>(set: &FederatedInstanceSet, clusters: &'a [Valid<Cluster>]) -> Vec<&'a str> {
    let p = &set.spec.placement;
    clusters
        .iter()
        .filter(|c| c.status.as_ref().is_some_and(|s| s.ready))
        .filter(|c| {
            p.cluster_affinity.as_ref().is_none_or(|a| {
                (a.cluster_names.is_empty() || a.cluster_names.iter().any(|n| n == c.name()))
                    && a.label_selector.as_ref().is_none_or(|sel| {
                        selector::matches(
                            sel,
                            c.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                        )
                    })
            })
        })
        .filter(|c| {
            c.spec
                .taints
                .iter()
                .all(|t| t.effect == "PreferNoSchedule" || selector::tolerated(t, &p.tolerations))
        })
        .map(|c| c.name())
        .collect()
}

/// The companion sentinel set `parent` should have, with the metadata kept from the
/// stored one (`existing`): `None` when it should have none.
pub fn companion(
    parent: &FederatedInstanceSet,
    clusters: &[Valid<Cluster>],
    existing: Option<&FederatedInstanceSet>,
) -> Option<FederatedInstanceSet> {
    let mut want = flotilla_redis::sentinel::companion(parent, &eligible(parent, clusters))?;
    // Placement bounds follow the clusters eligible now, but a bound never goes away
    // for a cluster that still exists: the set would otherwise be re-planned each time
    // a member blinks.
    if let Some(e) = existing {
        want.metadata.uid = e.metadata.uid.clone();
        want.metadata.creation_timestamp = e.metadata.creation_timestamp.clone();
        want.metadata.generation = e.metadata.generation;
        if e.spec != want.spec {
            want.metadata.generation = Some(e.metadata.generation.unwrap_or(1) + 1);
        }
    } else {
        want.metadata.generation = Some(1);
    }
    Some(want)
}

/// Whether `set` is the companion sentinel set of the set named `parent`.
pub fn is_companion_of(set: &FederatedInstanceSet, parent: &str) -> bool {
    set.spec
        .sentinel_for
        .as_ref()
        .is_some_and(|s| s.set == parent)
}

/// The annotations a decision puts on every slice of the set.
pub fn annotations(decision: &Decision) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(p) = &decision.primary {
        out.insert(
            PRIMARY_ANNOTATION.to_string(),
            primary_annotation(p.ordinal, &p.endpoint),
        );
    }
    if let Some((ordinal, run_id)) = &decision.promote {
        out.insert(
            PROMOTE_ANNOTATION.to_string(),
            format!("{ordinal}={run_id}"),
        );
    }
    out
}
