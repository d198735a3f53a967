//! The user API (`proto/flotilla/v1/federation.proto`): apply, get, list, delete,
//! watch, plan, add cluster, and (in `tokens`) user tokens, cluster token rotation and
//! the audit trail.
//!
//! Every call resolves its bearer token to a [`Principal`] (`auth::Tokens::user`) and
//! asks [`auth::decide`] before it touches the store, with the kind and namespace from
//! the request body (an interceptor could not see them). Every write runs under an
//! [`audit::Trail`] and leaves its records whether it succeeded or not.
//!
//! Every write is decoded and validated first, all documents of an apply together: if
//! any is invalid the call fails with every field error and nothing is stored. Writes
//! are compare-and-swap on the revision read, retried a few times when another writer
//! got in between, so concurrent applies never lose each other's changes silently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_api::decode::{self, AnyObject};
use flotilla_api::status::FederatedInstanceSetStatus;
use flotilla_api::{
    Cluster, ClusterSpec, ClusterStatus, FederatedInstanceSet, InstanceSet, InstanceSetStatus,
    Invalid, Object, Valid, validate,
};
use flotilla_proto::v1::federation_server::Federation;
use flotilla_proto::v1::watch_event::Type as EventType;
use flotilla_proto::v1::{
    AddClusterRequest, AddClusterResponse, Applied, ApplyRequest, ApplyResponse,
    CreateTokenRequest, CreateTokenResponse, DeleteRequest, DeleteResponse, GetRequest,
    ListAuditRequest, ListAuditResponse, ListRequest, ListResponse, ListTokensRequest,
    ListTokensResponse, Object as WireObject, PlanRequest, PlanResponse, RevokeTokenRequest,
    RevokeTokenResponse, RotateClusterTokenRequest, RotateClusterTokenResponse, WatchEvent,
    WatchRequest,
};
use flotilla_scheduler::{CapacityCache, Plan};
use flotilla_store::{Compare, Condition, Error as StoreError, KeyValue, Store, Txn};
use futures::{Stream, StreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::agents::Presence;
use crate::audit::{self, Trail};
use crate::auth::{self, Principal, Verb, decide};
use crate::federation::{self, Member};
use crate::keys::{self, Key};
use crate::metrics::Metrics;
use crate::records::StatusRecord;
use crate::store_status;

mod tokens;

/// The kinds of the API, by plural name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    Sets,
    Clusters,
    InstanceSets,
}

impl ApiKind {
    /// Accepts plurals, singulars, kinds and short names, case-insensitively.
    pub fn parse(s: &str) -> Result<ApiKind, Status> {
        match s.to_ascii_lowercase().as_str() {
            "federatedinstancesets" | "federatedinstanceset" | "fis" => Ok(ApiKind::Sets),
            "clusters" | "cluster" => Ok(ApiKind::Clusters),
            "instancesets" | "instanceset" | "is" => Ok(ApiKind::InstanceSets),
            other => Err(Status::invalid_argument(format!(
                "kind: unknown kind {other:?}; use federatedinstancesets (fis), clusters or instancesets"
            ))),
        }
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            ApiKind::Sets => "federatedinstancesets",
            ApiKind::Clusters => "clusters",
            ApiKind::InstanceSets => "instancesets",
        }
    }

    fn owns(self, key: &Key) -> Option<String> {
        match (self, key) {
            (ApiKind::Sets, Key::Set(k) | Key::SetStatus(k)) => Some(k.clone()),
            (ApiKind::Clusters, Key::Cluster(n) | Key::ClusterStatus(n)) => Some(n.clone()),
            (ApiKind::InstanceSets, Key::Slice { cluster, set } | Key::Report { cluster, set }) => {
                Some(format!("{cluster}/{set}"))
            }
            _ => None,
        }
    }
}

/// Sets of at most this many placed instances carry their per-ordinal view
/// (`status.instances`) in every answer; a bigger set's comes in pages of this many from
/// `get` (a whole one would pass gRPC's 4 MiB message limit from about 20,000), and
/// `list` and `watch` leave it out.
pub const INLINE_INSTANCES: u32 = 5_000;

/// The user API service.
#[derive(Debug)]
pub struct Api {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub presence: Arc<Presence>,
    /// Resolves bearer tokens to principals.
    pub tokens: Arc<auth::Tokens>,
}

/// The most of a refusal's problems one answer carries, in bytes: the status message
/// travels in an HTTP/2 header (percent-encoded, up to 3× longer; peers take 16 KiB by
/// default), and a larger one resets the stream.
const MAX_REFUSAL: usize = 4 * 1024;

fn invalid(e: Invalid) -> Status {
    Status::invalid_argument(e.to_bounded_string(MAX_REFUSAL))
}

/// A member's report, compact or plain (`flotilla_api::report`).
fn decode_report(kv: &KeyValue) -> Result<InstanceSetStatus, Status> {
    decode_json::<flotilla_api::report::Report>(kv).map(|r| r.status)
}

fn decode_json<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, Status> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| Status::internal(format!("unreadable record {}: {e}", kv.key)))
}

fn to_json<T: Serialize>(value: &T) -> Result<String, Status> {
    serde_json::to_string(value).map_err(|e| Status::internal(e.to_string()))
}

fn wire(json: String) -> WireObject {
    WireObject {
        json,
        instances_total: 0,
    }
}

/// Only what users may set, plus what the server keeps.
fn user_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        labels: m.labels.clone().filter(|l| !l.is_empty()),
        annotations: m.annotations.clone().filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    }
}

/// Now, to the second, as object timestamps are kept.
pub(crate) fn now_time() -> Time {
    Time(
        jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| jiff::Timestamp::now()),
    )
}

