//! [`ProcessBackend`]: `flotilla_member::Backend` over local processes.
//!
//! ```text
//!   observe   state in memory (adopted from the state files at start)
//!             ├ reap our children (try_wait), check /proc (zombie? same start time?)
//!             │   alive ─▶ Running, ready once PING answers PONG / the port accepts
//!             │   gone  ─▶ Failed (the planner recreates it)
//!             └ volumes: volumes/<ns>/*.json of the set
//!   Create    place on a node ─▶ address (kept, else the first free) ─▶ launch()
//!             ─▶ state file (no pid) ─▶ spawn (own process group, log appended)
//!             ─▶ state file (pid, start time)
//!   Delete    SIGTERM to its group, grace (terminationGracePeriodSeconds, else 10 s),
//!             SIGKILL ─▶ reap ─▶ state file and instance dir removed (and the address
//!             file, for good; a Recreate keeps the address)
//! ```
//!
//! The processes do not depend on the agent: they run in their own process group (a
//! Ctrl-C to the agent's group does not reach them), dropping the backend leaves them
//! running, and a backend created again over the same data directory adopts them
//! (same pids, nothing restarted). An instance that keeps dying soon after it starts
//! is restarted with a growing delay, saying why and where its log is.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use flotilla_api::quantity;
use flotilla_api::{CapacityModel, InstanceSet, InstanceSetStatus};
use flotilla_instanceset::{Action, Instance, Observed, Phase, Revision, Volume};
use flotilla_member::latency::RequestLatency;
use flotilla_member::nodes::{Demand, Nodes, per_node};
use flotilla_member::redis::{self, Reply};
use flotilla_member::{Applied, Backend};
use nix::sys::signal::Signal;

use crate::address::{self, Block};
use crate::config::ProcessConfig;
use crate::launch::{self, Binaries, Readiness};
use crate::os;
use crate::state::{self, Layout, Record, VolumeMeta};
use crate::{Error, Result};

/// How long a readiness check (a connection, a `PING`) may take.
const READY_TIMEOUT: Duration = Duration::from_millis(500);
/// The grace between SIGTERM and SIGKILL when the template sets none.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long a process may take to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stopping process is checked.
const POLL: Duration = Duration::from_millis(20);
/// An instance that dies sooner than this after it started crashed; one that ran
/// longer starts afresh.
const CRASH_WINDOW: Duration = Duration::from_secs(10);
/// The longest delay before restarting an instance that keeps crashing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A member whose instances are processes on this host (see the module
/// documentation).
#[derive(Debug)]
pub struct ProcessBackend {
    layout: Layout,
    /// `<dataDir>/lock`, locked while this backend lives: two agents over one data
    /// directory would both start and stop the same instances.
    _lock: std::fs::File,
    block: Block,
    binaries: Binaries,
    state: Mutex<State>,
    latency: RequestLatency,
}

#[derive(Debug)]
struct State {
    nodes: Nodes,
    /// By `namespace/name`.
    sets: BTreeMap<String, SetProcs>,
}

#[derive(Debug, Default)]
struct SetProcs {
    instances: BTreeMap<u32, Proc>,
    /// Consecutive early deaths per ordinal, kept across recreates.
    crashes: BTreeMap<u32, Crashes>,
    status: Option<InstanceSetStatus>,
    /// Since when observations find a running instance not ready yet (none: every
    /// running instance was ready at the last one).
    starting: Option<std::time::Instant>,
}

#[derive(Debug)]
struct Proc {
    record: Record,
    /// Our child, when this backend started it: reaped when it ends.
    child: Option<Child>,
    /// When this backend started it (unknown for an adopted one).
    started: Option<Instant>,
    node: Option<usize>,
    demand: Demand,
    /// The process is gone (exited, killed, or never started).
    dead: bool,
    /// How it ended, when this backend reaped it (`exit status: 1`).
    exit: Option<String>,
    /// This backend is stopping it: its end is no news.
    stopping: bool,
}

