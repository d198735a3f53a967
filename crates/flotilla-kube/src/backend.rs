//! [`KubeBackend`]: `flotilla_member::Backend` over the Kubernetes API.
//!
//! ```text
//!   observe       GET pods?labelSelector=flotilla.io/set=<set>, GET persistentvolumeclaims?…
//!                 and only when a pod is not ready: GET nodes, GET persistentvolumes/<pv>
//!                 for the claims of pods on a lost node or not scheduled (`locality`)
//!   Create        POST pod            (409 AlreadyExists → Unchanged); with
//!                 spec.redis.announce: Hostname, first (once per process) POST the
//!                 headless service `<set>` (409 → GET it: owned by the set, or an error)
//!   CreateVolume  POST pvc            (409 AlreadyExists → Unchanged)
//!   UpdateInPlace GET pod, PATCH strategic merge of images/labels/annotations (equal → Unchanged),
//!                 recording the restarts it waits for (`objects::IN_PLACE_UPDATE_ANNOTATION`)
//!   SetRole       GET pod, PATCH merge of the role label and version annotations (equal → Unchanged)
//!   Recreate, Delete, DeleteVolume    DELETE (404 → Unchanged); a rebuild's Recreate
//!                 (node lost) with gracePeriodSeconds=0: no kubelet is left to finish it
//!   Switchover    Redis REPLICAOF on the pods (already switched → Unchanged), replicas
//!                 pointed at the new primary's pod IP
//!   (Redis)       reached on the pod IP, or with PodAccess::PortForward through
//!                 GET pods/<pod>/portforward (`access`; a kubeconfig picks it by default)
//!   write_status  server-side apply of /status, manager `flotilla` (equal → no request)
//!   probe_role    GET pod, Redis ROLE on its roleProbe.redis.port, or an exec probe's
//!                 command through the pods/exec subresource
//!   capacity      GET nodes, GET pods (all namespaces, not terminated)
//! ```
//!
//! Every write names its end state, so repeating one is harmless, and each says whether
//! it changed anything: a converged set costs two list requests and no write (its pods
//! are ready, so no Node is read).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_api::object::API_VERSION;
use flotilla_api::set::{RedisProbe, RoleProbe};
use flotilla_api::{CapacityModel, InstanceSet, InstanceSetSpec, InstanceSetStatus, Kind as _};
use flotilla_instanceset::{Action, Observed, Why, instance_name, volume_name};
use flotilla_member::{Applied, Backend, redis};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::Client;
use kube::api::{
    Api, AttachParams, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::access::{self, PodAccess, PodDial};
use crate::capacity;
use crate::error::{Error, Result, chain, status_code};
use crate::locality::{self, NodeLoss};
use crate::objects::{self, FIELD_MANAGER, namespace, pod_addr, selector};
use crate::resource;

/// A Kubernetes member cluster, through one client.
#[derive(Clone)]
pub struct KubeBackend {
    client: Client,
    /// This process's role epoch (see [`objects::ROLE_EPOCH_ANNOTATION`]).
    epoch: String,
    /// When a node counts as lost (see [`locality`]).
    node_loss: NodeLoss,
    /// How Redis ports are reached, resolved (see [`access`]).
    pod_access: PodAccess,
    /// Per set (`namespace/name`): each pod's `<podIP>:<port>` as the last observe
    /// listed them, so the Redis engine's commands cost no request of their own.
    addrs: std::sync::Arc<std::sync::Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
    /// The headless Services (`namespace/name/uid` of their set) this process made or
    /// found in place, so a pod create costs no Service request after the first.
    services: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Pod IPs looked up by `status.podIP` (`namespace/ip`): the pod that had it, or
    /// none (an address in another member), and when; a sentinel polled every 100 ms
    /// during a switchover costs one list, not hundreds.
    ip_lookups: IpLookups,
}

/// See [`KubeBackend::ip_lookups`].
type IpLookups =
    std::sync::Arc<std::sync::Mutex<BTreeMap<String, (Option<String>, std::time::Instant)>>>;

/// How long a pod IP lookup is kept.
const IP_LOOKUP_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeBackend")
            .field("default_namespace", &self.client.default_namespace())
            .field("epoch", &self.epoch)
            .field("node_loss", &self.node_loss)
            .field("pod_access", &self.pod_access)
            .finish()
    }
}

