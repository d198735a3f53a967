//! The simulated member: an in-memory cluster, like KWOK, for `flotilla dev`, the
//! end-to-end tests and the scale benchmarks.
//!
//! Nodes come from node groups (the shape of the `Cluster` capacity model). Instances
//! are scheduled first-fit on nodes with room for their requests, one `pods` slot
//! each, never more than `maxInstancesPerNode` of a set on a node, and preferably on a
//! node with none of the set yet (so instances of different roles do not share a
//! node while there are enough nodes): the shared model of [`crate::nodes`]. Time is
//! logical: [`Sim::advance`] moves it, so tests are exact and fast; `Pending` turns
//! `Running` after `start_delay`, `Running` turns ready after `ready_delay`. Roles are simulated: a set with an exclusive role
//! elects its first ready instance, a switchover moves the role, and faults (kill an
//! instance, fail a node, fail the next switchover) can be injected. A `spec.redis`
//! set's instances run an emulated Redis instead ([`crate::sim_redis`]): the Redis
//! engine wires them, and the role is whatever that Redis says.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_api::decode;
use flotilla_api::{CapacityModel, InstanceSet, InstanceSetStatus, Invalid, NodeGroup};
use flotilla_instanceset::{Action, Instance, Observed, Phase, Revision, Volume};

use crate::backend::{Applied, Backend};
use crate::latency::{RequestLatency, Requests};
use crate::nodes::{Demand, Nodes, check_groups, per_node as count_per_node};
use crate::redis::Reply;
use crate::sim_redis::{self, SimRedis};
use serde::Deserialize;

use crate::{Error, Result};

/// How a simulated member looks and behaves.
///
/// As a file (`--sim-config`), YAML or JSON:
///
/// ```yaml
/// nodeGroups:                       # as in the Cluster capacity model
/// - {count: 20, free: {cpu: "16", memory: 64Gi, pods: 110}}
/// startDelayMs: 2000
/// readyDelayMs: 1000
/// localVolumes: false
/// requestLatencyMs: 0              # every request waits this long (an API server's)
/// ```
#[derive(Clone, Debug, Default)]
pub struct SimConfig {
    /// Its nodes: `count` nodes each with `free` allocatable resources.
    pub node_groups: Vec<NodeGroup>,
    /// From created to running.
    pub start_delay: Duration,
    /// From running (or restarted in place) to ready.
    pub ready_delay: Duration,
    /// Volumes are node-local (like local persistent volumes): bound to the node of the
    /// first instance that uses them, which can then only run there.
    pub local_volumes: bool,
    /// Every request (observe, apply, status, role probe) waits this long, in real
    /// time, as on a loaded API server.
    pub request_latency: Duration,
}

/// The file form of [`SimConfig`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SimConfigFile {
    node_groups: Vec<NodeGroup>,
    #[serde(default)]
    start_delay_ms: u64,
    #[serde(default)]
    ready_delay_ms: u64,
    #[serde(default)]
    local_volumes: bool,
    #[serde(default)]
    request_latency_ms: u64,
}

impl SimConfig {
    /// Reads a simulated member's configuration (YAML or JSON); every problem names
    /// its field. Unknown fields are refused: a typo here would silently change the
    /// simulated cluster.
    pub fn from_text(text: &str) -> Result<SimConfig, Invalid> {
        let mut docs = decode::split(text)?;
        if docs.len() != 1 {
            return Err(Invalid::one(
                "",
                format!("expected one document, found {}", docs.len()),
            ));
        }
        let decoded = decode::decode::<SimConfigFile>(docs.remove(0))?;
        if let Some(w) = decoded.warnings.first() {
            return Err(Invalid::one(w.path.clone(), "unknown field"));
        }
        let file = decoded.object;
        let problems = check_groups(&file.node_groups, "nodeGroups");
        if !problems.is_empty() {
            return Err(Invalid(problems));
        }
        Ok(SimConfig {
            node_groups: file.node_groups,
            start_delay: Duration::from_millis(file.start_delay_ms),
            ready_delay: Duration::from_millis(file.ready_delay_ms),
            local_volumes: file.local_volumes,
            request_latency: Duration::from_millis(file.request_latency_ms),
        })
    }
}

