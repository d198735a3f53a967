//! The simulated member in real time: [`flotilla_member::sim::Sim`] under a
//! [`LocalMember`], whose ticker advances the simulated clock by the wall-clock time
//! elapsed.
//!
//! ```text
//!   SimMember = LocalMember<Sim>:  ticker ─▶ Sim::advance(elapsed) ─▶ passes
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::{InstanceSet, InstanceSetStatus};
use flotilla_member::sim::{Sim, SimConfig};

use crate::local::{LocalBackend, LocalMember, LocalMemberOptions};

/// A simulated member cluster that runs in real time.
pub type SimMember = LocalMember<Sim>;

/// How a [`SimMember`] paces itself (the options of every [`LocalMember`]).
pub type SimMemberOptions = LocalMemberOptions;

impl LocalBackend for Sim {
    fn advance(&self, by: Duration) {
        Sim::advance(self, by);
    }

    fn status(&self, set: &InstanceSet) -> Option<InstanceSetStatus> {
        Sim::status(self, set)
    }

    fn next_changes(&self) -> BTreeMap<String, Duration> {
        Sim::next_changes(self)
    }

    fn forget(&self, set: &InstanceSet) {
        Sim::forget(self, set);
    }
}

impl LocalMember<Sim> {
    /// A simulated member configured by `config`, with default pacing. Must be called
    /// within a tokio runtime: it spawns the ticker.
    pub fn new(config: &SimConfig) -> Arc<SimMember> {
        SimMember::with_options(config, SimMemberOptions::default())
    }

    /// A simulated member with explicit pacing.
    pub fn with_options(config: &SimConfig, options: SimMemberOptions) -> Arc<SimMember> {
        LocalMember::start(Arc::new(Sim::new(config)), options)
    }

    /// The simulated cluster, for inspection and fault injection (call
    /// [`LocalMember::resync_now`] after injecting a fault to have it noticed at once).
    pub fn sim(&self) -> &Arc<Sim> {
        self.backend()
    }
}

#[cfg(test)]
mod tests {
    //! The simulated member in tokio's paused time: the ticker's sleeps and the
    //! simulated clock are virtual, so when a pass runs is exact.

    use super::*;
    use crate::member::Member as _;

    #[tokio::test(start_paused = true)]
    async fn readiness_is_counted_when_it_happens_not_at_the_next_retry() {
        let config = SimConfig::from_text(
            "nodeGroups: [{count: 1, free: {cpu: '4', memory: 16Gi, pods: 110}}]\nstartDelayMs: 100\nreadyDelayMs: 2000\n",
        )
        .unwrap();
        // A retry backoff far longer than the wait for readiness: only the change
        // itself can bring the pass that counts it.
        let member = SimMember::with_options(
            &config,
            SimMemberOptions {
                tick: Duration::from_millis(50),
                max_retry: Duration::from_secs(3600),
                resync: Duration::from_secs(3600),
                ..SimMemberOptions::default()
            },
        );
        let set: InstanceSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "InstanceSet",
            "metadata": {"name": "cache", "namespace": "default", "generation": 1},
            "spec": {
                "ordinals": {"ranges": [{"start": 0, "end": 0}]},
                "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7",
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}},
            },
        }))
        .unwrap();
        let key = crate::slice_key("default", set.name());
        let start = tokio::time::Instant::now();
        member.put(set);
        let mut statuses = member.statuses();
        statuses
            .wait_for(|s| s.get(&key).is_some_and(|s| s.ready_replicas == 1))
            .await
            .unwrap();
        let took = start.elapsed();
        // Created at once, running at 100 ms, ready 2 s later; seen within a tick.
        assert!(
            took >= Duration::from_millis(2100) && took <= Duration::from_millis(2200),
            "ready at 2.1 s (virtual), counted at {took:?}"
        );
    }
}