impl KubeBackend {
    /// A backend over `client`, with a fresh role epoch (the start time in nanoseconds:
    /// a restarted agent gets a new one).
    pub fn new(client: Client) -> KubeBackend {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        KubeBackend::with_epoch(client, nanos.to_string())
    }

    /// A backend with a given role epoch (tests use a fixed one).
    pub fn with_epoch(client: Client, epoch: impl Into<String>) -> KubeBackend {
        KubeBackend {
            client,
            epoch: epoch.into(),
            node_loss: NodeLoss::default(),
            pod_access: access::resolve(PodAccess::Auto, access::recorded()),
            addrs: std::sync::Arc::default(),
            services: std::sync::Arc::default(),
            ip_lookups: std::sync::Arc::default(),
        }
    }

    /// Reaching Redis ports as `pod_access` says (default [`PodAccess::Auto`]: port-forward
    /// when [`crate::client`] built the client from a kubeconfig, else the pod IP).
    pub fn with_pod_access(mut self, pod_access: PodAccess) -> KubeBackend {
        self.pod_access = access::resolve(pod_access, access::recorded());
        self
    }

    /// How Redis ports are reached: [`PodAccess::Direct`] or [`PodAccess::PortForward`].
    pub fn pod_access(&self) -> PodAccess {
        self.pod_access
    }

    /// A dialer for the Redis port `port` of `pods` (by pod name).
    fn dial(&self, set: &InstanceSet, pods: &[&Pod], port: u16) -> PodDial {
        PodDial {
            api: self.api::<Pod>(set),
            access: self.pod_access,
            port,
            addrs: pods
                .iter()
                .filter_map(|p| Some((p.metadata.name.clone()?, pod_addr(p, port)?)))
                .collect(),
        }
    }