#[derive(Debug)]
struct Pod {
    node: Option<usize>,
    revision: Revision,
    phase: Phase,
    ready: bool,
    /// When the phase or readiness clock last started.
    since: Duration,
    role: Option<String>,
    role_version: u64,
    demand: Demand,
    /// A `spec.redis` set's instance: the slice it was made or last updated from (what
    /// its next process starts with), and its process while it runs (`sim_redis`).
    boot: Option<Box<InstanceSet>>,
    redis: Option<SimRedis>,
    /// Its process ran before (a restart: its volume holds data from before).
    restarted: bool,
}

#[derive(Debug, Default)]
struct SetSim {
    pods: BTreeMap<u32, Pod>,
    /// Volumes by (claim, ordinal), with the node they are bound to (local storage).
    volumes: BTreeMap<(String, u32), Option<usize>>,
    /// The exclusive role's holder, and the role names (exclusive, other).
    primary: Option<u32>,
    exclusive_role: Option<String>,
    other_role: Option<String>,
    /// The federation put the exclusive roles in another member: elect no holder here.
    elsewhere: bool,
    fail_next_switchover: Option<String>,
    status: Option<InstanceSetStatus>,
}

#[derive(Debug)]
struct State {
    now: Duration,
    start_delay: Duration,
    ready_delay: Duration,
    local_volumes: bool,
    nodes: Nodes,
    sets: BTreeMap<String, SetSim>,
    writes: u64,
    /// Simulated Redis processes started, for their run ids.
    processes: u64,
}

/// A simulated member cluster.
#[derive(Debug)]
pub struct Sim {
    state: Mutex<State>,
    latency: RequestLatency,
}

/// Follows the federation's choice of the member holding the exclusive roles: a member
/// told they are elsewhere steps its holder down (like a Redis primary demoted to a
/// replica of the primary in the other cluster) and elects none.
fn note_home(s: &mut SetSim, set: &InstanceSet) {
    s.elsewhere = flotilla_api::instanceset::exclusive_roles_elsewhere(set);
    if s.elsewhere {
        s.primary = None;
    }
}

fn key(set: &InstanceSet) -> String {
    format!("{}/{}", set.namespace().unwrap_or("default"), set.name())
}

impl Sim {
    /// A member with the configured nodes, at time zero.
    pub fn new(config: &SimConfig) -> Sim {
        Sim {
            state: Mutex::new(State {
                now: Duration::ZERO,
                start_delay: config.start_delay,
                ready_delay: config.ready_delay,
                local_volumes: config.local_volumes,
                nodes: Nodes::new(&config.node_groups),
                sets: BTreeMap::new(),
                writes: 0,
                processes: 0,
            }),
            latency: RequestLatency::new(config.request_latency),
        }
    }