/// What in `new` no rollout can make from the stored `old`: immutable Redis parameters,
/// the Redis mode, whether it is a Redis set at all, or a companion set as a target.
fn unmakeable(old: &FederatedInstanceSet, new: &FederatedInstanceSet) -> Option<Invalid> {
    if let Some(watched) = &old.spec.sentinel_for {
        return Some(Invalid::one(
            "metadata.name",
            format!(
                "{} is the sentinel set Flotilla runs for {}; change spec.redis.sentinel of {} instead",
                new.name(),
                watched.set,
                watched.set
            ),
        ));
    }
    let problems: Vec<(String, String)> = match (&old.spec.redis, &new.spec.redis) {
        (Some(a), Some(b)) => flotilla_api::redis::immutable_changes(a, b),
        (None, None) => Vec::new(),
        _ => vec![(
            "spec.redis".to_string(),
            "cannot be added to or removed from a set that exists (its instances' data and command line depend on it)".to_string(),
        )],
    };
    (!problems.is_empty()).then(|| {
        Invalid(
            problems
                .into_iter()
                .map(|(path, why)| flotilla_api::FieldError::new(path, why))
                .collect(),
        )
    })
}

/// A random (version 4) UUID, as Kubernetes gives every object.
pub(crate) fn uid() -> Result<String, Status> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// A validated write of an apply.
enum Write {
    Set(Box<Valid<FederatedInstanceSet>>),
    Cluster(Box<Valid<Cluster>>),
}

const RETRIES: usize = 8;

