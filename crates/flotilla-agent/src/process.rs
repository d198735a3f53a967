//! The process member: [`flotilla_process::ProcessBackend`] (instances are local
//! processes, each on its own loopback address) under a [`LocalMember`].
//!
//! ```text
//!   ProcessMember = LocalMember<ProcessBackend>:  ticker ─▶ passes (no clock to move)
//!   first Snapshot ─▶ instances of sets no longer held (left by an earlier agent) go
//! ```
//!
//! Nothing here stops an instance when the agent stops or dies: the processes run on,
//! and the next agent over the same data directory adopts them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::{InstanceSet, InstanceSetStatus};
use flotilla_process::{ProcessBackend, ProcessConfig};

use crate::local::{LocalBackend, LocalMember, LocalMemberOptions};
use crate::{Error, Result};

/// A member whose instances are processes on this host.
pub type ProcessMember = LocalMember<ProcessBackend>;

impl LocalBackend for ProcessBackend {
    fn status(&self, set: &InstanceSet) -> Option<InstanceSetStatus> {
        ProcessBackend::status(self, set)
    }

    fn known_sets(&self) -> Vec<(String, String)> {
        self.sets()
    }

    fn forget(&self, set: &InstanceSet) {
        ProcessBackend::forget(self, set);
    }

    /// Starting instances are asked again every tick (the ticker's floor), like a
    /// kubelet's readiness probe, rather than at the set's retry backoff.
    fn next_changes(&self) -> BTreeMap<String, Duration> {
        self.starting()
            .into_iter()
            .map(|key| (key, Duration::ZERO))
            .collect()
    }
}

impl LocalMember<ProcessBackend> {
    /// A process member configured by `config`, with default pacing: adopts the
    /// instances already running under its data directory. Must be called within a
    /// tokio runtime: it spawns the ticker.
    pub fn new(config: &ProcessConfig) -> Result<Arc<ProcessMember>> {
        ProcessMember::with_options(config, LocalMemberOptions::default())
    }

    /// A process member with explicit pacing.
    pub fn with_options(
        config: &ProcessConfig,
        options: LocalMemberOptions,
    ) -> Result<Arc<ProcessMember>> {
        let backend = ProcessBackend::new(config).map_err(Error::Process)?;
        Ok(LocalMember::start(Arc::new(backend), options))
    }

    /// The process backend, for inspection.
    pub fn processes(&self) -> &Arc<ProcessBackend> {
        self.backend()
    }
}