    /// The requests served, and the most in flight at once.
    pub fn requests(&self) -> Requests {
        self.latency.requests()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the clock: schedules pending instances, starts and readies them, and
    /// elects a holder for every exclusive role that has none.
    pub fn advance(&self, by: Duration) {
        let mut st = self.lock();
        st.now += by;
        let State {
            now,
            start_delay,
            ready_delay,
            local_volumes,
            nodes,
            sets,
            processes,
            ..
        } = &mut *st;
        for set in sets.values_mut() {
            let mut counts = per_node(set);
            let SetSim { pods, volumes, .. } = &mut *set;
            for (&ordinal, pod) in pods.iter_mut() {
                if pod.node.is_none() && pod.phase == Phase::Pending {
                    pod.node = nodes.place(&pod.demand, &counts, bound_node(volumes, ordinal));
                    if let Some(idx) = pod.node {
                        *counts.entry(idx).or_insert(0) += 1;
                        pod.since = *now;
                        if *local_volumes {
                            bind(volumes, ordinal, idx);
                        }
                    }
                }
                if pod.phase == Phase::Pending
                    && pod.node.is_some()
                    && *now >= pod.since + *start_delay
                {
                    pod.phase = Phase::Running;
                    pod.since = *now;
                    start_redis(pod, ordinal, nodes, processes);
                }
                if pod.phase == Phase::Running && !pod.ready && *now >= pod.since + *ready_delay {
                    pod.ready = true;
                }
            }
            // A Redis set's primary is whatever its emulated Redis says (`sim_redis`).
            let redis = set.pods.values().any(|p| p.boot.is_some());
            if set.exclusive_role.is_some() && !set.elsewhere && set.primary.is_none() && !redis {
                set.primary = set.pods.iter().find(|(_, p)| p.ready).map(|(&o, _)| o);
            }
        }
    }

    /// For every set with an instance that will change on its own (start, or turn
    /// ready), how long until the first such change: what a watch would report next.
    /// An instance waiting for room on a node is not counted (room comes from other
    /// changes).
    pub fn next_changes(&self) -> BTreeMap<String, Duration> {
        let st = self.lock();
        st.sets
            .iter()
            .filter_map(|(key, s)| {
                let at = s
                    .pods
                    .values()
                    .filter_map(|p| match (p.phase, p.node, p.ready) {
                        (Phase::Pending, Some(_), _) => Some(p.since + st.start_delay),
                        (Phase::Running, _, false) => Some(p.since + st.ready_delay),
                        _ => None,
                    })
                    .min()?;
                Some((key.clone(), at.saturating_sub(st.now)))
            })
            .collect()
    }

    /// The logical time.
    pub fn now(&self) -> Duration {
        self.lock().now
    }

    /// Requests that changed something, since the start.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Kills an instance: it fails and must be recreated.
    pub fn kill(&self, set: &InstanceSet, ordinal: u32) {
        if let Some(pod) = self
            .lock()
            .sets
            .get_mut(&key(set))
            .and_then(|s| s.pods.get_mut(&ordinal))
        {
            pod.phase = Phase::Failed;
            pod.ready = false;
            pod.redis = None;
        }
    }

    /// Fails a node: every instance on it fails, and nothing is scheduled there again.
    pub fn fail_node(&self, name: &str) {
        let mut st = self.lock();
        let Some(idx) = st.nodes.fail(name) else {
            return;
        };
        for set in st.sets.values_mut() {
            for pod in set.pods.values_mut().filter(|p| p.node == Some(idx)) {
                pod.phase = Phase::Failed;
                pod.ready = false;
                pod.redis = None;
            }
        }
    }

    /// Makes the next switchover of `set` fail with `message`.
    pub fn fail_next_switchover(&self, set: &InstanceSet, message: &str) {
        self.lock()
            .sets
            .entry(key(set))
            .or_default()
            .fail_next_switchover = Some(message.to_string());
    }

    /// The node an instance runs on.
    pub fn node_of(&self, set: &InstanceSet, ordinal: u32) -> Option<String> {
        let st = self.lock();
        let idx = st.sets.get(&key(set))?.pods.get(&ordinal)?.node?;
        Some(st.nodes.name(idx).to_string())
    }

    /// The last status written for `set`.
    pub fn status(&self, set: &InstanceSet) -> Option<InstanceSetStatus> {
        self.lock()
            .sets
            .get(&key(set))
            .and_then(|s| s.status.clone())
    }

    /// Forgets a removed set once none of its instances is left: its status and role
    /// bookkeeping go, and with them its entry unless volumes of it are retained
    /// (`whenDeleted: Retain`: they stay, as PVCs would). Nothing while instances exist.
    pub fn forget(&self, set: &InstanceSet) {
        let mut st = self.lock();
        let k = key(set);
        let Some(s) = st.sets.get_mut(&k) else {
            return;
        };
        if !s.pods.is_empty() {
            return;
        }
        if s.volumes.is_empty() {
            st.sets.remove(&k);
        } else {
            *s = SetSim {
                volumes: std::mem::take(&mut s.volumes),
                ..SetSim::default()
            };
        }
    }

    /// How many sets the simulated member keeps anything for.
    pub fn sets_kept(&self) -> usize {
        self.lock().sets.len()
    }

    /// The exclusive role's holder in `set`, as the simulated replication sees it.
    pub fn primary(&self, set: &InstanceSet) -> Option<u32> {
        self.lock().sets.get(&key(set)).and_then(|s| s.primary)
    }
}

/// Instances of one set per node index.
fn per_node(set: &SetSim) -> BTreeMap<usize, u32> {
    count_per_node(set.pods.values().filter_map(|p| p.node))
}

/// The node an ordinal's volumes are bound to, if any.
fn bound_node(volumes: &BTreeMap<(String, u32), Option<usize>>, ordinal: u32) -> Option<usize> {
    volumes
        .iter()
        .find(|((_, o), _)| *o == ordinal)
        .and_then(|(_, node)| *node)
}

/// Binds an ordinal's unbound volumes to `node`.
fn bind(volumes: &mut BTreeMap<(String, u32), Option<usize>>, ordinal: u32, node: usize) {
    for ((_, o), bound) in volumes.iter_mut() {
        if *o == ordinal && bound.is_none() {
            *bound = Some(node);
        }
    }
}

/// A simulated instance's address: a name that says where it is (no network here).
fn endpoint(set: &InstanceSet, ordinal: u32, node: &str) -> String {
    format!(
        "{}-{ordinal}.{node}.sim:{}",
        set.name(),
        flotilla_api::redis::port_of(&set.spec.template)
    )
}

/// Starts a Redis instance's process, as the launch rules say (`flotilla_redis::startup`).
fn start_redis(pod: &mut Pod, ordinal: u32, nodes: &Nodes, processes: &mut u64) {
    let (Some(set), Some(node)) = (pod.boot.as_deref(), pod.node) else {
        return;
    };
    let own = endpoint(set, ordinal, nodes.name(node));
    let start = flotilla_redis::startup(set, ordinal, &own, pod.restarted);
    *processes += 1;
    pod.redis = Some(SimRedis::start(
        format!("sim{:036}", *processes),
        &start,
        flotilla_redis::engine::dynamic_config(set),
    ));
    pod.restarted = true;
}

/// The requests themselves, served at once (the latency is [`Backend`]'s).
impl Sim {
    fn observe_now(&self, set: &InstanceSet) -> Result<Observed> {
        let mut st = self.lock();
        if let Some(s) = st.sets.get_mut(&key(set)) {
            note_home(s, set);
        }
        let Some(s) = st.sets.get(&key(set)) else {
            return Ok(Observed::default());
        };
        let instances = s
            .pods
            .iter()
            .map(|(&ordinal, p)| Instance {
                ordinal,
                revision: p.revision.revision.clone(),
                shape: p.revision.shape.clone(),
                phase: p.phase,
                ready: p.ready,
                deleting: false,
                node: p.node.map(|i| st.nodes.name(i).to_string()),
                node_lost: p.node.is_some_and(|i| st.nodes.is_failed(i)),
                role: p.role.clone(),
                role_version: p.role_version,
                probe: None,
                // Simulated instances have no network: a name that says where it is.
                endpoint: p.node.map(|i| endpoint(set, ordinal, st.nodes.name(i))),
            })
            .collect();
        let volumes = s
            .volumes
            .keys()
            .map(|(claim, ordinal)| Volume {
                claim: claim.clone(),
                ordinal: *ordinal,
                deleting: false,
                node_local: st.local_volumes,
            })
            .collect();
        Ok(Observed {
            instances,
            volumes,
            last_switchover: None,
        })
    }