/// How often an open watch checks that its token still exists (revoked: it ends).
const WATCH_TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl Api {
    fn done<T>(&self, method: &'static str, r: Result<T, Status>) -> Result<T, Status> {
        let code = match &r {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics
            .api_requests
            .get_or_create(&vec![("method", method.to_string()), ("code", code)])
            .inc();
        r
    }

    async fn apply_inner(
        &self,
        who: &Principal,
        req: ApplyRequest,
        trail: &mut Trail,
    ) -> Result<ApplyResponse, Status> {
        // Every document is judged, also when another is broken, so that one answer
        // names every problem in the file.
        let docs = decode::decode_each(&req.document).map_err(invalid)?;
        if docs.is_empty() {
            return Err(invalid(Invalid::one(
                "",
                "no objects: the input holds no YAML or JSON document",
            )));
        }
        let many = docs.len() > 1;
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        let mut writes = Vec::new();
        let mut seen = BTreeSet::new();
        for doc in docs {
            let label = doc.label;
            let tag = |e: Invalid| if many { e.in_document(&label) } else { e };
            let d = match doc.decoded {
                Ok(d) => d,
                Err(e) => {
                    errors.extend(e.0);
                    continue;
                }
            };
            warnings.extend(d.warnings.iter().map(ToString::to_string));
            let result = match d.object {
                AnyObject::FederatedInstanceSet(mut o) => {
                    if o.status.take().is_some() {
                        warnings.push(format!("{label}: status is written by Flotilla; ignored"));
                    }
                    let ns = o
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".to_string())
                        .clone();
                    let kind = ApiKind::Sets.plural();
                    trail.target(kind, &ns, o.metadata.name.as_deref().unwrap_or_default());
                    decide(who, Verb::Apply, kind, Some(&ns))?;
                    if o.spec.sentinel_for.is_some() {
                        errors.extend(
                            tag(Invalid::one(
                                "spec.sentinelFor",
                                "written by Flotilla on the sentinel sets it runs; set spec.redis.sentinel instead",
                            ))
                            .0,
                        );
                        continue;
                    }
                    match validate::federated_instance_set(*o) {
                        Ok(v) => match self.changes_no_rollout_can_make(&v).await? {
                            None => Ok(Write::Set(Box::new(v))),
                            Some(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                }
                AnyObject::Cluster(mut o) => {
                    let kind = ApiKind::Clusters.plural();
                    trail.target(kind, "", o.metadata.name.as_deref().unwrap_or_default());
                    decide(who, Verb::Apply, kind, None)?;
                    if o.status.take().is_some() {
                        warnings.push(format!("{label}: status is written by Flotilla; ignored"));
                    }
                    match validate::cluster(*o) {
                        Ok(c) => {
                            let c = Box::new(c);
                            let registered = self
                                .store
                                .get(&keys::cluster(c.name()))
                                .await
                                .map_err(store_status)?
                                .is_some();
                            if registered {
                                Ok(Write::Cluster(c))
                            } else {
                                Err(Invalid::one(
                                    "metadata.name",
                                    format!(
                                        "cluster {:?} is not registered; `flotilla cluster add {}` \
                                         registers it and prints its agent token",
                                        c.name(),
                                        c.name()
                                    ),
                                ))
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                AnyObject::InstanceSet(_) => Err(Invalid::one(
                    "kind",
                    "InstanceSets are the members' slices, written by the federation; apply the \
                     FederatedInstanceSet instead",
                )),
            };
            match result {
                Ok(w) => {
                    let id = match &w {
                        Write::Set(s) => {
                            format!("fis/{}/{}", s.namespace().unwrap_or("default"), s.name())
                        }
                        Write::Cluster(c) => format!("cluster/{}", c.name()),
                    };
                    if !seen.insert(id.clone()) {
                        errors.extend(
                            tag(Invalid::one(
                                "metadata.name",
                                format!("{id} appears twice in the input"),
                            ))
                            .0,
                        );
                    }
                    writes.push(w);
                }
                Err(e) => errors.extend(tag(e).0),
            }
        }
        if !errors.is_empty() {
            if many {
                trail.untarget();
            }
            return Err(invalid(Invalid(errors)));
        }
        let mut applied = Vec::new();
        for w in writes {
            let a = match w {
                Write::Set(s) => {
                    let s = (*s).into_inner();
                    let ns = s.namespace().unwrap_or("default").to_string();
                    trail.target(ApiKind::Sets.plural(), &ns, s.name());
                    self.apply_set(s, req.dry_run, trail).await?
                }
                Write::Cluster(c) => {
                    let c = (*c).into_inner();
                    trail.target(ApiKind::Clusters.plural(), "", c.name());
                    self.apply_cluster(c, req.dry_run, trail).await?
                }
            };
            applied.push(a);
        }
        Ok(ApplyResponse { applied, warnings })
    }

    /// What in `set` may not change from the stored set of its name: immutable Redis
    /// parameters, the Redis mode, and whether it is a Redis set at all.
    async fn changes_no_rollout_can_make(
        &self,
        set: &FederatedInstanceSet,
    ) -> Result<Option<Invalid>, Status> {
        let ns = set.namespace().unwrap_or("default");
        let key = keys::set(&keys::set_key(ns, set.name()));
        let Some(kv) = self.store.get(&key).await.map_err(store_status)? else {
            return Ok(None);
        };
        let old: FederatedInstanceSet = decode_json(&kv)?;
        Ok(unmakeable(&old, set))
    }

    async fn apply_set(
        &self,
        set: FederatedInstanceSet,
        dry_run: bool,
        trail: &mut Trail,
    ) -> Result<Applied, Status> {
        let ns = set.namespace().unwrap_or("default").to_string();
        let name = set.name().to_string();
        let key = keys::set(&keys::set_key(&ns, &name));
        for _ in 0..RETRIES {
            let existing = self.store.get(&key).await.map_err(store_status)?;
            let mut new: FederatedInstanceSet = Object {
                metadata: user_meta(&set.metadata),
                status: None,
                ..set.clone()
            };
            let (result, condition, before) = match &existing {
                None => {
                    new.metadata.generation = Some(1);
                    new.metadata.creation_timestamp = Some(now_time());
                    new.metadata.uid = Some(uid()?);
                    ("created", Condition::Absent, None)
                }
                Some(kv) => {
                    let old: FederatedInstanceSet = decode_json(kv)?;
                    // Checked again against the very version this write replaces.
                    if let Some(e) = unmakeable(&old, &new) {
                        return Err(invalid(e));
                    }
                    let spec_changed = old.spec != new.spec;
                    if !spec_changed
                        && old.metadata.labels == new.metadata.labels
                        && old.metadata.annotations == new.metadata.annotations
                    {
                        trail.done(
                            "unchanged",
                            old.metadata.generation,
                            old.metadata.generation,
                        );
                        return Ok(applied(
                            "FederatedInstanceSet",
                            &ns,
                            &name,
                            "unchanged",
                            old.metadata.generation,
                            0,
                        ));
                    }
                    let generation = old.metadata.generation.unwrap_or(1);
                    new.metadata.generation = Some(generation + i64::from(spec_changed));
                    new.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                    new.metadata.uid = old.metadata.uid.clone();
                    (
                        "configured",
                        Condition::ModRevision(kv.mod_revision),
                        old.metadata.generation,
                    )
                }
            };
            if dry_run {
                return Ok(applied(
                    "FederatedInstanceSet",
                    &ns,
                    &name,
                    result,
                    new.metadata.generation,
                    0,
                ));
            }
            let bytes = Bytes::from(to_json(&new)?);
            match self.store.put(&key, bytes, condition, None).await {
                Ok(rev) => {
                    tracing::info!(set = %format!("{ns}/{name}"), result, revision = rev, "applied");
                    trail.done(result, before, new.metadata.generation);
                    return Ok(applied(
                        "FederatedInstanceSet",
                        &ns,
                        &name,
                        result,
                        new.metadata.generation,
                        rev,
                    ));
                }
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(format!(
            "federatedinstancesets {ns}/{name} kept changing under this apply; try again"
        )))
    }

    async fn apply_cluster(
        &self,
        cluster: Cluster,
        dry_run: bool,
        trail: &mut Trail,
    ) -> Result<Applied, Status> {
        let name = cluster.name().to_string();
        let key = keys::cluster(&name);
        for _ in 0..RETRIES {
            let kv = self
                .store
                .get(&key)
                .await
                .map_err(store_status)?
                .ok_or_else(|| Status::not_found(format!("clusters {name:?} not found")))?;
            let old: Cluster = decode_json(&kv)?;
            let mut new = old.clone();
            new.metadata.labels = cluster.metadata.labels.clone().filter(|l| !l.is_empty());
            new.metadata.annotations = cluster
                .metadata
                .annotations
                .clone()
                .filter(|a| !a.is_empty());
            new.spec = cluster.spec.clone();
            if new == old {
                trail.done(
                    "unchanged",
                    old.metadata.generation,
                    old.metadata.generation,
                );
                return Ok(applied(
                    "Cluster",
                    "",
                    &name,
                    "unchanged",
                    old.metadata.generation,
                    0,
                ));
            }
            if new.spec != old.spec {
                new.metadata.generation = Some(old.metadata.generation.unwrap_or(1) + 1);
            }
            if dry_run {
                return Ok(applied(
                    "Cluster",
                    "",
                    &name,
                    "configured",
                    new.metadata.generation,
                    0,
                ));
            }
            match self
                .store
                .put(
                    &key,
                    Bytes::from(to_json(&new)?),
                    Condition::ModRevision(kv.mod_revision),
                    None,
                )
                .await
            {
                Ok(rev) => {
                    trail.done(
                        "configured",
                        old.metadata.generation,
                        new.metadata.generation,
                    );
                    return Ok(applied(
                        "Cluster",
                        "",
                        &name,
                        "configured",
                        new.metadata.generation,
                        rev,
                    ));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(format!(
            "clusters {name} kept changing under this apply; try again"
        )))
    }

    /// A record and its status (or report), or `None` when the record does not exist.
    async fn with_status(
        &self,
        key: &str,
        status: &str,
    ) -> Result<Option<(KeyValue, Option<KeyValue>)>, Status> {
        let Some(kv) = self.store.get(key).await.map_err(store_status)? else {
            return Ok(None);
        };
        let status = self.store.get(status).await.map_err(store_status)?;
        Ok(Some((kv, status)))
    }

    /// One object as users see it, or `None` when it does not exist.
    async fn object(&self, kind: ApiKind, id: &str) -> Result<Option<String>, Status> {
        match kind {
            ApiKind::Sets => match self
                .with_status(&keys::set(id), &keys::set_status(id))
                .await?
            {
                Some((kv, st)) => Ok(Some(self.set_json(id, kv, st).await?)),
                None => Ok(None),
            },
            ApiKind::Clusters => self
                .with_status(&keys::cluster(id), &keys::cluster_status(id))
                .await?
                .map(|(kv, st)| self.cluster_json(&kv, st.as_ref()))
                .transpose(),
            ApiKind::InstanceSets => {
                let id = slice_id(id);
                let Some((cluster, set)) = id.split_once('/') else {
                    return Err(Status::invalid_argument(
                        "name: an InstanceSet is named <cluster>/<set> (or <cluster>/<namespace>/<set>)",
                    ));
                };
                self.with_status(&keys::slice(cluster, set), &keys::report(cluster, set))
                    .await?
                    .map(|(kv, st)| slice_json(&kv, st.as_ref()))
                    .transpose()
            }
        }
    }

    /// A set as users see it: its status summary expanded (see [`crate::records`]),
    /// with the per-ordinal view from its members' reports for a set of at most
    /// [`INLINE_INSTANCES`].
    async fn set_json(
        &self,
        id: &str,
        kv: KeyValue,
        status: Option<KeyValue>,
    ) -> Result<String, Status> {
        let mut set: FederatedInstanceSet = decode_json(&kv)?;
        set.metadata.resource_version = Some(kv.mod_revision.to_string());
        let record = status
            .as_ref()
            .map(decode_json::<StatusRecord>)
            .transpose()?;
        set.status = match record {
            None => None,
            Some(r) if r.replicas > INLINE_INSTANCES => Some(r.expand(&BTreeMap::new(), false)),
            Some(r) => {
                let reports = self.reports(id, r.cluster_names()).await?;
                Some(r.expand(&reports, true))
            }
        };
        to_json(&set)
    }

    /// `get` of a set: whole, or for a set of more than [`INLINE_INSTANCES`], with the
    /// page of its per-ordinal view that `req` asks for.
    async fn set_page(&self, id: &str, req: &GetRequest) -> Result<Option<WireObject>, Status> {
        let Some((kv, status)) = self
            .with_status(&keys::set(id), &keys::set_status(id))
            .await?
        else {
            return Ok(None);
        };
        let record = status
            .as_ref()
            .map(decode_json::<StatusRecord>)
            .transpose()?;
        let Some(record) = record.filter(|r| r.replicas > INLINE_INSTANCES) else {
            return Ok(Some(wire(self.set_json(id, kv, status).await?)));
        };
        let offset = req.instances_offset as usize;
        let limit = match req.instances_limit {
            0 => INLINE_INSTANCES,
            n => n.min(INLINE_INSTANCES),
        } as usize;
        let reports = self
            .reports(id, record.page_clusters(offset, limit).into_iter())
            .await?;
        let mut set: FederatedInstanceSet = decode_json(&kv)?;
        set.metadata.resource_version = Some(kv.mod_revision.to_string());
        set.status = Some(record.expand_page(&reports, offset, limit));
        Ok(Some(WireObject {
            json: to_json(&set)?,
            instances_total: record.replicas,
        }))
    }

    /// The reports of set `id` from `clusters`, by cluster.
    async fn reports(
        &self,
        id: &str,
        clusters: impl Iterator<Item = &str>,
    ) -> Result<BTreeMap<String, InstanceSetStatus>, Status> {
        let gets = clusters.map(|c| async move {
            let kv = self
                .store
                .get(&keys::report(c, id))
                .await
                .map_err(store_status)?;
            kv.map(|kv| decode_report(&kv).map(|r| (c.to_string(), r)))
                .transpose()
        });
        let found = futures::future::try_join_all(gets).await?;
        Ok(found.into_iter().flatten().collect())
    }

    fn cluster_json(&self, kv: &KeyValue, status: Option<&KeyValue>) -> Result<String, Status> {
        let mut c: Cluster = decode_json(kv)?;
        c.metadata.resource_version = Some(kv.mod_revision.to_string());
        let mut status: Option<ClusterStatus> = status.map(decode_json).transpose()?;
        // The stored time moves only with readiness or capacity (and once a minute);
        // the newest heartbeat this server saw is the true one, also for a cluster that
        // has gone Unknown, unless the agent went on with another server since, whose
        // stored time is then newer.
        if let Some(s) = status.as_mut()
            && let Some(t) = self.presence.last_heartbeat(c.name())
            && seen_is_newer(s.last_heartbeat_time.as_deref(), &t)
        {
            s.last_heartbeat_time = Some(t);
        }
        c.status = Some(status.unwrap_or_else(|| {
            let mut s = ClusterStatus {
                reason: Some("AgentNeverConnected".into()),
                ..ClusterStatus::default()
            };
            federation::set_ready_condition(
                &mut s,
                "False",
                "AgentNeverConnected",
                format!(
                    "no agent has connected yet: run `flotilla agent --server URL --cluster {} \
                     --token TOKEN` in the member",
                    c.name()
                ),
                "",
            );
            s.conditions[0].last_transition_time = None;
            s
        }));
        to_json(&c)
    }

    /// Every object of `kind` in `namespace` (`""`: every namespace `who` may read).
    async fn list_inner(
        &self,
        who: &Principal,
        kind: ApiKind,
        namespace: &str,
    ) -> Result<ListResponse, Status> {
        let (main, side) = match kind {
            ApiKind::Sets => (keys::SETS, keys::SET_STATUS),
            ApiKind::Clusters => (keys::CLUSTERS, keys::CLUSTER_STATUS),
            ApiKind::InstanceSets => (keys::SLICES, keys::REPORTS),
        };
        let objects = self.store.list(main).await.map_err(store_status)?;
        let extras = self.store.list(side).await.map_err(store_status)?;
        let extra: HashMap<String, &KeyValue> = extras
            .items
            .iter()
            .filter_map(|kv| kind.owns(&Key::parse(&kv.key)).map(|id| (id, kv)))
            .collect();
        let mut items = Vec::new();
        for kv in &objects.items {
            let Some(id) = kind.owns(&Key::parse(&kv.key)) else {
                continue;
            };
            if kind != ApiKind::Clusters {
                let ns = namespace_of(kind, &id);
                if (!namespace.is_empty() && ns != namespace) || !who.sees(ns) {
                    continue;
                }
            }
            let side = extra.get(&id).copied();
            let json = match kind {
                ApiKind::Sets => self.set_json(&id, kv.clone(), side.cloned()).await?,
                ApiKind::Clusters => self.cluster_json(kv, side)?,
                ApiKind::InstanceSets => slice_json(kv, side)?,
            };
            items.push(wire(json));
        }
        Ok(ListResponse {
            items,
            revision: objects.revision,
        })
    }

    async fn delete_inner(
        &self,
        who: &Principal,
        req: DeleteRequest,
        trail: &mut Trail,
    ) -> Result<DeleteResponse, Status> {
        let kind = ApiKind::parse(&req.kind)?;
        match kind {
            ApiKind::Sets => {
                let ns = if req.namespace.is_empty() {
                    "default"
                } else {
                    &req.namespace
                };
                trail.target(kind.plural(), ns, &req.name);
                decide(who, Verb::Delete, kind.plural(), Some(ns))?;
                let id = keys::set_key(ns, &req.name);
                let key = keys::set(&id);
                let not_found = || {
                    Status::not_found(format!(
                        "federatedinstancesets {:?} not found in namespace {ns:?}",
                        req.name
                    ))
                };
                let old = self.store.get(&key).await.map_err(store_status)?;
                let Some(old) = old else {
                    return Err(not_found());
                };
                // For the record only: a stored set that no longer decodes is deleted all
                // the same.
                let generation = decode_json::<FederatedInstanceSet>(&old)
                    .ok()
                    .and_then(|s| s.metadata.generation);
                match self.store.delete(&key, None).await.map_err(store_status)? {
                    Some(rev) => {
                        tracing::info!(set = %id, revision = rev, "deleted");
                        trail.done("deleted", generation, None);
                        Ok(DeleteResponse { deleted: true })
                    }
                    None => Err(not_found()),
                }
            }
            ApiKind::Clusters => {
                let name = &req.name;
                trail.target(kind.plural(), "", name);
                decide(who, Verb::Delete, kind.plural(), None)?;
                // Drained first (unless forced); the token goes last, with the rest.
                let timeout = match req.timeout_seconds {
                    0 => crate::drain::DEFAULT_TIMEOUT,
                    s => std::time::Duration::from_secs(u64::from(s)),
                };
                let deleted =
                    crate::drain::delete_cluster(&*self.store, name, req.force, timeout).await?;
                match deleted {
                    Some(generation) => {
                        tracing::info!(cluster = %name, forced = req.force, "cluster deleted: its instances are placed again");
                        trail.done("deleted", generation, None);
                        Ok(DeleteResponse { deleted: true })
                    }
                    None => Err(Status::not_found(format!("clusters {name:?} not found"))),
                }
            }
            ApiKind::InstanceSets => {
                let ns = namespace_of(kind, &slice_id(&req.name)).to_string();
                trail.target(kind.plural(), &ns, &req.name);
                decide(who, Verb::Delete, kind.plural(), Some(&ns))?;
                Err(Status::failed_precondition(
                    "InstanceSets are the members' slices, written by the federation: delete or \
                 scale the FederatedInstanceSet instead",
                ))
            }
        }
    }

    async fn plan_inner(&self, who: &Principal, req: PlanRequest) -> Result<PlanResponse, Status> {
        let mut docs = decode::split(&req.document).map_err(invalid)?;
        if docs.len() != 1 {
            return Err(Status::invalid_argument(format!(
                "document: expected one FederatedInstanceSet, found {} documents",
                docs.len()
            )));
        }
        let decoded = decode::decode_kind::<
            flotilla_api::FederatedInstanceSetSpec,
            FederatedInstanceSetStatus,
        >(docs.remove(0))
        .map_err(invalid)?;
        let warnings = decoded.warnings.iter().map(ToString::to_string).collect();
        let mut set = decoded.object;
        set.metadata
            .namespace
            .get_or_insert_with(|| "default".to_string());
        decide(
            who,
            Verb::Plan,
            ApiKind::Sets.plural(),
            Some(set.namespace().unwrap_or("default")),
        )?;
        let valid = validate::federated_instance_set(set).map_err(invalid)?;
        let id = keys::set_key(valid.namespace().unwrap_or("default"), valid.name());
        let clusters = self
            .store
            .list(keys::CLUSTERS)
            .await
            .map_err(store_status)?;
        let statuses = self
            .store
            .list(keys::CLUSTER_STATUS)
            .await
            .map_err(store_status)?;
        let alive = self.store.list(keys::ALIVE).await.map_err(store_status)?;
        let reports = self.store.list(keys::REPORTS).await.map_err(store_status)?;
        let clusters: Vec<Cluster> = clusters
            .items
            .iter()
            .map(decode_json)
            .collect::<Result<_, _>>()?;
        let statuses: BTreeMap<String, ClusterStatus> = statuses
            .items
            .iter()
            .filter_map(|kv| match Key::parse(&kv.key) {
                Key::ClusterStatus(n) => decode_json(kv).ok().map(|s| (n, s)),
                _ => None,
            })
            .collect();
        let alive: BTreeSet<String> = alive
            .items
            .iter()
            .filter_map(|kv| match Key::parse(&kv.key) {
                Key::Alive(n) => Some(n),
                _ => None,
            })
            .collect();
        let own: BTreeMap<String, InstanceSetStatus> = reports
            .items
            .iter()
            .filter_map(|kv| match Key::parse(&kv.key) {
                Key::Report { cluster, set } if set == id => {
                    decode_report(kv).ok().map(|s| (cluster, s))
                }
                _ => None,
            })
            .collect();
        let members: Vec<Member<'_>> = clusters
            .iter()
            .map(|c| Member {
                cluster: c,
                status: statuses.get(c.name()),
                alive: alive.contains(c.name()),
            })
            .collect();
        let own_refs: BTreeMap<String, &InstanceSetStatus> =
            own.iter().map(|(c, s)| (c.clone(), s)).collect();
        let slices: BTreeMap<String, InstanceSet> = self
            .store
            .list(keys::SLICES)
            .await
            .map_err(store_status)?
            .items
            .iter()
            .filter_map(|kv| match Key::parse(&kv.key) {
                Key::Slice { cluster, set } if set == id => {
                    decode_json(kv).ok().map(|s| (cluster, s))
                }
                _ => None,
            })
            .collect();
        let slice_refs: BTreeMap<String, &InstanceSet> =
            slices.iter().map(|(c, s)| (c.clone(), s)).collect();
        let record = |key: String| async move {
            self.store
                .get(&key)
                .await
                .map_err(store_status)
                .map(|kv| kv.map(|kv| (kv.key, kv.value)))
        };
        let previous: Option<Plan> = match record(keys::placement(&id)).await? {
            Some((key, value)) => Some(
                crate::records::decode_plan(&value)
                    .map_err(|e| Status::internal(format!("unreadable record {key}: {e}")))?,
            ),
            None => None,
        };
        // An unreadable status reads as none: it only carries the previous primary.
        let status: Option<crate::records::StatusRecord> = record(keys::set_status(&id))
            .await?
            .and_then(|(_, value)| serde_json::from_slice(&value).ok());
        let now = federation::now();
        let view = crate::decide::View {
            set: valid.as_ref(),
            members: &members,
            alive: &alive,
            slices: &slice_refs,
            reports: &own_refs,
            placement: previous.as_ref(),
            status: status.as_ref(),
            // Only the annotations the members read depend on these; the plan does not.
            sentinels: &[],
            watched_primary: None,
            now: &now,
        };
        let plan = crate::decide::decide(&view, &mut CapacityCache::new())
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .plan;
        Ok(PlanResponse {
            json: to_json(&plan)?,
            warnings,
        })
    }

    async fn add_cluster_inner(
        &self,
        who: &Principal,
        req: AddClusterRequest,
        trail: &mut Trail,
    ) -> Result<AddClusterResponse, Status> {
        trail.target(ApiKind::Clusters.plural(), "", &req.name);
        decide(who, Verb::Add, ApiKind::Clusters.plural(), None)?;
        let mut cluster: Cluster = Object::new(&req.name, ClusterSpec::default());
        if !req.labels.is_empty() {
            cluster.metadata.labels = Some(req.labels.into_iter().collect());
        }
        cluster.metadata.generation = Some(1);
        cluster.metadata.creation_timestamp = Some(now_time());
        cluster.metadata.uid = Some(uid()?);
        let cluster = validate::cluster(cluster).map_err(invalid)?.into_inner();
        let name = cluster.name().to_string();
        let key = keys::cluster(&name);
        let exists = || {
            Status::already_exists(format!(
                "cluster {name:?} already exists; `flotilla delete cluster {name}` first to register \
                 it again with a new token"
            ))
        };
        if self.store.get(&key).await.map_err(store_status)?.is_some() {
            return Err(exists());
        }
        let token = auth::generate().map_err(|e| Status::internal(e.to_string()))?;
        // The cluster and its token in one transaction, only while the cluster is
        // absent: of two concurrent adds exactly one stores both records (and its token
        // is the one that works); the other stores nothing.
        let txn = Txn::new()
            .when(Compare::absent(key.as_str()))
            .put(
                keys::token(&name),
                auth::ClusterToken::new(auth::digest(&token)).to_bytes(),
            )
            .put(key.as_str(), Bytes::from(to_json(&cluster)?));
        let rev = match self.store.txn(txn).await {
            Ok(committed) => committed.revision.unwrap_or_default(),
            Err(StoreError::TxnRefused { .. }) => return Err(exists()),
            Err(e) => return Err(store_status(e)),
        };
        tracing::info!(cluster = %name, revision = rev, "cluster registered");
        trail.done("created", None, cluster.metadata.generation);
        let kv = self.store.get(&key).await.map_err(store_status)?;
        let json = match kv {
            Some(kv) => self.cluster_json(&kv, None)?,
            None => to_json(&cluster)?,
        };
        Ok(AddClusterResponse {
            cluster: Some(wire(json)),
            token,
        })
    }

    /// Streams the kind's objects: every current one, then changes.
    async fn watch_inner(
        self: Arc<Self>,
        who: Principal,
        req: WatchRequest,
        tx: mpsc::Sender<Result<WatchEvent, Status>>,
    ) -> Result<(), Status> {
        let kind = ApiKind::parse(&req.kind)?;
        let wanted = |id: &str| -> bool {
            (req.name.is_empty() || name_of(kind, id) == req.name)
                && (kind == ApiKind::Clusters
                    || ((req.namespace.is_empty() || namespace_of(kind, id) == req.namespace)
                        && who.sees(namespace_of(kind, id))))
        };
        let listing = self.list_inner(&who, kind, "").await?;
        let mut known: HashMap<String, String> = HashMap::new();
        for item in listing.items {
            let id = id_of(kind, &item.json);
            if wanted(&id) {
                known.insert(id, item.json.clone());
                send(&tx, EventType::Added, item.json).await?;
            }
        }
        let mut watch = self
            .store
            .watch(keys::ROOT, listing.revision + 1)
            .await
            .map_err(store_status)?;
        while let Some(event) = watch.next().await {
            let event = event.map_err(store_status)?;
            let Some(id) = kind.owns(&Key::parse(event.key())) else {
                continue;
            };
            if !wanted(&id) {
                continue;
            }
            match self.object(kind, &id).await? {
                Some(json) => {
                    let before = known.insert(id, json.clone());
                    if before.as_deref() != Some(json.as_str()) {
                        let t = if before.is_some() {
                            EventType::Modified
                        } else {
                            EventType::Added
                        };
                        send(&tx, t, json).await?;
                    }
                }
                None => {
                    if let Some(last) = known.remove(&id) {
                        send(&tx, EventType::Deleted, last).await?;
                    }
                }
            }
        }
        Err(Status::unavailable("the store's watch ended; watch again"))
    }
}

async fn send(
    tx: &mpsc::Sender<Result<WatchEvent, Status>>,
    t: EventType,
    json: String,
) -> Result<(), Status> {
    tx.send(Ok(WatchEvent {
        r#type: t as i32,
        object: Some(wire(json)),
    }))
    .await
    .map_err(|_| Status::cancelled("the client went away"))
}

fn applied(
    kind: &str,
    ns: &str,
    name: &str,
    result: &str,
    generation: Option<i64>,
    revision: i64,
) -> Applied {
    Applied {
        kind: kind.to_string(),
        namespace: ns.to_string(),
        name: name.to_string(),
        result: result.to_string(),
        generation: generation.unwrap_or(0),
        revision,
    }
}

/// An object's id from its JSON, as [`ApiKind::owns`] names it.
fn id_of(kind: ApiKind, json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let meta = &v["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let ns = meta["namespace"].as_str().unwrap_or("default");
    match kind {
        ApiKind::Sets => keys::set_key(ns, name),
        ApiKind::Clusters => name.to_string(),
        ApiKind::InstanceSets => {
            let cluster = meta["labels"][federation::CLUSTER_LABEL]
                .as_str()
                .unwrap_or_default();
            format!("{cluster}/{ns}/{name}")
        }
    }
}

fn name_of(kind: ApiKind, id: &str) -> &str {
    match kind {
        ApiKind::Clusters => id,
        _ => id.rsplit('/').next().unwrap_or(id),
    }
}

/// A slice's name as users give it (`<cluster>/<set>` in `default`, or
/// `<cluster>/<namespace>/<set>`) as its id `<cluster>/<namespace>/<set>`.
fn slice_id(name: &str) -> String {
    match name.split_once('/') {
        Some((cluster, set)) if !set.contains('/') => {
            format!("{cluster}/{}", keys::set_key("default", set))
        }
        _ => name.to_string(),
    }
}

fn namespace_of(kind: ApiKind, id: &str) -> &str {
    let parts: Vec<&str> = id.split('/').collect();
    match (kind, parts.as_slice()) {
        (ApiKind::Sets, [ns, _]) => ns,
        (ApiKind::InstanceSets, [_, ns, _]) => ns,
        _ => "",
    }
}

fn slice_json(kv: &KeyValue, report: Option<&KeyValue>) -> Result<String, Status> {
    let mut s: InstanceSet = decode_json(kv)?;
    s.metadata.resource_version = Some(kv.mod_revision.to_string());
    s.status = report.map(decode_report).transpose()?;
    to_json(&s)
}

/// The gRPC service over the shared [`Api`].
#[derive(Clone, Debug)]
pub struct Service(pub Arc<Api>);

type Events = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

/// The peer address of a call, for the audit trail.
fn source<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

impl Service {
    /// Who is calling, and the request.
    async fn caller<T>(&self, request: Request<T>) -> Result<(Principal, T), Status> {
        let who = self.0.tokens.user(request.metadata()).await?;
        Ok((who, request.into_inner()))
    }

    /// Who is calling, a trail for the write it asks, and the request.
    async fn writer<T>(
        &self,
        request: Request<T>,
        verb: Verb,
    ) -> Result<(Principal, Trail, T), Status> {
        let from = source(&request);
        match self.caller(request).await {
            Ok((who, req)) => {
                let trail = Trail::new(&who, from, verb);
                Ok((who, trail, req))
            }
            // A known token of the wrong kind (an agent's): refused, and recorded.
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                let agent = Principal {
                    name: "(an agent token)".into(),
                    scope: auth::Scope::View,
                    namespaces: Vec::new(),
                };
                self.0
                    .audited(Trail::new(&agent, from, verb), Err(status))
                    .await
            }
            Err(status) => Err(status),
        }
    }
}

impl Api {
    /// Records a write's trail and passes its result on.
    pub(crate) async fn audited<T>(&self, trail: Trail, r: Result<T, Status>) -> Result<T, Status> {
        let now = jiff::Timestamp::now();
        audit::write(&*self.store, trail.records(&r, now), now).await;
        r
    }
}

#[tonic::async_trait]
impl Federation for Service {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let r = async {
            let (who, mut trail, req) = self.writer(request, Verb::Apply).await?;
            if req.dry_run {
                trail.off();
            }
            let r = self.0.apply_inner(&who, req, &mut trail).await;
            self.0.audited(trail, r).await
        }
        .await;
        self.0.done("Apply", r).map(Response::new)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<WireObject>, Status> {
        let r = async {
            let (who, req) = self.caller(request).await?;
            let kind = ApiKind::parse(&req.kind)?;
            let ns = if req.namespace.is_empty() {
                "default"
            } else {
                &req.namespace
            };
            let id = match kind {
                ApiKind::Sets => keys::set_key(ns, &req.name),
                _ => req.name.clone(),
            };
            if kind == ApiKind::InstanceSets && !id.contains('/') {
                return Err(Status::invalid_argument(
                    "name: an InstanceSet is named <cluster>/<set> (or <cluster>/<namespace>/<set>)",
                ));
            }
            let slice = slice_id(&id);
            let scope = match kind {
                ApiKind::Sets => Some(ns),
                ApiKind::Clusters => None,
                ApiKind::InstanceSets => Some(namespace_of(kind, &slice)),
            };
            decide(&who, Verb::Get, kind.plural(), scope)?;
            let found = match kind {
                ApiKind::Sets => self.0.set_page(&id, &req).await?,
                _ => self.0.object(kind, &id).await?.map(wire),
            };
            found.ok_or_else(|| {
                Status::not_found(match kind {
                    ApiKind::Clusters => format!("{} {:?} not found", kind.plural(), req.name),
                    _ => format!(
                        "{} {:?} not found in namespace {ns:?}",
                        kind.plural(),
                        req.name
                    ),
                })
            })
        }
        .await;
        self.0.done("Get", r).map(Response::new)
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let r = async {
            let (who, req) = self.caller(request).await?;
            let kind = ApiKind::parse(&req.kind)?;
            let ns = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
            decide(&who, Verb::List, kind.plural(), ns)?;
            self.0.list_inner(&who, kind, &req.namespace).await
        }
        .await;
        self.0.done("List", r).map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = async {
            let (who, mut trail, req) = self.writer(request, Verb::Delete).await?;
            let r = self.0.delete_inner(&who, req, &mut trail).await;
            self.0.audited(trail, r).await
        }
        .await;
        self.0.done("Delete", r).map(Response::new)
    }

    type WatchStream = Events;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Events>, Status> {
        let metadata = request.metadata().clone();
        let r = async {
            let (who, req) = self.caller(request).await?;
            let kind = ApiKind::parse(&req.kind)?;
            let ns = (!req.namespace.is_empty()).then_some(req.namespace.as_str());
            decide(&who, Verb::Watch, kind.plural(), ns)?;
            Ok((who, req))
        }
        .await;
        let (who, req) = self.0.done("Watch", r)?;
        let (tx, rx) = mpsc::channel(64);
        let api = self.0.clone();
        tokio::spawn(async move {
            let err_tx = tx.clone();
            // A watch lives as long as its token: revoked, it ends.
            let revoked = async {
                loop {
                    tokio::time::sleep(WATCH_TOKEN_RECHECK).await;
                    match api.tokens.user(&metadata).await {
                        Err(s)
                            if matches!(
                                s.code(),
                                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                            ) =>
                        {
                            return s;
                        }
                        // Still valid, or the store did not answer: check again later.
                        _ => {}
                    }
                }
            };
            tokio::select! {
                r = api.clone().watch_inner(who, req, tx) => {
                    if let Err(status) = r
                        && status.code() != tonic::Code::Cancelled
                    {
                        let _ = err_tx.send(Err(status)).await;
                    }
                }
                status = revoked => {
                    let _ = err_tx
                        .send(Err(Status::unauthenticated(format!(
                            "the watch ended: {}",
                            status.message()
                        ))))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn plan(&self, request: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        let r = async {
            let (who, req) = self.caller(request).await?;
            self.0.plan_inner(&who, req).await
        }
        .await;
        self.0.done("Plan", r).map(Response::new)
    }

    async fn add_cluster(
        &self,
        request: Request<AddClusterRequest>,
    ) -> Result<Response<AddClusterResponse>, Status> {
        let r = async {
            let (who, mut trail, req) = self.writer(request, Verb::Add).await?;
            let r = self.0.add_cluster_inner(&who, req, &mut trail).await;
            self.0.audited(trail, r).await
        }
        .await;
        self.0.done("AddCluster", r).map(Response::new)
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let r = async {
            let (who, mut trail, req) = self.writer(request, Verb::Create).await?;
            let r = self.0.create_token_inner(&who, req, &mut trail).await;
            self.0.audited(trail, r).await
        }
        .await;
        self.0.done("CreateToken", r).map(Response::new)
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let r = async {
            let (who, _) = self.caller(request).await?;
            self.0.list_tokens_inner(&who).await
        }
        .await;
        self.0.done("ListTokens", r).map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let r = async {
            let (who, mut trail, req) = self.writer(request, Verb::Revoke).await?;
            let r = self.0.revoke_token_inner(&who, req, &mut trail).await;
            self.0.audited(trail, r).await
        }
        .await;
        self.0.done("RevokeToken", r).map(Response::new)
    }

    async fn rotate_cluster_token(
        &self,
        request: Request<RotateClusterTokenRequest>,
    ) -> Result<Response<RotateClusterTokenResponse>, Status> {
        let r = async {
            let (who, mut trail, req) = self.writer(request, Verb::RotateToken).await?;
            let r = self.0.rotate_inner(&who, req, &mut trail).await;
            self.0.audited(trail, r).await
        }
        .await;
        self.0.done("RotateClusterToken", r).map(Response::new)
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        let r = async {
            let (who, req) = self.caller(request).await?;
            self.0.list_audit_inner(&who, req).await
        }
        .await;
        self.0.done("ListAudit", r).map(Response::new)
    }
}

/// Whether the heartbeat time this server saw (`seen`, RFC 3339) is at least as new as
/// the stored one (a stored time that does not parse counts as none).
fn seen_is_newer(stored: Option<&str>, seen: &str) -> bool {
    let parse = |t: &str| t.parse::<jiff::Timestamp>().ok();
    stored
        .and_then(parse)
        .is_none_or(|stored| parse(seen).is_some_and(|seen| seen >= stored))
}

#[cfg(test)]
mod tests {
    #[test]
    fn uids_are_version_4_uuids() {
        let a = super::uid().unwrap();
        let b = super::uid().unwrap();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn the_newer_of_the_stored_and_the_seen_heartbeat_time_is_shown() {
        let (older, newer) = ("2026-01-01T00:00:00Z", "2026-01-01T00:00:30Z");
        // This server's own, newer than the stored one (stored once a minute).
        assert!(super::seen_is_newer(Some(older), newer));
        assert!(super::seen_is_newer(None, newer));
        assert!(super::seen_is_newer(Some("not a time"), newer));
        // The agent went on with another server, which stored a newer time since.
        assert!(!super::seen_is_newer(Some(newer), older));
        assert!(!super::seen_is_newer(Some(newer), "not a time"));
    }
}