#[derive(Clone, Debug)]
struct Crashes {
    count: u32,
    at: Instant,
    why: String,
}

fn key_of(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn namespace(set: &InstanceSet) -> &str {
    set.namespace().unwrap_or("default")
}

fn key(set: &InstanceSet) -> String {
    key_of(namespace(set), set.name())
}

impl ProcessBackend {
    /// A backend over `config.data_dir` (created if missing). Every instance its state
    /// files name is adopted: a live process is kept as it is (same pid), a gone one is
    /// reported `Failed` so the planner recreates it.
    pub fn new(config: &ProcessConfig) -> Result<ProcessBackend> {
        state::create_dir(&config.data_dir)?;
        let root = config
            .data_dir
            .canonicalize()
            .map_err(Error::io("resolving", &config.data_dir))?;
        if root.to_str().is_none() {
            return Err(Error::Io {
                what: "using",
                path: root,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the data directory's path must be UTF-8 (it goes into config files)",
                ),
            });
        }
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Busy(root)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("locking", &lock_path)(e));
            }
        }
        let backend = ProcessBackend {
            _lock: lock,
            layout: Layout::new(&root),
            block: config
                .address_block
                .map_or_else(|| Block::for_dir(&root), Block),
            binaries: Binaries(config.binaries.clone()),
            latency: RequestLatency::new(config.request_latency),
            state: Mutex::new(State {
                nodes: Nodes::new(&config.node_groups),
                sets: BTreeMap::new(),
            }),
        };
        backend.adopt()?;
        Ok(backend)
    }

    /// Reads every state file back (see [`ProcessBackend::new`]).
    fn adopt(&self) -> Result<()> {
        let mut st = self.lock();
        let State { nodes, sets } = &mut *st;
        let (mut alive, mut gone) = (0, 0);
        for mut record in self.layout.records()? {
            let path = self
                .layout
                .state(&record.namespace, &record.set, record.ordinal);
            if record.pid.is_none()
                && let Some((pid, start)) = os::find_marked(&path.to_string_lossy())
            {
                // Started just before the last agent died, before its pid was written.
                record.pid = Some(pid);
                record.start_time = Some(start);
                state::write_json(&path, &record)?;
            }
            let live = match (record.pid, record.start_time) {
                (Some(pid), Some(start)) => os::alive(pid, start),
                _ => false,
            };
            if live {
                alive += 1;
            } else {
                gone += 1;
            }
            let demand = Demand {
                requests: record
                    .requests
                    .iter()
                    .filter_map(|(r, q)| Some((r.clone(), quantity::parse(q).ok()?)))
                    .collect(),
                max_per_node: None,
            };
            let node = record.node.as_deref().and_then(|n| nodes.find(n));
            if let Some(idx) = node {
                nodes.reserve(idx, &demand);
            }
            sets.entry(key_of(&record.namespace, &record.set))
                .or_default()
                .instances
                .insert(
                    record.ordinal,
                    Proc {
                        record,
                        child: None,
                        started: None,
                        node,
                        demand,
                        dead: !live,
                        exit: None,
                        stopping: false,
                    },
                );
        }
        if alive + gone > 0 {
            tracing::info!(
                data_dir = %self.layout.root().display(),
                alive,
                gone,
                "adopted the instances of an earlier agent"
            );
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The data directory (canonical).
    pub fn data_dir(&self) -> &Path {
        self.layout.root()
    }

    /// Where everything lives under the data directory.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The member's block of loopback addresses.
    pub fn block(&self) -> Block {
        self.block
    }

    /// The last status written for `set`.
    pub fn status(&self, set: &InstanceSet) -> Option<InstanceSetStatus> {
        self.lock()
            .sets
            .get(&key(set))
            .and_then(|s| s.status.clone())
    }

    /// Forgets a removed set once none of its instances is left (its status, its
    /// crash counts). Nothing while instances exist; volumes are on disk and stay.
    pub fn forget(&self, set: &InstanceSet) {
        let mut st = self.lock();
        let k = key(set);
        if st.sets.get(&k).is_some_and(|s| s.instances.is_empty()) {
            st.sets.remove(&k);
        }
    }

    /// What is recorded about instance `ordinal` of `set`.
    pub fn record(&self, set: &InstanceSet, ordinal: u32) -> Option<Record> {
        self.lock()
            .sets
            .get(&key(set))
            .and_then(|s| s.instances.get(&ordinal))
            .map(|p| p.record.clone())
    }

    /// The sets this member has instances of, as `(namespace, name)`: after a restart,
    /// also those of sets it no longer holds (their instances are still running).
    pub fn sets(&self) -> Vec<(String, String)> {
        self.lock()
            .sets
            .iter()
            .filter(|(_, s)| !s.instances.is_empty())
            .filter_map(|(k, _)| k.split_once('/'))
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
            .collect()
    }

    /// The sets (by `namespace/name`) whose last observation found an instance
    /// running but not ready yet, for at most [`STARTING`]: their readiness is worth
    /// asking again at once, as a kubelet's readiness probe would (a process has no
    /// watch to report it). One that stays unready longer is left to the set's retry
    /// backoff.
    pub fn starting(&self) -> Vec<String> {
        self.lock()
            .sets
            .iter()
            .filter(|(_, s)| s.starting.is_some_and(|since| since.elapsed() < STARTING))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Stops every instance this member runs, of every set, and forgets them (their
    /// volumes stay). Agents never do this (the data plane outlives them); it is for a
    /// throwaway federation such as `flotilla dev`, whose data goes when it stops.
    pub async fn stop_everything(&self) -> Result<usize> {
        let all: Vec<(String, String, Vec<u32>)> = self
            .lock()
            .sets
            .iter()
            .filter_map(|(k, s)| {
                let (ns, name) = k.split_once('/')?;
                Some((
                    ns.to_string(),
                    name.to_string(),
                    s.instances.keys().copied().collect(),
                ))
            })
            .collect();
        let mut stopped = 0;
        for (ns, name, ordinals) in all {
            let mut set: InstanceSet = flotilla_api::Object::new(&name, Default::default());
            set.metadata.namespace = Some(ns);
            let deletes = ordinals.iter().map(|&o| self.delete(&set, o, true));
            for r in futures::future::join_all(deletes).await {
                if r? == Applied::Wrote {
                    stopped += 1;
                }
            }
        }
        Ok(stopped)
    }

    /// Creates instance `ordinal` of `set` (see the module documentation).
    fn create(&self, set: &InstanceSet, ordinal: u32) -> Result<Applied> {
        let ns = namespace(set);
        let name = set.name();
        let instance = format!("{name}-{ordinal}");
        let mut st = self.lock();
        let State { nodes, sets } = &mut *st;
        let held: BTreeSet<Ipv4Addr> = sets
            .values()
            .flat_map(|s| s.instances.values())
            .filter_map(|p| p.record.address.parse().ok())
            .collect();
        let s = sets.entry(key(set)).or_default();
        if s.instances.contains_key(&ordinal) {
            return Ok(Applied::Unchanged);
        }
        if let Some(c) = s.crashes.get(&ordinal) {
            let wait = backoff(c.count);
            let since = c.at.elapsed();
            if since < wait {
                return Err(Error::CrashLoop {
                    instance,
                    why: c.why.clone(),
                    count: c.count,
                    log: self.layout.log(ns, name, ordinal),
                    wait: wait - since,
                });
            }
        }
        let demand = Demand::of(&set.spec).map_err(|invalid| Error::Requests {
            instance: instance.clone(),
            invalid,
        })?;
        let of_set = per_node(s.instances.values().filter_map(|p| p.node));
        let node = nodes
            .place(&demand, &of_set, None)
            .ok_or_else(|| Error::Unschedulable {
                instance: instance.clone(),
            })?;
        let started = self.start(set, ordinal, nodes.name(node), &demand, &held);
        match started {
            Ok((record, child)) => {
                tracing::info!(
                    instance = %format!("{ns}/{instance}"),
                    pid = record.pid.unwrap_or_default(),
                    address = %record.address,
                    node = nodes.name(node),
                    "started"
                );
                s.instances.insert(
                    ordinal,
                    Proc {
                        record,
                        child: Some(child),
                        started: Some(Instant::now()),
                        node: Some(node),
                        demand,
                        dead: false,
                        exit: None,
                        stopping: false,
                    },
                );
                Ok(Applied::Wrote)
            }
            Err(e) => {
                nodes.release(node, &demand);
                Err(e)
            }
        }
    }

    /// Picks the address, prepares the directories and files, records the instance
    /// and starts it.
    fn start(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        node: &str,
        demand: &Demand,
        held: &BTreeSet<Ipv4Addr>,
    ) -> Result<(Record, Child)> {
        let ns = namespace(set);
        let name = set.name();
        let instance = format!("{name}-{ordinal}");
        let port = launch::port(set);
        let address_file = self.layout.address(ns, name, ordinal);
        let mine: Option<Ipv4Addr> = std::fs::read_to_string(&address_file)
            .ok()
            .and_then(|a| a.trim().parse().ok());
        let mut held = held.clone();
        for (path, a) in self.layout.addresses()? {
            if path != address_file
                && let Ok(ip) = a.parse()
            {
                held.insert(ip);
            }
        }
        let address = address::pick(self.block, port, mine, &held)?;
        if mine != Some(address) {
            if let Some(old) = mine {
                tracing::info!(instance = %format!("{ns}/{instance}"), %old, new = %address, "address taken; moving");
            }
            state::write_atomic(&address_file, format!("{address}\n").as_bytes())?;
        }
        let dir = self.layout.instance_dir(ns, name, ordinal);
        state::create_dir(&dir)?;
        let volumes: Vec<PathBuf> = set
            .spec
            .volume_claim_templates
            .iter()
            .map(|c| {
                let claim = c.metadata.name.as_deref().unwrap_or_default();
                self.layout.volume(ns, claim, name, ordinal)
            })
            .collect();
        for v in &volumes {
            state::create_dir(v)?;
        }
        if set.spec.redis.is_some() && volumes.is_empty() {
            state::create_dir(&dir.join("data"))?;
        }
        let launch = launch::launch(
            &launch::Instance {
                set,
                ordinal,
                address,
                dir: &dir,
                volumes: &volumes,
            },
            &self.binaries,
        )?;
        for (path, text) in &launch.files {
            state::write_atomic(path, text.as_bytes())?;
        }
        let revision = Revision::of(&set.spec);
        let program = launch.program.to_string_lossy().into_owned();
        let mut record = Record {
            namespace: ns.to_string(),
            set: name.to_string(),
            ordinal,
            pid: None,
            start_time: None,
            address: address.to_string(),
            port,
            revision: revision.revision,
            shape: revision.shape,
            node: Some(node.to_string()),
            requests: demand
                .requests
                .iter()
                .map(|(r, a)| (r.clone(), a.to_string()))
                .collect(),
            role: None,
            role_version: 0,
            readiness: launch.readiness,
            command: std::iter::once(program.clone())
                .chain(launch.args.iter().cloned())
                .collect(),
        };
        // Recorded before the start: a crash in between leaves a record that the next
        // agent resolves (by the marker in the process's environment).
        let state_file = self.layout.state(ns, name, ordinal);
        state::write_json(&state_file, &record)?;
        let log_path = self.layout.log(ns, name, ordinal);
        let spawned = (|| {
            if let Some(parent) = log_path.parent() {
                state::create_dir(parent)?;
            }
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(Error::io("opening", &log_path))?;
            let err = log.try_clone().map_err(Error::io("opening", &log_path))?;
            Command::new(&launch.program)
                .args(&launch.args)
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .env(os::MARKER, &state_file)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                // Its own group: a Ctrl-C to the agent's group must not stop it.
                .process_group(0)
                .spawn()
                .map_err(|source| Error::Spawn {
                    instance: instance.clone(),
                    program: program.clone(),
                    source,
                })
        })();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = state::remove_file(&state_file);
                return Err(e);
            }
        };
        record.pid = Some(child.id());
        // Set at fork, unchanged by exec; the entry stays until the child is reaped.
        record.start_time = os::stat(child.id()).map(|s| s.start_time);
        state::write_json(&state_file, &record)?;
        Ok((record, child))
    }

    /// Whether instance `ordinal` of the set `key` is still running (reaping it if it
    /// is our child and ended).
    fn running(&self, key: &str, ordinal: u32) -> bool {
        let mut st = self.lock();
        let Some(p) = st
            .sets
            .get_mut(key)
            .and_then(|s| s.instances.get_mut(&ordinal))
        else {
            return false;
        };
        refresh(p);
        !p.dead
    }

    /// Stops and removes instance `ordinal` of `set`; `for_good` also forgets its
    /// address (a recreate keeps it).
    async fn delete(&self, set: &InstanceSet, ordinal: u32, for_good: bool) -> Result<Applied> {
        let ns = namespace(set);
        let name = set.name();
        let k = key(set);
        let instance = format!("{name}-{ordinal}");
        let target = {
            let mut st = self.lock();
            match st
                .sets
                .get_mut(&k)
                .and_then(|s| s.instances.get_mut(&ordinal))
            {
                None => None,
                Some(p) => {
                    refresh(p);
                    p.stopping = true;
                    Some((!p.dead).then_some(p.record.pid).flatten())
                }
            }
        };
        let Some(live) = target else {
            if for_good {
                state::remove_file(&self.layout.address(ns, name, ordinal))?;
            }
            return Ok(Applied::Unchanged);
        };
        if let Some(pid) = live {
            let grace = set
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds)
                .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64));
            let signal = |signal| {
                os::signal_group(pid, signal).map_err(|source| Error::Signal {
                    instance: instance.clone(),
                    pid,
                    source,
                })
            };
            signal(Signal::SIGTERM)?;
            if !self.wait_gone(&k, ordinal, grace).await {
                tracing::warn!(instance = %format!("{ns}/{instance}"), pid, ?grace, "did not stop on SIGTERM; killing");
                signal(Signal::SIGKILL)?;
                if !self.wait_gone(&k, ordinal, KILL_WAIT).await {
                    return Err(Error::Unkillable {
                        instance,
                        pid,
                        after: KILL_WAIT,
                    });
                }
            }
        }
        let mut st = self.lock();
        let State { nodes, sets } = &mut *st;
        let Some(s) = sets.get_mut(&k) else {
            return Ok(Applied::Unchanged);
        };
        if let Some(mut p) = s.instances.remove(&ordinal) {
            if let Some(mut child) = p.child.take() {
                let _ = child.try_wait();
            }
            if let Some(idx) = p.node {
                nodes.release(idx, &p.demand);
            }
        }
        if for_good {
            s.crashes.remove(&ordinal);
        }
        state::remove_file(&self.layout.state(ns, name, ordinal))?;
        // Its own files and, without a claim, its data (an emptyDir goes with its pod).
        state::remove_dir(&self.layout.instance_dir(ns, name, ordinal))?;
        if for_good {
            state::remove_file(&self.layout.address(ns, name, ordinal))?;
        }
        tracing::info!(instance = %format!("{ns}/{instance}"), "deleted");
        Ok(Applied::Wrote)
    }

    /// Waits up to `limit` for the instance to end.
    async fn wait_gone(&self, key: &str, ordinal: u32, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.running(key, ordinal) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn create_volume(&self, set: &InstanceSet, ordinal: u32, claim: &str) -> Result<Applied> {
        let (ns, name) = (namespace(set), set.name());
        let dir = self.layout.volume(ns, claim, name, ordinal);
        let meta = self.layout.volume_meta(ns, claim, name, ordinal);
        let had_dir = dir.is_dir();
        let had_meta = meta.is_file();
        state::create_dir(&dir)?;
        if !had_meta {
            state::write_json(
                &meta,
                &VolumeMeta {
                    claim: claim.to_string(),
                    set: name.to_string(),
                    ordinal,
                },
            )?;
        }
        Ok(wrote(!had_dir || !had_meta))
    }

    fn delete_volume(&self, set: &InstanceSet, ordinal: u32, claim: &str) -> Result<Applied> {
        let (ns, name) = (namespace(set), set.name());
        if self
            .lock()
            .sets
            .get(&key(set))
            .is_some_and(|s| s.instances.contains_key(&ordinal))
        {
            return Err(Error::VolumeInUse {
                volume: flotilla_instanceset::volume_name(claim, name, ordinal),
                instance: format!("{name}-{ordinal}"),
            });
        }
        // The data first: a crash in between leaves a volume still listed, deleted
        // again on the next pass, never old data under a new claim.
        let had_dir = state::remove_dir(&self.layout.volume(ns, claim, name, ordinal))?;
        let had_meta = state::remove_file(&self.layout.volume_meta(ns, claim, name, ordinal))?;
        Ok(wrote(had_dir || had_meta))
    }

    fn set_role(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        role: &Option<String>,
        version: u64,
    ) -> Result<Applied> {
        self.update_record(set, ordinal, |r| {
            if r.role != *role || r.role_version < version {
                r.role = role.clone();
                r.role_version = version;
                true
            } else {
                false
            }
        })
    }

    /// A process has no image to patch: an in-place update records the revision.
    fn update_in_place(&self, set: &InstanceSet, ordinal: u32) -> Result<Applied> {
        let desired = Revision::of(&set.spec);
        self.update_record(set, ordinal, |r| {
            if r.revision != desired.revision || r.shape != desired.shape {
                r.revision = desired.revision.clone();
                r.shape = desired.shape.clone();
                true
            } else {
                false
            }
        })
    }

    /// Changes an instance's record (and its state file) when `change` says it did.
    fn update_record(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        change: impl FnOnce(&mut Record) -> bool,
    ) -> Result<Applied> {
        let mut st = self.lock();
        let Some(p) = st
            .sets
            .get_mut(&key(set))
            .and_then(|s| s.instances.get_mut(&ordinal))
        else {
            return Ok(Applied::Unchanged);
        };
        let mut record = p.record.clone();
        if !change(&mut record) {
            return Ok(Applied::Unchanged);
        }
        state::write_json(
            &self
                .layout
                .state(&record.namespace, &record.set, record.ordinal),
            &record,
        )?;
        p.record = record;
        Ok(Applied::Wrote)
    }

    /// The endpoint of a running instance, for talking to it.
    fn endpoint(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        port: Option<u16>,
    ) -> flotilla_member::Result<String> {
        let instance = format!("{}/{}-{ordinal}", namespace(set), set.name());
        let st = self.lock();
        let p = st
            .sets
            .get(&key(set))
            .and_then(|s| s.instances.get(&ordinal))
            .filter(|p| !p.dead)
            .ok_or_else(|| flotilla_member::Error::Probe {
                instance: instance.clone(),
                reason: "not running".into(),
            })?;
        let port = port
            .or(p.record.port)
            .ok_or_else(|| flotilla_member::Error::Probe {
                instance,
                reason: "it has no port".into(),
            })?;
        Ok(format!("{}:{port}", p.record.address))
    }
}

