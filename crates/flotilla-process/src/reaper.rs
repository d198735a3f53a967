//! Stopping, for good, every instance process a data directory records: for tests
//! (which must stop every process they start, by pid, even when they panic half-way)
//! and throwaway set-ups. Agents never use it: their instances outlive them.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use nix::sys::signal::Signal;

use crate::os;
use crate::state::{Layout, Record};

/// Kills, when dropped, the process of every state file under a data directory and
/// every process it was shown ([`Reaper::saw`]), each only while it is still the process
/// that was started (same start time), so a reused pid is never hit.
#[derive(Debug)]
pub struct Reaper {
    layout: Layout,
    seen: Mutex<BTreeSet<(u32, u64)>>,
}

impl Reaper {
    /// A reaper of the instances under `data_dir`.
    pub fn new(data_dir: &Path) -> Reaper {
        Reaper {
            layout: Layout::new(data_dir),
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// Remembers the process of `record` (it may be gone from the state files by the
    /// time the reaper is dropped, yet still running).
    pub fn saw(&self, record: &Record) {
        if let (Some(pid), Some(start)) = (record.pid, record.start_time) {
            self.lock().insert((pid, start));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(u32, u64)>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let mut pids = std::mem::take(&mut *self.lock());
        for r in self.layout.records().unwrap_or_default() {
            if let (Some(pid), Some(start)) = (r.pid, r.start_time) {
                pids.insert((pid, start));
            }
        }
        for (pid, start) in pids {
            if os::alive(pid, start) {
                let _ = os::signal_group(pid, Signal::SIGKILL);
            }
        }
    }
}