    fn apply_now(&self, set: &InstanceSet, action: &Action) -> Result<Applied> {
        let mut st = self.lock();
        let now = st.now;
        let State {
            nodes,
            sets,
            writes,
            local_volumes,
            processes,
            ..
        } = &mut *st;
        let s = sets.entry(key(set)).or_default();
        note_home(s, set);
        s.exclusive_role = set
            .spec
            .roles
            .iter()
            .find(|r| r.exclusive)
            .map(|r| r.name.clone());
        s.other_role = set
            .spec
            .roles
            .iter()
            .find(|r| !r.exclusive)
            .map(|r| r.name.clone());
        let applied = match action {
            Action::CreateVolume { ordinal, claim } => {
                let key = (claim.clone(), *ordinal);
                wrote(s.volumes.insert(key, None).is_none())
            }
            Action::DeleteVolume { ordinal, claim } => {
                wrote(s.volumes.remove(&(claim.clone(), *ordinal)).is_some())
            }
            Action::Create { ordinal } => {
                if s.pods.contains_key(ordinal) {
                    Applied::Unchanged
                } else {
                    let demand =
                        Demand::of(&set.spec).map_err(|e| Error::Backend(e.to_string()))?;
                    let mut pod = Pod {
                        node: None,
                        revision: Revision::of(&set.spec),
                        phase: Phase::Pending,
                        ready: false,
                        since: now,
                        role: None,
                        role_version: 0,
                        demand,
                        boot: set.spec.redis.is_some().then(|| Box::new(set.clone())),
                        redis: None,
                        restarted: false,
                    };
                    pod.node =
                        nodes.place(&pod.demand, &per_node(s), bound_node(&s.volumes, *ordinal));
                    if let Some(idx) = pod.node
                        && *local_volumes
                    {
                        bind(&mut s.volumes, *ordinal, idx);
                    }
                    s.pods.insert(*ordinal, pod);
                    Applied::Wrote
                }
            }
            Action::SetRole {
                ordinal,
                role,
                version,
            } => match s.pods.get_mut(ordinal) {
                Some(p) if p.role != *role || p.role_version < *version => {
                    p.role = role.clone();
                    p.role_version = *version;
                    Applied::Wrote
                }
                _ => Applied::Unchanged,
            },
            Action::Switchover { to, .. } => {
                if let Some(message) = s.fail_next_switchover.take() {
                    return Err(Error::Switchover(message));
                }
                if s.primary == Some(*to) {
                    Applied::Unchanged
                } else if s.pods.get(to).is_some_and(|p| p.ready) {
                    s.primary = Some(*to);
                    Applied::Wrote
                } else {
                    return Err(Error::Switchover(format!(
                        "instance {to} is not ready to take over"
                    )));
                }
            }
            Action::UpdateInPlace { ordinal } => {
                let desired = Revision::of(&set.spec);
                match s.pods.get_mut(ordinal) {
                    Some(p) if p.revision != desired => {
                        p.revision = desired;
                        p.ready = false;
                        p.since = now;
                        if p.boot.is_some() {
                            // The container restarts with the new slice's command line.
                            p.boot = Some(Box::new(set.clone()));
                            p.redis = None;
                            if p.phase == Phase::Running {
                                start_redis(p, *ordinal, nodes, processes);
                            }
                        }
                        Applied::Wrote
                    }
                    _ => Applied::Unchanged,
                }
            }
            Action::Recreate { ordinal, .. } | Action::Delete { ordinal } => {
                match s.pods.remove(ordinal) {
                    Some(p) => {
                        if let Some(idx) = p.node {
                            nodes.release(idx, &p.demand);
                        }
                        if matches!(action, Action::Delete { .. }) && s.primary == Some(*ordinal) {
                            s.primary = None;
                        }
                        Applied::Wrote
                    }
                    None => Applied::Unchanged,
                }
            }
        };
        if applied == Applied::Wrote {
            *writes += 1;
        }
        Ok(applied)
    }