/// The delay before restarting an instance that crashed `count` times in a row: none
/// after the first crash, then 1 s, 2 s, 4 s ... up to a minute.
fn backoff(count: u32) -> Duration {
    if count < 2 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (count - 2).min(6)).min(MAX_BACKOFF)
}

/// Notices that an instance's process ended: reaps our child, or reads /proc for an
/// adopted one (whose parent reaps it).
fn refresh(p: &mut Proc) {
    if p.dead {
        return;
    }
    if let Some(child) = &mut p.child
        && let Ok(Some(status)) = child.try_wait()
    {
        p.child = None;
        p.dead = true;
        p.exit = Some(status.to_string());
    } else {
        p.dead = match (p.record.pid, p.record.start_time) {
            (Some(pid), Some(start)) => !os::alive(pid, start),
            _ => p.child.is_none(),
        };
    }
    if p.dead {
        let instance = format!("{}/{}", p.record.namespace, p.record.instance());
        let pid = p.record.pid.unwrap_or_default();
        let how = p.exit.as_deref().unwrap_or("gone");
        if p.stopping {
            tracing::debug!(%instance, pid, how, "instance stopped");
        } else {
            tracing::warn!(%instance, pid, how, "instance ended by itself");
        }
    }
}

/// Whether a running instance is ready (see [`Readiness`]).
async fn ready(endpoint: Option<String>, readiness: Readiness) -> bool {
    let Some(endpoint) = endpoint else {
        return readiness == Readiness::Running;
    };
    match readiness {
        Readiness::Running => true,
        Readiness::Connect => matches!(
            tokio::time::timeout(READY_TIMEOUT, tokio::net::TcpStream::connect(&endpoint)).await,
            Ok(Ok(_))
        ),
        Readiness::Ping => matches!(
            redis::command(&endpoint, &["PING"], READY_TIMEOUT).await,
            Ok(Reply::Simple(pong)) if pong == "PONG"
        ),
    }
}

