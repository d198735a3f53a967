//! The embedded store's file: its tables, its reads, and batches of writes applied in one
//! redb transaction each.
//!
//! ```text
//!   kv          key ─▶ record (create, mod, version, lease, value)     current state
//!   log         (revision, n) ─▶ change (put or delete)                 history, for watches
//!   meta        "revision" (last written), "compacted" (oldest watchable), "next_lease"
//!   leases      lease id ─▶ (ttl ms, deadline ms)
//!   lease_keys  (lease id, key) ─▶ ()                                   keys to delete with a lease
//! ```
//!
//! Writes arrive in batches from the writer thread ([`Db::apply`]): one write
//! transaction per batch, in which each write bumps `revision` and changes `kv` and
//! `log` together, committed with redb's immediate durability (fsync) before any caller
//! hears back. So an acknowledged write is on disk, and the current state and its
//! history never disagree. Revisions are handed out in the order writes are applied,
//! which is the order they commit. Everything here blocks: reads run in
//! `spawn_blocking`, writes on the writer thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::Clock;
use super::codec::{self, Change, Record};
use crate::txn::{Committed, KeyState, Txn, TxnOp};
use crate::{Condition, Error, Event, KeyValue, LeaseId, Result, Revision};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u64, (u64, u64)> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(u64, &str), ()> = TableDefinition::new("lease_keys");

const REVISION: &str = "revision";
const COMPACTED: &str = "compacted";
const NEXT_LEASE: &str = "next_lease";

/// The open file and the settings every transaction needs.
#[derive(Debug)]
pub(super) struct Db {
    db: Database,
    path: PathBuf,
    /// Revisions of history kept for watches (at least 1).
    history: u64,
    clock: Arc<dyn Clock>,
}

/// One write, as the writer thread receives it.
#[derive(Debug)]
pub(super) enum Op {
    Put {
        key: String,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact(Revision),
    Grant {
        ttl_ms: u64,
    },
    KeepAlive(LeaseId),
    Revoke(LeaseId),
    /// Ends the lease if its deadline has passed.
    Expire(u64),
    /// Every op at one revision if every compare holds.
    Txn(Txn),
}

impl Op {
    /// What the op is called in errors.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Delete { .. } => "delete",
            Op::Compact(_) => "compact",
            Op::Grant { .. } => "grant lease",
            Op::KeepAlive(_) => "renew lease",
            Op::Revoke(_) => "revoke lease",
            Op::Expire(_) => "expire lease",
            Op::Txn(_) => "txn",
        }
    }
}

/// What a write did.
#[derive(Debug)]
pub(super) enum Done {
    /// The revision a put wrote.
    Revision(Revision),
    /// The revision a delete wrote, if the key existed.
    Deleted(Option<Revision>),
    /// Done, nothing to report.
    Nothing,
    /// The granted lease.
    Lease(LeaseId),
    /// A renewed lease's TTL, in milliseconds.
    Ttl(u64),
    /// Whether a due lease ended.
    Expired(bool),
    /// What a committed transaction did.
    Txn(Committed),
}