    fn write_status_now(&self, set: &InstanceSet, status: &InstanceSetStatus) -> Result<Applied> {
        let mut st = self.lock();
        let s = st.sets.entry(key(set)).or_default();
        if s.status.as_ref() == Some(status) {
            return Ok(Applied::Unchanged);
        }
        s.status = Some(status.clone());
        st.writes += 1;
        Ok(Applied::Wrote)
    }

    fn probe_role_now(&self, set: &InstanceSet, ordinal: u32) -> Result<Option<String>> {
        let st = self.lock();
        let s = st.sets.get(&key(set));
        let pod = s.and_then(|s| s.pods.get(&ordinal));
        match (s, pod) {
            (Some(s), Some(p)) if p.phase == Phase::Running && p.ready => {
                let primary = match &p.redis {
                    Some(r) => r.master.is_none(),
                    None => s.primary == Some(ordinal),
                };
                Ok(if primary {
                    s.exclusive_role.clone()
                } else {
                    s.other_role.clone()
                })
            }
            _ => Err(Error::Probe {
                instance: format!("{}-{ordinal}", set.name()),
                reason: "not running".into(),
            }),
        }
    }
}

impl Backend for Sim {
    async fn observe(&self, set: &InstanceSet) -> Result<Observed> {
        self.latency.request(|| self.observe_now(set)).await
    }

    async fn apply(&self, set: &InstanceSet, action: &Action) -> Result<Applied> {
        self.latency.request(|| self.apply_now(set, action)).await
    }

    async fn write_status(&self, set: &InstanceSet, status: &InstanceSetStatus) -> Result<Applied> {
        self.latency
            .request(|| self.write_status_now(set, status))
            .await
    }

    async fn probe_role(&self, set: &InstanceSet, ordinal: u32) -> Result<Option<String>> {
        self.latency
            .request(|| self.probe_role_now(set, ordinal))
            .await
    }

    async fn capacity(&self) -> Result<CapacityModel> {
        Ok(self.lock().nodes.capacity())
    }

