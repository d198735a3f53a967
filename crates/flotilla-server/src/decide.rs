//! The federation controller's decision for one set, as a value: a pure function of
//! one [`View`] (the set, the clusters, its slices, its members' reports, liveness, its
//! stored placement and status). The controller reads the view from its cache and
//! commits the [`Decision`] (see `controller`); the live `plan` call reads the view
//! from the store and shows the decision's placement. Neither decides anything the
//! other does not.
//!
//! ```text
//!   View ──clusters_for──▶ inventory ──plan (sticky, avoiding busy ordinals)──▶ Plan
//!        ──slice_ordinals (held back until old members confirm)──▶ desired slices
//!        ──redis::decide, migration (make before break)──▶ primary, retiring
//!        ──▶ slice writes: shrinks and deletions, then grows and creations
//!        ──status::aggregate over the slices as they will be──▶ status
//! ```

use std::collections::{BTreeMap, BTreeSet};

use flotilla_api::status::PrimaryStatus;
use flotilla_api::{
    Cluster, FederatedInstanceSet, InstanceSet, InstanceSetStatus, Valid, validate,
};
use flotilla_scheduler::{CapacityCache, Plan};

use crate::federation::{self, Member};
use crate::migration;
use crate::records::StatusRecord;
use crate::status;

/// Everything one decision for a set reads.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub set: &'a FederatedInstanceSet,
    /// The registered clusters, with their status and liveness.
    pub members: &'a [Member<'a>],
    /// Clusters whose lease is current (a cluster deleted since may still hold one).
    pub alive: &'a BTreeSet<String>,
    /// The set's slices as stored, by cluster.
    pub slices: &'a BTreeMap<String, &'a InstanceSet>,
    /// What each member last reported for the set, by cluster.
    pub reports: &'a BTreeMap<String, &'a InstanceSetStatus>,
    /// The stored placement (the sticky plan's input).
    pub placement: Option<&'a Plan>,
    /// The stored status.
    pub status: Option<&'a StatusRecord>,
    /// For a Redis set with sentinels: the addresses of its companion sentinels.
    pub sentinels: &'a [String],
    /// For a sentinel set: the primary of the Redis set it watches.
    pub watched_primary: Option<&'a PrimaryStatus>,
    /// Now, RFC 3339 (conditions' transition times, new slices' creation time).
    pub now: &'a str,
}

impl std::fmt::Debug for View<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("set", &self.set.name())
            .field("slices", &self.slices.keys().collect::<Vec<_>>())
            .field("alive", &self.alive)
            .finish_non_exhaustive()
    }
}

/// One slice write: the slice as it should be stored, or `None` to delete it (and its
/// member's report).
#[derive(Clone, Debug, PartialEq)]
pub struct SliceWrite {
    pub cluster: String,
    pub slice: Option<InstanceSet>,
    /// Whether a slice of this cluster is stored now (the write must find it unchanged
    /// since the view; a creation must find none).
    pub exists: bool,
}

/// What one pass over a set decided.
#[derive(Debug)]
pub struct Decision {
    /// The clusters the set was planned against (for its companion sentinel set).
    pub clusters: Vec<Valid<Cluster>>,
    pub plan: Plan,
    /// The plan differs from the stored placement: store it.
    pub placement_changed: bool,
    /// Slices that shrink or go: written first, all of them before any of `grow`.
    /// A slice that loses some ordinals and gains others is in both: without its
    /// gains here, whole in `grow`.
    pub shrink: Vec<SliceWrite>,
    /// Slices that only gain ordinals (or are new), and the second write of a slice
    /// that also loses some.
    pub grow: Vec<SliceWrite>,
    /// The status once those writes are made.
    pub status: StatusRecord,
    /// `status` differs from the stored one.
    pub status_changed: bool,
    /// A Redis set's primary, as decided.
    pub redis: Option<flotilla_redis::primary::Decision>,
    /// A Redis shard's move between members.
    pub moving: Option<migration::Progress>,
}

/// Why a set could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Only validated sets are stored; one that is not was written by hand.
    #[error("the stored set is invalid: {0}")]
    Invalid(String),
    #[error("no plan: {0}")]
    Plan(String),
}