    /// With another rule for lost nodes (default: [`NodeLoss::default`]).
    pub fn with_node_loss(mut self, node_loss: NodeLoss) -> KubeBackend {
        self.node_loss = node_loss;
        self
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api<K>(&self, set: &InstanceSet) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace(set))
    }

    async fn list<K>(&self, set: &InstanceSet) -> Result<Vec<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let what = format!(
            "listing {} of InstanceSet {}",
            K::plural(&Default::default()),
            objects::set_key(set)
        );
        let list = self
            .api::<K>(set)
            .list(&ListParams::default().labels(&selector(set)))
            .await
            .map_err(Error::kube(what))?;
        Ok(list.items)
    }

    /// Creates `object`; an existing object of that name is its end state already.
    async fn create<K>(&self, set: &InstanceSet, object: &K) -> Result<Applied>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self
            .api::<K>(set)
            .create(&PostParams::default(), object)
            .await
        {
            Ok(_) => Ok(Applied::Wrote),
            Err(e) if status_code(&e) == Some(409) => Ok(Applied::Unchanged),
            Err(e) => Err(Error::kube(format!(
                "creating {} {}/{}",
                K::kind(&Default::default()),
                namespace(set),
                object.meta().name.as_deref().unwrap_or_default()
            ))(e)),
        }
    }

    /// Deletes `name`; a missing object is its end state already.
    async fn delete<K>(
        &self,
        set: &InstanceSet,
        name: &str,
        params: &DeleteParams,
    ) -> Result<Applied>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self.api::<K>(set).delete(name, params).await {
            Ok(_) => Ok(Applied::Wrote),
            Err(e) if status_code(&e) == Some(404) => Ok(Applied::Unchanged),
            Err(e) => Err(Error::kube(format!(
                "deleting {} {}/{name}",
                K::kind(&Default::default()),
                namespace(set)
            ))(e)),
        }
    }

    async fn get_pod(&self, set: &InstanceSet, ordinal: u32) -> Result<Option<Pod>> {
        let name = instance_name(set.name(), ordinal);
        self.api::<Pod>(set)
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!(
                "reading pod {}/{name}",
                namespace(set)
            )))
    }

    async fn patch_pod(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        patch: Patch<serde_json::Value>,
    ) -> Result<Applied> {
        let name = instance_name(set.name(), ordinal);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        match self.api::<Pod>(set).patch(&name, &params, &patch).await {
            Ok(_) => Ok(Applied::Wrote),
            // Deleted between the read and the patch: nothing left to change.
            Err(e) if status_code(&e) == Some(404) => Ok(Applied::Unchanged),
            Err(e) => Err(Error::kube(format!(
                "patching pod {}/{name}",
                namespace(set)
            ))(e)),
        }
    }

    /// The headless Service of a set announcing DNS names, before its first pod: created
    /// when missing; one of that name that the set does not own is an error (it would
    /// not give the pods their names), never taken over.
    async fn ensure_service(&self, set: &InstanceSet) -> Result<()> {
        let key = format!(
            "{}/{}",
            objects::set_key(set),
            set.metadata.uid.as_deref().unwrap_or_default()
        );
        if self.services.lock().expect("poisoned").contains(&key) {
            return Ok(());
        }
        let service = objects::headless_service(set)?;
        if self.create(set, &service).await? == Applied::Unchanged {
            let found = self
                .api::<Service>(set)
                .get_opt(set.name())
                .await
                .map_err(Error::kube(format!(
                    "reading service {}",
                    objects::set_key(set)
                )))?;
            if let Some(found) = found
                && !objects::owns_service(set, &found)
            {
                return Err(Error::Conflict(format!(
                    "service {} exists and is not this set's: spec.redis.announce: Hostname needs the headless Service of that name; rename one of them",
                    objects::set_key(set)
                )));
            }
        }
        self.services.lock().expect("poisoned").insert(key);
        Ok(())
    }

    /// Applies one planned action (everything but a switchover).
    async fn apply_write(&self, set: &InstanceSet, action: &Action) -> Result<Applied> {
        match action {
            Action::CreateVolume { ordinal, claim } => {
                let Some(template) = set
                    .spec
                    .volume_claim_templates
                    .iter()
                    .find(|t| t.metadata.name.as_deref() == Some(claim.as_str()))
                else {
                    // The template went away since planning; the next pass will not ask.
                    return Ok(Applied::Unchanged);
                };
                self.create(set, &objects::claim(set, template, *ordinal)?)
                    .await
            }
            Action::Create { ordinal } => {
                if objects::announces_hostname(set) {
                    self.ensure_service(set).await?;
                }
                self.create(set, &objects::pod(set, *ordinal)?).await
            }
            Action::UpdateInPlace { ordinal } => {
                let Some(pod) = self.get_pod(set, *ordinal).await? else {
                    return Ok(Applied::Unchanged);
                };
                match objects::in_place_patch(set, *ordinal, &pod) {
                    Some(patch) => self.patch_pod(set, *ordinal, Patch::Strategic(patch)).await,
                    None => Ok(Applied::Unchanged),
                }
            }
            Action::SetRole {
                ordinal,
                role,
                version,
            } => {
                let Some(pod) = self.get_pod(set, *ordinal).await? else {
                    return Ok(Applied::Unchanged);
                };
                match objects::role_patch(&pod, role.as_deref(), *version, &self.epoch) {
                    Some(patch) => self.patch_pod(set, *ordinal, Patch::Merge(patch)).await,
                    None => Ok(Applied::Unchanged),
                }
            }
            Action::Recreate {
                ordinal,
                why: Why::NodeLost,
            } => {
                // Planned only for a pod on a lost node (instanceRebuild.whenNodeLost:
                // Rebuild). A graceful deletion would wait for the node's kubelet for
                // ever, so this one is forced, as `kubectl delete --force` does.
                let force = DeleteParams::default().grace_period(0);
                self.delete::<Pod>(set, &instance_name(set.name(), *ordinal), &force)
                    .await
            }
            Action::Recreate { ordinal, .. } | Action::Delete { ordinal } => {
                self.delete::<Pod>(
                    set,
                    &instance_name(set.name(), *ordinal),
                    &DeleteParams::default(),
                )
                .await
            }
            Action::DeleteVolume { ordinal, claim } => {
                self.delete::<PersistentVolumeClaim>(
                    set,
                    &volume_name(claim, set.name(), *ordinal),
                    &DeleteParams::default(),
                )
                .await
            }
            // `apply` sends switchovers to Redis; none reaches the API server.
            Action::Switchover { .. } => Err(Error::Unsupported(
                "switchovers go to the instances, not to the API server".into(),
            )),
        }
    }

    /// Makes `to` the Redis primary and points every other instance of the set at it.
    async fn switchover(&self, set: &InstanceSet, from: u32, to: u32) -> Result<Applied, String> {
        let (redis, timeout) = redis_probe(set).ok_or_else(|| {
            format!(
                "InstanceSet {} has no spec.roleProbe.redis; the Kubernetes backend switches over Redis only",
                objects::set_key(set)
            )
        })?;
        let pods = self.list::<Pod>(set).await.map_err(|e| e.chain())?;
        let live: Vec<(u32, &Pod)> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| Some((objects::instance(p, "")?.ordinal, p)))
            .collect();
        let dial = self.dial(
            set,
            &live.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            redis.port,
        );
        // An ordinal's pod name, once it has an IP (the replicas replicate from it).
        let reachable = |ordinal: u32| -> Option<(String, String)> {
            let pod = live.iter().find(|(o, _)| *o == ordinal)?.1;
            Some((pod.metadata.name.clone()?, pod_addr(pod, redis.port)?))
        };
        let (primary, primary_addr) = reachable(to)
            .ok_or_else(|| Error::NoPodIp(instance_name(set.name(), to)).to_string())?;
        // Already done (a repeated pass): the new primary says so and the old one does not.
        if redis::role_via(&dial, &primary, timeout)
            .await
            .ok()
            .as_deref()
            == Some("master")
        {
            let old = match reachable(from) {
                Some((old, _)) => redis::role_via(&dial, &old, timeout).await.ok(),
                None => None,
            };
            if old.as_deref() != Some("master") {
                return Ok(Applied::Unchanged);
            }
        }
        let replicas: Vec<String> = live
            .iter()
            .filter(|(o, _)| *o != to)
            .filter_map(|(o, _)| Some(reachable(*o)?.0))
            .collect();
        let replicas: Vec<&str> = replicas.iter().map(String::as_str).collect();
        redis::switchover_via(&dial, &primary, &primary_addr, &replicas, timeout)
            .await
            .map_err(|e| chain(&e))?;
        Ok(Applied::Wrote)
    }

    async fn probe(
        &self,
        set: &InstanceSet,
        ordinal: u32,
    ) -> flotilla_member::Result<Option<String>> {
        let instance = instance_name(set.name(), ordinal);
        let failed = |reason: String| flotilla_member::Error::Probe {
            instance: format!("{}/{instance}", namespace(set)),
            reason,
        };
        let probe = set
            .spec
            .role_probe
            .as_ref()
            .ok_or_else(|| failed("the set has no spec.roleProbe".into()))?;
        let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
        if probe.redis.is_none() {
            return match &probe.exec {
                Some(exec) => self
                    .exec_role(set, ordinal, &exec.command, timeout)
                    .await
                    .map_err(failed),
                None => Err(failed("spec.roleProbe names no probe".into())),
            };
        }
        let Some((redis, timeout)) = redis_probe(set) else {
            return Err(failed("spec.roleProbe names no probe".into()));
        };
        let pod = self
            .get_pod(set, ordinal)
            .await
            .map_err(|e| failed(e.chain()))?
            .ok_or_else(|| failed(Error::NoPod(instance.clone()).to_string()))?;
        if pod_addr(&pod, redis.port).is_none() {
            return Err(failed(Error::NoPodIp(instance.clone()).to_string()));
        }
        let dial = self.dial(set, &[&pod], redis.port);
        let answer = redis::role_via(&dial, &instance, timeout).await?;
        Ok(Some(redis::map_role(&answer, &redis.role_map)))
    }

    /// Runs an exec probe's command in the pod's first container (through the API
    /// server's exec subresource); its trimmed standard output is the role, empty
    /// output no role. A non-zero exit or no answer within `timeout` is a failure.
    async fn exec_role(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        command: &[String],
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        use tokio::io::AsyncReadExt as _;
        let name = instance_name(set.name(), ordinal);
        let mut params = AttachParams::default()
            .stdin(false)
            .stdout(true)
            .stderr(false);
        if let Some(c) = set
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
        {
            params = params.container(c.name.clone());
        }
        let run = async {
            let mut process = self
                .api::<Pod>(set)
                .exec(&name, command.to_vec(), &params)
                .await
                .map_err(|e| {
                    Error::kube(format!("exec in pod {}/{name}", namespace(set)))(e).chain()
                })?;
            let status = process.take_status();
            let mut out = String::new();
            if let Some(mut stdout) = process.stdout() {
                stdout
                    .read_to_string(&mut out)
                    .await
                    .map_err(|e| format!("reading the command's output: {e}"))?;
            }
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            process
                .join()
                .await
                .map_err(|e| format!("finishing the exec: {e}"))?;
            match status {
                Some(s) if s.status.as_deref() == Some("Failure") => Err(format!(
                    "the command failed: {}",
                    s.message.unwrap_or_default()
                )),
                _ => Ok(out),
            }
        };
        let out = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))??;
        let role = out.trim();
        Ok((!role.is_empty()).then(|| role.to_string()))
    }

    async fn status(&self, set: &InstanceSet, status: &InstanceSetStatus) -> Result<Applied> {
        if set.status.as_ref() == Some(status) {
            return Ok(Applied::Unchanged);
        }
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace(set),
            &resource::instance_sets(),
        );
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": InstanceSetSpec::KIND,
            "status": status,
        });
        api.patch_status(
            set.name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::kube(format!(
            "writing the status of InstanceSet {}",
            objects::set_key(set)
        )))?;
        Ok(Applied::Wrote)
    }

    /// Marks lost nodes and node-local volumes (see [`locality`]). Costs nothing when
    /// every pod is ready; else one Node list and one GET per PersistentVolume bound
    /// to a claim of a pod on a lost node or not scheduled.
    async fn mark_lost(
        &self,
        observed: &mut Observed,
        pods: &[Pod],
        claims: &[PersistentVolumeClaim],
    ) -> Result<()> {
        if !pods.iter().any(locality::suspect) {
            return Ok(());
        }
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("listing nodes"))?
            .items;
        let now = k8s_openapi::jiff::Timestamp::now();
        let api = Api::<PersistentVolume>::all(self.client.clone());
        let mut volumes = Vec::new();
        for name in locality::volumes_to_read(pods, claims, &nodes, now, &self.node_loss) {
            let pv = api
                .get_opt(&name)
                .await
                .map_err(Error::kube(format!("reading persistentvolume {name}")))?;
            volumes.extend(pv);
        }
        locality::mark(
            observed,
            pods,
            claims,
            &nodes,
            &volumes,
            now,
            &self.node_loss,
        );
        Ok(())
    }

    async fn free(&self) -> Result<CapacityModel> {
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(Error::kube("listing nodes"))?;
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed"))
            .await
            .map_err(Error::kube("listing pods of every namespace"))?;
        Ok(capacity::model(&nodes.items, &pods.items))
    }
}