fn wrote(changed: bool) -> Applied {
    if changed {
        Applied::Wrote
    } else {
        Applied::Unchanged
    }
}

/// How long an instance that runs but is not ready yet counts as starting.
pub const STARTING: Duration = Duration::from_secs(30);

/// The requests themselves (the latency is [`Backend`]'s).
impl ProcessBackend {
    async fn observe_now(&self, set: &InstanceSet) -> flotilla_member::Result<Observed> {
        let mut instances = Vec::new();
        let mut checks = Vec::new();
        {
            let mut st = self.lock();
            let State { nodes, sets } = &mut *st;
            if let Some(s) = sets.get_mut(&key(set)) {
                for (&ordinal, p) in &mut s.instances {
                    let was_dead = p.dead;
                    refresh(p);
                    if p.dead && !was_dead {
                        note_crash(&mut s.crashes, ordinal, p);
                    }
                    let phase = match (p.dead, p.record.pid) {
                        (true, _) => Phase::Failed,
                        (false, None) => Phase::Pending,
                        (false, Some(_)) => Phase::Running,
                    };
                    if phase == Phase::Running {
                        checks.push(ready(p.record.endpoint(), p.record.readiness));
                    }
                    instances.push(Instance {
                        ordinal,
                        revision: p.record.revision.clone(),
                        shape: p.record.shape.clone(),
                        phase,
                        ready: false,
                        deleting: false,
                        node: p.record.node.clone(),
                        node_lost: p.node.is_some_and(|i| nodes.is_failed(i)),
                        role: p.record.role.clone(),
                        role_version: p.record.role_version,
                        probe: None,
                        endpoint: p.record.endpoint(),
                    });
                }
            }
        }
        // Outside the lock: a slow instance must not hold up the others' requests.
        let mut answers = futures::future::join_all(checks).await.into_iter();
        for inst in instances.iter_mut().filter(|i| i.phase == Phase::Running) {
            inst.ready = answers.next().unwrap_or(false);
        }
        let starting = instances
            .iter()
            .any(|i| i.phase == Phase::Running && !i.ready);
        if let Some(s) = self.lock().sets.get_mut(&key(set)) {
            s.starting = match (starting, s.starting) {
                (false, _) => None,
                (true, since) => since.or_else(|| Some(std::time::Instant::now())),
            };
        }
        let volumes = self
            .layout
            .volumes(namespace(set), set.name())?
            .into_iter()
            .map(|v| Volume {
                claim: v.claim,
                ordinal: v.ordinal,
                deleting: false,
                node_local: false,
            })
            .collect();
        Ok(Observed {
            instances,
            volumes,
            last_switchover: None,
        })
    }

