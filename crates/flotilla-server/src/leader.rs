//! Leader election on the store's leases: any number of servers serve the user API and
//! agents against one store, and one of them, the leader, runs the federation
//! controller (the one writer of placements, slices and statuses).
//!
//! ```text
//!   Campaigning ──put /flotilla/leader (Absent, under our lease)──▶ Leading
//!     ▲    │ held by another server                                  │ renew every ttl/3
//!     │    ▼                                                         │
//!     │  Following(holder) ── watch the key until it goes ──┐        │ lease gone, key
//!     └─────────────────────────────────────────────────────┘        │ gone or changed,
//!     └──────────────────────────── step down ◀─────────────────────┘ no renewal for 2/3 ttl
//! ```
//!
//! The leader key lives exactly as long as the leader's lease: a leader that stops
//! renewing (killed, partitioned) loses it after the TTL and another server takes
//! over. A leader steps down on its own once it has not renewed for two thirds of the
//! TTL, before the store could let another server in, so two controllers overlap only
//! if a process stalls for longer than that; even then every controller write is fenced
//! on this term's leader key (`fence`): the store refuses it once the key this server
//! created is gone, so a stalled leader that wakes up writes nothing.
//!
//! A server restarted in place (same host, same gRPC address: the same identity) takes
//! its own stale key over at once instead of waiting for its old lease to run out, and
//! so does any server on a store no other process can open (the embedded file).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_store::{Condition, Error as StoreError, Event, LeaseId, Revision, Store};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fence::Term;
use crate::keys;
use crate::metrics::Metrics;

/// Where this server stands in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not yet known who leads (starting, or the store is failing).
    Campaigning,
    /// Another server leads: this one serves the API and agents, its controller waits.
    Following {
        /// The leader's identity.
        leader: String,
    },
    /// This server leads: its federation controller runs.
    Leading,
}

/// What the leader key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The leading server's identity (`host/grpc-address`).
    pub holder: String,
    /// When it took the lead (RFC 3339).
    pub since: String,
}

/// The identity of a server: its host name and gRPC address, unique among running
/// servers (two cannot listen on one address of one host) and the same across a
/// restart in place.
pub fn identity(grpc: std::net::SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{grpc}")
}

/// One server's side of the election.
#[derive(Debug)]
pub struct Elector {
    pub store: Arc<dyn Store>,
    pub identity: String,
    /// The leader lease's TTL.
    pub ttl: Duration,
    pub state: watch::Sender<State>,
    pub metrics: Arc<Metrics>,
    /// The lease this server leads under, for [`Elector::resign`] at shutdown.
    pub lease: Arc<Mutex<Option<LeaseId>>>,
    /// The term this server leads in (`None` while it does not), which fences the
    /// controller's writes.
    pub term: watch::Sender<Option<Term>>,
}

impl Elector {
    /// Campaigns, leads and follows until the task is dropped.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.term().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "leader election: the store failed; campaigning again");
                    self.set(State::Campaigning);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Gives the lead up at once (graceful shutdown), so another server need not wait
    /// for the lease to run out.
    pub async fn resign(store: &dyn Store, lease: &Mutex<Option<LeaseId>>) {
        let held = lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(id) = held
            && let Err(e) = store.revoke_lease(id).await
        {
            tracing::warn!(error = %e, "could not give up the lead; it lapses with its lease");
        }
    }

