//! The simulated member in real time: [`flotilla_member::sim::Sim`] under a
//! [`LocalMember`], whose ticker advances the simulated clock by the wall-clock time
//! elapsed.
//!
//! ```text
//!   SimMember = LocalMember<Sim>:  ticker ─▶ Sim::advance(elapsed) ─▶ passes
//! ```

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