    async fn apply_now(
        &self,
        set: &InstanceSet,
        action: &Action,
    ) -> flotilla_member::Result<Applied> {
        Ok(match action {
            Action::CreateVolume { ordinal, claim } => self.create_volume(set, *ordinal, claim)?,
            Action::DeleteVolume { ordinal, claim } => self.delete_volume(set, *ordinal, claim)?,
            Action::Create { ordinal } => self.create(set, *ordinal)?,
            Action::SetRole {
                ordinal,
                role,
                version,
            } => self.set_role(set, *ordinal, role, *version)?,
            Action::UpdateInPlace { ordinal } => self.update_in_place(set, *ordinal)?,
            Action::Recreate { ordinal, .. } => self.delete(set, *ordinal, false).await?,
            Action::Delete { ordinal } => self.delete(set, *ordinal, true).await?,
            Action::Switchover { .. } => {
                return Err(flotilla_member::Error::Unsupported(
                    "a process member does not move roles itself: the Redis engine runs switchovers"
                        .into(),
                ));
            }
        })
    }

    fn write_status_now(
        &self,
        set: &InstanceSet,
        status: &InstanceSetStatus,
    ) -> flotilla_member::Result<Applied> {
        let mut st = self.lock();
        let s = st.sets.entry(key(set)).or_default();
        if s.status.as_ref() == Some(status) {
            return Ok(Applied::Unchanged);
        }
        s.status = Some(status.clone());
        Ok(Applied::Wrote)
    }

