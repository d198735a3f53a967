//! The Redis engine's commit phase, for sets with `spec.redis`: what the controller
//! asks each instance and sends it on every pass, through [`Backend::redis`] (so the
//! same on every backend: TCP, a Kubernetes port-forward).
//!
//! ```text
//!   observe   INFO server replication keyspace, CONFIG GET <the set's dynamic params>
//!             (and, with sentinels, the replication PING period) of every running
//!             instance ─▶ Seen (what the status reports)
//!   roles     flotilla_redis::engine::role: one instance labelled primary
//!   switch    a planned switchover: FAILOVER TO the successor (it must be an online
//!             replica of the old primary), verified with ROLE on both sides
//!   wire      flotilla_redis::engine::replication: REPLICAOF / FAILOVER TO / promotion
//!   config    CONFIG SET of the dynamic parameters, once per process (run_id) and
//!             config: no restart, no new revision
//! ```
//!
//! The decisions are pure ([`flotilla_redis`]); this module only asks and sends. An
//! instance that does not answer is left out (it may be restarting): the next pass
//! asks again.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::InstanceSet;
use flotilla_api::status::InstanceSetStatus;
use flotilla_instanceset::{Observed, Phase};
use flotilla_redis::engine::{self, Local, LocalSwitchover, Primary};
use flotilla_redis::info::{self, Info};

use crate::backend::{Applied, Backend};
use crate::redis::Reply;
use crate::{Error, Result};

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// One running instance that answered.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub endpoint: String,
    pub info: Info,
    /// The set's dynamic parameters as it runs them.
    pub config: BTreeMap<String, String>,
}

/// What the engine keeps per set between passes.
#[derive(Clone, Debug, Default)]
pub(crate) struct EngineState {
    /// The last switchover this member made, until the federation names its target.
    pub switchover: Option<LocalSwitchover>,
    /// Per ordinal: the process (run_id) and dynamic config last applied to it.
    pub configured: BTreeMap<u32, (String, BTreeMap<String, String>)>,
}

impl EngineState {
    /// Drops what the federation has caught up with.
    pub fn settle(&mut self, set: &InstanceSet) {
        if let Some(s) = &self.switchover
            && flotilla_api::redis::primary_of(set).is_some_and(|(o, _)| o != s.from)
        {
            self.switchover = None;
        }
    }
}

/// Asks every running instance with an address what it is.
pub(crate) async fn observe<B: Backend>(
    backend: &B,
    set: &InstanceSet,
    observed: &Observed,
) -> BTreeMap<u32, Seen> {
    let mut params: Vec<String> = engine::dynamic_config(set).into_keys().collect();
    if engine::with_sentinel(set) {
        // Held back while a switchover by Sentinel runs: seen here if it stayed so.
        params.push(engine::PING_PERIOD.into());
    }
    let mut out = BTreeMap::new();
    for inst in observed
        .instances
        .iter()
        .filter(|i| i.phase == Phase::Running && !i.deleting)
    {
        let Some(endpoint) = inst.endpoint.clone() else {
            continue;
        };
        let asked = backend
            .redis(
                set,
                inst.ordinal,
                &["INFO", "server", "persistence", "replication", "keyspace"],
                COMMAND_TIMEOUT,
            )
            .await;
        let info = match asked {
            Ok(reply) => match reply.as_text() {
                Some(text) => info::parse(&text),
                None => continue,
            },
            Err(e) => {
                tracing::debug!(instance = %name(set, inst.ordinal), error = %e, "INFO failed");
                continue;
            }
        };
        if info.loading {
            // Its keys and offset mean nothing until it is done: neither this member
            // nor the federation decides anything on them.
            tracing::debug!(instance = %name(set, inst.ordinal), "loading its dataset: not observed yet");
            continue;
        }
        let mut get = vec!["CONFIG", "GET"];
        get.extend(params.iter().map(String::as_str));
        let config = match backend
            .redis(set, inst.ordinal, &get, COMMAND_TIMEOUT)
            .await
        {
            Ok(Reply::Array(Some(items))) => {
                info::config_pairs(&items.iter().filter_map(Reply::as_text).collect::<Vec<_>>())
            }
            _ => BTreeMap::new(),
        };
        out.insert(
            inst.ordinal,
            Seen {
                endpoint,
                info,
                config,
            },
        );
    }
    out
}

