//! The federation controller: keeps every member's slices and every set's status in
//! line with the sets, the clusters and what agents report.
//!
//! ```text
//!   list /flotilla/ ─▶ cache ─▶ watch /flotilla/ from the list's revision + 1
//!                        │
//!   set changed ─────────────────────────────▶ that set is dirty (urgent)
//!   report changed ──────────────────────────▶ that set, after urgent work
//!   cluster added/removed, heartbeat lapsed,
//!   readiness changed ───────────────────────▶ every set is dirty (urgent)
//!   capacity changed ────────────────────────▶ every set, after urgent work
//!                        │  (work that is not urgent is paced for expensive
//!                        │   sets: see crate::queue)
//!   reconcile(set): plan (sticky, from the stored placement) ─▶ store placement
//!                   ─▶ shrink/delete slices first, then grow/create them
//!                   ─▶ aggregate reports ─▶ store status
//! ```
//!
//! Everything it decides comes from the store, and every write is idempotent and
//! compare-and-swap on the revision it read, so a crash (or `kill -9`) at any point is
//! harmless: the next start lists the store and carries on. Slices shrink before they
//! grow, and an ordinal joins a new member's slice only once its old member no longer
//! reports it (see [`federation::slice_ordinals`]), so no ordinal runs in two clusters.
//! The cache is written through: a write updates it at once, and watch events older
//! than what the cache holds for a key are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use flotilla_api::{
    Cluster, ClusterStatus, FederatedInstanceSet, InstanceSet, InstanceSetStatus, Valid,
};
use flotilla_scheduler::{CapacityCache, Plan};
use flotilla_store::{Condition, Event, KeyValue, Revision, Store};
use futures::{FutureExt as _, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::decide;
use crate::federation::{self, Member};
use crate::keys::{self, Key, SetKey};
use crate::metrics::{Metrics, label};
use crate::queue::Queue;
use crate::records::{self, StatusRecord};

/// Slice writes of one set in flight at once.
const WRITES_IN_FLIGHT: usize = 128;

/// One cached record and the revision it was written at.
#[derive(Clone, Debug)]
struct Entry<T> {
    value: T,
    rev: Revision,
}

/// What the controller knows of the store.
#[derive(Debug, Default)]
struct Cache {
    sets: BTreeMap<SetKey, Entry<FederatedInstanceSet>>,
    /// Set status summaries, as stored (see [`records`]).
    statuses: BTreeMap<SetKey, Entry<StatusRecord>>,
    placements: BTreeMap<SetKey, Entry<Plan>>,
    clusters: BTreeMap<String, Entry<Cluster>>,
    cluster_status: BTreeMap<String, Entry<ClusterStatus>>,
    alive: BTreeSet<String>,
    /// Clusters counted in `alive` without a current lease because this controller has
    /// just started: their agents get one cluster TTL to reconnect (a server that was
    /// down longer than the TTL finds every lease lapsed) before they are lost.
    presumed: BTreeSet<String>,
    /// Sets to reconcile because another set's status changed what their slices say
    /// (a Redis set and its companion sentinel set name each other's addresses).
    followups: BTreeSet<SetKey>,
    /// How long the last pass took to decide (its CPU-bound part, without the store's
    /// round trips): what paces the set's status work (`crate::queue`).
    decided_in: Duration,
    /// By set, then cluster.
    slices: BTreeMap<SetKey, BTreeMap<String, Entry<InstanceSet>>>,
    /// By set, then cluster.
    reports: BTreeMap<SetKey, BTreeMap<String, Entry<InstanceSetStatus>>>,
    /// The newest revision seen for each store key (put or delete): older events for
    /// the key are stale.
    latest: HashMap<String, Revision>,
    /// The revision of the newest event the watch delivered: it delivers in revision
    /// order, so nothing older can come from it any more (see [`Cache::prune`]).
    watched: Revision,
    /// Clusters' capacity digests, rebuilt only when a cluster's capacity changed.
    capacity: CapacityCache,
}

/// What an event made dirty.
#[derive(Debug, PartialEq)]
enum Dirty {
    Nothing,
    /// The set's spec, placement or slices changed: it is urgent.
    Set(SetKey),
    /// Only what its members report changed: its status can wait for urgent work.
    Status(SetKey),
    AllSets,
    /// A cluster's free capacity changed: every set may use it, none urgently (a set
    /// whose own spec changed is urgent by itself).
    AllSetsLater,
    /// A cluster's heartbeat lapsed: mark it Unknown, then every set.
    Lost(String),
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "unreadable record in the store; ignored");
            None
        }
    }
}