    async fn probe_role_now(
        &self,
        set: &InstanceSet,
        ordinal: u32,
    ) -> flotilla_member::Result<Option<String>> {
        let Some(probe) = &set.spec.role_probe else {
            return Ok(None);
        };
        let Some(redis_probe) = &probe.redis else {
            return Ok(None);
        };
        let addr = self.endpoint(set, ordinal, Some(redis_probe.port))?;
        let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
        let answer = redis::role(&addr, timeout).await?;
        Ok(Some(redis::map_role(&answer, &redis_probe.role_map)))
    }
}

impl Backend for ProcessBackend {
    async fn observe(&self, set: &InstanceSet) -> flotilla_member::Result<Observed> {
        self.latency.around(self.observe_now(set)).await
    }

    async fn apply(&self, set: &InstanceSet, action: &Action) -> flotilla_member::Result<Applied> {
        self.latency.around(self.apply_now(set, action)).await
    }

    async fn write_status(
        &self,
        set: &InstanceSet,
        status: &InstanceSetStatus,
    ) -> flotilla_member::Result<Applied> {
        self.latency
            .around(async { self.write_status_now(set, status) })
            .await
    }

    async fn probe_role(
        &self,
        set: &InstanceSet,
        ordinal: u32,
    ) -> flotilla_member::Result<Option<String>> {
        self.latency.around(self.probe_role_now(set, ordinal)).await
    }

    async fn capacity(&self) -> flotilla_member::Result<CapacityModel> {
        Ok(self.lock().nodes.capacity())
    }

    async fn redis(
        &self,
        set: &InstanceSet,
        ordinal: u32,
        args: &[&str],
        timeout: Duration,
    ) -> flotilla_member::Result<Reply> {
        let addr = self.endpoint(set, ordinal, None)?;
        redis::command(&addr, args, timeout).await
    }
}

/// Counts an instance's death as a crash when it came soon after its start (a
/// long-running instance that dies starts a new count).
fn note_crash(crashes: &mut BTreeMap<u32, Crashes>, ordinal: u32, p: &Proc) {
    let Some(started) = p.started else {
        return;
    };
    let ran = started.elapsed();
    if ran >= CRASH_WINDOW {
        crashes.remove(&ordinal);
        return;
    }
    let count = crashes.get(&ordinal).map_or(0, |c| c.count) + 1;
    crashes.insert(
        ordinal,
        Crashes {
            count,
            at: Instant::now(),
            why: format!(
                "{} {ran:.1?} after it started",
                p.exit.as_deref().unwrap_or("ended")
            ),
        },
    );
}