/// The slices of `set` as stored after `decision`'s writes.
pub fn slices_after<'a>(
    before: &BTreeMap<String, &'a InstanceSet>,
    decision: &'a Decision,
) -> BTreeMap<String, &'a InstanceSet> {
    let mut out = before.clone();
    for w in decision.shrink.iter().chain(&decision.grow) {
        match &w.slice {
            Some(s) => out.insert(w.cluster.clone(), s),
            None => out.remove(&w.cluster),
        };
    }
    out
}

/// The decision for `view.set`. `capacity` only memoises clusters' capacity digests:
/// the result is the same with a fresh cache.
pub fn decide(view: &View<'_>, capacity: &mut CapacityCache) -> Result<Decision, Error> {
    let set = view.set;
    let valid =
        validate::federated_instance_set(set.clone()).map_err(|e| Error::Invalid(e.to_string()))?;
    let reports = view.reports;
    let existing = view.slices;
    let registered = |c: &str| view.members.iter().any(|m| m.cluster.name() == c);
    let cluster_of = |c: &str| {
        view.members
            .iter()
            .find(|m| m.cluster.name() == c)
            .map(|m| m.cluster)
    };
    let alive = |c: &str| view.alive.contains(c);

    let clusters = federation::clusters_for(set, view.members, reports);
    let inventory = capacity.inventory(&clusters);
    let busy = migration::busy(set, existing, reports);
    let plan = match inventory.plan_avoiding(&valid, view.placement, &busy) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(set = set.name(), error = %e, "stored placement is inconsistent; planning afresh");
            inventory
                .plan_avoiding(&valid, None, &busy)
                .map_err(|e| Error::Plan(e.to_string()))?
        }
    };
    drop(inventory);
    let placement_changed = view.placement != Some(&plan);
    let awaits = |c: &str| federation::awaits(set, cluster_of(c), alive(c));
    let desired = federation::slice_ordinals(&plan, existing, reports, &awaits);
    let usable = |c: &str| alive(c) && registered(c);
    let retiring = migration::retiring(set, &desired, existing, &usable);

    let home = federation::exclusive_home(set, &desired, existing, reports, &alive);
    let previous_primary = view.status.and_then(|s| s.primary.as_ref());
    let redis = crate::redis::decide(
        set,
        crate::redis::Placed {
            staying: &desired,
            retiring: &retiring,
        },
        existing,
        reports,
        home.as_deref(),
        previous_primary,
        &alive,
    );
    // A Redis shard moving away from a member keeps its instances there until the
    // new ones caught up and the primary moved (see `migration`).
    let moving = migration::progress(
        &plan,
        &retiring,
        existing,
        reports,
        redis.as_ref().and_then(|d| d.primary.as_ref()),
    );
    let held = match &moving {
        Some(m) if !m.done() => retiring,
        _ => BTreeMap::new(),
    };
    let ordinals_of = |cluster: &str| -> Vec<u32> {
        let mut out = desired.get(cluster).cloned().unwrap_or_default();
        out.extend(held.get(cluster).into_iter().flatten());
        out.sort_unstable();
        out
    };
    let mut extra = redis
        .as_ref()
        .map(crate::redis::annotations)
        .unwrap_or_default();
    if !view.sentinels.is_empty()
        && set
            .spec
            .redis
            .as_ref()
            .is_some_and(|r| r.sentinel.is_some())
    {
        // Members ask these sentinels for planned switchovers.
        extra.insert(
            flotilla_api::redis::SENTINELS_ANNOTATION.to_string(),
            view.sentinels.join(","),
        );
    }
    if set.spec.sentinel_for.is_some()
        && let Some(p) = view.watched_primary
    {
        // Sentinels register the shard at the primary the federation knows.
        extra.insert(
            flotilla_api::redis::PRIMARY_ANNOTATION.to_string(),
            flotilla_api::redis::primary_annotation(p.ordinal, &p.endpoint),
        );
    }
    let extra_of = |cluster: &str| {
        let mut out = extra.clone();
        if let Some(r) = held.get(cluster) {
            out.insert(
                flotilla_api::redis::RETIRING_ANNOTATION.to_string(),
                flotilla_api::ordinals::compact_list(r),
            );
        }
        out
    };

    let mut shrink = Vec::new();
    let mut grow = Vec::new();
    for (cluster, old) in existing {
        let ordinals = &ordinals_of(cluster)[..];
        let want: BTreeSet<u32> = ordinals.iter().copied().collect();
        let leaving = federation::next_leaving(Some(old), &want, reports.get(cluster).copied());
        // A member's slice goes only once it has nothing left to run or remove (or the
        // cluster is gone): until then an empty slice says what is leaving.
        if want.is_empty() && (leaving.is_empty() || !registered(cluster)) {
            shrink.push(SliceWrite {
                cluster: cluster.clone(),
                slice: None,
                exists: true,
            });
            continue;
        }
        let have: BTreeSet<u32> = old.spec.ordinals.to_vec().into_iter().collect();
        let new = federation::slice(
            set,
            cluster,
            ordinals,
            Some(old),
            home.as_deref(),
            &leaving,
            &extra_of(cluster),
        );
        if new.spec == old.spec
            && new.metadata.labels == old.metadata.labels
            && new.metadata.annotations == old.metadata.annotations
        {
            continue;
        }
        let write = |slice: InstanceSet| SliceWrite {
            cluster: cluster.clone(),
            slice: Some(slice),
            exists: true,
        };
        if have.is_subset(&want) {
            grow.push(write(new));
        } else if want.is_subset(&have) {
            shrink.push(write(new));
        } else {
            // It loses ordinals and gains others, which may still be in another slice
            // until that one's shrink is stored: the losses are written first, on
            // their own, and the gains with the grows (a generation each, so that a
            // member's report of the first never reads as one of the second).
            let kept: Vec<u32> = ordinals
                .iter()
                .copied()
                .filter(|o| have.contains(o))
                .collect();
            let first = federation::slice(
                set,
                cluster,
                &kept,
                Some(old),
                home.as_deref(),
                &leaving,
                &extra_of(cluster),
            );
            let second = federation::slice(
                set,
                cluster,
                ordinals,
                Some(&first),
                home.as_deref(),
                &leaving,
                &extra_of(cluster),
            );
            shrink.push(write(first));
            grow.push(write(second));
        }
    }
    for (cluster, ordinals) in &desired {
        if existing.contains_key(cluster) {
            continue;
        }
        let mut new = federation::slice(
            set,
            cluster,
            ordinals,
            None,
            home.as_deref(),
            &BTreeSet::new(),
            &extra,
        );
        new.metadata.creation_timestamp = view
            .now
            .parse::<jiff::Timestamp>()
            .ok()
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
        // A report left from an earlier slice of this set (written as that slice was
        // deleted) must not read as describing the new one.
        if let Some(old) = reports.get(cluster).and_then(|r| r.observed_generation) {
            new.metadata.generation = Some(old + 1);
        }
        grow.push(SliceWrite {
            cluster: cluster.clone(),
            slice: Some(new),
            exists: false,
        });
    }

    let mut decision = Decision {
        clusters,
        plan,
        placement_changed,
        shrink,
        grow,
        status: StatusRecord::default(),
        status_changed: false,
        redis,
        moving,
    };
    let status = {
        let after = slices_after(existing, &decision);
        let slices: BTreeMap<String, InstanceSet> = after
            .iter()
            .map(|(c, s)| (c.clone(), (*s).clone()))
            .collect();
        let reports: BTreeMap<String, InstanceSetStatus> = reports
            .iter()
            .filter(|(c, _)| slices.contains_key(*c))
            .map(|(c, r)| (c.clone(), (*r).clone()))
            .collect();
        StatusRecord::of(&status::aggregate(&status::Inputs {
            set,
            plan: &decision.plan,
            slices: &slices,
            reports: &reports,
            alive: &alive,
            previous: view.status.map(|s| s.conditions.as_slice()),
            now: view.now,
            redis: decision.redis.as_ref(),
            migration: decision.moving.as_ref().filter(|m| !m.done()),
        }))
    };
    decision.status_changed = view.status != Some(&status);
    decision.status = status;
    Ok(decision)
}

#[cfg(test)]
mod sim;