fn locals(seen: &BTreeMap<u32, Seen>) -> Vec<Local<'_>> {
    seen.iter()
        .map(|(&ordinal, s)| Local {
            ordinal,
            endpoint: &s.endpoint,
            info: &s.info,
        })
        .collect()
}

/// Every answering instance's role label.
pub(crate) fn roles(
    set: &InstanceSet,
    primary: Option<&Primary>,
    seen: &BTreeMap<u32, Seen>,
) -> BTreeMap<u32, Option<String>> {
    let role_map = set
        .spec
        .role_probe
        .as_ref()
        .and_then(|p| p.redis.as_ref())
        .map(|r| r.role_map.clone())
        .unwrap_or_default();
    locals(seen)
        .iter()
        .map(|l| (l.ordinal, engine::role(primary, l, &role_map)))
        .collect()
}

/// A planned switchover from `from` to `to`: `FAILOVER TO`, then `ROLE` on both until
/// they changed places. `Err(Error::Backend)` when it cannot start yet (the successor
/// is not an online replica yet: the next pass tries again); `Err(Error::Switchover)`
/// when it started and did not complete.
pub(crate) async fn switchover<B: Backend>(
    backend: &B,
    set: &InstanceSet,
    seen: &BTreeMap<u32, Seen>,
    from: u32,
    to: u32,
) -> Result<(Applied, Option<LocalSwitchover>)> {
    let target = seen.get(&to).ok_or_else(|| {
        Error::Backend(format!(
            "switchover to {} waits: it does not answer",
            name(set, to)
        ))
    })?;
    let done = LocalSwitchover {
        from,
        to: Primary {
            ordinal: to,
            endpoint: target.endpoint.clone(),
        },
    };
    let old = seen.get(&from);
    if target.info.status.role == "master" && old.is_none_or(|o| o.info.status.role != "master") {
        return Ok((Applied::Unchanged, Some(done)));
    }
    if engine::with_sentinel(set) {
        // Ranked first only when it is the instance the federation names primary
        // (its member runs it at replica-priority 1); a successor the member picked
        // itself (a rolling update) is left to Sentinel's choice.
        let named = flotilla_api::redis::primary_of(set)
            .filter(|(o, _)| *o == to)
            .map(|_| target.endpoint.as_str());
        let (applied, actual) =
            switchover_by_sentinel(backend, set, seen, from, Some(to), named).await?;
        return Ok((applied, actual));
    }
    let old = old.ok_or_else(|| {
        Error::Backend(format!(
            "switchover from {} waits: it does not answer",
            name(set, from)
        ))
    })?;
    let args = engine::failover_to(&old.info, &target.endpoint)
        .map_err(|why| Error::Backend(format!("switchover from {from} to {to} waits: {why}")))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match backend.redis(set, from, &args, COMMAND_TIMEOUT).await {
        Ok(Reply::Simple(ok)) if ok == "OK" => {}
        Ok(other) => {
            return Err(Error::Switchover(format!(
                "{} refused FAILOVER: {other:?}",
                name(set, from)
            )));
        }
        Err(e) => {
            return Err(Error::Switchover(format!(
                "FAILOVER on {}: {e}",
                name(set, from)
            )));
        }
    }
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(engine::FAILOVER_TIMEOUT_MS)
        + Duration::from_secs(5);
    loop {
        let new = role(backend, set, to).await;
        let previous = role(backend, set, from).await;
        if new.as_deref() == Some("master") && previous.as_deref() == Some("slave") {
            tracing::info!(set = %set.name(), from, to, "switched over");
            return Ok((Applied::Wrote, Some(done)));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Switchover(format!(
                "after FAILOVER TO, {} says {} and {} says {}",
                name(set, to),
                new.as_deref().unwrap_or("nothing"),
                name(set, from),
                previous.as_deref().unwrap_or("nothing")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A planned switchover away from `from` on a set with sentinels, asked of Sentinel (a
/// `FAILOVER TO` behind its back would be failed over again): writes are paused on the
/// old primary (`CLIENT PAUSE … WRITE`), its replicas catch up to its offset, then one
/// sentinel runs `SENTINEL FAILOVER`, which promotes the best replica; done when the old
/// primary says it is a replica. Sentinel chooses the replica: the new primary is
/// returned when it is `to` (a local switchover the engine then wires to).
pub(crate) async fn switchover_by_sentinel<B: Backend>(
    backend: &B,
    set: &InstanceSet,
    seen: &BTreeMap<u32, Seen>,
    from: u32,
    to: Option<u32>,
    named: Option<&str>,
) -> Result<(Applied, Option<LocalSwitchover>)> {
    let Some(watched) = set.spec.redis.as_ref().and(Some(set.name())) else {
        return Err(Error::Backend("not a Redis set".into()));
    };
    let sentinels = flotilla_api::redis::sentinels_of(set);
    let old = seen.get(&from).ok_or_else(|| {
        Error::Backend(format!(
            "switchover from {} waits: it does not answer",
            name(set, from)
        ))
    })?;
    let local = |addr: &str| {
        to.and_then(|t| seen.get(&t).filter(|s| s.endpoint == addr).map(|s| (t, s)))
            .map(|(t, s)| LocalSwitchover {
                from,
                to: Primary {
                    ordinal: t,
                    endpoint: s.endpoint.clone(),
                },
            })
    };
    if old.info.status.role != "master" {
        return Ok((Applied::Unchanged, None));
    }
    if sentinels.is_empty() {
        return Err(Error::Backend(format!(
            "switchover from {from} waits: no sentinel of {watched} is known yet"
        )));
    }
    // Sentinel promotes the replica it ranks best (lowest replica-priority, then the
    // highest offset, then the lowest run id): in its own view, every retiring replica
    // must be ranked out (priority 0) and the target ranked first (its member sets it
    // to 1) before it is asked, or it would pick any caught-up replica. Nothing is
    // paused until then: the next pass asks again.
    let retiring: Vec<&str> = flotilla_api::redis::retiring_of(set)
        .iter()
        .filter(|o| **o != from)
        .filter_map(|o| seen.get(o).map(|s| s.endpoint.as_str()))
        .collect();
    let target = named;
    let mut sentinels = sentinels;
    let mut viewed = None;
    for (n, s) in sentinels.iter().enumerate() {
        let master = backend
            .redis_at(set, s, &["SENTINEL", "MASTER", watched], COMMAND_TIMEOUT)
            .await;
        let Ok(Reply::Array(Some(fields))) = master else {
            continue;
        };
        if field(&fields, "flags").is_some_and(|f| f.contains("failover_in_progress")) {
            return Err(Error::Backend(format!(
                "switchover from {from} waits: sentinel {s} is failing {watched} over already"
            )));
        }
        let Ok(Reply::Array(Some(replicas))) = backend
            .redis_at(set, s, &["SENTINEL", "REPLICAS", watched], COMMAND_TIMEOUT)
            .await
        else {
            continue;
        };
        if let Some(why) = ranked_wrong(&replicas, &retiring, target) {
            return Err(Error::Backend(format!(
                "switchover from {from} waits: sentinel {s} {why}"
            )));
        }
        viewed = Some(n);
        break;
    }
    let Some(n) = viewed else {
        return Err(Error::Backend(format!(
            "switchover from {from} waits: no sentinel of {watched} answers SENTINEL MASTER and REPLICAS"
        )));
    };
    // The sentinel that was checked is the one asked.
    sentinels.swap(0, n);
    let send = |args: &'static [&'static str]| backend.redis(set, from, args, COMMAND_TIMEOUT);
    // A paused master still PINGs its replicas (every repl-ping-replica-period): one
    // PING after Sentinel promoted the target puts the other replicas past the offset
    // it was promoted at, and each then needs a full resync from the new primary
    // (NOREPLICAS for seconds under min-replicas-to-write). No PING until it is done.
    // Set back to what the set says (not to what was read: a switchover that could not
    // set it back left the quiet value behind, which `wire` also sets back).
    let ping_period = engine::instance_config(set, from)
        .remove(engine::PING_PERIOD)
        .unwrap_or_else(|| "10".into());
    let quiet = send(&["CONFIG", "SET", engine::PING_PERIOD, QUIET_PING_PERIOD]).await;
    if !matches!(quiet, Ok(Reply::Simple(_))) {
        tracing::warn!(instance = %name(set, from), reply = ?quiet, "could not hold back replication PINGs for the switchover");
    }
    let restore_pings = || async {
        let args = ["CONFIG", "SET", engine::PING_PERIOD, ping_period.as_str()];
        if let Err(e) = backend.redis(set, from, &args, COMMAND_TIMEOUT).await {
            tracing::warn!(instance = %name(set, from), error = %e, "could not restore repl-ping-replica-period");
        }
    };
    let pause = || send(&["CLIENT", "PAUSE", "15000", "WRITE"]);
    let paused_at = tokio::time::Instant::now();
    match pause().await {
        Ok(Reply::Simple(_)) => {}
        other => {
            // A timeout may still have paused it.
            let _ = send(&["CLIENT", "UNPAUSE"]).await;
            restore_pings().await;
            return Err(Error::Switchover(format!(
                "{} refused CLIENT PAUSE: {other:?}",
                name(set, from)
            )));
        }
    }
    let result = async {
        // Every replica catches up with the paused primary; otherwise no failover
        // (Sentinel could promote one behind, and the others would resync from it).
        let caught_up = tokio::time::Instant::now() + Duration::from_secs(5);
        let paused_offset = loop {
            let reply = backend
                .redis(set, from, &["INFO", "replication"], COMMAND_TIMEOUT)
                .await;
            let info = reply
                .ok()
                .and_then(|r| r.as_text())
                .map(|t| info::parse(&t));
            let done = info.as_ref().is_some_and(|i| {
                !i.replicas.is_empty()
                    && i.replicas
                        .iter()
                        .all(|(_, state, offset)| state == "online" && *offset >= i.offset)
            });
            if done {
                break info.map_or(0, |i| i.offset);
            }
            if tokio::time::Instant::now() > caught_up {
                return Err(Error::Backend(format!(
                    "switchover from {from} waits: its replicas did not catch up within 5 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // One sentinel is asked: the first that answers at all (asking another after
        // a refusal or a timeout could start a second failover).
        let mut asked = None;
        for s in &sentinels {
            match backend
                .redis_at(set, s, &["SENTINEL", "FAILOVER", watched], COMMAND_TIMEOUT)
                .await
            {
                Ok(Reply::Simple(_)) => {
                    tracing::info!(set = %set.name(), from, sentinel = %s, "writes paused, replicas caught up: Sentinel asked to fail over");
                    asked = Some(s.clone());
                    break;
                }
                Ok(other) => {
                    return Err(Error::Switchover(format!(
                        "sentinel {s} refused the failover of {watched}: {other:?}"
                    )));
                }
                Err(e) => tracing::warn!(sentinel = %s, error = %e, "sentinel unreachable"),
            }
        }
        let Some(sentinel) = asked else {
            return Err(Error::Backend(format!(
                "switchover from {from} waits: no sentinel of {watched} answers"
            )));
        };
        // Sentinel names the new primary at once but demotes a reachable old one only
        // later: the old primary, still paused, is made its replica here, so it never
        // takes a write again as a master.
        // The target Sentinel ranked first says it is a master as soon as Sentinel
        // promoted it, a second or so before Sentinel has seen so itself (its INFO
        // period) and names it: the old primary follows it from then on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut renewed = paused_at;
        loop {
            // The pause must outlast the wait: renewed every few seconds (the later end
            // wins), so the old primary never takes a write while the failover runs.
            if renewed.elapsed() > Duration::from_secs(5) {
                let _ = pause().await;
                renewed = tokio::time::Instant::now();
            }
            // A master that holds everything the paused primary had (not one that
            // restarted empty, say).
            let promoted = match target {
                Some(t) => match backend.redis_at(set, t, &["ROLE"], COMMAND_TIMEOUT).await {
                    Ok(Reply::Array(Some(items)))
                        if items.first().and_then(Reply::as_text).as_deref() == Some("master")
                            && matches!(items.get(1), Some(Reply::Integer(o)) if u64::try_from(*o).is_ok_and(|o| o >= paused_offset)) =>
                    {
                        flotilla_redis::launch::split_addr(t)
                            .map(|(h, p)| (t.to_string(), h.to_string(), p.to_string()))
                    }
                    _ => None,
                },
                None => None,
            };
            let master = match promoted {
                Some(m) => Some(m),
                None => match backend
                    .redis_at(
                        set,
                        &sentinel,
                        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", watched],
                        COMMAND_TIMEOUT,
                    )
                    .await
                {
                    Ok(Reply::Array(Some(a))) if a.len() == 2 => a[0]
                        .as_text()
                        .zip(a[1].as_text())
                        .map(|(h, p)| (info::join(&h, &p), h, p)),
                    _ => None,
                },
            };
            if let Some((addr, host, port)) = master.filter(|(a, _, _)| *a != old.endpoint) {
                if role(backend, set, from).await.as_deref() != Some("slave") {
                    let _ = backend
                        .redis(set, from, &["REPLICAOF", &host, &port], COMMAND_TIMEOUT)
                        .await;
                }
                if role(backend, set, from).await.as_deref() == Some("slave") {
                    tracing::info!(set = %set.name(), from, to = %addr, "switched over by Sentinel");
                    return Ok((Applied::Wrote, local(&addr)));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Switchover(format!(
                    "Sentinel's failover of {watched} did not complete within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    .await;
    let _ = send(&["CLIENT", "UNPAUSE"]).await;
    restore_pings().await;
    result
}

/// A master's replication PING period
/// ([`flotilla_redis::engine::PING_PERIOD`]) while a switchover by Sentinel runs: no
/// PING in practice (Redis PINGs when its cron count is a multiple of it).
const QUIET_PING_PERIOD: &str = "2147483647";

/// A field of a flat field/value array (`SENTINEL MASTER`, one of `SENTINEL REPLICAS`).
fn field(fields: &[Reply], name: &str) -> Option<String> {
    fields
        .chunks(2)
        .find(|kv| kv[0].as_text().as_deref() == Some(name))
        .and_then(|kv| kv.get(1)?.as_text())
}

/// Of a `SENTINEL REPLICAS` reply (one flat field/value array per replica): why
/// Sentinel would not promote `target` now: a `retiring` replica it could still promote
/// (its `slave-priority` is not 0), or `target` not seen, or not ranked before every
/// other promotable replica. `None` when it would.
fn ranked_wrong(replicas: &[Reply], retiring: &[&str], target: Option<&str>) -> Option<String> {
    let seen: Vec<(String, Option<u64>)> = replicas
        .iter()
        .filter_map(|r| {
            let Reply::Array(Some(fields)) = r else {
                return None;
            };
            // Sentinel never forgets a replica: one it cannot reach is not promotable.
            let flags = field(fields, "flags").unwrap_or_default();
            if flags.contains("s_down") || flags.contains("disconnected") {
                return None;
            }
            let addr = info::join(&field(fields, "ip")?, &field(fields, "port")?);
            let priority = field(fields, "slave-priority").and_then(|p| p.trim().parse().ok());
            Some((addr, priority))
        })
        .collect();
    if let Some((addr, _)) = seen
        .iter()
        .find(|(a, p)| retiring.contains(&a.as_str()) && *p != Some(0))
    {
        return Some(format!(
            "does not yet see replica-priority 0 on retiring {addr}"
        ));
    }
    let target = target?;
    let Some(ours) = seen.iter().find(|(a, _)| a == target).and_then(|(_, p)| *p) else {
        return Some(format!("does not list {target} as a replica yet"));
    };
    if ours == 0 {
        return Some(format!("sees replica-priority 0 on {target}"));
    }
    seen.iter()
        .find(|(a, p)| a != target && p.is_some_and(|p| p != 0 && p <= ours))
        .map(|(a, p)| {
            format!(
                "ranks {a} (replica-priority {}) with {target} ({ours}) yet",
                p.unwrap_or_default()
            )
        })
}

async fn role<B: Backend>(backend: &B, set: &InstanceSet, ordinal: u32) -> Option<String> {
    let reply = backend
        .redis(set, ordinal, &["ROLE"], COMMAND_TIMEOUT)
        .await
        .ok()?;
    crate::redis::role_of(&name(set, ordinal), reply).ok()
}

/// Wires the answering instances into the shard and applies the dynamic config.
/// Returns how many commands changed something; a command that fails is logged and
/// sent again on the next pass.
pub(crate) async fn wire<B: Backend>(
    backend: &B,
    set: &InstanceSet,
    primary: Option<&Primary>,
    seen: &BTreeMap<u32, Seen>,
    state: &mut EngineState,
) -> usize {
    let mut commands = Vec::new();
    let mut writes = 0;
    if let Some(p) = primary {
        commands = engine::replication(set, p, &locals(seen));
        if let Some(from) = engine::handover(set, p, &locals(seen)) {
            match switchover_by_sentinel(
                backend,
                set,
                seen,
                from,
                Some(p.ordinal),
                Some(&p.endpoint),
            )
            .await
            {
                Ok((applied, done)) => {
                    writes += usize::from(applied == Applied::Wrote);
                    if done.is_some() {
                        state.switchover = done;
                    }
                }
                Err(e) => tracing::warn!(set = %set.name(), from, error = %e, "handover"),
            }
        }
    }
    state.configured.retain(|o, _| seen.contains_key(o));
    let mut configuring = Vec::new();
    for (&ordinal, s) in seen {
        let want = engine::instance_config(set, ordinal);
        // A switchover that could not set the PING period back left it quiet: set
        // again, whatever was applied before.
        let quiet =
            s.config.get(engine::PING_PERIOD).map(String::as_str) == Some(QUIET_PING_PERIOD);
        let done = !quiet
            && state
                .configured
                .get(&ordinal)
                .is_some_and(|(run, config)| *run == s.info.run_id && *config == want);
        if !done && let Some(c) = engine::config_set(ordinal, &want) {
            configuring.push((ordinal, s.info.run_id.clone(), want));
            commands.push(c);
        }
    }
    for c in commands {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        match backend.redis(set, c.ordinal, &args, COMMAND_TIMEOUT).await {
            Ok(Reply::Simple(_)) => {
                writes += 1;
                tracing::info!(instance = %name(set, c.ordinal), command = %c.args.join(" "), why = %c.why, "redis");
                if let Some((_, run, want)) = configuring.iter().find(|(o, _, _)| *o == c.ordinal)
                    && c.args[0] == "CONFIG"
                {
                    state
                        .configured
                        .insert(c.ordinal, (run.clone(), want.clone()));
                }
            }
            Ok(other) => {
                tracing::warn!(instance = %name(set, c.ordinal), command = %c.args.join(" "), reply = ?other, "redis refused")
            }
            Err(e) => {
                tracing::warn!(instance = %name(set, c.ordinal), command = %c.args.join(" "), error = %e, "redis command failed")
            }
        }
    }
    writes
}

/// Puts what each instance said into the status.
pub(crate) fn report(status: &mut InstanceSetStatus, seen: &BTreeMap<u32, Seen>) {
    for i in &mut status.instances {
        if let Some(s) = seen.get(&i.ordinal) {
            let mut r = s.info.status.clone();
            r.config = s.config.clone();
            i.redis = Some(r);
        }
    }
}

fn name(set: &InstanceSet, ordinal: u32) -> String {
    format!("{}-{ordinal}", set.name())
}

/// For a companion sentinel set: registers the shard with every running sentinel that
/// does not know it yet (and keeps its timings), and returns what each says the
/// shard's primary is, for the status. See [`flotilla_redis::sentinel`].
pub(crate) async fn sentinels<B: Backend>(
    backend: &B,
    set: &InstanceSet,
    observed: &Observed,
) -> (
    usize,
    BTreeMap<u32, flotilla_api::status::RedisInstanceStatus>,
) {
    let Some(watched) = flotilla_redis::sentinel::watched(set) else {
        return (0, BTreeMap::new());
    };
    let primary = flotilla_api::redis::primary_of(set).map(|(_, e)| e);
    let mut writes = 0;
    let mut out = BTreeMap::new();
    for inst in observed
        .instances
        .iter()
        .filter(|i| i.phase == Phase::Running && !i.deleting)
    {
        let asked = backend
            .redis(
                set,
                inst.ordinal,
                &["SENTINEL", "MASTER", &watched.set],
                COMMAND_TIMEOUT,
            )
            .await;
        let view = match asked {
            Ok(Reply::Array(Some(items))) => Some(info::config_pairs(
                &items.iter().filter_map(Reply::as_text).collect::<Vec<_>>(),
            )),
            Ok(Reply::Error(_)) => None, // "No such master with that name"
            _ => continue,
        };
        for c in
            flotilla_redis::sentinel::registration(inst.ordinal, watched, &view, primary.as_deref())
        {
            let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
            match backend.redis(set, c.ordinal, &args, COMMAND_TIMEOUT).await {
                Ok(Reply::Simple(_)) => {
                    writes += 1;
                    tracing::info!(instance = %name(set, c.ordinal), command = %c.args.join(" "), why = %c.why, "sentinel");
                }
                other => {
                    tracing::warn!(instance = %name(set, c.ordinal), command = %c.args.join(" "), reply = ?other, "sentinel refused")
                }
            }
        }
        let master = view
            .as_ref()
            .and_then(|v| Some(info::join(v.get("ip")?, v.get("port")?)));
        out.insert(
            inst.ordinal,
            flotilla_api::status::RedisInstanceStatus {
                role: "sentinel".into(),
                master,
                link_up: view
                    .as_ref()
                    .and_then(|v| v.get("flags"))
                    .is_some_and(|f| f == "master"),
                ..Default::default()
            },
        );
    }
    (writes, out)
}

/// Puts what each sentinel said into the status.
pub(crate) fn report_sentinels(
    status: &mut InstanceSetStatus,
    seen: &BTreeMap<u32, flotilla_api::status::RedisInstanceStatus>,
) {
    for i in &mut status.instances {
        if let Some(s) = seen.get(&i.ordinal) {
            i.redis = Some(s.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(ip: &str, port: &str, priority: &str) -> Reply {
        let bulk = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
        Reply::Array(Some(vec![
            bulk("name"),
            bulk(&format!("{ip}:{port}")),
            bulk("ip"),
            bulk(ip),
            bulk("port"),
            bulk(port),
            bulk("slave-priority"),
            bulk(priority),
        ]))
    }

    #[test]
    fn sentinel_is_asked_only_once_it_ranks_the_target_first_and_the_retiring_out() {
        let a = "127.0.0.2:6379";
        let b = "127.0.0.3:6379";
        let replicas = [
            replica("127.0.0.2", "6379", "100"),
            replica("127.0.0.3", "6379", "0"),
        ];
        // Retiring b at 0, no target: nothing against it.
        assert_eq!(ranked_wrong(&replicas, &[b], None), None);
        let why = ranked_wrong(&replicas, &[b, a], None).unwrap();
        assert!(
            why.contains("replica-priority 0 on retiring 127.0.0.2:6379"),
            "{why}"
        );
        // The target at the default priority ties with another: not yet.
        let three = [
            replica("127.0.0.2", "6379", "100"),
            replica("127.0.0.4", "6379", "100"),
            replica("127.0.0.3", "6379", "0"),
        ];
        let why = ranked_wrong(&three, &[b], Some(a)).unwrap();
        assert!(
            why.contains("ranks 127.0.0.4:6379 (replica-priority 100)"),
            "{why}"
        );
        // Once its member set it to 1, it is first.
        let three = [
            replica("127.0.0.2", "6379", "1"),
            replica("127.0.0.4", "6379", "100"),
            replica("127.0.0.3", "6379", "0"),
        ];
        assert_eq!(ranked_wrong(&three, &[b], Some(a)), None);
        // A replica Sentinel cannot reach does not count (a gone instance it remembers).
        let mut gone = replica("127.0.0.5", "6379", "1");
        if let Reply::Array(Some(f)) = &mut gone {
            f.push(Reply::Bulk(Some(b"flags".to_vec())));
            f.push(Reply::Bulk(Some(b"slave,s_down,disconnected".to_vec())));
        }
        let four = [three[0].clone(), three[1].clone(), gone];
        assert_eq!(ranked_wrong(&four, &[b], Some(a)), None);
        // A target Sentinel does not list, or sees at 0, is not promotable.
        let why = ranked_wrong(&three, &[], Some("127.0.0.9:6379")).unwrap();
        assert!(why.contains("does not list 127.0.0.9:6379"), "{why}");
        assert!(
            ranked_wrong(&replicas, &[], Some(b))
                .unwrap()
                .contains("priority 0 on")
        );
        // IPv6 addresses are joined as the endpoints are.
        let why = ranked_wrong(&[replica("::1", "7000", "5")], &["[::1]:7000"], None).unwrap();
        assert!(why.contains("[::1]:7000"), "{why}");
    }
}