    fn set(&self, state: State) {
        self.metrics
            .leader
            .set(i64::from(matches!(state, State::Leading)));
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// One try at the lead: leads until it is lost, or follows until the leader's key
    /// goes. `Ok` means campaign again now.
    async fn term(&self) -> anyhow::Result<()> {
        let lease = self.store.grant_lease(self.ttl).await?;
        let record = Record {
            holder: self.identity.clone(),
            since: crate::federation::now(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        match self
            .store
            .put(keys::LEADER, value, Condition::Absent, Some(lease.id))
            .await
        {
            Ok(rev) => self.lead(lease.id, lease.ttl, rev).await,
            Err(StoreError::AlreadyExists { .. }) => {
                let _ = self.store.revoke_lease(lease.id).await;
                self.follow().await
            }
            Err(e) => {
                let _ = self.store.revoke_lease(lease.id).await;
                Err(e.into())
            }
        }
    }

    /// Holds the lead: renews the lease every third of its TTL and watches the key.
    async fn lead(&self, lease: LeaseId, ttl: Duration, rev: Revision) -> anyhow::Result<()> {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        tracing::info!(identity = %self.identity, ttl_secs = ttl.as_secs_f64(), term = rev, "leading: the federation controller runs here");
        // The key was created at `rev`: the controller's writes compare on it.
        self.term.send_replace(Some(Term {
            create_revision: rev,
            lease,
        }));
        self.set(State::Leading);
        let result = match self.store.watch(keys::LEADER, rev + 1).await {
            Ok(mut watch) => self.hold(lease, ttl, &mut watch).await,
            Err(e) => Err(e.into()),
        };
        tracing::warn!(identity = %self.identity, "stepping down: the federation controller stops here");
        self.term.send_replace(None);
        self.set(State::Campaigning);
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = self.store.revoke_lease(lease).await;
        result
    }

    async fn hold(
        &self,
        lease: LeaseId,
        ttl: Duration,
        watch: &mut flotilla_store::WatchStream,
    ) -> anyhow::Result<()> {
        let renew_every = ttl / 3;
        let give_up_after = ttl * 2 / 3;
        let mut renewed = Instant::now();
        let mut tick = tokio::time::interval_at(Instant::now() + renew_every, renew_every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let failure = match tokio::time::timeout(renew_every, self.store.keep_alive(lease)).await {
                        Ok(Ok(_)) => {
                            renewed = Instant::now();
                            continue;
                        }
                        Ok(Err(StoreError::LeaseNotFound { .. })) => {
                            tracing::warn!("the leader lease is gone");
                            return Ok(());
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {renew_every:?}"),
                    };
                    if renewed.elapsed() >= give_up_after {
                        anyhow::bail!("the leader lease was not renewed for {give_up_after:?}: {failure}");
                    }
                    tracing::warn!(error = %failure, "could not renew the leader lease; trying again");
                }
                event = watch.next() => match event {
                    Some(Ok(Event::Put(kv))) if holder(&kv.value).as_deref() == Some(self.identity.as_str()) => {}
                    Some(Ok(_)) => {
                        tracing::warn!("the leader key was deleted or taken over");
                        return Ok(());
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the watch of the leader key ended"),
                },
            }
        }
    }

    /// Follows the current leader until its key goes (then campaigns again). A key of
    /// this server's own earlier run is taken over at once.
    async fn follow(&self) -> anyhow::Result<()> {
        let Some(kv) = self.store.get(keys::LEADER).await? else {
            return Ok(());
        };
        let leader = holder(&kv.value).unwrap_or_else(|| "an unreadable leader record".into());
        // A store no other process can open (the embedded file) can only hold the key
        // of an earlier run, whatever its address was.
        if leader == self.identity || !self.store.shared() {
            tracing::info!(%leader, "taking over the lead of an earlier run of this server");
            return match self.store.delete(keys::LEADER, Some(kv.mod_revision)).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        tracing::info!(%leader, "following: another server runs the federation controller");
        self.set(State::Following { leader });
        let mut watch = self.store.watch(keys::LEADER, kv.mod_revision + 1).await?;
        // The key can only go (its lease ends or it is deleted): any event means look
        // again. A periodic look covers a watch that stalls.
        loop {
            tokio::select! {
                event = watch.next() => return match event {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(anyhow::anyhow!("the watch of the leader key ended")),
                },
                () = tokio::time::sleep(self.ttl) => {
                    if self.store.get(keys::LEADER).await?.map(|k| k.mod_revision) != Some(kv.mod_revision) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn holder(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Record>(value)
        .ok()
        .map(|r| r.holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_name_the_host_and_address() {
        let id = identity("127.0.0.1:7443".parse().unwrap());
        assert!(id.ends_with("/127.0.0.1:7443"), "{id}");
        assert!(id.len() > "/127.0.0.1:7443".len(), "{id}");
    }

    #[test]
    fn records_read_back_their_holder() {
        let r = Record {
            holder: "h/1".into(),
            since: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(
            holder(&serde_json::to_vec(&r).unwrap()).as_deref(),
            Some("h/1")
        );
        assert_eq!(holder(b"not json"), None);
    }
}
