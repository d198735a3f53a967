//! The federation controller's work queue: which set to reconcile next.
//!
//! Urgent work (a spec, a placement or the clusters changed) goes before status work
//! (members only reported), so distributing a change never waits behind bookkeeping.
//! Status work is paced for expensive sets: a set whose last reconcile took `cost`
//! (at least [`PACE_FROM`]) is reconciled for status alone at most once per
//! [`PACE_FACTOR`] × `cost` (at most [`PACE_MOST`]); the reports that arrive meanwhile
//! are taken in by that one pass. A 100,000-instance set over 100 members receives a
//! report or a capacity change every few tens of milliseconds while it settles, and
//! re-deciding it for each one kept a core half busy; a 1,000-instance set never
//! waits. Urgent work is never paced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::keys::SetKey;

/// A reconcile at least this long paces the set's status work.
pub const PACE_FROM: Duration = Duration::from_millis(5);
/// Status work for a paced set waits this many times its last reconcile's cost...
pub const PACE_FACTOR: u32 = 4;
/// ... but never longer than this.
pub const PACE_MOST: Duration = Duration::from_secs(1);

/// Sets to reconcile.
#[derive(Debug, Default)]
pub struct Queue {
    urgent: BTreeSet<SetKey>,
    status: BTreeSet<SetKey>,
    /// Status work held back until the time given.
    paced: BTreeMap<SetKey, Instant>,
    /// When each expensive set may next be reconciled for status alone.
    not_before: HashMap<SetKey, Instant>,
}

impl Queue {
    /// `key` must be reconciled as soon as possible.
    pub fn urgent(&mut self, key: SetKey) {
        self.status.remove(&key);
        self.paced.remove(&key);
        self.urgent.insert(key);
    }

    /// `key`'s members reported: reconcile it when its pace allows.
    pub fn status(&mut self, key: SetKey) {
        if !self.urgent.contains(&key) && !self.paced.contains_key(&key) {
            self.status.insert(key);
        }
    }

    pub fn all(&mut self, keys: BTreeSet<SetKey>) {
        for k in keys {
            self.urgent(k);
        }
    }

    pub fn all_later(&mut self, keys: BTreeSet<SetKey>) {
        for k in keys {
            self.status(k);
        }
    }

    /// The next set to reconcile at `now`: urgent ones first, then status work whose
    /// pace allows it; `None` when nothing is due (see [`Queue::wake_at`]).
    pub fn pop(&mut self, now: Instant) -> Option<SetKey> {
        if let Some(k) = self.urgent.pop_first() {
            return Some(k);
        }
        let due: Vec<SetKey> = self
            .paced
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.paced.remove(&k);
            self.status.insert(k);
        }
        while let Some(k) = self.status.pop_first() {
            match self.not_before.get(&k) {
                Some(t) if *t > now => {
                    self.paced.insert(k, *t);
                }
                _ => return Some(k),
            }
        }
        None
    }

    /// `key` was reconciled at `now`, which took `cost`.
    pub fn done(&mut self, key: &SetKey, cost: Duration, now: Instant) {
        if cost >= PACE_FROM {
            let wait = cost.saturating_mul(PACE_FACTOR).min(PACE_MOST);
            self.not_before.insert(key.clone(), now + wait);
        } else {
            self.not_before.remove(key);
        }
    }

    /// When held-back status work falls due, if any is held back.
    pub fn wake_at(&self) -> Option<Instant> {
        self.paced.values().min().copied()
    }

    /// Forgets paces that have passed (a set that went leaves nothing behind).
    pub fn prune(&mut self, now: Instant) {
        self.not_before.retain(|_, t| *t > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Queue, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.pop(now)).collect()
    }

    #[test]
    fn urgent_sets_go_before_those_whose_members_only_reported() {
        let mut q = Queue::default();
        q.status("a".into());
        q.status("c".into());
        q.urgent("d".into());
        q.urgent("c".into());
        q.status("d".into());
        assert_eq!(drain(&mut q, Instant::now()), ["c", "d", "a"]);
    }

    #[test]
    fn status_work_of_an_expensive_set_waits_its_pace_and_urgent_work_never_does() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.done(&"big".into(), Duration::from_millis(40), t0);
        q.done(&"small".into(), Duration::from_millis(1), t0);
        // Three reports for each: the small set goes at once, the big one waits.
        for _ in 0..3 {
            q.status("big".into());
            q.status("small".into());
        }
        assert_eq!(drain(&mut q, t0), ["small"]);
        let due = t0 + Duration::from_millis(160);
        assert_eq!(q.wake_at(), Some(due));
        assert!(drain(&mut q, due - Duration::from_millis(1)).is_empty());
        // Its three reports are one pass, once due.
        assert_eq!(drain(&mut q, due), ["big"]);
        assert_eq!(q.wake_at(), None);
        // Held back again, then made urgent: it goes at once.
        q.status("big".into());
        assert!(drain(&mut q, t0 + Duration::from_millis(1)).is_empty());
        q.urgent("big".into());
        assert_eq!(drain(&mut q, t0 + Duration::from_millis(1)), ["big"]);
        assert_eq!(q.wake_at(), None);
    }

    #[test]
    fn the_pace_is_capped_and_forgotten_once_it_passed() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.done(&"huge".into(), Duration::from_secs(3), t0);
        q.status("huge".into());
        assert!(drain(&mut q, t0).is_empty());
        assert_eq!(q.wake_at(), Some(t0 + PACE_MOST));
        assert_eq!(drain(&mut q, t0 + PACE_MOST), ["huge"]);
        q.prune(t0 + PACE_MOST);
        assert!(q.not_before.is_empty());
        // A cheap pass ends the pacing.
        q.done(&"huge".into(), Duration::from_secs(3), t0);
        q.done(&"huge".into(), Duration::from_millis(1), t0);
        q.status("huge".into());
        assert_eq!(drain(&mut q, t0), ["huge"]);
    }
}