impl Cache {
    fn fresh(&mut self, key: &str, rev: Revision) -> bool {
        match self.latest.get(key) {
            Some(&seen) if seen >= rev => false,
            _ => {
                self.latest.insert(key.to_string(), rev);
                true
            }
        }
    }

    /// Forgets the revisions no event can be older than any more: those before the
    /// watch's newest. What is left is the keys written since (by this controller,
    /// ahead of its watch): the map does not grow with every key ever deleted.
    fn prune(&mut self) {
        let watched = self.watched;
        self.latest.retain(|_, rev| *rev >= watched);
    }

    fn apply(&mut self, event: &Event) -> Dirty {
        self.watched = self.watched.max(event.revision());
        if !self.fresh(event.key(), event.revision()) {
            return Dirty::Nothing;
        }
        match event {
            Event::Put(kv) => self.put(kv),
            Event::Delete { key, .. } => self.delete(key),
        }
    }

    fn put(&mut self, kv: &KeyValue) -> Dirty {
        let rev = kv.mod_revision;
        match Key::parse(&kv.key) {
            Key::Set(k) => {
                if let Some(value) = decode(kv) {
                    self.sets.insert(k.clone(), Entry { value, rev });
                }
                Dirty::Set(k)
            }
            Key::SetStatus(k) => {
                if let Some(value) = decode(kv) {
                    self.statuses.insert(k, Entry { value, rev });
                }
                Dirty::Nothing
            }
            Key::Placement(k) => {
                let plan = records::decode_plan(&kv.value).map_err(|e| {
                    tracing::error!(key = %kv.key, error = %e, "unreadable record in the store; ignored");
                });
                if let Ok(value) = plan {
                    self.placements.insert(k, Entry { value, rev });
                }
                Dirty::Nothing
            }
            Key::Cluster(name) => {
                if let Some(value) = decode(kv) {
                    self.clusters.insert(name, Entry { value, rev });
                }
                Dirty::AllSets
            }
            Key::ClusterStatus(name) => {
                let Some(value) = decode::<ClusterStatus>(kv) else {
                    return Dirty::Nothing;
                };
                let dirty = match self.cluster_status.get(&name) {
                    None => Dirty::AllSets,
                    Some(old) if old.value.ready != value.ready => Dirty::AllSets,
                    Some(old) if old.value.capacity != value.capacity => Dirty::AllSetsLater,
                    Some(_) => Dirty::Nothing,
                };
                self.cluster_status.insert(name, Entry { value, rev });
                dirty
            }
            Key::Alive(name) => {
                self.presumed.remove(&name);
                if self.alive.insert(name) {
                    Dirty::AllSets
                } else {
                    Dirty::Nothing
                }
            }
            Key::Slice { cluster, set } => {
                if let Some(value) = decode(kv) {
                    self.slices
                        .entry(set)
                        .or_default()
                        .insert(cluster, Entry { value, rev });
                }
                Dirty::Nothing
            }
            Key::Report { cluster, set } => {
                if let Some(value) = decode::<flotilla_api::report::Report>(kv).map(|r| r.status) {
                    self.reports
                        .entry(set.clone())
                        .or_default()
                        .insert(cluster, Entry { value, rev });
                }
                Dirty::Status(set)
            }
            Key::Token(_) | Key::Other => Dirty::Nothing,
        }
    }

    fn delete(&mut self, key: &str) -> Dirty {
        match Key::parse(key) {
            Key::Set(k) => {
                self.sets.remove(&k);
                Dirty::Set(k)
            }
            Key::SetStatus(k) => {
                self.statuses.remove(&k);
                Dirty::Nothing
            }
            Key::Placement(k) => {
                self.placements.remove(&k);
                Dirty::Set(k)
            }
            Key::Cluster(name) => {
                self.clusters.remove(&name);
                Dirty::AllSets
            }
            Key::ClusterStatus(name) => {
                self.cluster_status.remove(&name);
                Dirty::AllSets
            }
            Key::Alive(name) => {
                self.alive.remove(&name);
                Dirty::Lost(name)
            }
            Key::Slice { cluster, set } => {
                remove_nested(&mut self.slices, &set, &cluster);
                Dirty::Set(set)
            }
            Key::Report { cluster, set } => {
                remove_nested(&mut self.reports, &set, &cluster);
                Dirty::Status(set)
            }
            Key::Token(_) | Key::Other => Dirty::Nothing,
        }
    }