impl Db {
    /// Opens (or creates) the file and makes sure every table and counter exists.
    pub fn open(path: &Path, history: u64, clock: Arc<dyn Clock>) -> Result<Db> {
        let open_error = |source: redb::Error| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let db = Database::create(path).map_err(|e| open_error(e.into()))?;
        let txn = db.begin_write().map_err(|e| open_error(e.into()))?;
        {
            let init = |txn: &WriteTransaction| -> Result<(), redb::Error> {
                let mut meta = txn.open_table(META)?;
                for (name, initial) in [(REVISION, 1), (COMPACTED, 1), (NEXT_LEASE, 1)] {
                    if meta.get(name)?.is_none() {
                        meta.insert(name, initial)?;
                    }
                }
                txn.open_table(KV)?;
                txn.open_table(LOG)?;
                txn.open_table(LEASES)?;
                txn.open_table(LEASE_KEYS)?;
                Ok(())
            };
            init(&txn).map_err(open_error)?;
        }
        txn.commit().map_err(|e| open_error(e.into()))?;
        Ok(Db {
            db,
            path: path.to_path_buf(),
            history,
            clock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last revision written.
    pub fn revision(&self) -> Result<u64> {
        let txn = self.db.begin_read().map_err(|e| Error::db("read", e))?;
        let meta = txn.open_table(META).map_err(|e| Error::db("read", e))?;
        meta_get(&meta, REVISION)
    }

    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(|e| Error::db("get", e))?;
        let kv = txn.open_table(KV).map_err(|e| Error::db("get", e))?;
        let found = kv.get(key).map_err(|e| Error::db("get", e))?;
        found
            .map(|v| Ok(key_value(key.to_string(), codec::decode_record(v.value())?)))
            .transpose()
    }

    pub fn list(&self, prefix: &str) -> Result<(u64, Vec<KeyValue>)> {
        let txn = self.db.begin_read().map_err(|e| Error::db("list", e))?;
        let meta = txn.open_table(META).map_err(|e| Error::db("list", e))?;
        let kv = txn.open_table(KV).map_err(|e| Error::db("list", e))?;
        let revision = meta_get(&meta, REVISION)?;
        let mut items = Vec::new();
        for entry in kv.range(prefix..).map_err(|e| Error::db("list", e))? {
            let (k, v) = entry.map_err(|e| Error::db("list", e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            items.push(key_value(key.to_string(), codec::decode_record(v.value())?));
        }
        Ok((revision, items))
    }

    /// The history of keys under `prefix` in revisions `from..=to`, or `Compacted` when
    /// part of it is gone.
    pub fn changes(&self, prefix: &str, from: u64, to: u64) -> Result<Vec<Event>> {
        let txn = self.db.begin_read().map_err(|e| Error::db("watch", e))?;
        let meta = txn.open_table(META).map_err(|e| Error::db("watch", e))?;
        if from < meta_get(&meta, COMPACTED)? {
            return Err(Error::Compacted {
                requested: rev(from),
            });
        }
        let log = txn.open_table(LOG).map_err(|e| Error::db("watch", e))?;
        let mut events = Vec::new();
        for entry in log
            .range((from, 0)..=(to, u32::MAX))
            .map_err(|e| Error::db("watch", e))?
        {
            let (k, v) = entry.map_err(|e| Error::db("watch", e))?;
            let (revision, _) = k.value();
            match codec::decode_change(v.value())? {
                Change::Put { key, .. } | Change::Delete { key } if !key.starts_with(prefix) => {}
                Change::Put {
                    key,
                    create,
                    version,
                    lease,
                    value,
                } => events.push(Event::Put(key_value(
                    key,
                    Record {
                        create,
                        modified: revision,
                        version,
                        lease,
                        value,
                    },
                ))),
                Change::Delete { key } => events.push(Event::Delete {
                    key,
                    revision: rev(revision),
                }),
            }
        }
        Ok(events)
    }

    /// Checks that a watch may start at `from`.
    pub fn check_watch_start(&self, from: u64) -> Result<()> {
        let txn = self.db.begin_read().map_err(|e| Error::db("watch", e))?;
        let meta = txn.open_table(META).map_err(|e| Error::db("watch", e))?;
        if from < meta_get(&meta, COMPACTED)? {
            return Err(Error::Compacted {
                requested: rev(from),
            });
        }
        Ok(())
    }

    /// Leases whose deadline has passed.
    pub fn due_leases(&self) -> Result<Vec<u64>> {
        let now = self.clock.now_ms();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| Error::db("expire leases", e))?;
        let leases = txn
            .open_table(LEASES)
            .map_err(|e| Error::db("expire leases", e))?;
        let mut due = Vec::new();
        for entry in leases.iter().map_err(|e| Error::db("expire leases", e))? {
            let (id, v) = entry.map_err(|e| Error::db("expire leases", e))?;
            if v.value().1 <= now {
                due.push(id.value());
            }
        }
        Ok(due)
    }

    /// Applies `ops` in order, in one write transaction committed with one fsync, and
    /// returns each op's outcome and the last revision written. An op refused by its
    /// own checks (a conflict, a missing lease) changes nothing and the others go on; a
    /// failure of the file fails them all, and nothing is written.
    pub fn apply(&self, ops: &[Op]) -> (Vec<Result<Done>>, Option<u64>) {
        match self.try_apply(ops) {
            Ok(applied) => applied,
            Err(failure) => (ops.iter().map(|_| Err(failure.duplicate())).collect(), None),
        }
    }

    fn try_apply(&self, ops: &[Op]) -> Result<(Vec<Result<Done>>, Option<u64>)> {
        let txn = self.db.begin_write().map_err(|e| Error::db("write", e))?;
        let (results, written) = {
            let mut tables = Tables::open(&txn, self.history)?;
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                match tables.apply(op, self.clock.now_ms()) {
                    Err(e) if !e.is_refusal() => return Err(e),
                    outcome => results.push(outcome),
                }
            }
            (results, tables.written)
        };
        txn.commit().map_err(|e| Error::db("commit", e))?;
        Ok((results, written))
    }
}

/// The tables of one write transaction.
struct Tables<'t> {
    op: &'static str,
    history: u64,
    kv: Table<'t, &'static str, &'static [u8]>,
    log: Table<'t, (u64, u32), &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    leases: Table<'t, u64, (u64, u64)>,
    lease_keys: Table<'t, (u64, &'static str), ()>,
    /// The last revision this transaction wrote, once it has.
    written: Option<u64>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, history: u64) -> Result<Tables<'t>> {
        let e = |e: redb::TableError| Error::db("write", e);
        Ok(Tables {
            op: "write",
            history,
            kv: txn.open_table(KV).map_err(e)?,
            log: txn.open_table(LOG).map_err(e)?,
            meta: txn.open_table(META).map_err(e)?,
            leases: txn.open_table(LEASES).map_err(e)?,
            lease_keys: txn.open_table(LEASE_KEYS).map_err(e)?,
            written: None,
        })
    }

    fn apply(&mut self, op: &Op, now: u64) -> Result<Done> {
        self.op = op.name();
        match op {
            Op::Put {
                key,
                value,
                condition,
                lease,
            } => self
                .put(key, value, *condition, *lease, now)
                .map(Done::Revision),
            Op::Delete { key, expected } => self.delete(key, *expected).map(Done::Deleted),
            Op::Compact(revision) => self.compact(*revision).map(|()| Done::Nothing),
            Op::Grant { ttl_ms } => self.grant(*ttl_ms, now).map(Done::Lease),
            Op::KeepAlive(id) => self.keep_alive(*id, now).map(Done::Ttl),
            Op::Revoke(id) => self.revoke(*id).map(|()| Done::Nothing),
            Op::Expire(id) => self.expire(*id, now).map(Done::Expired),
            Op::Txn(txn) => self.txn(txn, now).map(Done::Txn),
        }
    }

    // Each op below returns its refusals (conflicts, missing leases) before it changes
    // anything, so a refused op leaves the transaction as it found it.

    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        condition: Condition,
        lease: Option<LeaseId>,
        now: u64,
    ) -> Result<Revision> {
        let old = self.record(key)?;
        match (condition, &old) {
            (Condition::Any, _) | (Condition::Absent, None) => {}
            (Condition::Absent, Some(old)) => {
                return Err(Error::AlreadyExists {
                    key: key.to_string(),
                    mod_revision: rev(old.modified),
                });
            }
            (Condition::ModRevision(expected), old) => {
                let actual = old.as_ref().map(|o| rev(o.modified));
                if actual != Some(expected) {
                    return Err(Error::Conflict {
                        key: key.to_string(),
                        expected,
                        actual,
                    });
                }
            }
        }
        let lease = self.live_lease(lease, now)?;
        let revision = self.bump()?;
        self.write_put(key, value, lease, old, revision, 0)?;
        Ok(rev(revision))
    }

    /// The stored id of `lease`, refused unless it is live (0 for no lease).
    fn live_lease(&self, lease: Option<LeaseId>, now: u64) -> Result<u64> {
        let Some(id) = lease else { return Ok(0) };
        let not_found = || Error::LeaseNotFound { lease: id };
        let l = lease_id(id).ok_or_else(not_found)?;
        match self.lease(l)? {
            Some((_, deadline)) if deadline > now => Ok(l),
            _ => Err(not_found()),
        }
    }

    /// Writes `key` (whose record was `old`) at `revision`, as change number `n` of it.
    fn write_put(
        &mut self,
        key: &str,
        value: &[u8],
        lease: u64,
        old: Option<Record>,
        revision: u64,
        n: u32,
    ) -> Result<()> {
        let (create, version) = match &old {
            Some(old) => (old.create, old.version + 1),
            None => (revision, 1),
        };
        let old_lease = old.as_ref().map_or(0, |o| o.lease);
        if old_lease != 0 && old_lease != lease {
            self.lease_keys
                .remove((old_lease, key))
                .map_err(|e| Error::db(self.op, e))?;
        }
        if lease != 0 {
            self.lease_keys
                .insert((lease, key), ())
                .map_err(|e| Error::db(self.op, e))?;
        }
        let record = codec::encode_record(create, revision, version, lease, value);
        self.kv
            .insert(key, record.as_slice())
            .map_err(|e| Error::db(self.op, e))?;
        let change = codec::encode_put(key, create, version, lease, value);
        self.log
            .insert((revision, n), change.as_slice())
            .map_err(|e| Error::db(self.op, e))?;
        Ok(())
    }

    /// A transaction: every compare on the state before it, then every lease its puts
    /// name, all before anything changes; then every op at one revision (none if it
    /// changes nothing), each its own change number in the log, in op order.
    fn txn(&mut self, txn: &Txn, now: u64) -> Result<Committed> {
        for (i, compare) in txn.compares.iter().enumerate() {
            let state = self.record(&compare.key)?.map(|r| KeyState {
                create_revision: rev(r.create),
                mod_revision: rev(r.modified),
                lease: (r.lease != 0).then(|| rev(r.lease)),
            });
            if !compare.holds(state.as_ref()) {
                return Err(Txn::refused(i, compare, state));
            }
        }
        let mut planned = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            let old = self.record(op.key())?;
            let lease = match op {
                TxnOp::Put { lease, .. } => self.live_lease(*lease, now)?,
                TxnOp::Delete { .. } => 0,
            };
            planned.push((old, lease));
        }
        let changed: Vec<bool> = txn
            .ops
            .iter()
            .zip(&planned)
            .map(|(op, (old, _))| matches!(op, TxnOp::Put { .. }) || old.is_some())
            .collect();
        if !changed.contains(&true) {
            return Ok(Committed {
                revision: None,
                changed,
            });
        }
        let revision = self.bump()?;
        for (n, (op, (old, lease))) in txn.ops.iter().zip(planned).enumerate() {
            let n = u32::try_from(n).map_err(|_| Error::Corrupt("too many ops".into()))?;
            match op {
                TxnOp::Put { key, value, .. } => {
                    self.write_put(key, value, lease, old, revision, n)?;
                }
                TxnOp::Delete { key } => {
                    if let Some(old) = old {
                        self.remove_key(key, old.lease, revision, n)?;
                    }
                }
            }
        }
        Ok(Committed {
            revision: Some(rev(revision)),
            changed,
        })
    }

    fn delete(&mut self, key: &str, expected: Option<Revision>) -> Result<Option<Revision>> {
        let old = self.record(key)?;
        if let Some(expected) = expected {
            let actual = old.as_ref().map(|o| rev(o.modified));
            if actual != Some(expected) {
                return Err(Error::Conflict {
                    key: key.to_string(),
                    expected,
                    actual,
                });
            }
        }
        let Some(old) = old else {
            return Ok(None);
        };
        let revision = self.bump()?;
        self.remove_key(key, old.lease, revision, 0)?;
        Ok(Some(rev(revision)))
    }

    fn compact(&mut self, revision: Revision) -> Result<()> {
        let current = self.meta(REVISION)?;
        let target = u64::try_from(revision).unwrap_or(0);
        if target > current {
            return Err(Error::FutureRevision {
                requested: revision,
            });
        }
        self.compact_to(target)
    }

    fn grant(&mut self, ttl_ms: u64, now: u64) -> Result<LeaseId> {
        let id = self.meta(NEXT_LEASE)?;
        self.set_meta(NEXT_LEASE, id + 1)?;
        self.leases
            .insert(id, (ttl_ms, now.saturating_add(ttl_ms)))
            .map_err(|e| Error::db(self.op, e))?;
        Ok(rev(id))
    }

    /// Renews a live lease; returns its TTL in milliseconds.
    fn keep_alive(&mut self, id: LeaseId, now: u64) -> Result<u64> {
        let not_found = || Error::LeaseNotFound { lease: id };
        let l = lease_id(id).ok_or_else(not_found)?;
        match self.lease(l)? {
            Some((ttl, deadline)) if deadline > now => {
                self.leases
                    .insert(l, (ttl, now.saturating_add(ttl)))
                    .map_err(|e| Error::db(self.op, e))?;
                Ok(ttl)
            }
            _ => Err(not_found()),
        }
    }

    fn revoke(&mut self, id: LeaseId) -> Result<()> {
        let not_found = || Error::LeaseNotFound { lease: id };
        let l = lease_id(id).ok_or_else(not_found)?;
        if self.lease(l)?.is_none() {
            return Err(not_found());
        }
        self.end_lease(l)
    }

    /// Ends the lease if it is (still) due; whether it did.
    fn expire(&mut self, id: u64, now: u64) -> Result<bool> {
        match self.lease(id)? {
            Some((_, deadline)) if deadline <= now => {
                self.end_lease(id)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        Error::db(self.op, e)
    }

    fn meta(&self, name: &str) -> Result<u64> {
        meta_get(&self.meta, name)
    }

    fn set_meta(&mut self, name: &str, value: u64) -> Result<()> {
        self.meta
            .insert(name, value)
            .map_err(|e| Error::db(self.op, e))?;
        Ok(())
    }

    fn record(&self, key: &str) -> Result<Option<Record>> {
        let found = self.kv.get(key).map_err(|e| self.err(e))?;
        found.map(|v| codec::decode_record(v.value())).transpose()
    }

    fn lease(&self, id: u64) -> Result<Option<(u64, u64)>> {
        Ok(self
            .leases
            .get(id)
            .map_err(|e| self.err(e))?
            .map(|v| v.value()))
    }

    /// Takes the next revision, dropping history beyond the bound.
    fn bump(&mut self) -> Result<u64> {
        let revision = self.meta(REVISION)? + 1;
        self.set_meta(REVISION, revision)?;
        self.written = Some(revision);
        let oldest_kept = (revision + 1).saturating_sub(self.history).max(1);
        self.compact_to(oldest_kept)?;
        Ok(revision)
    }

    /// Drops the history before `revision`, if not already gone.
    fn compact_to(&mut self, revision: u64) -> Result<()> {
        let compacted = self.meta(COMPACTED)?;
        if revision <= compacted {
            return Ok(());
        }
        self.log
            .retain_in((compacted, 0)..(revision, 0), |_, _| false)
            .map_err(|e| Error::db(self.op, e))?;
        self.set_meta(COMPACTED, revision)
    }

    /// Deletes `key` at `revision`, as change number `n` of that revision.
    fn remove_key(&mut self, key: &str, lease: u64, revision: u64, n: u32) -> Result<()> {
        self.kv.remove(key).map_err(|e| Error::db(self.op, e))?;
        if lease != 0 {
            self.lease_keys
                .remove((lease, key))
                .map_err(|e| Error::db(self.op, e))?;
        }
        let change = codec::encode_delete(key);
        self.log
            .insert((revision, n), change.as_slice())
            .map_err(|e| Error::db(self.op, e))?;
        Ok(())
    }

    /// Removes the lease and deletes its keys, all at one new revision (none if it had
    /// no keys, as in etcd).
    fn end_lease(&mut self, id: u64) -> Result<()> {
        let mut keys = Vec::new();
        for entry in self
            .lease_keys
            .range((id, "")..(id + 1, ""))
            .map_err(|e| Error::db(self.op, e))?
        {
            let (k, _) = entry.map_err(|e| Error::db(self.op, e))?;
            keys.push(k.value().1.to_string());
        }
        self.leases.remove(id).map_err(|e| Error::db(self.op, e))?;
        if keys.is_empty() {
            return Ok(());
        }
        let revision = self.bump()?;
        for (n, key) in keys.iter().enumerate() {
            let n = u32::try_from(n)
                .map_err(|_| Error::Corrupt("a lease holds over 4 billion keys".into()))?;
            self.remove_key(key, id, revision, n)?;
        }
        Ok(())
    }
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64> {
    meta.get(name)
        .map_err(|e| Error::db("read", e))?
        .map(|v| v.value())
        .ok_or_else(|| Error::Corrupt(format!("the store file has no {name} counter")))
}

fn key_value(key: String, r: Record) -> KeyValue {
    KeyValue {
        key,
        value: r.value.into(),
        create_revision: rev(r.create),
        mod_revision: rev(r.modified),
        version: i64::try_from(r.version).unwrap_or(i64::MAX),
        lease: (r.lease != 0).then(|| rev(r.lease)),
    }
}

/// A stored counter as the API's signed revision (the file never holds one past
/// `i64::MAX`: it would take 292 years at a billion writes a second).
fn rev(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A lease id as stored; ids the store never grants (zero, negative) map to `None`.
fn lease_id(id: LeaseId) -> Option<u64> {
    u64::try_from(id).ok().filter(|&l| l != 0)
}