/// The Redis probe and its timeout, when the set probes Redis.
fn redis_probe(set: &InstanceSet) -> Option<(&RedisProbe, Duration)> {
    let probe: &RoleProbe = set.spec.role_probe.as_ref()?;
    let redis = probe.redis.as_ref()?;
    Some((
        redis,
        Duration::from_secs(u64::from(probe.timeout_seconds.max(1))),
    ))
}

impl Backend for KubeBackend {
    async fn observe(&self, set: &InstanceSet) -> flotilla_member::Result<Observed> {
        let pods = self.list::<Pod>(set).await?;
        let claims = self.list::<PersistentVolumeClaim>(set).await?;
        let port = flotilla_api::redis::port_of(&set.spec.template);
        let mut observed = Observed {
            instances: pods
                .iter()
                .filter_map(|p| {
                    let mut i = objects::instance(p, &self.epoch)?;
                    i.endpoint = objects::endpoint(p, set);
                    Some(i)
                })
                .collect(),
            volumes: claims.iter().filter_map(objects::volume).collect(),
            last_switchover: None,
        };
        self.mark_lost(&mut observed, &pods, &claims).await?;
        let seen: BTreeMap<String, String> = pods
            .iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, pod_addr(p, port)?)))
            .collect();
        self.addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(objects::set_key(set), seen);
        Ok(observed)
    }

    async fn apply(&self, set: &InstanceSet, action: &Action) -> flotilla_member::Result<Applied> {
        match action {
            Action::Switchover { from, to, .. } => self
                .switchover(set, *from, *to)
                .await
                .map_err(flotilla_member::Error::Switchover),
            _ => Ok(self.apply_write(set, action).await?),
        }
    }

    async fn write_status(
        &self,
        set: &InstanceSet,
        status: &InstanceSetStatus,
    ) -> flotilla_member::Result<Applied> {
        Ok(self.status(set, status).await?)
    }

    async fn probe_role(
        &self,
        set: &InstanceSet,
        ordinal: u32,
    ) -> flotilla_member::Result<Option<String>> {
        self.probe(set, ordinal).await
    }

    async fn capacity(&self) -> flotilla_member::Result<CapacityModel> {
        Ok(self.free().await?)
    }

    async fn redis(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        args: &[&str],
        timeout: Duration,
    ) -> flotilla_member::Result<redis::Reply> {
        let pod = instance_name(set.name(), ordinal);
        let port = flotilla_api::redis::port_of(&set.spec.template);
        let known = self
            .addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&objects::set_key(set))
            .and_then(|a| a.get(&pod).cloned());
        let addr = match known {
            Some(a) => a,
            None => {
                let found = self
                    .get_pod(set, ordinal)
                    .await
                    .map_err(|e| flotilla_member::Error::Backend(e.chain()))?
                    .ok_or_else(|| {
                        flotilla_member::Error::Backend(Error::NoPod(pod.clone()).to_string())
                    })?;
                pod_addr(&found, port).ok_or_else(|| {
                    flotilla_member::Error::Backend(Error::NoPodIp(pod.clone()).to_string())
                })?
            }
        };
        let dial = PodDial {
            api: self.api::<Pod>(set),
            access: self.pod_access,
            port,
            addrs: BTreeMap::from([(pod.clone(), addr)]),
        };
        redis::command_via(&dial, &pod, args, timeout).await
    }

    /// Through port-forward, an address of a pod of this cluster in the set's namespace
    /// (a sentinel of the shard, named by its IP or its `<pod>.<service>.<ns>.svc` name)
    /// is reached through that pod's `pods/portforward`; any other address (an instance
    /// of another member) directly.
    async fn redis_at(
        &self,
        set: &InstanceSet,
        endpoint: &str,
        args: &[&str],
        timeout: Duration,
    ) -> flotilla_member::Result<redis::Reply> {
        if self.pod_access != PodAccess::PortForward {
            return redis::command(endpoint, args, timeout).await;
        }
        let Some((pod, port)) = self
            .pod_at(set, endpoint)
            .await
            .map_err(|e| flotilla_member::Error::Backend(e.chain()))?
        else {
            return redis::command(endpoint, args, timeout).await;
        };
        let dial = PodDial {
            api: self.api::<Pod>(set),
            access: self.pod_access,
            port,
            addrs: BTreeMap::new(),
        };
        redis::command_via(&dial, &pod, args, timeout).await
    }
}