    /// Every set anything is stored for.
    fn set_keys(&self) -> BTreeSet<SetKey> {
        self.sets
            .keys()
            .chain(self.statuses.keys())
            .chain(self.placements.keys())
            .chain(self.slices.keys())
            .chain(self.reports.keys())
            .cloned()
            .collect()
    }
}

fn remove_nested<T>(map: &mut BTreeMap<SetKey, BTreeMap<String, T>>, set: &str, cluster: &str) {
    if let Some(inner) = map.get_mut(set) {
        inner.remove(cluster);
        if inner.is_empty() {
            map.remove(set);
        }
    }
}

/// The federation controller.
#[derive(Debug)]
pub struct Controller {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// The cluster lease TTL, for messages.
    pub ttl: Duration,
    /// Set once the store was listed (readiness).
    pub synced: watch::Sender<bool>,
    /// The leader term `store`'s writes are fenced on (`store` is this fence).
    pub fence: Arc<crate::fence::Fenced>,
}

impl Controller {
    /// Runs until the task is dropped: while this server leads, lists and watches the
    /// store (again after any store failure); stops at once when its term ends. Every
    /// write of one run is fenced on the term it started in.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(term) = self.fence.pin().await else {
                return;
            };
            let started = Instant::now();
            tokio::select! {
                result = self.sync_and_watch() => {
                    if let Err(e) = result {
                        self.metrics.controller_store_failures.inc();
                        tracing::warn!(error = %format!("{e:#}"), "federation controller: store failed; listing again");
                    }
                }
                () = self.fence.ended(term) => {
                    tracing::info!(term = term.create_revision, "federation controller stopped: this server's term as leader ended");
                }
            }
            self.fence.unpin();
            self.synced.send_replace(false);
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn sync_and_watch(&self) -> anyhow::Result<()> {
        let listing = self
            .store
            .list(keys::ROOT)
            .await
            .context("listing the store")?;
        let mut cache = Cache::default();
        for kv in &listing.items {
            cache.fresh(&kv.key, kv.mod_revision);
            cache.put(kv);
        }
        let mut dirty = Queue::default();
        dirty.all(cache.set_keys());
        let mut lost: BTreeSet<String> = cache
            .cluster_status
            .iter()
            .filter(|(name, s)| s.value.ready && !cache.alive.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        let grace_until = Instant::now() + self.ttl;
        let mut retry: BTreeMap<SetKey, Instant> = BTreeMap::new();
        // Failed passes in a row, by set: the next retry waits `retry_delay` of it.
        let mut failures: HashMap<SetKey, u32> = HashMap::new();
        let mut watch = self
            .store
            .watch(keys::ROOT, listing.revision + 1)
            .await
            .context("watching the store")?;
        self.synced.send_replace(true);
        tracing::info!(
            revision = listing.revision,
            sets = cache.sets.len(),
            clusters = cache.clusters.len(),
            "federation controller synced"
        );
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            // Take in everything already delivered before acting on any of it.
            while let Some(item) = watch.next().now_or_never() {
                let event = item.context("the store's watch ended")??;
                mark(&mut cache, &event, &mut dirty, &mut lost);
            }
            // Just started: a lapsed lease may only mean the agent has not reconnected
            // yet. Count the cluster alive (as last stored) until the grace ends.
            if Instant::now() < grace_until {
                for name in std::mem::take(&mut lost) {
                    cache.alive.insert(name.clone());
                    cache.presumed.insert(name);
                }
            } else if !cache.presumed.is_empty() {
                for name in std::mem::take(&mut cache.presumed) {
                    tracing::info!(cluster = %name, "no agent reconnected within the cluster TTL of the controller's start");
                    cache.alive.remove(&name);
                    lost.insert(name);
                }
            }
            self.count_clusters(&cache);
            if let Some(name) = lost.pop_first() {
                if let Err(e) = self.mark_unknown(&mut cache, &name).await {
                    tracing::warn!(cluster = %name, error = %format!("{e:#}"), "could not mark the cluster Unknown");
                    lost.insert(name);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                dirty.all(cache.set_keys());
                continue;
            }
            if let Some(key) = dirty.pop(Instant::now()) {
                let started = Instant::now();
                let result = self.reconcile(&mut cache, &key).await;
                for k in std::mem::take(&mut cache.followups) {
                    dirty.status(k);
                }
                dirty.done(&key, std::mem::take(&mut cache.decided_in), Instant::now());
                self.metrics
                    .reconcile_seconds
                    .observe(started.elapsed().as_secs_f64());
                match result {
                    Ok(()) => {
                        failures.remove(&key);
                        self.metrics
                            .reconciles
                            .get_or_create(&label("result", "ok"))
                            .inc();
                    }
                    Err(e) => {
                        self.metrics
                            .reconciles
                            .get_or_create(&label("result", "error"))
                            .inc();
                        let n = failures.entry(key.clone()).or_default();
                        *n += 1;
                        let delay = retry_delay(*n);
                        tracing::warn!(set = %key, error = %format!("{e:#}"), failures = *n, retry_in_ms = delay.as_millis() as u64, "reconcile failed; retrying");
                        retry.insert(key, Instant::now() + delay);
                    }
                }
                continue;
            }
            tokio::select! {
                item = watch.next() => {
                    let event = item.context("the store's watch ended")??;
                    mark(&mut cache, &event, &mut dirty, &mut lost);
                }
                _ = paced(dirty.wake_at()) => {}
                _ = tick.tick() => {
                    cache.prune();
                    let now = Instant::now();
                    dirty.prune(now);
                    let due: Vec<SetKey> = retry.iter().filter(|(_, t)| **t <= now).map(|(k, _)| k.clone()).collect();
                    for k in due {
                        retry.remove(&k);
                        dirty.urgent(k);
                    }
                }
            }
        }
    }

    fn count_clusters(&self, cache: &Cache) {
        let (mut ready, mut unknown, mut pending) = (0, 0, 0);
        for name in cache.clusters.keys() {
            match cache.cluster_status.get(name) {
                Some(s) if s.value.ready && cache.alive.contains(name) => ready += 1,
                Some(s) if s.value.last_heartbeat_time.is_some() => unknown += 1,
                _ => pending += 1,
            }
        }
        for (state, n) in [("ready", ready), ("unknown", unknown), ("pending", pending)] {
            self.metrics
                .clusters
                .get_or_create(&label("state", state))
                .set(n);
        }
    }

    /// A cluster's heartbeat lapsed: its status says Unknown (once).
    async fn mark_unknown(&self, cache: &mut Cache, name: &str) -> anyhow::Result<()> {
        if cache.alive.contains(name) {
            return Ok(());
        }
        let Some(entry) = cache.cluster_status.get(name) else {
            return Ok(());
        };
        if !entry.value.ready {
            return Ok(());
        }
        let status =
            federation::unknown(entry.value.clone(), self.ttl.as_secs(), &federation::now());
        tracing::warn!(cluster = %name, "no heartbeat within the lease: cluster is Unknown");
        let key = keys::cluster_status(name);
        let rev = put_json(
            &*self.store,
            &key,
            &status,
            Condition::ModRevision(entry.rev),
        )
        .await?;
        cache.fresh(&key, rev);
        cache
            .cluster_status
            .insert(name.to_string(), Entry { value: status, rev });
        Ok(())
    }

    /// One pass over one set: decide (`decide::decide`, pure, from the cache), then
    /// commit what was decided.
    async fn reconcile(&self, cache: &mut Cache, key: &SetKey) -> anyhow::Result<()> {
        let Some(entry) = cache.sets.get(key) else {
            return self.clean_up(cache, key).await;
        };
        let set = entry.value.clone();
        let now = federation::now();
        let (ns, _) = keys::split_set_key(key);
        let deciding = Instant::now();
        let decision = {
            let reports: BTreeMap<String, &InstanceSetStatus> = cache
                .reports
                .get(key)
                .into_iter()
                .flatten()
                .map(|(c, e)| (c.clone(), &e.value))
                .collect();
            let members: Vec<Member<'_>> = cache
                .clusters
                .iter()
                .map(|(name, c)| Member {
                    cluster: &c.value,
                    status: cache.cluster_status.get(name).map(|e| &e.value),
                    alive: cache.alive.contains(name),
                })
                .collect();
            let slices: BTreeMap<String, &InstanceSet> = cache
                .slices
                .get(key)
                .into_iter()
                .flatten()
                .map(|(c, e)| (c.clone(), &e.value))
                .collect();
            let sentinels = self.companion_sentinels(cache, &set, key);
            let watched_primary = set.spec.sentinel_for.as_ref().and_then(|w| {
                cache
                    .statuses
                    .get(&keys::set_key(ns, &w.set))
                    .and_then(|e| e.value.primary.as_ref())
            });
            let view = decide::View {
                set: &set,
                members: &members,
                alive: &cache.alive,
                slices: &slices,
                reports: &reports,
                placement: cache.placements.get(key).map(|e| &e.value),
                status: cache.statuses.get(key).map(|e| &e.value),
                sentinels: &sentinels,
                watched_primary,
                now: &now,
            };
            match decide::decide(&view, &mut cache.capacity) {
                Ok(d) => d,
                Err(decide::Error::Invalid(e)) => {
                    tracing::error!(set = %key, error = %e, "stored set is invalid; left alone");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        };
        cache.decided_in = deciding.elapsed();
        self.log_decision(cache, key, &decision);
        self.commit(cache, key, &set, decision, &now).await
    }

    /// The addresses of a Redis set's companion sentinels (none for other sets).
    fn companion_sentinels(
        &self,
        cache: &Cache,
        set: &FederatedInstanceSet,
        key: &SetKey,
    ) -> Vec<String> {
        if set.spec.redis.as_ref().is_none_or(|r| r.sentinel.is_none()) {
            return Vec::new();
        }
        let (ns, name) = keys::split_set_key(key);
        let ckey = keys::set_key(ns, &flotilla_api::redis::sentinel_set_name(name));
        cache
            .statuses
            .get(&ckey)
            .map(|e| {
                let reports = cache
                    .reports
                    .get(&ckey)
                    .into_iter()
                    .flatten()
                    .map(|(c, r)| (c.clone(), r.value.clone()))
                    .collect();
                e.value.expand(&reports, true).instances
            })
            .into_iter()
            .flatten()
            .filter_map(|i| i.endpoint)
            .collect()
    }

    fn log_decision(&self, cache: &Cache, key: &SetKey, d: &decide::Decision) {
        if let Some(m) = d.moving.as_ref().filter(|m| m.done()) {
            tracing::info!(set = %key, retiring = ?m.retiring, "the move caught up: the retiring instances go");
        }
        let previous = cache
            .statuses
            .get(key)
            .and_then(|e| e.value.primary.as_ref());
        if let Some(r) = &d.redis
            && r.primary.as_ref().map(|p| (p.ordinal, &p.endpoint))
                != previous.map(|p| (p.ordinal, &p.endpoint))
        {
            tracing::info!(
                set = %key,
                from = ?previous.map(|p| p.ordinal),
                to = ?r.primary.as_ref().map(|p| p.ordinal),
                endpoint = r.primary.as_ref().map_or("", |p| p.endpoint.as_str()),
                promote = r.promote.is_some(),
                why = r.why,
                "primary"
            );
        }
    }

    /// Makes the writes `decision` names, each compare-and-swap on the revision the
    /// decision read: the placement, shrinks and deletions, then grows and creations
    /// (none of those unless every shrink was stored), then the status.
    async fn commit(
        &self,
        cache: &mut Cache,
        key: &SetKey,
        set: &FederatedInstanceSet,
        decision: decide::Decision,
        now: &str,
    ) -> anyhow::Result<()> {
        let decide::Decision {
            clusters,
            plan,
            placement_changed,
            shrink,
            grow,
            status,
            status_changed,
            ..
        } = decision;
        if placement_changed {
            let pkey = keys::placement(key);
            let previous = cache.placements.get(key).map(|e| e.rev);
            let condition = previous.map_or(Condition::Absent, Condition::ModRevision);
            let bytes = match records::encode_plan(&plan) {
                Ok(b) => b,
                Err(e) => {
                    self.store_unstorable(cache, key, &e).await?;
                    return Err(e.into());
                }
            };
            let r = self
                .store
                .put(&pkey, Bytes::from(bytes), condition, None)
                .await?;
            cache.fresh(&pkey, r);
            cache.placements.insert(
                key.clone(),
                Entry {
                    value: plan,
                    rev: r,
                },
            );
        }
        // Shrinks and deletions are stored before any slice grows.
        self.write_slices(cache, key, shrink).await?;
        self.write_slices(cache, key, grow).await?;

        let (ns, name) = keys::split_set_key(key);
        if let Some(watched) = &set.spec.sentinel_for {
            // The Redis set names its sentinels' addresses, which only the reports hold
            // (not the stored summary): it looks again whenever its sentinels did.
            cache.followups.insert(keys::set_key(ns, &watched.set));
        }
        if status_changed {
            let before = cache.statuses.get(key);
            // The companion sentinel set names the primary.
            if set.spec.sentinel_for.is_none()
                && set
                    .spec
                    .redis
                    .as_ref()
                    .is_some_and(|r| r.sentinel.is_some())
                && before.and_then(|b| b.value.primary.as_ref()) != status.primary.as_ref()
            {
                cache.followups.insert(keys::set_key(
                    ns,
                    &flotilla_api::redis::sentinel_set_name(name),
                ));
            }
            let skey = keys::set_status(key);
            let condition = before.map_or(Condition::Any, |e| Condition::ModRevision(e.rev));
            let (status, bytes) = match status.encode() {
                Ok(b) => (status, b),
                Err(e) => {
                    let small = status.unstorable(&e, now);
                    let b = small.encode()?;
                    tracing::error!(set = %key, error = %e, "status too large to store; counts only");
                    (small, b)
                }
            };
            let r = self
                .store
                .put(&skey, Bytes::from(bytes), condition, None)
                .await?;
            cache.fresh(&skey, r);
            cache.statuses.insert(
                key.clone(),
                Entry {
                    value: status,
                    rev: r,
                },
            );
        }
        self.sync_companion(cache, key, set, &clusters).await
    }

    /// The set's placement cannot be stored (`problem`): its status says so (once).
    async fn store_unstorable(
        &self,
        cache: &mut Cache,
        key: &SetKey,
        problem: &records::TooLarge,
    ) -> anyhow::Result<()> {
        let before = cache.statuses.get(key);
        let status = before
            .map(|e| e.value.clone())
            .unwrap_or_default()
            .unstorable(problem, &federation::now());
        if before.is_some_and(|e| e.value == status) {
            return Ok(());
        }
        let skey = keys::set_status(key);
        let condition = before.map_or(Condition::Any, |e| Condition::ModRevision(e.rev));
        let r = self
            .store
            .put(&skey, Bytes::from(status.encode()?), condition, None)
            .await?;
        cache.fresh(&skey, r);
        cache.statuses.insert(
            key.clone(),
            Entry {
                value: status,
                rev: r,
            },
        );
        Ok(())
    }

    /// Writes (or, for `None`, deletes) slices of one set, all at once: the store
    /// commits concurrent writes together (one fsync for the embedded store, one raft
    /// round for etcd), so a set spread over a hundred members costs about one write.
    /// The cache takes every write that succeeded, even when another failed.
    async fn write_slices(
        &self,
        cache: &mut Cache,
        key: &SetKey,
        writes: Vec<decide::SliceWrite>,
    ) -> anyhow::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        // Each write finds the slice as the decision read it.
        let writes: Vec<(String, Option<InstanceSet>, Option<Revision>)> = writes
            .into_iter()
            .map(|w| {
                let rev = w
                    .exists
                    .then(|| cache.slices.get(key).and_then(|m| m.get(&w.cluster)))
                    .flatten()
                    .map(|e| e.rev);
                (w.cluster, w.slice, rev)
            })
            .collect();
        let store = &*self.store;
        let results = futures::stream::iter(writes)
            .map(|(cluster, slice, rev)| async move {
                let skey = keys::slice(&cluster, key);
                let result = match &slice {
                    Some(s) => {
                        let condition = rev.map_or(Condition::Absent, Condition::ModRevision);
                        put_json(store, &skey, s, condition).await.map(Some)
                    }
                    None => {
                        async {
                            let deleted = store.delete(&skey, rev).await?;
                            // Its report goes with it.
                            store.delete(&keys::report(&cluster, key), None).await?;
                            Ok(deleted)
                        }
                        .await
                    }
                };
                (cluster, slice, result)
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        let mut first_error = None;
        for (cluster, slice, result) in results {
            self.metrics.slice_writes.inc();
            let skey = keys::slice(&cluster, key);
            match (slice, result) {
                (Some(s), Ok(Some(r))) => {
                    tracing::debug!(set = %key, cluster, revision = r, "slice written");
                    cache.fresh(&skey, r);
                    cache
                        .slices
                        .entry(key.clone())
                        .or_default()
                        .insert(cluster, Entry { value: s, rev: r });
                }
                (None, Ok(r)) => {
                    if let Some(r) = r {
                        cache.fresh(&skey, r);
                    }
                    tracing::debug!(set = %key, cluster, "slice deleted");
                    remove_nested(&mut cache.slices, key, &cluster);
                    remove_nested(&mut cache.reports, key, &cluster);
                }
                (_, Err(e)) => {
                    first_error.get_or_insert(e);
                }
                (Some(_), Ok(None)) => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Creates, updates or deletes the companion sentinel set of a Redis set (an
    /// ordinary set in the store, `<set>-sentinel`, so every member and the CLI see
    /// it as one). Only a set Flotilla made for this parent is ever touched.
    async fn sync_companion(
        &self,
        cache: &mut Cache,
        key: &SetKey,
        set: &FederatedInstanceSet,
        clusters: &[Valid<Cluster>],
    ) -> anyhow::Result<()> {
        if set.spec.sentinel_for.is_some() {
            return Ok(());
        }
        let (ns, name) = keys::split_set_key(key);
        let ckey = keys::set_key(ns, &flotilla_api::redis::sentinel_set_name(name));
        let existing = cache.sets.get(&ckey);
        if existing.is_some_and(|e| !crate::redis::is_companion_of(&e.value, name)) {
            tracing::warn!(set = %key, companion = %ckey, "a set of the companion's name exists and is not Flotilla's: no sentinels");
            return Ok(());
        }
        let want = crate::redis::companion(set, clusters, existing.map(|e| &e.value));
        let store_key = keys::set(&ckey);
        match (want, existing) {
            (None, None) => {}
            (None, Some(e)) => {
                // Not marked fresh: the watch's event makes the companion reconcile
                // (and clean up its slices) like any deleted set.
                self.store
                    .delete(&store_key, Some(e.rev))
                    .await
                    .context("deleting the companion sentinel set")?;
                cache.sets.remove(&ckey);
            }
            (Some(mut want), existing) => {
                if existing.is_some_and(|e| {
                    e.value.spec == want.spec && e.value.metadata.labels == want.metadata.labels
                }) {
                    return Ok(());
                }
                if want.metadata.uid.is_none() {
                    want.metadata.uid =
                        Some(crate::api::uid().map_err(|s| anyhow::anyhow!("{}", s.message()))?);
                    want.metadata.creation_timestamp = Some(crate::api::now_time());
                }
                let condition =
                    existing.map_or(Condition::Absent, |e| Condition::ModRevision(e.rev));
                // Not marked fresh: the watch's event makes the companion reconcile.
                let r = put_json(&*self.store, &store_key, &want, condition).await?;
                tracing::info!(set = %key, companion = %ckey, "companion sentinel set stored");
                cache.sets.insert(
                    ckey.clone(),
                    Entry {
                        value: want,
                        rev: r,
                    },
                );
            }
        }
        Ok(())
    }

    /// The set is gone: remove its slices from every member, then its records.
    async fn clean_up(&self, cache: &mut Cache, key: &SetKey) -> anyhow::Result<()> {
        // Its companion sentinel set goes with it.
        let (ns, name) = keys::split_set_key(key);
        let ckey = keys::set_key(ns, &flotilla_api::redis::sentinel_set_name(name));
        if let Some(e) = cache
            .sets
            .get(&ckey)
            .filter(|e| crate::redis::is_companion_of(&e.value, name))
        {
            self.store.delete(&keys::set(&ckey), Some(e.rev)).await?;
            cache.sets.remove(&ckey);
        }
        let deletes = cache
            .slices
            .get(key)
            .into_iter()
            .flatten()
            .map(|(c, _)| decide::SliceWrite {
                cluster: c.clone(),
                slice: None,
                exists: true,
            })
            .collect();
        self.write_slices(cache, key, deletes).await?;
        let leftovers: Vec<String> = cache
            .reports
            .get(key)
            .into_iter()
            .flatten()
            .map(|(c, _)| keys::report(c, key))
            .chain([keys::placement(key), keys::set_status(key)])
            .collect();
        for k in leftovers {
            if let Some(r) = self.store.delete(&k, None).await? {
                cache.fresh(&k, r);
            }
        }
        cache.reports.remove(key);
        cache.placements.remove(key);
        cache.statuses.remove(key);
        tracing::info!(set = %key, "set deleted: slices removed from every member");
        Ok(())
    }
}

/// Sleeps until held-back status work is due; forever when none is.
async fn paced(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn mark(cache: &mut Cache, event: &Event, dirty: &mut Queue, lost: &mut BTreeSet<String>) {
    match cache.apply(event) {
        Dirty::Nothing => {}
        Dirty::Set(k) => dirty.urgent(k),
        Dirty::Status(k) => dirty.status(k),
        Dirty::AllSets => dirty.all(cache.set_keys()),
        Dirty::AllSetsLater => dirty.all_later(cache.set_keys()),
        Dirty::Lost(name) => {
            lost.insert(name);
        }
    }
}

/// How long a set waits before the `n`th retry in a row (`n` ≥ 1): 500 ms, doubling,
/// at most a minute. New input (an event for the set) reconciles it at once all the same.
fn retry_delay(n: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(60);
    FIRST
        .checked_mul(1u32 << n.saturating_sub(1).min(16))
        .map_or(MOST, |d| d.min(MOST))
}

/// Writes `value` as JSON.
pub async fn put_json<T: Serialize>(
    store: &dyn Store,
    key: &str,
    value: &T,
    condition: Condition,
) -> anyhow::Result<Revision> {
    let bytes = Bytes::from(serde_json::to_vec(value)?);
    Ok(store.put(key, bytes, condition, None).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: Revision) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Bytes::from(value.to_string()),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn retries_back_off_exponentially_to_a_cap() {
        let ms: Vec<u128> = [1, 2, 3, 4, 7, 8, 9, 40, u32::MAX]
            .into_iter()
            .map(|n| retry_delay(n).as_millis())
            .collect();
        assert_eq!(
            ms,
            [
                500, 1000, 2000, 4000, 32_000, 60_000, 60_000, 60_000, 60_000
            ]
        );
    }

    #[test]
    fn stale_events_never_overwrite_what_the_cache_wrote() {
        let mut c = Cache::default();
        let k = keys::alive("a");
        assert_eq!(c.apply(&Event::Put(kv(&k, "{}", 5))), Dirty::AllSets);
        assert_eq!(
            c.apply(&Event::Delete {
                key: k.clone(),
                revision: 7
            }),
            Dirty::Lost("a".into())
        );
        // The put at 5 delivered again (e.g. after a write-through): ignored.
        assert_eq!(c.apply(&Event::Put(kv(&k, "{}", 5))), Dirty::Nothing);
        assert!(!c.alive.contains("a"));
        assert_eq!(c.apply(&Event::Put(kv(&k, "{}", 9))), Dirty::AllSets);
    }

    #[test]
    fn revisions_of_keys_long_gone_are_forgotten_and_own_writes_ahead_of_the_watch_kept() {
        let mut c = Cache::default();
        for i in 0..1_000 {
            let k = keys::report("a", &format!("ns/s{i}"));
            c.apply(&Event::Put(kv(&k, "{}", 2 * i + 1)));
            c.apply(&Event::Delete {
                key: k,
                revision: 2 * i + 2,
            });
        }
        // The controller wrote a slice the watch has not delivered yet.
        let own = keys::slice("a", "ns/mine");
        assert!(c.fresh(&own, 5_000));
        c.prune();
        assert_eq!(c.latest.len(), 2, "{:?}", c.latest);
        // Its own write still reads as seen when the watch delivers it.
        assert_eq!(c.apply(&Event::Put(kv(&own, "{}", 5_000))), Dirty::Nothing);
        c.apply(&Event::Put(kv(&keys::alive("b"), "{}", 5_001)));
        c.prune();
        assert_eq!(c.latest.len(), 1);
    }

    #[test]
    fn a_heartbeat_that_changes_nothing_that_matters_dirties_nothing() {
        let mut c = Cache::default();
        let k = keys::cluster_status("a");
        let s1 = r#"{"ready":true,"lastHeartbeatTime":"2026-01-01T00:00:00Z"}"#;
        let s2 = r#"{"ready":true,"lastHeartbeatTime":"2026-01-01T00:00:05Z"}"#;
        let s3 = r#"{"ready":true,"capacity":{"nodeGroups":[]}}"#;
        let s4 = r#"{"ready":false}"#;
        assert_eq!(c.apply(&Event::Put(kv(&k, s1, 2))), Dirty::AllSets);
        assert_eq!(c.apply(&Event::Put(kv(&k, s2, 3))), Dirty::Nothing);
        assert_eq!(c.apply(&Event::Put(kv(&k, s3, 4))), Dirty::AllSetsLater);
        assert_eq!(c.apply(&Event::Put(kv(&k, s4, 5))), Dirty::AllSets);
        let r = keys::report("a", "default/r");
        assert_eq!(
            c.apply(&Event::Put(kv(&r, "{}", 6))),
            Dirty::Status("default/r".into())
        );
        assert_eq!(
            c.set_keys().into_iter().collect::<Vec<_>>(),
            vec!["default/r".to_string()]
        );
    }
}