    async fn redis(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        args: &[&str],
        _timeout: Duration,
    ) -> Result<Reply> {
        let mut st = self.lock();
        let State { nodes, sets, .. } = &mut *st;
        let unreachable = |why: &str| Error::Backend(format!("{}-{ordinal}: {why}", set.name()));
        let s = sets
            .get_mut(&key(set))
            .ok_or_else(|| unreachable("no such instance"))?;
        let addr = |o: u32, p: &Pod| {
            let node = p.node?;
            let boot = p.boot.as_deref()?;
            Some(endpoint(boot, o, nodes.name(node)))
        };
        let (own, mut me) = match s.pods.get(&ordinal) {
            Some(p) if p.phase == Phase::Running => match (&p.redis, addr(ordinal, p)) {
                (Some(r), Some(own)) => (own, r.clone()),
                _ => return Err(unreachable("not a running Redis instance")),
            },
            _ => return Err(unreachable("not running")),
        };
        let (reply, promoted) = {
            let others: Vec<(String, &SimRedis)> = s
                .pods
                .iter()
                .filter(|(o, p)| **o != ordinal && p.phase == Phase::Running)
                .filter_map(|(&o, p)| Some((addr(o, p)?, p.redis.as_ref()?)))
                .collect();
            let peers: sim_redis::Peers<'_> =
                others.iter().map(|(a, r)| (a.as_str(), *r)).collect();
            sim_redis::command(&mut me, &own, args, &peers)
        };
        if let Some((target, state)) = promoted {
            let nodes = &*nodes;
            if let Some(p) = s.pods.iter_mut().find_map(|(&o, p)| {
                let a = p
                    .node
                    .zip(p.boot.as_deref())
                    .map(|(n, b)| endpoint(b, o, nodes.name(n)));
                (a.as_deref() == Some(target.as_str())).then_some(p)
            }) {
                p.redis = Some(state);
            }
        }
        if let Some(p) = s.pods.get_mut(&ordinal) {
            p.redis = Some(me);
        }
        Ok(reply)
    }
}

fn wrote(changed: bool) -> Applied {
    if changed {
        Applied::Wrote
    } else {
        Applied::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_read_with_field_errors() {
        let c = SimConfig::from_text(
            "nodeGroups: [{count: 3, free: {cpu: '8', memory: 32Gi, pods: 110}}]\nstartDelayMs: 1500\nlocalVolumes: true\n",
        )
        .unwrap();
        assert_eq!(c.node_groups[0].count, 3);
        assert_eq!(c.start_delay, Duration::from_millis(1500));
        assert!(c.local_volumes);
        let e = SimConfig::from_text("nodeGroups: [{count: 1, free: {cpu: lots}}]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nodeGroups[0].free.cpu: \"lots\" is not a quantity (examples: \"2\", \"500m\", \"4Gi\", \"1e3\")"
        );
        let e = SimConfig::from_text("nodeGroups: []\nreadyDelay: 3\n").unwrap_err();
        assert_eq!(e.to_string(), "readyDelay: unknown field");
        let e = SimConfig::from_text("nodeGroups: [{count: many}]\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("nodeGroups[0].count: invalid type"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_removed_set_is_forgotten_once_its_instances_are_gone_but_not_its_retained_volumes() {
        let sim = Sim::new(
            &SimConfig::from_text("nodeGroups: [{count: 1, free: {cpu: '4', pods: 10}}]\n")
                .unwrap(),
        );
        let set: InstanceSet = serde_yaml::from_str(
            "apiVersion: flotilla.io/v1alpha1\nkind: InstanceSet\nmetadata: {name: cache, namespace: default}\n\
             spec:\n  ordinals: {ranges: [{start: 0, end: 0}]}\n  template: {spec: {containers: [{name: redis, image: 'redis:7'}]}}\n  \
             volumeClaimTemplates: [{metadata: {name: data}}]\n",
        )
        .unwrap();
        let volume = Action::CreateVolume {
            ordinal: 0,
            claim: "data".into(),
        };
        sim.apply(&set, &volume).await.unwrap();
        sim.apply(&set, &Action::Create { ordinal: 0 })
            .await
            .unwrap();
        sim.write_status(&set, &InstanceSetStatus::default())
            .await
            .unwrap();
        sim.forget(&set);
        assert!(sim.status(&set).is_some(), "its instance still runs");

        sim.apply(&set, &Action::Delete { ordinal: 0 })
            .await
            .unwrap();
        sim.forget(&set);
        assert_eq!(sim.status(&set), None);
        assert_eq!(
            sim.observe(&set).await.unwrap().volumes.len(),
            1,
            "retained"
        );
        assert_eq!(sim.sets_kept(), 1);

        let delete = Action::DeleteVolume {
            ordinal: 0,
            claim: "data".into(),
        };
        sim.apply(&set, &delete).await.unwrap();
        sim.forget(&set);
        assert_eq!(sim.sets_kept(), 0);
    }

    #[test]
    fn the_example_config_is_valid() {
        let c =
            SimConfig::from_text(include_str!("../../../deploy/examples/sim-member.yaml")).unwrap();
        assert_eq!(c.node_groups.iter().map(|g| g.count).sum::<u32>(), 24);
    }
}