impl KubeBackend {
    /// The pod of the set's namespace that `endpoint` (`host:port`) names, and the port:
    /// a `<pod>.<service>.<ns>.svc` name, an address the backend saw on its last look at
    /// a set of the namespace, else the pod that has that IP now (a field-selected list).
    /// `None` when no pod here has it.
    async fn pod_at(&self, set: &InstanceSet, endpoint: &str) -> Result<Option<(String, u16)>> {
        let Some((host, port)) = endpoint.rsplit_once(':').and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().ok()?,
            ))
        }) else {
            return Ok(None);
        };
        let ns = namespace(set);
        for suffix in [".svc", ".svc.cluster.local"] {
            if let Some(name) = host.strip_suffix(suffix).and_then(|h| h.strip_suffix(ns))
                && let Some((pod, _service)) =
                    name.strip_suffix('.').and_then(|n| n.split_once('.'))
                && !pod.is_empty()
            {
                return Ok(Some((pod.to_string(), port)));
            }
        }
        let prefix = format!("{ns}/");
        let known = self
            .addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .flat_map(|(_, pods)| pods.iter())
            .find(|(_, addr)| {
                addr.rsplit_once(':')
                    .is_some_and(|(h, _)| h.trim_start_matches('[').trim_end_matches(']') == host)
            })
            .map(|(pod, _)| pod.clone());
        if let Some(pod) = known {
            return Ok(Some((pod, port)));
        }
        let lookup = format!("{ns}/{host}");
        let cached = self
            .ip_lookups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&lookup)
            .filter(|(_, at)| at.elapsed() < IP_LOOKUP_TTL)
            .map(|(pod, _)| pod.clone());
        if let Some(pod) = cached {
            return Ok(pod.map(|p| (p, port)));
        }
        let found = self
            .api::<Pod>(set)
            .list(&ListParams::default().fields(&format!("status.podIP={host}")))
            .await
            .map_err(Error::kube(format!("listing pods of {ns} with IP {host}")))?;
        let pod = found.items.into_iter().find_map(|p| p.metadata.name);
        self.ip_lookups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(lookup, (pod.clone(), std::time::Instant::now()));
        Ok(pod.map(|p| (p, port)))
    }
}
